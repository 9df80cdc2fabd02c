"""Every layer traces with torch.jit.trace; the ones model export will need run in ONNX Runtime."""

import warnings

import pytest
import torch
from torch import nn

from seglab.layers import (
    ASPP,
    UPSAMPLERS,
    AtrousConv2d,
    DepthwiseSeparableConv2d,
    MaxPoolDown,
    SpatiallySeparableConv2d,
    make_downsample,
    make_upsample,
)


class SegNetPair(nn.Module):
    """Max pooling and the max unpooling that undoes it, as in a SegNet encoder/decoder pair."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = MaxPoolDown(channels, return_indices=True)
        self.unpool = make_upsample("max_unpool", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, indices = self.pool(x)
        return self.unpool(y, indices, output_size=x.shape[-2:])


class UpTo(nn.Module):
    """An upsampler called with ``output_size``, as a decoder matching an odd skip connection does."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.up = make_upsample(mode, 3, 3 if not UPSAMPLERS[mode].trainable else 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=(2 * x.shape[-2] + 1, 2 * x.shape[-1] - 1))


def _trace_cases():
    cases = {f"up_{mode}": make_upsample(mode, 3, 3) for mode in UPSAMPLERS if mode != "max_unpool"}
    cases |= {
        f"down_{mode}": make_downsample(mode, 3, 3) for mode in ("max_pool", "avg_pool", "strided_conv")
    }
    cases["segnet_pair"] = SegNetPair(3)
    cases["depthwise_separable"] = DepthwiseSeparableConv2d(3, 4)
    cases["spatially_separable"] = SpatiallySeparableConv2d(3, 4)
    cases["atrous"] = AtrousConv2d(3, 4, dilation=3)
    cases["aspp"] = ASPP(3, 4, rates=(1, 2))
    return cases


@pytest.mark.parametrize("name", list(_trace_cases()))
def test_jit_trace(name):
    torch.manual_seed(0)
    module = _trace_cases()[name].eval()
    x, other = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(module, (x,))
    torch.testing.assert_close(traced(other), module(other))


ONNX_CASES = {
    "transposed_odd_size": lambda: UpTo("transposed"),
    "resize_conv_bilinear": lambda: UpTo("resize_conv"),
    "bed_of_nails": lambda: UpTo("bed_of_nails"),
    "segnet_pair": lambda: SegNetPair(3),
    "aspp_separable": lambda: ASPP(3, 4, rates=(1, 2), separable=True),
}


@pytest.mark.parametrize("name", list(ONNX_CASES))
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxscript")  # the torch.export-based exporter, PyTorch's default
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = ONNX_CASES[name]().eval()
    x = torch.randn(1, 3, 5, 7)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-5)
