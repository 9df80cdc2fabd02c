"""`seglab train` with the interior/boundary target, `seglab predict --instances` and `seglab evaluate --instances`:
one code path (evaluate scores exactly what predict writes), 16-bit label maps, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.instances.metrics import InstanceMeter


@pytest.fixture(scope="module")
def learned_run(nuclei_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for 96 steps on the interior/boundary target of the nuclei folder."""
    from seglab.config import Config
    from seglab.engine.train import train

    out = tmp_path_factory.mktemp("learned") / "run"
    cfg = Config().override(
        [
            f"data.root={nuclei_dir}",
            "data.target=interior_boundary",
            "data.boundary_width=1",
            "data.val_ratio=0",
            "model.arch=unet",
            "model.params={depth: 2, base_channels: 8}",
            "train.epochs=4",
            "data.repeat=6",
            "train.batch_size=4",
            "train.lr=0.01",
            f"train.out_dir={out}",
            "train.progress=false",
            "train.amp=off",
        ]
    )
    train(cfg)
    return out


def test_training_records_the_target_and_three_classes(learned_run):
    from seglab.checkpoint import read_meta

    meta = read_meta(learned_run)
    assert meta.target == "interior_boundary" and meta.boundary_width == 1
    assert meta.class_names == ["background", "interior", "boundary"] and meta.num_classes == 3


def test_evaluate_scores_exactly_what_predict_writes(learned_run, nuclei_dir, run_cli, tmp_path):
    code, out, err = run_cli(
        "evaluate",
        learned_run,
        "--data",
        nuclei_dir,
        "--split",
        "test",
        "--instances",
        "learned",
        "--out",
        tmp_path / "eval.json",
        "--no-progress",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    inst = report["instances"]
    assert inst["method"] == "learned" and inst["truth"] == "instances/" and inst["num_images"] == 8
    assert "instances (learned, truth: instances/): DSB score" in out

    stems = (nuclei_dir / "splits" / "test.txt").read_text().split()
    images = [nuclei_dir / "images" / f"{s}.png" for s in stems]
    code, out, err = run_cli(
        "predict", learned_run, *images, "--out", tmp_path / "pred", "--instances", "learned", "--no-progress"
    )
    assert code == 0, err
    meter = InstanceMeter()
    for s in stems:
        written = Image.open(tmp_path / "pred" / f"{s}_instances.png")
        labels = np.array(written)
        assert written.mode.startswith("I;16") or labels.dtype == np.uint16
        ids = np.unique(labels[labels > 0])
        assert list(ids) == list(range(1, len(ids) + 1))  # objects 1..K, consecutive
        overlay = np.array(Image.open(tmp_path / "pred" / f"{s}_instances_overlay.png"))
        image = np.array(Image.open(nuclei_dir / "images" / f"{s}.png"))
        assert overlay.shape == image.shape and np.array_equal(overlay[labels == 0], image[labels == 0])
        meter.update(labels, np.array(Image.open(nuclei_dir / "instances" / f"{s}.png")))
    again = meter.compute()
    for key in ("dsb_score", "f1", "aji", "pq", "rand_error", "num_true", "num_pred"):
        assert again[key] == pytest.approx(inst[key], nan_ok=True), key
    assert "instance maps (learned" in out

    # the semantic scores of the per-image path are those of the batched evaluation
    code, _, err = run_cli(
        "evaluate",
        learned_run,
        "--data",
        nuclei_dir,
        "--split",
        "test",
        "--out",
        tmp_path / "plain.json",
        "--no-progress",
    )
    assert code == 0, err
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["confusion_matrix"] == report["confusion_matrix"]


def test_evaluate_without_instance_maps_scores_components_of_the_class(
    tiny_ckpt, nuclei_dir, run_cli, tmp_path
):
    root = tmp_path / "no-instances"
    shutil.copytree(nuclei_dir, root)
    shutil.rmtree(root / "instances")
    code, _, err = run_cli(
        "evaluate",
        tiny_ckpt,
        "--data",
        root,
        "--instances",
        "watershed",
        "--instance-param",
        "h=3",
        "--out",
        tmp_path / "e.json",
        "--no-progress",
    )
    assert code == 0, err
    inst = json.loads((tmp_path / "e.json").read_text())["instances"]
    assert inst["truth"] == "connected components of fg" and inst["params"]["h"] == 3.0
    # each true object is a connected component of the masks: the nuclei pairs touch, so fewer than instances/
    assert 0 < inst["num_true"] < 8 * 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--instance-param", "bogus=1"], "--instance-param 'bogus=1': use KEY=VALUE with KEY one of"),
        (["--instance-param", "h=x"], "--instance-param h must be a number"),
        (["--instance-param", "threshold=1.5"], "threshold and seed_threshold must be in (0, 1)"),
        (["--instance-class", "nucleus"], "unknown class 'nucleus'"),
    ],
)
def test_bad_instance_flags_are_one_line_errors(tiny_ckpt, nuclei_dir, run_cli, tmp_path, args, message):
    image = nuclei_dir / "images" / "n00.png"
    code, _, err = run_cli(
        "predict",
        tiny_ckpt,
        image,
        "--out",
        tmp_path / "p",
        "--instances",
        "components",
        *args,
        "--no-progress",
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists()


def test_instance_flags_need_instances(tiny_ckpt, nuclei_dir, run_cli, tmp_path):
    code, _, err = run_cli("evaluate", tiny_ckpt, "--data", nuclei_dir, "--instance-param", "h=3")
    assert code == 2 and "apply only with --instances METHOD" in err


def test_learned_separation_beats_components_on_touching_nuclei(learned_run, nuclei_dir, tmp_path):
    """Every nucleus of the toy data touches another: components merge the pairs, the learned boundary splits
    them (the same probabilities, two post-processings)."""
    from seglab.engine.evaluate import evaluate

    scores = {
        m: evaluate(learned_run, nuclei_dir, "test", out=tmp_path / f"{m}.json", progress=False, instances=m)[
            "instances"
        ]
        for m in ("components", "learned")
    }
    assert (
        scores["components"]["num_pred"] < scores["learned"]["num_pred"] <= scores["learned"]["num_true"] + 4
    )
    assert scores["learned"]["dsb_score"] > scores["components"]["dsb_score"] + 0.2
    assert scores["learned"]["f1"] > scores["components"]["f1"] + 0.2
