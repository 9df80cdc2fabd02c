"""LR-ASPP (Howard et al., 2019, "Searching for MobileNetV3"): a lite segmentation head for fast models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo, feature_index


class LRASPPDecoder(nn.Module):
    """Lite R-ASPP: the deepest features through a 1x1 ConvNormAct to ``inter_channels`` (128), gated by a
    sigmoid of their global average (squeeze-and-excite style, 1x1 conv without bias), upsampled to the
    low-level features at ``low_level_reduction`` (8) and scored there; a 1x1 score of the low-level
    features is added. The layout (and state-dict shapes) are torchvision's ``LRASPPHead``.

    It outputs class scores, so it takes ``num_classes``; the Segmentor's head is the identity.
    Shape: -> (N, num_classes, H/8, W/8) for the usual encoders. Only 1x1 convs: cheap at any resolution.
    """

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        inter_channels: int = 128,
        low_level_reduction: int = 8,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        deep = feature_info[-1]
        self.low_index = feature_index(feature_info, low_level_reduction, below=len(feature_info) - 1)
        low = feature_info[self.low_index]
        self.cbr = ConvNormAct(deep.channels, inter_channels, 1, norm=norm, act=act)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(deep.channels, inter_channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low.channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)
        self.out_channels = num_classes
        self.reduction = low.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, high = features[self.low_index], features[-1]
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)
