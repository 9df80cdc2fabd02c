"""FCN (Long et al., 2015): features from the deepest encoder output; the head scores them and the skips."""

from __future__ import annotations

import torch
from torch import nn

from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo


class FCNDecoder(nn.Module):
    """The deepest features through a 3x3 ConvNormAct to ``channels`` (default in/4): torchvision's ``FCNHead``
    up to its dropout, in the place of FCN's fc6/fc7. Its dropout, the class scores of these features and of the
    stride-16/8 skips, their fusion and the upsampling are :class:`~seglab.models.heads.FCNHead`'s (the fusion
    adds class scores, so it cannot come before the classifier).

    Shape: deepest (N, c, H/r, W/r) -> (N, ``out_channels``, H/r, W/r), r = ``self.reduction``.
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int | None = None,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        deep = feature_info[-1]
        self.out_channels = channels or max(deep.channels // 4, 1)
        self.conv = ConvNormAct(deep.channels, self.out_channels, 3, norm=norm, act=act)
        self.reduction = deep.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(features[-1])
