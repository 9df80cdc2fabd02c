"""LR-ASPP (Howard et al., 2019, "Searching for MobileNetV3"): a lite segmentation head for fast models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo, feature_index


class LRASPPDecoder(nn.Module):
    """Lite R-ASPP's feature path: the deepest features through a 1x1 ConvNormAct to ``inter_channels`` (128),
    gated by a sigmoid of their global average (squeeze-and-excite style, 1x1 conv without bias), upsampled
    (bilinear) to the low-level features at ``low_level_reduction`` (8). ``self.low_index`` is that feature's
    index: :class:`~seglab.models.heads.LRASPPHead` adds its 1x1 score to the score of these features. Together
    they are torchvision's ``LRASPPHead`` (same layout, state-dict shapes and parameter count).

    Shape: -> (N, ``inter_channels``, H/8, W/8) for the usual encoders. Only 1x1 convs: cheap at any resolution.
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        inter_channels: int = 128,
        low_level_reduction: int = 8,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        deep = feature_info[-1]
        self.low_index = feature_index(feature_info, low_level_reduction, below=len(feature_info) - 1)
        self.cbr = ConvNormAct(deep.channels, inter_channels, 1, norm=norm, act=act)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(deep.channels, inter_channels, 1, bias=False), nn.Sigmoid()
        )
        self.out_channels = inter_channels
        self.reduction = feature_info[self.low_index].reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features[self.low_index], features[-1]
        x = self.cbr(high) * self.scale(high)
        return F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
