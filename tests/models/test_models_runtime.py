"""Exported models in their runtimes (seglab.models.runtime): ONNX Runtime and OpenVINO give PyTorch's logits,
pad a 1-pixel side as PyTorch does, and a file or a name the runtime cannot take is refused in one line."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")

from exported import export_both  # noqa: E402 - tests/exported.py

from seglab.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from seglab.errors import ConfigError  # noqa: E402
from seglab.models.runtime import (  # noqa: E402
    BACKENDS,
    ExportedModel,
    OnnxModel,
    OpenVinoModel,
    check_backend,
    load_runtime,
)


@pytest.fixture(scope="module")
def files(tiny_ckpt, tmp_path_factory):
    """(checkpoint, its torch model, the ONNX export, the IR) of the tiny 2-class U-Net (reflect padding)."""
    onnx_file, xml = export_both(tiny_ckpt, tmp_path_factory.mktemp("runtime"))
    model, _ = load_checkpoint(tiny_ckpt)
    return tiny_ckpt, model, onnx_file, xml


def runtimes(onnx_file, xml):
    return {
        "onnxruntime .onnx": OnnxModel(onnx_file),
        "openvino .onnx": OpenVinoModel(onnx_file),
        "openvino .xml": OpenVinoModel(xml),
    }


@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (1, 3, 23, 61), (2, 3, 64, 33)])
def test_every_runtime_gives_torchs_logits_on_odd_sizes(files, shape):
    _, model, onnx_file, xml = files
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        ref = model(x)
    for name, runtime in runtimes(onnx_file, xml).items():
        got = runtime(x)
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("h, w", [(1, 37), (23, 1), (1, 1)])
def test_openvino_pads_a_one_pixel_side_as_torch_does(files, h, w):
    """The graph holds only the reflect padding, which needs a side above the pad; ExportedModel replicate-pads
    such inputs first, from the geometry the IR keeps in its runtime info (the ONNX file in its metadata)."""
    _, model, onnx_file, xml = files
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    with torch.inference_mode():
        ref = model(x)
    ir = OpenVinoModel(xml)
    assert ir.geometry is not None and ir.geometry["pad_mode"] == "reflect" and not ir.static
    for runtime in (ir, OpenVinoModel(onnx_file)):
        torch.testing.assert_close(runtime(x), ref, atol=1e-4, rtol=0)


def test_openvino_serves_several_threads_at_once(files):
    """seglab serve --concurrency N calls one model from N worker threads: each gets its own infer request, so
    no call reads another's output."""
    _, model, _, xml = files
    ir = OpenVinoModel(xml)
    inputs = [torch.randn(1, 3, 32 + 2 * k, 40, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    with torch.inference_mode():
        refs = [model(x) for x in inputs]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(10):
            try:
                if (ir(inputs[k]) - refs[k]).abs().max() > 1e-4:
                    errors.append(f"thread {k}: another input's logits")
            except Exception as e:  # noqa: BLE001 - e.g. a busy infer request; the test names it
                errors.append(f"thread {k}: {e}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_checkpoint_runs_in_a_runtime_with_torchs_logits(files, backend):
    ckpt, model, _, _ = files
    runtime, meta = load_checkpoint(ckpt, backend=backend)
    assert isinstance(runtime, ExportedModel) and runtime.backend == backend and meta.num_classes == 2
    x = torch.randn(2, 3, 45, 29, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model(x)
    torch.testing.assert_close(runtime(x), ref, atol=1e-4, rtol=0)


def test_each_file_runs_in_its_own_runtime_by_default(files):
    ckpt, _, onnx_file, xml = files
    assert type(load_checkpoint(ckpt)[0]).__name__ == "Segmentor"
    assert isinstance(load_checkpoint(onnx_file)[0], OnnxModel)
    assert isinstance(load_checkpoint(xml)[0], OpenVinoModel)
    assert isinstance(load_checkpoint(onnx_file, backend="openvino")[0], OpenVinoModel)
    assert check_backend(ckpt, None) == "torch" and check_backend(xml, "openvino") == "openvino"


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_backend_the_file_cannot_run_in_is_refused_in_one_line(files):
    ckpt, _, onnx_file, xml = files
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(ConfigError) as info:
            check_backend(xml, backend)
        assert one_line(info) == "m.xml is an OpenVINO IR: it runs only with --backend openvino"
        with pytest.raises(ConfigError, match="OpenVINO IR"):
            load_checkpoint(xml, backend=backend)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(onnx_file, backend="torch")
    assert one_line(info).startswith(
        "m.onnx is an exported ONNX model: run it with --backend onnxruntime or "
    )
    with pytest.raises(ConfigError) as info:
        check_backend(ckpt, "tensorrt")
    assert one_line(info) == "unknown backend 'tensorrt'; choose one of: torch, onnxruntime, openvino"
    with pytest.raises(ConfigError, match="not an exported model"):
        load_runtime(ckpt, "openvino")


def test_an_exported_runtime_on_a_gpu_is_refused_in_one_line(files):
    ckpt, _, onnx_file, xml = files
    for path, backend in ((onnx_file, None), (xml, None), (ckpt, "openvino")):
        with pytest.raises(ConfigError) as info:
            load_checkpoint(path, device="cuda", backend=backend)
        assert "on the CPU only here, not on 'cuda'; use --device cpu" in one_line(info)


def test_a_segnet_cannot_run_in_a_runtime_at_any_size(tmp_path):
    """Its max unpooling keeps the example's sizes in the ONNX graph: refused before any export (not a graph that
    fails on the first image of another size)."""
    from seglab.models.factory import create_model

    torch.manual_seed(0)
    params = {"depth": 2, "base_channels": 4}
    model = create_model("segnet", num_classes=2, in_channels=3, **params)
    meta = CheckpointMeta(arch="segnet", num_classes=2, in_channels=3, model_params=params)
    ckpt = save_checkpoint(tmp_path / "best", model, meta)
    with pytest.raises(ConfigError) as info:
        load_checkpoint(ckpt, backend="openvino")
    assert one_line(info).startswith("Segmentor cannot run in openvino on any image size: its max unpooling")
    assert "seglab export --static" in str(info.value)


def test_the_cli_offers_the_runtimes_backends():
    from seglab import cli

    assert cli.BACKENDS == BACKENDS


def test_static_same_padding_gives_the_same_logits_with_constant_pads():
    """timm's tf_ encoders pad "same" from the input size at every layer, which made the dynamic ONNX export of the
    LabelMeFacade pretrained recipe (EfficientNet-Lite0) run for more than 15 minutes; the Segmentor's input is a
    multiple of the output stride, so the constant padding written for the export gives the same logits."""
    from seglab.models.factory import create_model
    from seglab.models.runtime import static_same_padding

    model = create_model(
        "unet", num_classes=3, encoder="tf_efficientnet_lite0", decoder_channels=[16, 8, 8, 8]
    )
    model.eval()
    assert any(type(m).__name__ == "Conv2dSame" for m in model.modules())
    fixed = static_same_padding(model)
    assert not any(type(m).__name__ == "Conv2dSame" for m in fixed.modules())
    assert any(type(m).__name__ == "Conv2dSame" for m in model.modules())  # a copy: the model is untouched
    with torch.inference_mode():
        for h, w in ((37, 45), (64, 64), (1, 70)):
            x = torch.randn(2, 3, h, w)
            torch.testing.assert_close(fixed(x), model(x), atol=1e-5, rtol=0)
    plain = torch.nn.Conv2d(3, 3, 3)
    assert static_same_padding(plain) is plain  # no input geometry: nothing to rely on
