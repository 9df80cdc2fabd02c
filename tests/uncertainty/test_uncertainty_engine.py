import json
import math

import matplotlib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.checkpoint import load_checkpoint, read_meta, save_checkpoint
from seglab.cli import main
from seglab.config import Config
from seglab.data.folder import FolderDataset
from seglab.data.io import read_image
from seglab.data.transforms import build_transform
from seglab.engine.evaluate import evaluate
from seglab.engine.predict import predict
from seglab.engine.train import train
from seglab.inference import image_tensor
from seglab.uncertainty.calibration import expected_calibration_error, negative_log_likelihood
from seglab.uncertainty.config import UncertaintyConfig

LOG4 = math.log(4)


def tiny_config(data_dir, out_dir, seed=0, dropout=0.2):
    return Config().override(
        [
            f"data.root={data_dir}",
            f"train.out_dir={out_dir}",
            "train.epochs=1",
            "train.batch_size=8",
            "model.params={depth: 2, base_channels: 4}",
            "train.progress=false",
            f"model.params.dropout={dropout}",
            f"train.seed={seed}",
        ]
    )


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uq-runs")
    return {
        name: train(tiny_config(shapes_dir, root / name, seed, dropout)).best_checkpoint
        for name, seed, dropout in (("a", 0, 0.2), ("b", 1, 0.2), ("plain", 2, 0.0))
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_mc_dropout_writes_heatmaps_and_maps(runs, shapes_dir, tmp_path, capsys):
    inputs = sorted((shapes_dir / "images").iterdir())[:2]
    code, out, err = run(
        capsys,
        "predict",
        runs["a"],
        *inputs,
        "--out",
        tmp_path / "p",
        "--uncertainty",
        "mc-dropout",
        "--samples",
        3,
        "--save-maps",
        "--no-progress",
    )
    assert code == 0, err
    assert "entropy heatmaps (mc-dropout (3 samples)) and .npz maps" in out
    stem = inputs[0].stem
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert names == sorted(
        f"{s.stem}_{k}"
        for s in inputs
        for k in ("mask.png", "overlay.png", "uncertainty.png", "uncertainty.npz")
    )
    heat = np.array(Image.open(tmp_path / "p" / f"{stem}_uncertainty.png"))
    assert heat.shape == (32, 32, 3) and heat.dtype == np.uint8
    maps = np.load(tmp_path / "p" / f"{stem}_uncertainty.npz")
    assert set(maps.files) == {
        "entropy",
        "expected_entropy",
        "mutual_information",
        "confidence",
        "variance",
        "probs",
    }
    assert maps["entropy"].shape == (32, 32) and maps["probs"].shape == (4, 32, 32)
    assert maps["variance"].shape == (4, 32, 32)
    assert (maps["entropy"] >= 0).all() and (maps["entropy"] <= LOG4 + 1e-5).all()
    assert maps["mutual_information"].min() > -1e-5 and maps["mutual_information"].max() > 0
    # the heatmap is the fixed-scale colormap of the entropy map
    expected = (matplotlib.colormaps["viridis"](np.clip(maps["entropy"] / LOG4, 0, 1))[..., :3] * 255).round()
    assert np.abs(heat.astype(int) - expected.astype(int)).max() <= 1
    mask = np.array(Image.open(tmp_path / "p" / f"{stem}_mask.png"))
    assert np.array_equal(mask, maps["probs"].argmax(0))


def test_predict_ensemble_and_its_errors(runs, shapes_dir, tmp_path, capsys):
    image = sorted((shapes_dir / "images").iterdir())[0]
    results = predict(
        runs["a"],
        [image],
        tmp_path / "e",
        progress=False,
        write_overlay=False,
        uncertainty=_cfg("ensemble", ensemble=[str(runs["b"])], heatmap="mi", save_maps=True),
    )
    assert results[0]["mean_mutual_information"] > 0
    maps = np.load(results[0]["maps"])
    ma, meta = load_checkpoint(runs["a"])
    mb, _ = load_checkpoint(runs["b"])

    x = image_tensor(read_image(image, 3), meta.mean, meta.std, torch.device("cpu"))
    with torch.no_grad():
        mean = (ma(x).softmax(1) + mb(x).softmax(1))[0] / 2
    assert np.allclose(maps["probs"], mean.numpy(), atol=1e-6)

    # members must predict the same classes
    model, meta = load_checkpoint(runs["a"])
    meta.class_names = ["bg", "circle", "rectangle", "triangle"]
    save_checkpoint(tmp_path / "other", model, meta)
    code, _, err = run(
        capsys,
        "predict",
        runs["a"],
        image,
        "--out",
        tmp_path / "x",
        "--ensemble",
        tmp_path / "other.safetensors",
        "--no-progress",
    )
    assert code == 2 and "ensemble member" in err and "same task" in err and err.count("\n") == 1
    code, _, err = run(
        capsys, "predict", runs["a"], image, "--out", tmp_path / "x", "--uncertainty", "ensemble"
    )
    assert code == 2 and "--ensemble CKPT" in err
    code, _, err = run(capsys, "predict", runs["a"], image, "--out", tmp_path / "x", "--samples", 5)
    assert code == 2 and "--samples applies only with --uncertainty" in err
    assert not (tmp_path / "x").exists()


def _cfg(method, **kw):
    return UncertaintyConfig(method=method, **kw)


def test_mc_dropout_on_a_model_without_dropout(runs, shapes_dir, tmp_path, capsys):
    image = sorted((shapes_dir / "images").iterdir())[0]
    code, _, err = run(
        capsys,
        "predict",
        runs["plain"],
        image,
        "--out",
        tmp_path / "p",
        "--uncertainty",
        "mc-dropout",
        "--samples",
        2,
        "--no-progress",
    )
    assert code == 2 and "has no dropout layers" in err and "--add-dropout" in err
    code, _, err = run(
        capsys,
        "predict",
        runs["plain"],
        image,
        "--out",
        tmp_path / "p",
        "--uncertainty",
        "mc-dropout",
        "--samples",
        2,
        "--add-dropout",
        0.2,
        "--no-progress",
    )
    assert code == 0, err


def test_evaluate_with_uncertainty_reports_calibration(runs, shapes_dir, tmp_path, capsys):
    plain = evaluate(runs["a"], shapes_dir, "test", progress=False, out=tmp_path / "plain.json")
    det = evaluate(
        runs["a"], shapes_dir, "test", progress=False, out=tmp_path / "det.json", uncertainty="deterministic"
    )
    assert det["miou"] == plain["miou"] and det["confusion_matrix"] == plain["confusion_matrix"]
    u = det["uncertainty"]
    assert u["pixels"] == 4 * 32 * 32 and u["mean_mutual_information"] == 0
    assert 0 <= u["ece"] <= 1 and 0 <= u["ece_adaptive"] <= 1 and u["nll"] > 0 and 0 <= u["brier"] <= 2
    assert 0 <= u["auroc_entropy"] <= 1 and u["auroc_mutual_information"] == 0.5
    # the report's ECE and NLL are those of the checkpoint's probabilities on every test pixel

    model, _ = load_checkpoint(runs["a"])
    ds = FolderDataset(shapes_dir, "test", build_transform(Config().data, 3, train=False))
    x, y = zip(*(ds[i] for i in range(len(ds))))
    with torch.no_grad():
        probs = model(torch.stack(x)).softmax(1)
    assert u["ece"] == pytest.approx(expected_calibration_error(probs, torch.stack(y)), abs=1e-6)
    assert u["nll"] == pytest.approx(negative_log_likelihood(probs, torch.stack(y)), rel=1e-5)

    code, out, err = run(
        capsys,
        "evaluate",
        runs["a"],
        "--data",
        shapes_dir,
        "--uncertainty",
        "tta",
        "--tta-flips",
        "none",
        "h",
        "--out",
        tmp_path / "tta.json",
        "--no-progress",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "tta.json").read_text())
    assert report["uncertainty"]["method"] == "tta" and "ece_adaptive" in report["uncertainty"]
    assert "calibration, tta (flips none/h, scales 1)" in out and "error detection: AUROC" in out
    png = tmp_path / "tta-reliability.png"
    assert png.is_file() and report["uncertainty"]["reliability_png"] == str(png) and str(png) in out
    assert len(report["uncertainty"]["reliability"]["count"]) == 15


