"""Convolution blocks."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.utils import _pair

from seglab.layers.resolve import ActArg, NormArg, make_act, make_norm


class ConvNormAct(nn.Sequential):
    """Conv2d -> norm -> activation. Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H', W') with
    H' = floor((H + 2*padding - dilation*(k-1) - 1) / stride) + 1; the default padding keeps H' = H / stride.
    The conv has no bias when a norm follows (the norm's shift replaces it); ``bias`` set overrides that.
    ``kernel_size`` and ``padding`` may be (height, width) pairs, e.g. (5, 1) for a spatially separable stage.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            kh, kw = _pair(kernel_size)
            padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        norm_layer = make_norm(norm, out_channels)
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=isinstance(norm_layer, nn.Identity) if bias is None else bias,
        )
        super().__init__(conv, norm_layer, make_act(act))
        self.in_channels, self.out_channels = in_channels, out_channels
