"""The course's naive segmentation network: 3x3 convolutions at full resolution, no down- or upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo

# 16, 32, 64, 128, 64, 32 channels, then the head's num_classes.
PLAIN_WIDTHS: tuple[int, ...] = (16, 32, 64, 128, 64, 32)


class PlainConvEncoder(Encoder):
    """A stack of 3x3, stride-1, pad-1 ConvNormAct layers of ``widths``; every output is a feature at
    reduction 1. Trainable.

    Shape: (N, in_channels, H, W) -> [(N, widths[i], H, W) for each layer]. Every layer runs on all H x W
    pixels: the cost the course's encoder-decoder designs avoid (``seglab.bench`` tabulates it).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = PLAIN_WIDTHS,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError(f"plain_fcn widths must be a non-empty list of positive ints, got {widths}")
        self.layers = nn.ModuleList(
            ConvNormAct(c_in, c_out, 3, stride=1, padding=1, norm=norm, act=act)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.feature_info = [FeatureInfo(c, 1) for c in widths]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features
