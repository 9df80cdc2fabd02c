"""Exported models as files a user moves around: one self-contained .onnx, tiny images through ONNX Runtime,
and one-line refusals of files that are not what their name says (never unpickling a torch.save file)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.checkpoint import load_checkpoint, write_sidecar
from seglab.engine.export import OnnxModel, export_checkpoint, load_exported
from seglab.engine.predict import predict
from seglab.errors import CheckpointError


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


@pytest.fixture(scope="module")
def onnx_export(ckpt, tmp_path_factory):
    """An ONNX export moved (with its sidecar) away from the folder it was written to."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    made = tmp_path_factory.mktemp("export")
    export_checkpoint(ckpt, made / "m.onnx")
    export_checkpoint(ckpt, made / "m.onnx")  # a second export over the first leaves nothing behind either
    listing = sorted(p.name for p in made.iterdir())
    moved = tmp_path_factory.mktemp("elsewhere")
    for name in ("m.onnx", "m.onnx.yaml"):
        shutil.move(made / name, moved / name)
    return listing, moved / "m.onnx"


def test_onnx_export_is_one_file_that_runs_anywhere(onnx_export, ckpt, tmp_path):
    import onnx

    listing, onnx_file = onnx_export
    assert listing == ["m.onnx", "m.onnx.yaml"]  # no hidden external-data or temporary files
    proto = onnx.load(str(onnx_file), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(2, 3, 41, 29, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    torch.testing.assert_close(OnnxModel(onnx_file)(x), ref, atol=1e-4, rtol=0)

    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(image)
    [onnx_rec] = predict(onnx_file, [image], tmp_path / "onnx", progress=False)
    [torch_rec] = predict(ckpt, [image], tmp_path / "torch", progress=False)
    assert (np.array(Image.open(onnx_rec["mask"])) == np.array(Image.open(torch_rec["mask"]))).mean() > 0.999


@pytest.mark.parametrize("h, w", [(1, 37), (23, 1), (1, 1), (2, 5)])
def test_onnx_takes_images_with_a_one_pixel_side(onnx_export, ckpt, tmp_path, h, w):
    """PyTorch's Segmentor pads by replication where reflection does not fit; the exported graph holds only the
    reflection, so OnnxModel pads such inputs itself: logits and masks match the checkpoint's."""
    _, onnx_file = onnx_export
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = model(x)
    got = OnnxModel(onnx_file)(x)
    assert got.shape == ref.shape == (1, 2, h, w)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)

    image = tmp_path / "thin.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image)
    [a] = predict(onnx_file, [image], tmp_path / "onnx", progress=False)
    [b] = predict(ckpt, [image], tmp_path / "torch", progress=False)
    np.testing.assert_array_equal(np.array(Image.open(a["mask"])), np.array(Image.open(b["mask"])))


def test_text_file_named_onnx_with_a_valid_sidecar_is_one_line(ckpt, tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    fake = tmp_path / "m.onnx"
    fake.write_text("this is not a model\n")
    _, meta = load_checkpoint(ckpt)
    write_sidecar(fake, meta)  # its SHA-256 matches: only the content is wrong
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    code, _, err = run_cli("predict", fake, image, "--out", tmp_path / "out", "--no-progress")
    assert (
        code == 2 and err.startswith(f"seglab: error: {fake} is not an ONNX model: ") and err.count("\n") == 1
    )
    assert not (tmp_path / "out").exists()


class Payload:
    """Any class: torch.save pickles a reference to it, which weights_only loading refuses."""


def test_pickled_files_are_refused_in_one_line_without_unpickling(tmp_path, run_cli):
    code_file, weights_file = tmp_path / "code.pt", tmp_path / "weights.pt"
    torch.save({"payload": Payload(), "w": torch.zeros(2)}, code_file)
    torch.save({"w": torch.zeros(2)}, weights_file)
    for f in (code_file, weights_file):
        with pytest.raises(CheckpointError) as info:
            load_exported(f)
        message = str(info.value)
        assert message == (
            f"{f} holds pickled Python objects (torch.save), not a TorchScript model; seglab loads only "
            "TorchScript, safetensors or ONNX files and never runs code from a file"
        )
        assert "weights_only" not in message
    code, _, err = run_cli("benchmark", code_file, "--size", 16, "--out", tmp_path / "b", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "holds pickled Python objects" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a TorchScript model: [^\n]*$"):
        load_exported(junk)


def test_the_sidecar_records_the_smallest_side_plain_onnxruntime_takes(onnx_export):
    """Issue 26: the graph pads by reflection and plain ONNX Runtime refuses a pad as large as the side (PyTorch,
    and seglab's OnnxModel, replicate-pad then): the sidecar says from which side on plain ONNX Runtime runs it."""
    import yaml

    ort = pytest.importorskip("onnxruntime")
    _, onnx_file = onnx_export
    side = yaml.safe_load(onnx_file.with_name("m.onnx.yaml").read_text())["onnx_min_size"]
    assert side == 2  # a 2-level U-Net: stride 2
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for h, w in ((side, side), (side, 7), (5, side + 1)):  # runs from there on ...
        session.run(None, {"input": np.zeros((1, 3, h, w), np.float32)})
    for h, w in ((1, 1), (side - 1, 9)):  # ... and not below (OnnxModel pads those first)
        with pytest.raises(Exception, match="(?i)pad"):
            session.run(None, {"input": np.zeros((1, 3, h, w), np.float32)})
