"""The cost model against hand counts: conv, transposed conv, dilated conv, depthwise-separable conv, the
course's plain_fcn stack; and against PyTorch's FlopCounterMode on whole networks."""

import pytest
import torch
from torch import nn

from seglab.bench.cost import count_cost, course_comparison, flop_counter_macs, format_comparison, format_cost
from seglab.layers.separable import DepthwiseSeparableConv2d, conv_cost
from seglab.models.factory import create_model


@pytest.mark.parametrize("meta", [True, False])
def test_conv_hand_count(meta):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    c = count_cost(conv, (10, 12), meta=meta)
    assert c.macs == 8 * 10 * 12 * (3 * 3 * 3) == conv_cost("standard", 3, 8, 3, (10, 12), padding=1).mults
    assert c.params == 8 * 3 * 9 + 8
    assert c.activation_bytes == 8 * 10 * 12 * 4
    assert c.layers[0].out_shape == (8, 10, 12) and c.layers[0].filter == "3x3/1"


def test_strided_conv_hand_count():
    c = count_cost(nn.Conv2d(4, 6, 5, stride=2, bias=False), 12)  # (12 - 5) // 2 + 1 = 4
    assert c.layers[0].out_shape == (6, 4, 4)
    assert c.macs == 6 * 4 * 4 * (4 * 5 * 5) and c.params == 6 * 4 * 25


def test_transposed_conv_hand_count():
    # Every input pixel scatters a (C_out x 3 x 3) patch: C_in H W C_out k^2, not C_out H' W' C_in k^2.
    up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
    c = count_cost(up, (5, 7))
    assert c.layers[0].out_shape == (6, 10, 14) and c.layers[0].filter == "T 3x3/2"
    assert c.macs == 4 * 5 * 7 * 6 * 9 == 7560
    assert c.params == 4 * 6 * 9 + 6
    assert flop_counter_macs(up, torch.zeros(1, 4, 5, 7)) == c.macs


def test_dilated_conv_hand_count():
    conv = nn.Conv2d(4, 5, 3, padding=2, dilation=2, bias=False)
    c = count_cost(conv, 9)
    assert c.layers[0].out_shape == (5, 9, 9) and c.layers[0].filter == "3x3/1 d2"
    # Dilation spreads the taps; it does not add any: still 3 x 3 x 4 MACs per output value.
    assert c.macs == 5 * 81 * 36 == conv_cost("standard", 4, 5, 3, 9, padding=2, dilation=2).mults
    big = count_cost(nn.Conv2d(4, 5, 3, dilation=3, bias=False), 9)  # no padding: 9 - 6 = 3
    assert big.layers[0].out_shape == (5, 3, 3) and big.macs == 5 * 9 * 36


def test_depthwise_separable_hand_count():
    block = DepthwiseSeparableConv2d(8, 16, 3, norm="none", act="none", dw_act="none")
    c = count_cost(block, (11, 13))
    hand = conv_cost("depthwise_separable", 8, 16, 3, (11, 13), padding=1)
    assert c.macs == hand.mults == 8 * 9 * 143 + 16 * 8 * 143
    assert c.params == hand.params + 8 + 16  # plus the two biases (no norm follows)
    assert [r.filter for r in c.layers if r.compute] == ["3x3/1 g8", "1x1/1"]


def test_plain_fcn_stack_at_512():
    plain, unet = course_comparison(512, num_classes=10)
    widths = [3, 16, 32, 64, 128, 64, 32, 10]
    pairs = list(zip(widths, widths[1:]))
    hw = 512 * 512
    assert plain.macs == sum(9 * a * b for a, b in pairs) * hw == 50_394_562_560
    # Conv weights (no bias before batch norm), 2 batch-norm parameters per channel, the head's bias.
    assert plain.params == sum(9 * a * b for a, b in pairs) + 2 * sum(widths[1:-1]) + 10
    convs = [r for r in plain.layers if r.compute]
    assert [r.out_shape for r in convs] == [(c, 512, 512) for c in widths[1:]]
    # Conv and batch-norm outputs per hidden layer (ReLU is in place), then the logits: 4 bytes each.
    assert plain.activation_bytes == (2 * sum(widths[1:-1]) + 10) * hw * 4
    assert unet.macs < plain.macs / 4 and unet.activation_bytes < plain.activation_bytes / 2
    text = format_comparison(plain, unet)
    assert "50.39 GMACs" in text and "| 128x512x512 | 3x3/1 | 73,984 | 19.33 G | 256.0 MiB |" in text


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("unet", {"depth": 3, "base_channels": 4}),  # transposed convs
        ("deeplabv3plus", {"encoder": "mobilenet", "base_channels": 8}),  # dilated, depthwise, ASPP
        ("fcn", {"encoder": "vgg", "depth": 5, "base_channels": 4}),  # FCN-8s: transposed fusions
    ],
)
def test_models_match_flop_counter(arch, kwargs):
    model = create_model(arch, num_classes=3, **kwargs)
    c = count_cost(model, (37, 45))
    assert c.macs == flop_counter_macs(model, torch.zeros(2, 3, 37, 45)) > 0
    assert c.params == sum(p.numel() for p in model.parameters())
    table = format_cost(c)
    assert table.count("\n|") == 3 + sum(r.compute for r in c.layers)  # header, rule, rows, total
