"""DeepLabv3 (Chen et al., 2017) and DeepLabv3+ (Chen et al., 2018) decoders on an atrous encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ASPP, ConvNormAct, DepthwiseSeparableConv2d
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo, feature_index


def conv3x3(in_channels: int, out_channels: int, separable: bool, norm: NormArg, act: ActArg) -> nn.Module:
    """A 3x3 ConvNormAct, or its depthwise-separable version (DeepLabv3+'s option). Trainable."""
    if separable:
        return DepthwiseSeparableConv2d(in_channels, out_channels, 3, norm=norm, act=act, dw_act=act)
    return ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act)


class DeepLabV3Decoder(nn.Sequential):
    """ASPP on the deepest features, then a 3x3 ConvNormAct: torchvision's ``DeepLabHead`` without its last
    1x1 conv (that is the Segmentor's head).

    Shape: deepest (N, c, H/os, W/os) -> (N, ``channels``, H/os, W/os). ASPP rates default to
    ``ASPP_RATES[os]`` for the encoder's output stride os (6, 12, 18 at 16; 12, 24, 36 at 8).
    ``pool_norm="bn"`` gives the ASPP image-pooling branch a batch norm as in torchvision (the default has
    none, so batch size 1 trains; see :class:`seglab.layers.ImagePooling`). ``dropout`` is ASPP's.
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int = 256,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
        dropout: float = 0.5,
    ) -> None:
        deep = feature_info[-1]
        aspp = ASPP(
            deep.channels,
            channels,
            rates,
            output_stride=deep.reduction,
            separable=separable,
            norm=norm,
            act=act,
            pool_norm=pool_norm,
            dropout=dropout,
        )
        super().__init__(aspp, conv3x3(channels, channels, separable, norm, act))
        self.out_channels = channels
        self.reduction = deep.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest features, upsampled (bilinear) to the low-level features at
    ``low_level_reduction`` (4), which a 1x1 ConvNormAct reduces to ``low_level_channels`` (48); concatenated,
    then two 3x3 ConvNormAct of ``channels`` (depthwise-separable with ``separable=True``, which also makes
    the ASPP branches separable).

    Shape: (N, ``channels``, H/4, W/4) for the usual encoders.
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int = 256,
        low_level_reduction: int = 4,
        low_level_channels: int = 48,
        rates: Sequence[int] | None = None,
        separable: bool = False,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        deep = feature_info[-1]
        self.low_index = feature_index(feature_info, low_level_reduction, below=len(feature_info) - 1)
        low = feature_info[self.low_index]
        self.aspp = ASPP(
            deep.channels,
            channels,
            rates,
            output_stride=deep.reduction,
            separable=separable,
            norm=norm,
            act=act,
            pool_norm=pool_norm,
            dropout=dropout,
        )
        self.low = ConvNormAct(low.channels, low_level_channels, 1, norm=norm, act=act)
        self.fuse = nn.Sequential(
            conv3x3(channels + low_level_channels, channels, separable, norm, act),
            conv3x3(channels, channels, separable, norm, act),
        )
        self.out_channels = channels
        self.reduction = low.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(features[self.low_index])
        x = self.aspp(features[-1])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, low], dim=1))
