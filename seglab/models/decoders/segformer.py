"""SegFormer's all-MLP decoder (Xie et al., 2021, "SegFormer: Simple and Efficient Design for Semantic
Segmentation with Transformers")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo


class SegFormerDecoder(nn.Module):
    """Each encoder feature at reduction >= ``min_reduction`` (4: the paper's four stages, 1/4 .. 1/32) through
    its own linear layer (a 1x1 conv with bias) to ``channels`` (256, as smp; the paper uses 768 from MiT-B2 on),
    resized (bilinear) to the finest of them (or to the one at reduction ``fuse_reduction``: smp reads a
    ResNet's stride-2 feature too and fuses at 1/4), concatenated deepest first, then fused by a 1x1 ConvNormAct.
    The head's dropout (0.1 in the paper) and 1x1 classifier follow in the Segmentor.

    Shape: -> (N, ``channels``, H/4, W/4) for the usual encoders. Layout and parameter count are smp's
    ``SegformerDecoder`` (its ``nn.Linear`` weights are these convs' weights without the 1x1 kernel dims).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int = 256,
        min_reduction: int = 4,
        fuse_reduction: int | None = None,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        self.indices = [i for i, f in enumerate(feature_info) if f.reduction >= min_reduction]
        if not self.indices:
            have = ", ".join(str(f.reduction) for f in feature_info)
            raise ConfigError(
                f"segformer fuses encoder features at reduction >= {min_reduction}, the encoder has only "
                f"{have}; lower min_reduction or use a deeper encoder"
            )
        fuse = [i for i in self.indices if feature_info[i].reduction == fuse_reduction]
        if fuse_reduction is not None and not fuse:
            have = ", ".join(str(feature_info[i].reduction) for i in self.indices)
            raise ConfigError(
                f"segformer fuses at reduction {fuse_reduction}, but reads features at {have} only; "
                "fuse_reduction must be one of them (or null: the finest)"
            )
        self.target = fuse[0] if fuse else self.indices[0]
        self.linears = nn.ModuleList(nn.Conv2d(feature_info[i].channels, channels, 1) for i in self.indices)
        self.fuse = ConvNormAct(len(self.indices) * channels, channels, 1, norm=norm, act=act)
        self.out_channels = channels
        self.reduction = feature_info[self.target].reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[self.target].shape[-2:]
        maps = [
            F.interpolate(linear(features[i]), size=size, mode="bilinear", align_corners=False)
            for i, linear in zip(self.indices, self.linears)
        ]
        return self.fuse(torch.cat(maps[::-1], dim=1))
