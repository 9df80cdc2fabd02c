"""`seglab benchmark` and `seglab export` end to end on tiny models (2 timed iterations; numbers not asserted)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.bench.latency import fold_batchnorm
from seglab.bench.report import pareto_front
from seglab.checkpoint import CheckpointMeta, save_checkpoint
from seglab.cli import main
from seglab.engine.evaluate import evaluate
from seglab.models.factory import create_model

TINY = {"depth": 2, "base_channels": 4}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained U-Net checkpoint for SyntheticShapes (4 classes) and a 12-image data set."""
    from seglab.data.synthetic import write_folder

    root = tmp_path_factory.mktemp("bench")
    data = write_folder(root / "data", num_images=12, size=32)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, **TINY)
    model.eval()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=4,
        in_channels=3,
        model_params=dict(TINY),
        class_names=["background", "circle", "rectangle", "triangle"],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    save_checkpoint(root / "run" / "best", model, meta)
    return root / "run", data


def test_cost_table_of_the_course(capsys):
    code, out, err = run(capsys, "benchmark", "--cost", "plain_fcn", "--size", 512)
    assert code == 0, err
    assert "**plain_fcn** at 512x512: 192,922 parameters, 50.39 GMACs" in out
    assert "| encoder.layers.3.0 | Conv2d | 128x512x512 | 3x3/1 | 73,984 | 19.33 G | 256.0 MiB |" in out
    assert "**unet (depth 4, base 16)** at 512x512" in out and "ConvTranspose2d" in out


