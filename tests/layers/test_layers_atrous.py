"""Atrous convolution: the dense kernel's weights, receptive field (k - 1) d + 1 measured by backprop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import (
    AtrousConv2d,
    ConvNormAct,
    dilate_kernel,
    effective_receptive_field,
    receptive_field,
    stack_receptive_field,
)


def _extent(mask):
    rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_receptive_field_measured_by_backprop(dilation):
    conv = AtrousConv2d(2, 3, 3, dilation, norm="none", act="none")
    mask = effective_receptive_field(conv, (1, 2, 17, 17))
    field = receptive_field(3, dilation)
    assert field == 2 * dilation + 1
    assert _extent(mask) == (field, field)
    assert mask.sum() == 9  # k^2 taps with holes between them
    expected = torch.zeros(17, 17, dtype=torch.bool)
    expected[8 - dilation : 9 + dilation : dilation, 8 - dilation : 9 + dilation : dilation] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_same_parameter_count_as_the_dense_kernel_and_same_size(dilation):
    atrous = AtrousConv2d(4, 6, 3, dilation)
    dense = ConvNormAct(4, 6, 3)
    assert sum(p.numel() for p in atrous.parameters()) == sum(p.numel() for p in dense.parameters())
    assert atrous(torch.randn(2, 4, 7, 10)).shape == (2, 6, 7, 10)


def test_atrous_conv_equals_dense_conv_with_zero_inserted_kernel():
    w = torch.randn(3, 2, 3, 3)
    dense = dilate_kernel(w, 3)
    assert dense.shape == (3, 2, 7, 7)
    assert torch.count_nonzero(dense) == torch.count_nonzero(w)
    x = torch.randn(1, 2, 12, 11)
    torch.testing.assert_close(F.conv2d(x, dense, padding=3), F.conv2d(x, w, padding=3, dilation=3))


def test_stacked_receptive_field():
    layers = [(3, 1, 1), (3, 1, 2), (3, 1, 4)]  # dilations 1, 2, 4: 3 -> 7 -> 15
    assert stack_receptive_field(layers) == 15
    convs = nn.Sequential(*[nn.Conv2d(1, 1, k, s, dilation=d) for k, s, d in layers])
    assert _extent(effective_receptive_field(convs, (1, 1, 21, 21))) == (15, 15)
    strided = [(3, 2, 1), (3, 1, 2)]  # the dilated layer's taps are 2 input pixels apart: 1 + 2 + 2*2*2 = 11
    assert stack_receptive_field(strided) == 11
    convs = nn.Sequential(*[nn.Conv2d(1, 1, k, s, dilation=d) for k, s, d in strided])
    assert _extent(effective_receptive_field(convs, (1, 1, 21, 21), position=(2, 2))) == (11, 11)
