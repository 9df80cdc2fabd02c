"""OpenVINO export: an IR (.xml + .bin + sidecar) whose logits are PyTorch's, its int8 version by NNCF
(FakeQuantize, int8 weights; --per-tensor and --exclude-ends), both files renamed into place only when complete
(a refused export leaves neither), and the output guard of the three files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from seglab.checkpoint import load_checkpoint
from seglab.config import Config
from seglab.engine import export as export_module
from seglab.engine.export import Fidelity, export_checkpoint
from seglab.engine.train import train
from seglab.errors import ConfigError

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnxscript")

CONVS = ("Convolution", "ConvolutionBackpropData")


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    """A tiny U-Net trained one epoch on the shapes data (its run folder names the data set)."""
    out = tmp_path_factory.mktemp("ov") / "run"
    overrides = [
        f"data.root={shapes_dir}",
        f"train.out_dir={out}",
        "train.epochs=1",
        "model.params={depth: 2, base_channels: 4}",
        "train.progress=false",
    ]
    train(Config().override(overrides))
    return out


@pytest.fixture(scope="module")
def ir(tiny_ckpt, tmp_path_factory):
    """The fp32 IR of the tiny checkpoint (no data set: fidelity skipped)."""
    return export_checkpoint(tiny_ckpt, tmp_path_factory.mktemp("ir") / "m.xml", "openvino")


def conv_weights(xml):
    """Per convolution (in order): its weight's source op and, for a dequantised weight, (int8 constant, scale
    constant)."""
    model = ov.Core().read_model(str(xml))
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in CONVS:
            continue
        src = op.input_value(1).get_node()
        if src.get_type_name() == "Multiply":  # Constant(i8) -> Convert -> Multiply(scale)
            weight = src.input_value(0).get_node().input_value(0).get_node()
            scale = src.input_value(1).get_node()
            out.append((src, weight, scale))
        else:
            out.append((src, None, None))
    return model, out


def test_openvino_ir_is_pytorch_within_1e_4(ir, tiny_ckpt):
    folder = ir.path.parent
    assert sorted(p.name for p in folder.iterdir()) == ["m.bin", "m.xml", "m.xml.yaml"]
    assert ir.format == "openvino" and ir.dynamic and ir.max_abs_diff < 1e-4
    model, weights = conv_weights(ir.path)
    assert model.get_rt_info(["seglab", "geometry"]).astype(str).startswith("{")
    assert all(src.get_element_type() == ov.Type.f32 for src, _, _ in weights)  # no fp16 compression
    side = yaml.safe_load((folder / "m.xml.yaml").read_text())
    assert side["weights"] == "m.xml" and side["fidelity"].startswith("skipped (no labelled data set")

    exported, meta = load_checkpoint(ir.path)  # through its sidecar, as every command loads it
    ref, _ = load_checkpoint(tiny_ckpt)
    for shape in [(2, 3, 41, 29), (1, 3, 1, 37)]:  # a 1-pixel side: the geometry's replicate padding
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            torch.testing.assert_close(exported(x), ref(x), atol=1e-4, rtol=0)
    assert meta.class_names == ["bg", "fg"]


def test_openvino_int8_has_fake_quantize_and_runs(run, shapes_dir, tmp_path, run_cli):
    out = tmp_path / "q.xml"
    code, stdout, err = run_cli(
        "export", run, "--format", "openvino", "--out", out, "--int8", "--calibration", shapes_dir,
        "--calibration-images", 4,
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote openvino int8 model to {out}" in stdout
    assert f"fidelity on the test split of {shapes_dir} (4 images)" in stdout
    model, weights = conv_weights(out)
    types = {op.get_type_name() for op in model.get_ordered_ops()}
    assert "FakeQuantize" in types
    assert all(w is not None and w.get_element_type() == ov.Type.i8 for _, w, _ in weights)
    side = yaml.safe_load((tmp_path / "q.xml.yaml").read_text())
    assert side["int8"]["tool"] == "nncf" and side["int8"]["calibration_images"] == 4
    assert side["fidelity"]["images"] == 4 and side["fidelity"]["pixel_agreement"] > 0.9

    exported, _ = load_checkpoint(out)
    ref, _ = load_checkpoint(run)
    x = torch.randn(1, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = exported(x), ref(x)
    assert got.shape == want.shape and (got.argmax(1) == want.argmax(1)).float().mean() > 0.9


def test_nncf_per_tensor_and_float_ends(run, shapes_dir, tmp_path):
    result = export_checkpoint(
        run,
        tmp_path / "q.xml",
        "openvino",
        int8=True,
        calibration=shapes_dir,
        calibration_images=2,
        per_tensor=True,
        exclude_ends=True,
        fidelity=False,
        check=False,
    )
    _, weights = conv_weights(result.path)
    (first, w0, _), (last, w1, _) = weights[0], weights[-1]
    assert first.get_type_name() == last.get_type_name() == "Constant"  # float weights
    assert w0 is None and w1 is None
    inner = weights[1:-1]
    assert inner and all(w is not None and w.get_element_type() == ov.Type.i8 for _, w, _ in inner)
    assert all(np.prod(list(s.get_output_shape(0))) == 1 for _, _, s in inner)  # one scale per tensor
    assert len(result.quantization["float_layers"]) == 2


def test_a_refused_openvino_int8_export_leaves_neither_file(run, shapes_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        export_module,
        "measure_fidelity",
        lambda *a, **k: Fidelity(str(shapes_dir), "test", 4, 0.8, 0.5, 0.47),
    )
    with pytest.raises(
        ConfigError, match=r"loses 3\.00 mIoU points .* --max-miou-drop 2; nothing was written"
    ):
        export_checkpoint(
            run,
            tmp_path / "q.xml",
            "openvino",
            int8=True,
            calibration=shapes_dir,
            calibration_images=2,
            max_miou_drop=2,
            check=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_the_guard_of_the_three_openvino_files(ir, tiny_ckpt, tmp_path, run_cli):
    def export(*extra):
        return run_cli(
            "export", tiny_ckpt, "--format", "openvino", "--out", tmp_path / "m.xml", "--no-check", *extra
        )

    code, _, err = run_cli("export", tiny_ckpt, "--format", "openvino", "--out", tmp_path / "m.onnx")
    assert code == 2 and "a seglab OpenVINO IR is a .xml file" in err

    (tmp_path / "m.bin").write_bytes(b"\x00\x01 not an IR's weights")
    code, _, err = export()
    assert code == 2 and f"{tmp_path / 'm.bin'} already exists" in err and "--overwrite" in err
    assert err.count("\n") == 1
    (tmp_path / "m.bin").unlink()
    (tmp_path / "m.xml").write_text('<?xml version="1.0"?>\n<config><a>1</a></config>\n')
    code, _, err = export()
    assert code == 2 and f"{tmp_path / 'm.xml'} already exists" in err
    (tmp_path / "m.xml").unlink()
    for name in ("m.xml", "m.bin", "m.xml.yaml"):  # an earlier export is replaced without --overwrite
        shutil.copy(ir.path.parent / name, tmp_path / name)
    code, out, err = export()
    assert code == 0, err
    assert "fidelity: skipped (no labelled data set: pass --data DIR" in out  # the checkpoint has no run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "m.xml.yaml"]

    # the sidecar of a checkpoint is never replaced, with --overwrite neither
    other = tmp_path / "other"
    other.mkdir()
    (other / "m.xml.yaml").write_text(tiny_ckpt.with_suffix(".yaml").read_text())
    code, _, err = run_cli(
        "export", tiny_ckpt, "--format", "openvino", "--out", other / "m.xml", "--overwrite", "--no-check"
    )
    assert code == 2 and "never overwrites it" in err
    assert sorted(p.name for p in other.iterdir()) == ["m.xml.yaml"]
