"""DeepLabv3 (Chen et al., 2017) and DeepLabv3+ (Chen et al., 2018) decoders on an atrous encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ASPP, ConvNormAct, DepthwiseSeparableConv2d
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo, feature_index


def conv3x3(
    in_channels: int,
    out_channels: int,
    separable: bool,
    norm: NormArg,
    act: ActArg,
    depthwise_norm: bool = True,
) -> nn.Module:
    """A 3x3 ConvNormAct, or its depthwise-separable version (DeepLabv3+'s option; ``depthwise_norm=False``:
    smp's, the depthwise conv without norm, activation or bias). Trainable."""
    if separable:
        return DepthwiseSeparableConv2d(
            in_channels, out_channels, 3, norm=norm, act=act, dw_act=act, depthwise_norm=depthwise_norm
        )
    return ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act)


class DeepLabV3Decoder(nn.Sequential):
    """ASPP on the deepest features, then a 3x3 ConvNormAct: torchvision's ``DeepLabHead`` without its last
    1x1 conv (that is the Segmentor's head).

    Shape: deepest (N, c, H/os, W/os) -> (N, ``channels``, H/os, W/os). ASPP rates default to
    ``ASPP_RATES[os]`` for the encoder's output stride os (6, 12, 18 at 16; 12, 24, 36 at 8).
    ``pool_norm="bn"`` gives the ASPP image-pooling branch a batch norm as in torchvision (the default has
    none, so batch size 1 trains; see :class:`seglab.layers.ImagePooling`). ``dropout`` is ASPP's.
    ``separable``: depthwise-separable ASPP branches and 3x3 conv; ``aspp_separable`` (None: ``separable``)
    sets the ASPP branches alone (smp's DeepLabV3: its option, the 3x3 conv dense); ``depthwise_norm=False``:
    the separable convs' depthwise conv has no norm, activation or bias (smp's).
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
        aspp_separable: bool | None = None,
        depthwise_norm: bool = True,
    ) -> None:
        deep = feature_info[-1]
        aspp = ASPP(
            deep.channels,
            channels,
            rates,
            output_stride=deep.reduction,
            separable=separable if aspp_separable is None else aspp_separable,
            norm=norm,
            act=act,
            pool_norm=pool_norm,
            dropout=dropout,
            depthwise_norm=depthwise_norm,
        )
        super().__init__(aspp, conv3x3(channels, channels, separable, norm, act, depthwise_norm))
        self.out_channels = channels
        self.reduction = deep.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest features, upsampled (bilinear) to the low-level features at
    ``low_level_reduction`` (4), which a 1x1 ConvNormAct reduces to ``low_level_channels`` (48); concatenated,
    then two 3x3 ConvNormAct of ``channels`` (depthwise-separable with ``separable=True``, which also makes
    the ASPP branches separable).

    smp's structure: ``aspp_conv=True`` (a 3x3 conv after ASPP, before the upsampling), ``fuse_convs=1``,
    ``separable=True`` with ``aspp_separable`` (None: ``separable``) for the ASPP branches alone,
    ``depthwise_norm=False`` (depthwise convs without norm, activation or bias) and ``align_corners=True``
    (the upsampling to the low-level features).

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
        aspp_separable: bool | None = None,
        aspp_conv: bool = False,
        fuse_convs: int = 2,
        depthwise_norm: bool = True,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if fuse_convs < 1:
            raise ConfigError(f"DeepLabv3+ needs fuse_convs >= 1, got {fuse_convs}")
        deep = feature_info[-1]
        self.low_index = feature_index(feature_info, low_level_reduction, below=len(feature_info) - 1)
        low = feature_info[self.low_index]
        self.aspp = ASPP(
            deep.channels,
            channels,
            rates,
            output_stride=deep.reduction,
            separable=separable if aspp_separable is None else aspp_separable,
            norm=norm,
            act=act,
            pool_norm=pool_norm,
            dropout=dropout,
            depthwise_norm=depthwise_norm,
        )
        self.aspp_conv = (
            conv3x3(channels, channels, separable, norm, act, depthwise_norm) if aspp_conv else nn.Identity()
        )
        self.low = ConvNormAct(low.channels, low_level_channels, 1, norm=norm, act=act)
        self.fuse = nn.Sequential(
            conv3x3(channels + low_level_channels, channels, separable, norm, act, depthwise_norm),
            *(
                conv3x3(channels, channels, separable, norm, act, depthwise_norm)
                for _ in range(fuse_convs - 1)
            ),
        )
        self.align_corners = align_corners
        self.out_channels = channels
        self.reduction = low.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(features[self.low_index])
        x = self.aspp_conv(self.aspp(features[-1]))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.fuse(torch.cat([x, low], dim=1))
