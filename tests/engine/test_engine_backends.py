"""``--backend``: predict and evaluate run an OpenVINO IR, an ONNX file in OpenVINO and a seglab checkpoint in
either runtime through the same sidecar and code path as PyTorch, with PyTorch's masks and scores; TTA and
ensembles of exported files work, MC dropout (which needs dropout layers) and a runtime the file cannot run in
are refused in one line.

The masks and confusion matrices are compared exactly: the runtimes' fp32 logits differ from PyTorch's by about
1e-7 here (tests/models/test_models_runtime.py checks 1e-4), so an argmax could differ only at a near-tie of two
classes, and none occurs on these images (asserted, not assumed: an equality that fails names the backend)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")

from exported import trained_files  # noqa: E402 - tests/exported.py

from seglab.engine.evaluate import evaluate  # noqa: E402
from seglab.engine.predict import predict  # noqa: E402
from seglab.uncertainty.config import UncertaintyConfig  # noqa: E402


@pytest.fixture(scope="module")
def files(shapes_dir, tmp_path_factory):
    """(checkpoint, ONNX export, IR) of a tiny SyntheticShapes U-Net with dropout, trained for a few epochs."""
    return trained_files(shapes_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def images(shapes_dir):
    return sorted((shapes_dir / "images").iterdir())[:5]


def cases(files):
    """(label, model file, backend) of every way to run the model outside PyTorch."""
    ckpt, onnx_file, xml = files
    return [
        ("IR", xml, None),
        ("ONNX in openvino", onnx_file, "openvino"),
        ("checkpoint in openvino", ckpt, "openvino"),
        ("ONNX in onnxruntime", onnx_file, None),
        ("checkpoint in onnxruntime", ckpt, "onnxruntime"),
    ]


def masks(records):
    return [np.array(Image.open(r["mask"])) for r in records]


def same(got, ref) -> bool:
    return len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref))


def test_predict_gives_torchs_masks_in_every_runtime(files, images, tmp_path):
    ckpt = files[0]
    ref = masks(predict(ckpt, images, tmp_path / "torch", progress=False))
    assert len({int(c) for m in ref for c in np.unique(m)}) > 1  # not one class everywhere
    for label, path, backend in cases(files):
        got = masks(
            predict(path, images, tmp_path / label.replace(" ", "-"), progress=False, backend=backend)
        )
        assert same(got, ref), label


def test_predict_tiled_and_with_tta_in_openvino(files, images, tmp_path):
    ckpt, _, xml = files
    tiled = {"tile": 16, "overlap": 4}
    ref = masks(predict(ckpt, images, tmp_path / "torch", progress=False, **tiled))
    assert same(masks(predict(xml, images, tmp_path / "ir", progress=False, **tiled)), ref)
    tta = UncertaintyConfig(method="tta", save_maps=True)
    [t] = predict(ckpt, images[:1], tmp_path / "tta-torch", progress=False, uncertainty=tta)
    [o] = predict(xml, images[:1], tmp_path / "tta-ir", progress=False, uncertainty=tta)
    np.testing.assert_array_equal(masks([o])[0], masks([t])[0])
    with np.load(t["maps"]) as a, np.load(o["maps"]) as b:
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-5)


def test_an_ensemble_of_exported_files_is_the_ensemble_of_their_checkpoints(files, images, tmp_path):
    ckpt, onnx_file, xml = files
    [t] = predict(
        ckpt,
        images[:1],
        tmp_path / "torch",
        progress=False,
        uncertainty=UncertaintyConfig(method="ensemble", ensemble=[str(ckpt)]),
    )
    [o] = predict(
        xml,
        images[:1],
        tmp_path / "exported",
        progress=False,
        uncertainty=UncertaintyConfig(method="ensemble", ensemble=[str(onnx_file)]),
    )
    np.testing.assert_array_equal(masks([o])[0], masks([t])[0])
    assert o["mean_entropy"] == pytest.approx(t["mean_entropy"], abs=1e-5)


def test_evaluate_gives_torchs_scores_in_every_runtime(files, shapes_dir, tmp_path):
    ckpt = files[0]
    ref = evaluate(ckpt, shapes_dir, out=tmp_path / "torch.json", progress=False)
    assert ref["backend"] == "torch"
    for label, path, backend in cases(files)[:3]:  # the IR; an .onnx and a checkpoint in openvino
        got = evaluate(
            path,
            shapes_dir,
            out=tmp_path / f"{label.replace(' ', '-')}.json",
            progress=False,
            backend=backend,
        )
        assert got["confusion_matrix"] == ref["confusion_matrix"] and got["miou"] == ref["miou"], label
        assert got["backend"] == (backend or ("openvino" if path.suffix == ".xml" else "onnxruntime"))


def test_evaluate_image_by_image_and_with_tta_in_openvino(files, shapes_dir, tmp_path):
    """The per-image path (--report, --instances) and the uncertainty path load the model there too."""
    ckpt, onnx_file, _ = files
    kw = {"per_image": True, "progress": False}
    ref = evaluate(ckpt, shapes_dir, out=tmp_path / "a.json", **kw)
    got = evaluate(onnx_file, shapes_dir, out=tmp_path / "b.json", backend="openvino", **kw)
    assert got["confusion_matrix"] == ref["confusion_matrix"] and got["backend"] == "openvino"
    assert [r["miou"] for r in got["images"]] == [r["miou"] for r in ref["images"]]
    ref = evaluate(ckpt, shapes_dir, out=tmp_path / "c.json", progress=False, uncertainty="tta")
    got = evaluate(
        ckpt, shapes_dir, out=tmp_path / "d.json", progress=False, uncertainty="tta", backend="openvino"
    )
    assert got["confusion_matrix"] == ref["confusion_matrix"]
    assert got["uncertainty"]["ece"] == pytest.approx(ref["uncertainty"]["ece"], abs=1e-5)


def test_the_cli_runs_a_file_in_the_backend_it_names(files, images, shapes_dir, tmp_path, run_cli):
    ckpt, onnx_file, xml = files
    code, out, err = run_cli("predict", onnx_file, *images, "--out", tmp_path / "p", "--backend", "openvino")
    assert code == 0, err
    ref = masks(predict(ckpt, images, tmp_path / "torch", progress=False))
    assert same(masks({"mask": tmp_path / "p" / f"{p.stem}_mask.png"} for p in images), ref)
    code, out, err = run_cli(
        "evaluate", xml, "--data", shapes_dir, "--out", tmp_path / "e.json", "--backend", "openvino"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["backend"] == "openvino"


def test_mc_dropout_on_an_exported_model_is_refused_in_one_line(files, images, shapes_dir, tmp_path, run_cli):
    ckpt, _, xml = files
    for command in (
        ("predict", xml, images[0], "--out", tmp_path / "p"),
        ("predict", ckpt, images[0], "--out", tmp_path / "p", "--backend", "onnxruntime"),
        ("evaluate", xml, "--data", shapes_dir, "--out", tmp_path / "e.json"),
    ):
        code, _, err = run_cli(*command, "--uncertainty", "mc-dropout", "--no-progress")
        assert code == 2 and err.count("\n") == 1, err
        assert (
            "MC dropout samples the dropout layers of a PyTorch model" in err and "--uncertainty tta" in err
        )
    assert not (tmp_path / "p").exists()


def test_a_backend_the_file_cannot_run_in_is_one_line_exit_2(files, images, shapes_dir, tmp_path, run_cli):
    ckpt, onnx_file, xml = files
    out = ("--out", tmp_path / "o")
    for argv, message in (
        (("predict", xml, images[0], *out, "--backend", "onnxruntime"), "m.xml is an OpenVINO IR: it runs"),
        (("predict", onnx_file, images[0], *out, "--backend", "torch"), "m.onnx is an exported ONNX model"),
        (("predict", ckpt, images[0], *out, "--backend", "tensorrt"), "argument --backend: invalid choice"),
        (("predict", onnx_file, images[0], *out, "--device", "cuda"), "on the CPU only here, not on 'cuda'"),
        (("predict", ckpt, images[0], *out, "--backend", "openvino", "--device", "cuda:0"), "CPU only here"),
        (("evaluate", xml, "--data", shapes_dir, "--backend", "torch"), "m.xml is an OpenVINO IR"),
        (("evaluate", onnx_file, "--data", shapes_dir, "--device", "cuda"), "on the CPU only here"),
        (("serve", xml, "--backend", "torch", "--port", "0"), "m.xml is an OpenVINO IR"),
    ):
        code, _, err = run_cli(*argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "o").exists()
