"""Separable convolutions: one k x k convolution split into cheaper ones, and the arithmetic of the saving.

Depthwise separable (MobileNet, Xception, DeepLabv3+): a k x k convolution per input channel, then a 1x1
convolution that mixes channels. Spatially separable (Inception-v3): a k x 1 convolution, then a 1 x k one; a
rank-1 kernel such as Sobel = [1, 2, 1]^T [-1, 0, 1] is exactly such a pair.
:func:`conv_cost` counts weights and multiplications from the sizes alone; :func:`measure_conv_cost` counts
them on a real module, so the formulas are checked against the layers that use them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import conv_output_size

CONV_KINDS = ("standard", "depthwise_separable", "spatially_separable")


@dataclass(frozen=True)
class ConvCost:
    """Weights and multiplications of one forward pass on one image (biases and norms not counted)."""

    params: int
    mults: int
    output_size: tuple[int, int]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def conv_cost(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    input_size: int | tuple[int, int],
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    mid_channels: int | None = None,
) -> ConvCost:
    """Weights and multiplications of a ``kind`` convolution (one of ``CONV_KINDS``) on an input of
    ``input_size`` (H, W or one int for a square).

    A conv layer does (its weights per output channel) x (output channels) x (output pixels) multiplications.
    Worked example, 12x12x3 input, 5x5 kernels, no padding, 256 output channels (8x8x256 out):
    standard 256*(5*5*3)*(8*8) = 1,228,800; depthwise separable 3*(5*5)*(8*8) + 256*3*(8*8) = 53,952.
    ``mid_channels`` is the width between the k x 1 and 1 x k stages of the spatially separable one (default:
    in_channels, as in :class:`SpatiallySeparableConv2d`).
    """
    if kind not in CONV_KINDS:
        raise ConfigError(f"unknown conv kind {kind!r}; choose one of: {', '.join(CONV_KINDS)}")
    h, w = _hw(input_size)
    k, ci, co = kernel_size, in_channels, out_channels
    ho, wo = (conv_output_size(n, k, stride, padding, dilation) for n in (h, w))
    if kind == "standard":
        params = co * ci * k * k
        return ConvCost(params, params * ho * wo, (ho, wo))
    if kind == "depthwise_separable":
        dw, pw = ci * k * k, co * ci
        return ConvCost(dw + pw, (dw + pw) * ho * wo, (ho, wo))
    mid = ci if mid_channels is None else mid_channels
    vertical, horizontal = mid * ci * k, co * mid * k
    # The k x 1 stage shrinks only H (output ho x w); the 1 x k stage then shrinks W.
    return ConvCost(vertical + horizontal, vertical * ho * w + horizontal * ho * wo, (ho, wo))


def measure_conv_cost(module: nn.Module, x: Tensor) -> ConvCost:
    """Count the weights and multiplications of every ``nn.Conv2d`` that runs in ``module(x)``, per image.

    A convolution that produces an (C', H', W') output with a (C', C/groups, kh, kw) weight does
    C' H' W' * (C/groups) kh kw multiplications per image. Biases, norms and activations are not counted.
    """
    params = mults = 0

    def hook(conv: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal params, mults
        weight = conv.weight
        params += weight.numel()
        mults += out[0].numel() * weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            y = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return ConvCost(params, mults, (int(y.shape[-2]), int(y.shape[-1])))


class DepthwiseSeparableConv2d(nn.Sequential):
    """Depthwise k x k conv (groups = in_channels) -> norm -> ``dw_act``, then pointwise 1x1 conv -> norm ->
    ``act``. Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H', W') with H' as for a k x k conv with the same
    stride, padding and dilation (default padding keeps H' = H / stride). Weights: C k^2 + C' C instead of
    C' C k^2. Without norm and activations it is exactly a standard conv whose kernel W[o, i] = P[o, i] D[i].
    ``dw_act`` defaults to ReLU (MobileNet, DeepLabv3+); Xception uses none (``dw_act=None``).
    ``depthwise_norm=False``: the depthwise conv alone, without norm, activation or bias, straight into the
    pointwise conv (smp's and Keras's ``SeparableConv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        dw_act: ActArg = "relu",
        depthwise_norm: bool = True,
    ) -> None:
        if depthwise_norm:
            depthwise = ConvNormAct(
                in_channels, in_channels, kernel_size, stride, padding, dilation, in_channels, norm, dw_act
            )
        else:
            depthwise = ConvNormAct(
                in_channels,
                in_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                in_channels,
                "none",
                None,
                bias=False,
            )
        pointwise = ConvNormAct(in_channels, out_channels, 1, norm=norm, act=act)
        super().__init__(OrderedDict(depthwise=depthwise, pointwise=pointwise))
        self.in_channels, self.out_channels = in_channels, out_channels


class SpatiallySeparableConv2d(nn.Sequential):
    """k x 1 conv (in -> mid channels, no bias), then 1 x k conv -> norm -> act. Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H', W') as for a k x k conv with the same stride,
    padding and dilation. Weights: k C mid + k mid C' instead of k^2 C C'. The pair is one linear map, so
    with one channel in and out it is exactly the conv with the rank-1 kernel outer(vertical, horizontal)
    (Sobel, box and Gaussian blurs are such kernels). ``mid_channels`` defaults to ``in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        mid_channels: int | None = None,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        mid = in_channels if mid_channels is None else mid_channels
        pad = dilation * (kernel_size - 1) // 2 if padding is None else padding
        vertical = nn.Conv2d(
            in_channels,
            mid,
            (kernel_size, 1),
            stride=(stride, 1),
            padding=(pad, 0),
            dilation=(dilation, 1),
            bias=False,
        )
        horizontal = ConvNormAct(
            mid, out_channels, (1, kernel_size), (1, stride), (0, pad), dilation, norm=norm, act=act
        )
        super().__init__(OrderedDict(vertical=vertical, horizontal=horizontal))
        self.in_channels, self.out_channels = in_channels, out_channels


__all__ = [
    "CONV_KINDS",
    "ConvCost",
    "DepthwiseSeparableConv2d",
    "SpatiallySeparableConv2d",
    "conv_cost",
    "measure_conv_cost",
]
