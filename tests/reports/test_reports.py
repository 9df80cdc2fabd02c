"""``seglab report`` and ``seglab evaluate --report``: one self-contained HTML page whose numbers are evaluate's."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

from seglab.config import Config
from seglab.reports.html import SECTIONS
from seglab.reports.report import FIGURES, write_report


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    """A tiny U-Net trained for 2 epochs on the 32x32 shapes (4 test images); its run folder."""
    from seglab.engine.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = Config().override(
        [
            f"data.root={shapes_dir}",
            f"train.out_dir={out}",
            "train.epochs=2",
            "train.batch_size=8",
            "train.lr=0.01",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
        ]
    )
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    """The report of ``run`` on its own data set (data.root of its config.yaml), with its evaluation folder."""
    out = tmp_path_factory.mktemp("report") / "report"
    return write_report(run, out=out, progress=False), out


def test_html_is_self_contained_with_every_section_and_figure(report):
    r, out = report
    html = (out / "report.html").read_text(encoding="utf-8")
    for number, heading in enumerate(SECTIONS.values(), 1):
        assert f"<h2>{number}. {heading}</h2>" in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES) == 6 and html.count("<img") == 6
    for name, data in zip(FIGURES, images):  # the page embeds exactly the PNGs written beside it
        assert base64.b64decode(data) == (out / f"{name}.png").read_bytes() and data.startswith("iVBORw0KGgo")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "no training log" not in html and "config.yaml" in html and "base_channels: 4" in html
    assert json.loads((out / "report.json").read_text())["figures"] == r["figures"]
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_numbers_are_those_of_evaluate(report, run, shapes_dir, tmp_path):
    from seglab.engine.evaluate import evaluate

    r, out = report
    saved = json.loads((out / "report.json").read_text())
    # the batched evaluation (another path through evaluate) of the same predictor gives the same numbers
    ref = evaluate(
        run, shapes_dir, "test", out=tmp_path / "e.json", progress=False, uncertainty="deterministic"
    )
    assert saved["confusion_matrix"] == ref["confusion_matrix"] == r["confusion_matrix"]
    assert saved["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert saved["iou"] == pytest.approx(ref["iou"], abs=1e-12, nan_ok=True)
    assert saved["uncertainty"]["aurc_entropy"] == pytest.approx(ref["uncertainty"]["aurc_entropy"], rel=1e-6)
    cm = np.asarray(ref["confusion_matrix"], dtype=float)
    assert saved["pixel_share"] == pytest.approx((cm.sum(1) / cm.sum()).tolist())
    assert saved["num_images"] == len(saved["images"]) == 4
    assert [row["index"] for row in saved["images"]] == [0, 1, 2, 3]


def hand_miou(model, meta, image, mask):
    """mIoU over the classes present in the truth or the prediction of one image, in NumPy."""
    from seglab.inference import image_tensor

    with torch.no_grad():
        pred = model(image_tensor(image, meta.mean, meta.std, torch.device("cpu")))[0].argmax(0).numpy()
    valid = mask != meta.ignore_index
    p, t = pred[valid], mask[valid]
    present = np.union1d(np.unique(p), np.unique(t))
    ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in present]
    return float(np.mean(ious))


def test_examples_are_best_median_worst_by_per_image_miou(report, run, shapes_dir):
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.evaluate import split_dataset

    r, _ = report
    best, median, worst = r["examples"]
    assert [e["rank"] for e in r["examples"]] == ["best", "median", "worst"]
    assert best["miou"] >= median["miou"] >= worst["miou"]
    scores = [row["miou"] for row in r["images"]]
    assert best["miou"] == max(scores) and worst["miou"] == min(scores)
    model, meta = load_checkpoint(run)
    ds = split_dataset(meta, shapes_dir, "test")
    for e in (best, worst):
        image, mask = ds.load(e["index"])
        assert ds.stems[e["index"]] == e["stem"]
        assert e["miou"] == pytest.approx(hand_miou(model, meta, image, mask), abs=1e-12)


def test_model_card(report, run):
    from seglab.checkpoint import load_checkpoint

    r, out = report
    card = r["model"]
    weights = run / "best.safetensors"
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["sha256_matches_sidecar"]
    model, _ = load_checkpoint(run)
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert card["macs"] > 0 and card["input_size"] == [32, 32] and card["arch"] == "unet"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert r["training"]["seconds"] == pytest.approx(sum(h["seconds"] for h in history))
    html = (out / "report.html").read_text()
    assert card["sha256"] in html and f"{card['params']:,}" in html
    assert "plan" not in card and "<h3>Plan</h3>" not in html  # a run trained without seglab plan


def test_a_lone_checkpoint_has_no_training_log(report, shapes_dir, tmp_path):
    r, out = report
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("best.safetensors", "best.yaml"):
        shutil.copy(r["model"]["weights"].replace("best.safetensors", name), lone / name)
    with pytest.raises(Exception, match="has no config.yaml naming data.root; pass the data set with --data"):
        write_report(lone / "best.safetensors", out=tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()
    got = write_report(lone / "best.safetensors", shapes_dir, out=tmp_path / "rep", progress=False)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "no training log" in html and html.count("<img") == 5
    assert not (tmp_path / "rep" / "curves.png").exists()
    assert got["miou"] == r["miou"] and got["training"]["log"] is False


def test_cli_report_and_evaluate_report(run, shapes_dir, tmp_path, run_cli):
    code, out, err = run_cli("report", run, "--data", shapes_dir, "--out", tmp_path / "a", "--no-progress")
    assert code == 0, err
    assert f"report: {tmp_path / 'a' / 'report.html'}" in out and "(deterministic)" in out
    code, out, err = run_cli(
        "evaluate",
        run,
        "--data",
        shapes_dir,
        "--out",
        tmp_path / "e.json",
        "--report",
        tmp_path / "b",
        "--no-progress",
    )
    assert code == 0, err
    assert "calibration, deterministic" in out and str(tmp_path / "b" / "report.html") in out
    evaluated = json.loads((tmp_path / "e.json").read_text())
    shown = json.loads((tmp_path / "b" / "report.json").read_text())
    assert shown["miou"] == evaluated["miou"] and shown["confusion_matrix"] == evaluated["confusion_matrix"]
    assert shown["images"] == evaluated["images"] and (tmp_path / "b" / "report.html").is_file()


def test_bad_input_is_one_line_and_exit_2(run, shapes_dir, tmp_path, run_cli):
    from seglab.data.synthetic import write_folder

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    (tmp_path / "empty").mkdir()
    no_test = write_folder(tmp_path / "no_test", num_images=6, size=32, test_ratio=0.0)
    cases = [
        ([tmp_path / "missing"], "run folder .*missing does not exist"),
        ([tmp_path / "empty"], "holds no checkpoint"),
        ([run, "--data", no_test], "the test split of .* is empty"),
        ([run, "--data", tmp_path / "nowhere"], "does not exist"),
        ([run], "blocked by the file"),
        ([run, "--uncertainty", "ensemble"], "ensemble"),
    ]
    for argv, message in cases:
        out = blocker if message == "blocked by the file" else tmp_path / "out"
        code, stdout, err = run_cli("report", *argv, "--out", out, "--no-progress")
        assert code == 2 and err.count("\n") == 1 and err.startswith("seglab: error: "), (argv, err)
        assert re.search(message, err), err
        assert not (tmp_path / "out").exists()
    code, _, err = run_cli("evaluate", run, "--data", shapes_dir, "--report", blocker, "--no-progress")
    assert code == 2 and "blocked by the file" in err and err.count("\n") == 1


def test_example_pictures_of_a_multiband_data_set_go_through_the_normalisation(tmp_path, monkeypatch):
    """A 5-band 16-bit data set: the report's image panels are ``Normalization.display`` of the raw images,
    with ``display_bands`` choosing the bands; a band the model lacks is one line before any work."""
    from PIL import Image

    from seglab.checkpoint import CheckpointMeta, save_checkpoint
    from seglab.data.io import read_image
    from seglab.data.normalize import Normalization
    from seglab.errors import ConfigError
    from seglab.models.factory import create_model
    from seglab.reports import figures

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(4):
        np.save(
            tmp_path / "data" / "images" / f"s{i}.npy", rng.integers(100, 4000, (32, 32, 5)).astype(np.uint16)
        )
        Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8)).save(
            tmp_path / "data" / "masks" / f"s{i}.png"
        )
    norm = Normalization("range", [0.0] * 5, [4095.0] * 5, [0.5] * 5, [0.25] * 5)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=2, in_channels=5, depth=2, base_channels=4).eval()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=2,
        in_channels=5,
        model_params={"depth": 2, "base_channels": 4},
        class_names=["bg", "fg"],
        mean=norm.mean,
        std=norm.std,
        normalize=norm.to_dict(),
    )
    ckpt = save_checkpoint(tmp_path / "ck" / "best", model, meta)
    rows = []
    real = figures.examples_figure
    monkeypatch.setattr(figures, "examples_figure", lambda r: rows.extend(r) or real(r))
    r = write_report(
        ckpt, tmp_path / "data", "all", out=tmp_path / "rep", progress=False, display_bands=(3, 2, 1)
    )
    assert len(rows) == 3 and r["num_images"] == 4
    assert all(panels[0].dtype == np.uint8 and panels[0].shape == (32, 32, 3) for _, panels in rows)
    shown = {panels[0].tobytes() for _, panels in rows}
    expected = {
        norm.display(read_image(p, 5), [3, 2, 1]).tobytes()
        for p in sorted((tmp_path / "data" / "images").glob("*.npy"))
    }
    assert shown <= expected
    with pytest.raises(ConfigError, match="1..5"):
        write_report(
            ckpt, tmp_path / "data", "all", out=tmp_path / "rep2", progress=False, display_bands=(5,)
        )
    assert not (tmp_path / "rep2").exists()
