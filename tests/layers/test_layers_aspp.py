"""ASPP against torchvision's DeepLabv3 ASPP, at batch size 1 in training, and on odd sizes."""

import pytest
import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from seglab.errors import ConfigError
from seglab.layers import ASPP, DepthwiseSeparableConv2d


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_same_layout_and_outputs_as_torchvision():
    torch.manual_seed(0)
    ref = TorchvisionASPP(8, [6, 12, 18], 16).eval()
    ours = ASPP(8, 16, pool_norm="bn").eval()
    ours.load_state_dict(ref.state_dict())  # strict: every key and shape matches
    assert _count(ours) == _count(ref)
    with torch.no_grad():
        for m in ref.modules():  # non-trivial running statistics, so eval-mode BN is checked too
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 8, 9, 11)
        torch.testing.assert_close(ours(x), ref(x))


def test_default_pooling_branch_has_a_bias_instead_of_batch_norm():
    ref, ours = TorchvisionASPP(8, [6, 12, 18], 16), ASPP(8, 16)
    # batch norm's weight and bias (2 x 16) are replaced by the conv's bias (16)
    assert _count(ours) == _count(ref) - 16
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.convs[-1].modules())


def test_trains_with_batch_size_1():
    aspp = ASPP(8, 16).train()
    y = aspp(torch.randn(1, 8, 5, 7))
    assert y.shape == (1, 16, 5, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in aspp.parameters())
    # What the default avoids: batch norm on the 1x1 pooled map raises at batch size 1.
    for bn_pooling in (TorchvisionASPP(8, [6, 12, 18], 16).train(), ASPP(8, 16, pool_norm="bn").train()):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            bn_pooling(torch.randn(1, 8, 5, 7))


@pytest.mark.parametrize("size", [(7, 11), (13, 5), (1, 9)])
def test_any_input_size(size):
    aspp = ASPP(4, 8).eval()
    assert aspp(torch.randn(2, 4, *size)).shape == (2, 8, *size)


def test_image_pooling_branch_is_constant_over_space():
    aspp = ASPP(4, 8).eval()
    x = torch.randn(2, 4, 6, 7)
    branch = aspp.convs[-1]
    y = branch(x)
    conv = branch[1]
    expected = torch.relu(conv(x.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(y, expected.expand_as(y))


def test_rates_follow_the_output_stride():
    def dilations(aspp):
        return [m.dilation[0] for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]

    assert dilations(ASPP(4, 8)) == [6, 12, 18]
    assert dilations(ASPP(4, 8, output_stride=8)) == [12, 24, 36]
    assert dilations(ASPP(4, 8, rates=(1, 3), output_stride=32)) == [1, 3]
    assert len(ASPP(4, 8, rates=(1, 3)).convs) == 4  # 1x1, two atrous, pooling
    with pytest.raises(ConfigError, match="output_stride 32"):
        ASPP(4, 8, output_stride=32)
    with pytest.raises(ConfigError, match="positive"):
        ASPP(4, 8, rates=(0, 6))


def test_separable_branches():
    dense, separable = ASPP(32, 16), ASPP(32, 16, separable=True)
    assert sum(isinstance(m, DepthwiseSeparableConv2d) for m in separable.convs) == 3
    assert _count(separable) < _count(dense)
    depthwise = [m for m in separable.modules() if isinstance(m, nn.Conv2d) and m.groups == 32]
    assert [m.dilation[0] for m in depthwise] == [6, 12, 18]
    assert separable.eval()(torch.randn(1, 32, 6, 9)).shape == (1, 16, 6, 9)
