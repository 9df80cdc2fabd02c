"""Analytic gradients of the trainable layers, w.r.t. input and every parameter, on small float64 inputs."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from seglab.layers import (
    ASPP,
    AtrousConv2d,
    DepthwiseSeparableConv2d,
    ResizeConvUp,
    SpatiallySeparableConv2d,
    StridedConvDown,
    TransposedConvUp,
)

# Smooth activations: ReLU's kink would make finite differences unreliable, not the layer wrong.
CASES = {
    "strided_conv": lambda: StridedConvDown(2, 3, norm="bn", act="silu"),
    "transposed": lambda: TransposedConvUp(2, 3),
    "transposed_k4": lambda: TransposedConvUp(2, 2, kernel_size=4),
    "resize_conv_nearest": lambda: ResizeConvUp(2, 3),
    "resize_conv_bilinear": lambda: ResizeConvUp(2, 3, interp="bilinear"),
    "depthwise_separable": lambda: DepthwiseSeparableConv2d(2, 3, act="silu", dw_act="gelu"),
    "spatially_separable": lambda: SpatiallySeparableConv2d(2, 3, act="silu"),
    "atrous": lambda: AtrousConv2d(2, 3, dilation=2, act="gelu"),
    "aspp": lambda: ASPP(2, 2, rates=(1, 2), act="silu", dropout=0.0),
}


@pytest.fixture(autouse=True)
def one_thread():
    """gradcheck runs hundreds of tiny convs; with the cores busy, thread hand-offs cost ~100x the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    torch.manual_seed(0)
    module = CASES[name]().double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)

    def run(x, *params):
        return functional_call(module, dict(zip(names, params)), (x,))

    assert gradcheck(run, (x, *params), eps=1e-6, atol=1e-5)
