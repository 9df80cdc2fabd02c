"""int8 ONNX export (ONNX Runtime static quantisation) and the fidelity every export reports: per-channel QDQ
weights, --per-tensor, --exclude-ends, calibration through predict's own input path, fidelity numbers that equal
an independent computation, and the refusal of an int8 model that loses too much (no file left)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.checkpoint import load_checkpoint, read_meta
from seglab.config import Config
from seglab.engine import export as export_module
from seglab.engine.evaluate import evaluate, split_dataset
from seglab.engine.export import Fidelity, export_checkpoint
from seglab.engine.predict import predict
from seglab.engine.quantize import CalibrationImages
from seglab.engine.train import train
from seglab.errors import ConfigError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    """A tiny U-Net trained on the shapes data (about 4 s: enough to segment, so int8 changes a few pixels); its
    run folder names the data set."""
    out = tmp_path_factory.mktemp("int8") / "run"
    train(
        Config().override(
            [
                f"data.root={shapes_dir}",
                f"train.out_dir={out}",
                "train.epochs=15",
                "train.lr=0.01",
                "train.batch_size=8",
                "model.params={depth: 2, base_channels: 4}",
                "train.progress=false",
            ]
        )
    )
    return out


@pytest.fixture(scope="module")
def int8(run, shapes_dir, tmp_path_factory):
    """The default int8 ONNX export of the run (fidelity on the run's own test split)."""
    path = tmp_path_factory.mktemp("q") / "m.onnx"
    return export_checkpoint(run, path, int8=True, calibration=shapes_dir, calibration_images=8)


@pytest.fixture(scope="module")
def int8_ends(run, shapes_dir, tmp_path_factory):
    """An int8 ONNX export with --per-tensor and --exclude-ends, no fidelity."""
    path = tmp_path_factory.mktemp("q") / "m.onnx"
    return export_checkpoint(
        run,
        path,
        int8=True,
        calibration=shapes_dir,
        calibration_images=4,
        per_tensor=True,
        exclude_ends=True,
        fidelity=False,
        check=False,
    )


def weight_dequantizers(proto):
    """{Conv node name: (DequantizeLinear node of its weight or None, int8 weight, scale)} in graph order."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            out[node.name] = (None, inits.get(node.input[1]), None)
        else:
            out[node.name] = (dq, inits[dq.input[0]], inits[dq.input[1]])
    return out


def test_int8_onnx_has_per_channel_qdq_weights_and_runs(int8, run, tmp_path):
    proto = onnx.load(str(int8.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    convs = weight_dequantizers(proto)
    assert len(convs) >= 4
    for name, (dq, weight, scale) in convs.items():
        assert dq is not None, f"{name}'s weight is not quantised"
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert weight.dtype == np.int8 and axis == 0
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
    zero_points = [
        numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_zero_point")
    ]
    assert any(z.dtype == np.uint8 for z in zero_points)  # uint8 activations
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "seglab.geometry" in meta  # the geometry survives the quantisation
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)

    side = yaml.safe_load((int8.path.parent / "m.onnx.yaml").read_text())
    assert side["int8"]["format"] == "QDQ" and side["int8"]["activations"] == "uint8 asymmetric"
    assert side["int8"]["calibration_images"] == 8
    assert sorted(p.name for p in int8.path.parent.iterdir()) == ["m.onnx", "m.onnx.yaml"]

    model, meta = load_checkpoint(int8.path)
    ref, _ = load_checkpoint(run)
    x = torch.randn(2, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = model(x), ref(x)
    assert got.shape == want.shape
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.9  # int8: close, not equal
    assert 0 < int8.max_abs_diff < 1


def test_per_tensor_scales_and_float_ends(int8_ends):
    proto = onnx.load(str(int8_ends.path))
    convs = list(weight_dequantizers(proto).values())
    (first, w_first, _), (last, w_last, _) = convs[0], convs[-1]
    assert first is None and last is None  # --exclude-ends: float weights, no DequantizeLinear
    assert w_first.dtype == np.float32 and w_last.dtype == np.float32
    inner = convs[1:-1]
    assert inner and all(dq is not None for dq, _, _ in inner)
    assert all(scale.size == 1 for _, _, scale in inner)  # --per-tensor: one scale per weight tensor
    side = yaml.safe_load((int8_ends.path.parent / "m.onnx.yaml").read_text())
    assert side["int8"]["weights"] == "int8 symmetric per-tensor"
    assert len(side["int8"]["float_layers"]) == 2
    assert side["fidelity"] == "skipped (not asked for; the int8 accuracy cost is unmeasured)"


def test_calibration_images_are_what_predict_feeds_the_model(run, shapes_dir):
    """The calibration reader and predict's per-image path give the model the same tensors, for a checkpoint
    that resizes (data.resize) too."""
    from seglab.data.io import read_image
    from seglab.inference.image import image_probs

    meta = dataclasses.replace(read_meta(run), resize={"short": 45})
    images = CalibrationImages(meta, shapes_dir, 3)
    assert len(images) == 3
    fed = []

    def spy(x):
        fed.append(x.clone())
        return torch.zeros(x.shape[0], meta.num_classes, *x.shape[-2:])

    for i in images.indices:
        path = images.dataset.scan.images[images.dataset.stems[i]]
        image_probs(spy, meta, read_image(path, 3), torch.device("cpu"))
    got = list(images)
    assert [tuple(t.shape) for t in got] == [(1, 3, 45, 45)] * 3
    for a, b in zip(got, fed, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert len(list(images)) == 3  # read anew on every pass (NNCF may iterate twice)
    assert len(CalibrationImages(meta, shapes_dir, 1000)) == len(images.dataset)  # capped at the split


def test_fidelity_equals_an_independent_computation(int8, run, shapes_dir, tmp_path):
    """The fidelity's mIoUs are seglab.evaluate's on the same split; its agreement is the NumPy agreement of
    the masks `seglab predict` writes with each model."""
    f = int8.fidelity
    assert f is not None and f.split == "test" and f.data == str(shapes_dir)
    assert 0.9 < f.pixel_agreement <= 1 and f.miou_pytorch > 0.15  # a model that segments
    ours = evaluate(int8.path, shapes_dir, "test", out=tmp_path / "q.json", progress=False)
    theirs = evaluate(run, shapes_dir, "test", out=tmp_path / "t.json", progress=False)
    assert f.miou_exported == pytest.approx(ours["miou"], abs=1e-9)
    assert f.miou_pytorch == pytest.approx(theirs["miou"], abs=1e-9)
    assert f.images == ours["num_images"] == 4

    test = split_dataset(read_meta(run), shapes_dir, "test")
    paths = [test.scan.images[s] for s in test.stems]
    a = predict(int8.path, paths, tmp_path / "a", progress=False)
    b = predict(run, paths, tmp_path / "b", progress=False)
    masks = [(np.array(Image.open(x["mask"])), np.array(Image.open(y["mask"]))) for x, y in zip(a, b)]
    agreement = sum((x == y).sum() for x, y in masks) / sum(x.size for x, _ in masks)
    assert f.pixel_agreement == pytest.approx(agreement, abs=1e-12)

    side = yaml.safe_load((int8.path.parent / "m.onnx.yaml").read_text())
    assert side["fidelity"]["pixel_agreement"] == pytest.approx(f.pixel_agreement)
    assert side["fidelity"]["miou_drop_points"] == pytest.approx(f.miou_drop, abs=1e-4)


def test_a_lossy_int8_export_is_refused_in_one_line_and_leaves_nothing(
    run, shapes_dir, tmp_path, monkeypatch, run_cli
):
    def lossy(reference, exported, data, split="test", data_format="auto", limit=None):
        return Fidelity(str(data), split, 4, 0.9, 0.60, 0.55)  # 5 points lost

    monkeypatch.setattr(export_module, "measure_fidelity", lossy)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "export", run, "--out", out / "m.onnx", "--int8", "--calibration", shapes_dir,
        "--calibration-images", 2, "--no-check",
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "loses 5.00 mIoU points" in err and "--max-miou-drop 1" in err
    assert "--calibration-images" in err and "--exclude-ends" in err and "--per-tensor" in err
    assert list(out.iterdir()) == []  # not the model, not its sidecar, no staging folder

    # a threshold above the drop lets it through; an fp32 export is never refused
    code, stdout, _ = run_cli(
        "export", run, "--out", out / "m.onnx", "--int8", "--calibration", shapes_dir,
        "--calibration-images", 2, "--no-check", "--max-miou-drop", 6,
    )  # fmt: skip
    assert code == 0 and "drop 5.00 points" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx", "m.onnx.yaml"]
    result = export_checkpoint(run, out / "f.onnx", check=False)
    assert result.fidelity.miou_drop == pytest.approx(5.0) and not result.int8


def test_fidelity_on_a_given_data_set_split_and_image_cap(tiny_ckpt, shapes_dir, tmp_path, run_cli):
    """--data, --split and --fidelity-images (the tiny checkpoint has 2 classes; the shapes masks hold 0..3,
    so it is scored on a data set of its own: the shapes masks folded to 2 classes)."""
    import shutil

    data = tmp_path / "two"
    shutil.copytree(shapes_dir, data)
    (data / "classes.yaml").write_text("names: [bg, fg]\n")
    for mask in (data / "masks").iterdir():
        Image.fromarray((np.array(Image.open(mask)) > 0).astype(np.uint8)).save(mask)
    code, out, err = run_cli(
        "export", tiny_ckpt, "--out", tmp_path / "m.onnx", "--no-check", "--data", data, "--split", "val",
        "--fidelity-images", 3,
    )  # fmt: skip
    assert code == 0, err
    assert f"fidelity on the val split of {data} (3 images): pixel agreement 100.00%" in out
    side = yaml.safe_load((tmp_path / "m.onnx.yaml").read_text())
    assert side["fidelity"]["images"] == 3 and side["fidelity"]["split"] == "val"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--int8"], "--int8 needs --calibration DATA"),
        (["--per-tensor"], "--per-tensor only apply to an int8 export"),
        (["--calibration", "d", "--exclude-ends"], "--calibration, --exclude-ends only apply"),
        (["--int8", "--calibration", "d", "--format", "torchscript"], "TorchScript has no int8 export"),
        (["--int8", "--calibration", "d", "--static"], "a --static graph does not take"),
        (["--max-miou-drop", "-1"], "--max-miou-drop: must be a number >= 0"),
        (["--max-miou-drop", "nan"], "--max-miou-drop: must be a number >= 0"),
        (["--fidelity-images", "0"], "--fidelity-images: must be an integer >= 1"),
        (["--calibration-images", "0"], "--calibration-images: must be an integer >= 1"),
        (["--int8", "--calibration", "no-such-data"], "--calibration no-such-data is not a folder"),
        (["--data", "no-such-data"], "no-such-data"),
    ],
)
def test_bad_int8_and_fidelity_options_are_one_line(tiny_ckpt, tmp_path, run_cli, args, message):
    out = tmp_path / ("m.pt" if "torchscript" in args else "m.onnx")
    code, _, err = run_cli("export", tiny_ckpt, "--out", out, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_python_api_refuses_a_negative_threshold(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="--max-miou-drop must be a finite number >= 0"):
        export_checkpoint(tiny_ckpt, tmp_path / "m.onnx", max_miou_drop=-0.5)
