"""The plain U-Net encoder (Ronneberger et al., 2015): two 3x3 convs per level, 2x2 max-pool between levels."""

from __future__ import annotations

import torch
from torch import nn

from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct blocks: (N, in, H, W) -> (N, out, H, W). Trainable."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: NormArg = "bn", act: ActArg = "relu"
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act),
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act=act),
        )


class UNetEncoder(Encoder):
    """``depth`` levels with widths base, 2*base, ...; level i has reduction 2**i.

    Shape: (N, in_channels, H, W) -> [(N, base*2**i, H/2**i, W/2**i) for i in range(depth)],
    H and W multiples of 2**(depth-1) (the Segmentor pads for that).
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        base_channels: int = 64,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be >= 2, got {depth}")
        widths = [base_channels * 2**i for i in range(depth)]
        self.pool = nn.MaxPool2d(2)
        self.blocks = nn.ModuleList(
            DoubleConv(c_in, c_out, norm, act) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.feature_info = [FeatureInfo(c, 2**i) for i, c in enumerate(widths)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        return features
