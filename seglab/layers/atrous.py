"""Atrous (dilated) convolution: a k x k kernel with d - 1 holes between its taps.

It sees (k - 1) d + 1 pixels per axis with the same k^2 weights, so a network can widen its field of view
without pooling away resolution (DeepLab). The helpers here give the receptive field in closed form and
measure it by back-propagating from one output pixel, so the formula is checked on real layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg


def receptive_field(kernel_size: int, dilation: int = 1) -> int:
    """Pixels one output of a k x k conv with dilation d sees along an axis: (k - 1) d + 1."""
    return (kernel_size - 1) * dilation + 1


def stack_receptive_field(layers: Sequence[tuple[int, int, int]]) -> int:
    """Receptive field of stacked convs given as (kernel_size, stride, dilation), first layer first.

    r = 1 + sum_i (k_i - 1) d_i prod_{j<i} s_j: each layer widens the field by its own reach, measured in
    input pixels, i.e. multiplied by the strides below it.
    """
    field, jump = 1, 1
    for kernel_size, stride, dilation in layers:
        field += (kernel_size - 1) * dilation * jump
        jump *= stride
    return field


def atrous_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps H and W at stride 1 for odd k: d (k - 1) / 2."""
    return dilation * (kernel_size - 1) // 2


def dilate_kernel(weight: Tensor, dilation: int) -> Tensor:
    """The dense kernel an atrous conv is equal to: d - 1 zeros inserted between the taps.

    Shape: (..., k, k) -> (..., (k-1)d+1, (k-1)d+1). ``F.conv2d(x, dilate_kernel(w, d))`` equals
    ``F.conv2d(x, w, dilation=d)``: the same k^2 weights spread over a larger window.
    """
    k_h, k_w = weight.shape[-2:]
    dense = weight.new_zeros(
        *weight.shape[:-2], receptive_field(k_h, dilation), receptive_field(k_w, dilation)
    )
    dense[..., ::dilation, ::dilation] = weight
    return dense


def effective_receptive_field(
    module: nn.Module, input_shape: Sequence[int], position: tuple[int, int] | None = None
) -> Tensor:
    """The input pixels that influence one output pixel, found by back-propagating from it.

    Returns a bool (H, W) mask over the input (summed over batch and channels). ``position`` is the
    output pixel (row, col), default the centre. The module runs as it is (dtype, train/eval) on a random
    input: put it in eval mode, since batch norm in training mixes all pixels through its statistics, and
    mind that ReLUs that happen to be off hide the pixels behind them (norm/act "none" measures the field).
    """
    param = next(module.parameters(), None)
    dtype = torch.float64 if param is None else param.dtype
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=generator, dtype=dtype).requires_grad_()
    y = module(x)
    row, col = (y.shape[-2] // 2, y.shape[-1] // 2) if position is None else position
    (grad,) = torch.autograd.grad(y[..., row, col].sum(), x)
    return grad.abs().sum(dim=tuple(range(grad.dim() - 2))) > 0


class AtrousConv2d(ConvNormAct):
    """k x k conv with dilation d and "same" padding d (k - 1) / 2, then norm and act. Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H', W'), H' = floor((H - 1) / stride) + 1 for odd k
    (H' = H at stride 1, any H). Weights: as the dense k x k conv (k^2 C C'); receptive field (k - 1) d + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 2,
        stride: int = 1,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            atrous_padding(kernel_size, dilation),
            dilation,
            norm=norm,
            act=act,
        )
        self.dilation = dilation


__all__ = [
    "AtrousConv2d",
    "atrous_padding",
    "dilate_kernel",
    "effective_receptive_field",
    "receptive_field",
    "stack_receptive_field",
]