def test_calibrate_writes_the_temperature_and_inference_uses_it(runs, shapes_dir, tmp_path, capsys):
    import shutil

    for suffix in (".safetensors", ".yaml"):
        shutil.copy(runs["b"].with_suffix(suffix), tmp_path / f"ck{suffix}")
    ckpt = tmp_path / "ck.safetensors"
    image = sorted((shapes_dir / "images").iterdir())[0]
    predict(ckpt, [image], tmp_path / "before", progress=False)
    assert read_meta(ckpt).temperature == 1.0
    code, out, err = run(capsys, "calibrate", ckpt, "--data", shapes_dir, "--no-progress")
    assert code == 0, err
    assert "temperature" in out and "written to" in out
    meta = read_meta(ckpt)  # the SHA check still passes: only the sidecar changed
    assert meta.temperature > 0 and meta.temperature != 1.0
    nll_before, nll_after = (float(v) for v in out.split("NLL ")[1].split(",")[0].split(" -> "))
    assert nll_after <= nll_before + 1e-9
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ck")) == [
        "ck.safetensors",
        "ck.yaml",
    ]
    predict(ckpt, [image], tmp_path / "after", progress=False)
    name = f"{image.stem}_mask.png"
    assert np.array_equal(
        np.array(Image.open(tmp_path / "before" / name)), np.array(Image.open(tmp_path / "after" / name))
    )
    r = evaluate(
        ckpt, shapes_dir, "val", progress=False, out=tmp_path / "ev.json", uncertainty="deterministic"
    )
    assert r["uncertainty"]["temperature"] == meta.temperature
    assert r["uncertainty"]["nll"] == pytest.approx(nll_after, rel=1e-4)


def test_renormalize_maps_one_input_normalisation_to_another():
    from seglab.uncertainty.build import Renormalize

    raw = torch.rand(1, 3, 4, 4)
    in_mean, in_std, mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], [0.5] * 3, [0.5] * 3
    wrapped = Renormalize(torch.nn.Identity(), in_mean, in_std, mean, std)
    x_in = (raw - torch.tensor(in_mean)[:, None, None]) / torch.tensor(in_std)[:, None, None]
    assert torch.allclose(wrapped(x_in), (raw - 0.5) / 0.5, atol=1e-6)
    assert list(wrapped.state_dict()) == []


def test_old_sidecars_without_temperature_still_load(runs, tmp_path):
    import shutil

    for suffix in (".safetensors", ".yaml"):
        shutil.copy(runs["a"].with_suffix(suffix), tmp_path / f"old{suffix}")
    doc = yaml.safe_load((tmp_path / "old.yaml").read_text())
    assert doc.pop("temperature") == 1.0
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert read_meta(tmp_path / "old.safetensors").temperature == 1.0
