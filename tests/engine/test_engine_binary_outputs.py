"""Binary (membrane/cell) outputs: class names from the config, probability maps, thresholded masks, overlap-tile
evaluation and the adapted Rand error in evaluate; references: scikit-image, the model run by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.checkpoint import load_checkpoint
from seglab.cli import main
from seglab.config import Config
from seglab.data.io import class_index, read_image
from seglab.engine.train import train
from seglab.errors import ConfigError
from seglab.inference import predict_probs, threshold_labels
from seglab.metrics import RandMeter, label_components

skimage_metrics = pytest.importorskip("skimage.metrics")


def membrane_folder(root, num=12, size=40):
    """Bright cells separated by dark 2-px membranes on a jittered grid; masks 255 = cell, 0 = membrane."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(num):
        mask = np.full((size, size), 255, np.uint8)
        for pos in rng.integers(4, size - 4, 3):
            mask[pos : pos + 2, :] = 0
        for pos in rng.integers(4, size - 4, 3):
            mask[:, pos : pos + 2] = 0
        image = np.where(mask > 0, 190, 60) + rng.normal(0, 20, mask.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def membrane_run(tmp_path_factory):
    root = membrane_folder(tmp_path_factory.mktemp("em") / "data")
    splits = {"train": [f"{i:02d}" for i in range(8)], "val": ["08", "09"], "test": ["10", "11"]}
    cfg = Config().override(
        [
            f"data.root={root}",
            f"train.out_dir={root.parent / 'run'}",
            "train.epochs=2",
            "train.batch_size=4",
            "train.progress=false",
            "data.class_names=[membrane, cell]",
            "model.params={depth: 2, base_channels: 4}",
        ]
    )
    cfg.data.splits = splits
    result = train(cfg)
    return root, result.best_checkpoint


def test_class_index_by_name_or_index():
    names = ["membrane", "cell"]
    assert class_index(names, "cell") == 1 and class_index(names, 0) == 0 and class_index(names, "1") == 1
    for bad in ("nucleus", 2, "-1"):
        with pytest.raises(ConfigError, match="0=membrane, 1=cell"):
            class_index(names, bad)


def test_threshold_labels_worked_example():
    p0 = torch.tensor([[0.3, 0.6, 0.45]])
    probs = torch.stack([p0, 1 - p0])  # two classes
    assert threshold_labels(probs, 0, 0.5).tolist() == [[1, 0, 1]]  # = argmax
    assert threshold_labels(probs, 0, 0.25).tolist() == [[0, 0, 0]]
    assert threshold_labels(probs, 0, 0.7).tolist() == [[1, 1, 1]]
    three = torch.tensor([[0.5, 0.2], [0.3, 0.1], [0.2, 0.7]])[:, None, :]  # (3, 1, 2)
    assert threshold_labels(three, 0, 0.6).tolist() == [[1, 2]]  # the best other class where class 0 < 0.6
    assert threshold_labels(three, 2, 0.15).tolist() == [[2, 2]]


def test_rand_meter_matches_scikit_image():
    rng = np.random.default_rng(1)
    target = torch.from_numpy((rng.random((3, 24, 24)) > 0.35).astype(np.int64))
    logits = torch.randn(3, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    logits[:, 1] += 2 * target  # mostly right, some merges and splits
    meter = RandMeter(1)
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:], target[2:])
    pred = logits.argmax(1)
    ref = [
        skimage_metrics.adapted_rand_error(label_components(t == 1), label_components(p == 1))
        for p, t in zip(pred, target)
    ]
    got = meter.compute()
    assert got["rand_error"] == pytest.approx(np.mean([r[0] for r in ref]), abs=1e-12)
    # scikit-image returns (error, precision, recall) with precision and recall swapped (its issue #6485)
    assert got["rand_precision"] == pytest.approx(np.mean([r[2] for r in ref]), abs=1e-12)
    assert 0 < got["rand_error"] < 1