def test_benchmark_end_to_end_with_onnxruntime(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out_dir = tmp_path / "bench"
    code, out, err = run(
        capsys,
        "benchmark",
        "unet",
        "segnet",
        "--params",
        "{depth: 2, base_channels: 4}",
        "--size",
        32,
        "--batch",
        1,
        2,
        "--iters",
        2,
        "--warmup",
        1,
        "--num-classes",
        3,
        "--paths",
        "eager",
        "channels_last",
        "fold_bn",
        "fold_bn_cl",
        "onnxruntime",
        "--out",
        out_dir,
        "--no-progress",
    )
    assert code == 0, err
    result = json.loads((out_dir / "benchmark.json").read_text())
    assert len(result["rows"]) == 2 * 2 * 5
    proto = result["protocol"]
    for key in ("device_name", "threads", "torch", "dtype", "channels_last", "compile", "warmup", "iters"):
        assert key in proto
    assert proto["iters"] == 2 and proto["channels_last"] is True and proto["compile"] is False
    for row in result["rows"]:
        assert row["fps"] > 0 and row["latency_ms"] > 0 and row["p90_ms"] >= row["latency_ms"], row
        assert row["faithful"] and row["max_abs_diff"] < 1e-4, row
    assert "| model | path | size |" in (out_dir / "benchmark.md").read_text() and "Protocol:" in out
    assert (out_dir / "benchmark.csv").read_text().startswith("model,path,size,batch")
    assert (out_dir / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_checkpoint_with_miou(checkpoint, tmp_path, capsys):
    run_dir, data = checkpoint
    out_dir = tmp_path / "bench"
    code, out, err = run(
        capsys,
        "benchmark",
        "--checkpoints",
        run_dir,
        "--data",
        data,
        "--size",
        32,
        "--iters",
        2,
        "--warmup",
        1,
        "--out",
        out_dir,
        "--no-progress",
    )
    assert code == 0, err
    rows = json.loads((out_dir / "benchmark.json").read_text())["rows"]
    assert len(rows) == 1 and 0 <= rows[0]["miou"] <= 1
    assert (out_dir / "benchmark.png").is_file()


def test_export_onnx_parity_and_benchmark_it(checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from seglab.checkpoint import load_checkpoint

    run_dir, _ = checkpoint
    onnx_file = tmp_path / "model.onnx"
    code, out, err = run(capsys, "export", run_dir, "--format", "onnx", "--out", onnx_file)
    assert code == 0, err
    assert "dynamic batch and size" in out and "max abs logit difference" in out
    model, _ = load_checkpoint(run_dir)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 41, 29, generator=torch.Generator().manual_seed(1))  # odd, not the traced size
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert got.shape == ref.shape == (2, 4, 41, 29)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)

    code, out, err = run(
        capsys,
        "benchmark",
        onnx_file,
        "--size",
        33,
        "--iters",
        2,
        "--warmup",
        1,
        "--out",
        tmp_path / "b",
        "--no-progress",
    )
    assert code == 0, err
    assert "| model.onnx | eager | 33 | 1 |" in out

    # the export carries the checkpoint's sidecar, so predict and evaluate run it through ONNX Runtime
    _, data = checkpoint
    for ckpt, pred in ((run_dir, tmp_path / "p_torch"), (onnx_file, tmp_path / "p_onnx")):
        code, _, err = run(capsys, "predict", ckpt, data / "images", "--out", pred, "--no-progress")
        assert code == 0, err
    masks = sorted((tmp_path / "p_torch").glob("*_mask.png"))
    assert masks
    for m in masks:
        a, b = np.array(Image.open(m)), np.array(Image.open(tmp_path / "p_onnx" / m.name))
        assert (a == b).mean() > 0.999, m.name  # argmax may flip only on exact ties
    code, out, err = run(
        capsys, "evaluate", onnx_file, "--data", data, "--no-progress", "--out", tmp_path / "e.json"
    )
    assert code == 0, err
    ref = evaluate(run_dir, data, "test", progress=False, out=tmp_path / "r.json")
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(ref["miou"], abs=1e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in favour of torch.export
def test_export_torchscript(checkpoint, tmp_path, capsys):
    from seglab.checkpoint import load_checkpoint

    run_dir, _ = checkpoint
    code, out, err = run(capsys, "export", run_dir, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert code == 0, err
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    model, _ = load_checkpoint(run_dir)
    x = torch.randn(1, 3, 67, 93)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "benchmark", "nosuchnet", "--out", tmp_path)
    assert code == 2 and "unknown model 'nosuchnet'" in err
    code, _, err = run(capsys, "benchmark", "unet", "--paths", "warp", "--out", tmp_path)
    assert code == 2 and "unknown path 'warp'" in err
    # the device is resolved like everywhere else (seglab.engine.device.resolve_device)
    code, _, err = run(capsys, "benchmark", "unet", "--device", "bogus", "--out", tmp_path)
    assert code == 2 and "unknown device 'bogus'" in err
    code, _, err = run(capsys, "export", tmp_path / "missing", "--out", tmp_path / "m.onnx")
    assert code == 2 and "does not exist" in err


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", num_classes=3, encoder="mobilenet", base_channels=8).eval()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded, n = fold_batchnorm(model)
    assert n > 10
    x = torch.randn(1, 3, 35, 41)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-4)


def test_pareto_front():
    pts = [(1.0, 0.9), (2.0, 0.8), (1.5, 0.7), (3.0, 0.5), (0.5, 0.95), (2.5, 0.4)]
    assert pareto_front(pts) == [4, 0, 1, 3]
    assert pareto_front([(1.0, 5.0), (2.0, 1.0), (3.0, 2.0)], maximize_y=False) == [1, 2]


def test_cost_table_of_any_model(capsys):
    code, out, err = run(
        capsys,
        "benchmark",
        "--cost",
        "unet",
        "--params",
        "{depth: 2, base_channels: 4}",
        "--size",
        64,
        "--num-classes",
        3,
        "--all-layers",
    )
    assert code == 0, err
    small = sum(p.numel() for p in create_model("unet", num_classes=3, depth=2, base_channels=4).parameters())
    assert f"**unet** at 64x64: {small:,} parameters" in out and "| ReLU |" in out and "| T 2x2/2 |" in out
