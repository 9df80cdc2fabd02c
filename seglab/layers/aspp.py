"""Atrous spatial pyramid pooling (DeepLabv3, v3+): context at several scales, at full feature resolution.

Parallel branches look at the same features: a 1x1 conv, 3x3 atrous convs at several rates, and the image
average; their outputs are concatenated and projected back to ``out_channels``. The module layout (and so
the state-dict keys) is torchvision's ``deeplabv3.ASPP``, whose weights load into it with ``pool_norm="bn"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.layers.atrous import AtrousConv2d
from seglab.layers.conv import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg, make_act, make_norm
from seglab.layers.separable import DepthwiseSeparableConv2d

# DeepLabv3's rates: (6, 12, 18) when features are 1/16 of the image, doubled at 1/8 so each branch
# still covers the same part of the image.
ASPP_RATES: dict[int, tuple[int, ...]] = {16: (6, 12, 18), 8: (12, 24, 36)}


class ImagePooling(nn.Sequential):
    """Image-level branch: global average -> 1x1 conv -> norm -> act -> broadcast to H x W. Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H, W), constant over H and W (upsampling a 1x1
    map, bilinear or not, is a broadcast). The default ``norm="none"`` (conv with bias) keeps the module
    usable with batch size 1 in training: batch norm over an (N, C, 1, 1) map has one value per channel when
    N = 1 and raises, which is how torchvision's ASPP fails. GroupNorm would run but erase each group's level.
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm: NormArg = "none", act: ActArg = "relu"
    ) -> None:
        norm_layer = make_norm(norm, out_channels)
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=isinstance(norm_layer, nn.Identity))
        super().__init__(nn.AdaptiveAvgPool2d(1), conv, norm_layer, make_act(act))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return super().forward(x).expand(-1, -1, h, w)


class ASPP(nn.Module):
    """ASPP: [1x1 conv, 3x3 atrous convs at ``rates``, image pooling] -> concat -> 1x1 conv -> dropout.
    Trainable.

    Shape: (N, in_channels, H, W) -> (N, out_channels, H, W) for any H, W (every branch keeps the size).
    ``rates`` default to ``ASPP_RATES[output_stride]``: (6, 12, 18) at output stride 16, (12, 24, 36) at 8.
    ``separable=True`` uses depthwise-separable atrous branches (DeepLabv3+). The image-pooling branch has no
    norm by default (``pool_norm``, see :class:`ImagePooling`), so batch size 1 trains; the other branches
    need H * W > 1 for batch norm in training. ``pool_norm="bn"`` reproduces torchvision exactly.
    ``depthwise_norm=False``: the separable branches' depthwise convs have no norm, activation or bias (smp's).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] | None = None,
        output_stride: int = 16,
        separable: bool = False,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
        dropout: float = 0.5,
        depthwise_norm: bool = True,
    ) -> None:
        super().__init__()
        if rates is None:
            if output_stride not in ASPP_RATES:
                raise ConfigError(
                    f"ASPP has no default rates for output_stride {output_stride} "
                    f"(known: {', '.join(map(str, ASPP_RATES))}); pass rates=..."
                )
            rates = ASPP_RATES[output_stride]
        self.rates = tuple(int(r) for r in rates)
        if not self.rates or min(self.rates) < 1:
            raise ConfigError(f"ASPP rates must be positive integers, got {tuple(rates)}")
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, norm=norm, act=act)]
        for rate in self.rates:
            if separable:
                branches.append(
                    DepthwiseSeparableConv2d(
                        in_channels,
                        out_channels,
                        3,
                        dilation=rate,
                        norm=norm,
                        act=act,
                        depthwise_norm=depthwise_norm,
                    )
                )
            else:
                branches.append(AtrousConv2d(in_channels, out_channels, 3, rate, norm=norm, act=act))
        branches.append(ImagePooling(in_channels, out_channels, pool_norm, act))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *ConvNormAct(len(branches) * out_channels, out_channels, 1, norm=norm, act=act),
            nn.Dropout(dropout),
        )
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


__all__ = ["ASPP", "ASPP_RATES", "ImagePooling"]