def test_config_class_names_reach_the_checkpoint_and_are_checked(membrane_run, tmp_path, capsys):
    root, ckpt = membrane_run
    _, meta = load_checkpoint(ckpt)
    assert meta.class_names == ["membrane", "cell"] and meta.in_channels == 1
    code = main(
        [
            "train",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "data.class_names=[a, b, c]",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data.class_names has 3 names but" in err and err.count("\n") == 1


def test_predict_writes_probability_maps_and_thresholded_masks(membrane_run, tmp_path, capsys):
    root, ckpt = membrane_run
    image = root / "images" / "10.png"
    code = main(
        [
            "predict",
            str(ckpt),
            str(image),
            "--out",
            str(tmp_path),
            "--prob",
            "membrane",
            "--threshold",
            "0.3",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    prob = Image.open(tmp_path / "10_prob_membrane.png")
    assert prob.mode == "L" and prob.size == (40, 40)
    model, meta = load_checkpoint(ckpt)
    ref = predict_probs(model, read_image(image, 1), meta.mean, meta.std, torch.device("cpu"))[0]
    assert np.abs(np.array(prob).astype(int) - (ref * 255).round().numpy().astype(int)).max() <= 1
    mask = np.array(Image.open(tmp_path / "10_mask.png"))
    np.testing.assert_array_equal(mask, np.where(ref.numpy() >= 0.3, 0, 1))
    assert (tmp_path / "10_overlay.png").is_file()

    code = main(
        [
            "predict",
            str(ckpt),
            str(image),
            "--out",
            str(tmp_path / "u"),
            "--prob",
            "membrane",
            "--tile",
            "16",
            "--overlap",
            "8",
            "--uncertainty",
            "tta",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    for suffix in ("mask", "prob_membrane", "uncertainty", "overlay"):
        assert Image.open(tmp_path / "u" / f"10_{suffix}.png").size == (40, 40)

    code = main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "x"), "--threshold", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "--threshold needs one --prob class" in err and not (tmp_path / "x").exists()
    code = main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "x"), "--prob", "nucleus"])
    assert code == 2 and "unknown class 'nucleus'" in capsys.readouterr().err


def test_evaluate_reports_rand_error_and_runs_overlap_tile(membrane_run, tmp_path, capsys):
    root, ckpt = membrane_run
    code = main(
        [
            "evaluate",
            str(ckpt),
            "--data",
            str(root),
            "--rand-class",
            "cell",
            "--out",
            str(tmp_path / "plain.json"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "adapted Rand error" in out and "pixel error" in out
    plain = json.loads((tmp_path / "plain.json").read_text())
    model, meta = load_checkpoint(ckpt)
    errors = []
    for stem in ("10", "11"):
        probs = predict_probs(
            model, read_image(root / "images" / f"{stem}.png", 1), meta.mean, meta.std, torch.device("cpu")
        )
        truth = np.array(Image.open(root / "masks" / f"{stem}.png")) > 0
        errors.append(
            skimage_metrics.adapted_rand_error(
                label_components(truth), label_components(probs.argmax(0) == 1)
            )[0]
        )
    assert plain["rand_error"] == pytest.approx(np.mean(errors), abs=1e-9) and plain["rand_class"] == "cell"

    # one tile covering the image without context = the plain pass; small tiles with context cover every pixel
    main(
        [
            "evaluate",
            str(ckpt),
            "--data",
            str(root),
            "--tile",
            "40",
            "--overlap",
            "0",
            "--out",
            str(tmp_path / "t40.json"),
            "--no-progress",
        ]
    )
    main(
        [
            "evaluate",
            str(ckpt),
            "--data",
            str(root),
            "--tile",
            "16",
            "--overlap",
            "8",
            "--out",
            str(tmp_path / "t16.json"),
            "--no-progress",
        ]
    )
    t40, t16 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("t40", "t16"))
    assert t40["confusion_matrix"] == plain["confusion_matrix"] and t16["tile"] == 16
    assert np.sum(t16["confusion_matrix"]) == np.sum(plain["confusion_matrix"]) == 2 * 40 * 40


def test_evaluate_rand_error_with_test_time_augmentation(membrane_run, tmp_path, capsys):
    root, ckpt = membrane_run
    code = main(
        [
            "evaluate",
            str(ckpt),
            "--data",
            str(root),
            "--rand-class",
            "1",
            "--uncertainty",
            "tta",
            "--out",
            str(tmp_path / "tta.json"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "tta.json").read_text())
    assert 0 <= report["rand_error"] <= 1 and report["rand_class"] == "cell" and "uncertainty" in report
    # overlap-tile through a predictor (any method wraps the tiled model) = the plain tiled evaluation
    for extra, name in ((["--uncertainty", "deterministic"], "det"), ([], "plain")):
        main(
            [
                "evaluate",
                str(ckpt),
                "--data",
                str(root),
                "--tile",
                "16",
                "--overlap",
                "8",
                *extra,
                "--out",
                str(tmp_path / f"{name}.json"),
                "--no-progress",
            ]
        )
    det, plain = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("det", "plain"))
    assert det["confusion_matrix"] == plain["confusion_matrix"] and det["tile"] == 16
