"""Separable convolutions: the course's cost example, and the standard convs they factorise."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import (
    CONV_KINDS,
    ConvNormAct,
    DepthwiseSeparableConv2d,
    SpatiallySeparableConv2d,
    conv_cost,
    measure_conv_cost,
)


def _module(kind, cin, cout, k, stride=1, padding=0, dilation=1):
    linear = {"norm": "none", "act": "none"}
    if kind == "standard":
        return ConvNormAct(cin, cout, k, stride, padding, dilation, **linear)
    if kind == "depthwise_separable":
        return DepthwiseSeparableConv2d(cin, cout, k, stride, padding, dilation, dw_act="none", **linear)
    return SpatiallySeparableConv2d(cin, cout, k, stride, padding, dilation, **linear)


def test_worked_example_12x12x3_5x5_256():
    standard = conv_cost("standard", 3, 256, 5, 12)
    separable = conv_cost("depthwise_separable", 3, 256, 5, 12)
    assert standard.output_size == separable.output_size == (8, 8)
    assert standard.mults == 256 * (5 * 5 * 3) * (8 * 8) == 1_228_800
    assert separable.mults == 3 * (5 * 5) * (8 * 8) + 256 * 3 * (8 * 8) == 4_800 + 49_152 == 53_952
    assert (standard.params, separable.params) == (256 * 75, 3 * 25 + 256 * 3)


@pytest.mark.parametrize(
    "cin, cout, k, size, stride, padding, dilation",
    [
        (3, 256, 5, 12, 1, 0, 1),
        (4, 6, 3, (11, 13), 2, 1, 1),
        (5, 3, 3, (9, 10), 1, 2, 2),
        (2, 4, 5, 7, 3, 2, 1),
    ],
)
@pytest.mark.parametrize("kind", CONV_KINDS)
def test_cost_formulas_match_the_modules(kind, cin, cout, k, size, stride, padding, dilation):
    h, w = (size, size) if isinstance(size, int) else size
    module = _module(kind, cin, cout, k, stride, padding, dilation)
    measured = measure_conv_cost(module, torch.zeros(1, cin, h, w))
    assert conv_cost(kind, cin, cout, k, size, stride, padding, dilation) == measured
    standard = nn.Conv2d(cin, cout, k, stride, padding, dilation)
    assert measured.output_size == tuple(standard(torch.zeros(1, cin, h, w)).shape[-2:])


def test_spatially_separable_worked_example_and_unknown_kind():
    cost = conv_cost("spatially_separable", 3, 256, 5, 12)
    # 5x1 (3 -> 3 channels) on 12x12 gives 8x12, then 1x5 (3 -> 256) gives 8x8.
    assert cost.mults == 3 * 3 * 5 * (8 * 12) + 256 * 3 * 5 * (8 * 8)
    with pytest.raises(ConfigError, match="standard, depthwise_separable, spatially_separable"):
        conv_cost("grouped", 3, 256, 5, 12)


def test_depthwise_separable_equals_the_composed_standard_conv():
    torch.manual_seed(0)
    module = _module("depthwise_separable", 3, 5, 3, padding=1)
    dw, pw = module.depthwise[0], module.pointwise[0]
    assert dw.groups == 3 and dw.weight.shape == (3, 1, 3, 3) and pw.weight.shape == (5, 3, 1, 1)
    p = pw.weight[:, :, 0, 0]
    kernel = p[:, :, None, None] * dw.weight[:, 0][None]  # W[o, i] = P[o, i] D[i]
    bias = p @ dw.bias + pw.bias
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(module(x), F.conv2d(x, kernel, bias, padding=1))


def test_spatially_separable_sobel_is_a_rank_one_kernel():
    module = _module("spatially_separable", 1, 1, 3, padding=1)
    with torch.no_grad():
        module.vertical.weight.copy_(torch.tensor([1.0, 2.0, 1.0]).view(1, 1, 3, 1))
        module.horizontal[0].weight.copy_(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
        module.horizontal[0].bias.zero_()
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    x = torch.randn(1, 1, 6, 8)
    torch.testing.assert_close(module(x), F.conv2d(x, sobel.view(1, 1, 3, 3), padding=1))


def test_spatially_separable_equals_a_sum_of_rank_one_kernels():
    torch.manual_seed(1)
    module = _module("spatially_separable", 2, 3, 5, stride=2, padding=2)
    v, h = (
        module.vertical.weight[:, :, :, 0],
        module.horizontal[0].weight[:, :, 0, :],
    )  # (mid, in, k), (out, mid, k)
    kernel = torch.einsum("mik,omj->oikj", v, h)
    x = torch.randn(1, 2, 9, 11)
    ref = F.conv2d(x, kernel, module.horizontal[0].bias, stride=2, padding=2)
    torch.testing.assert_close(module(x), ref)


def test_default_padding_keeps_the_size_and_norms_apply():
    x = torch.randn(2, 4, 7, 10)
    for module in (DepthwiseSeparableConv2d(4, 8, 3, dilation=2), SpatiallySeparableConv2d(4, 8, 5)):
        y = module(x)
        assert y.shape == (2, 8, 7, 10)
        assert (y >= 0).all()  # ends in ReLU
        assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert DepthwiseSeparableConv2d(4, 8, stride=2)(x).shape == (2, 8, 4, 5)
