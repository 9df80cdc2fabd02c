"""The plain U-Net encoder (Ronneberger et al., 2015): two 3x3 convs per level, 2x2 max-pool between levels."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo, check_output_stride

PADDINGS = ("same", "valid")


def conv_padding(padding: str) -> int | None:
    """ConvNormAct's padding for U-Net's ``padding`` mode: "same" keeps H x W, "valid" (the paper) trims 1 px."""
    if padding not in PADDINGS:
        raise ConfigError(f"unknown U-Net padding {padding!r}; choose one of: {', '.join(PADDINGS)}")
    return None if padding == "same" else 0


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct blocks: (N, in, H, W) -> (N, out, H, W), or (H - 4, W - 4) with
    ``padding="valid"``. Trainable."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        padding: str = "same",
    ) -> None:
        pad = conv_padding(padding)
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, padding=pad, norm=norm, act=act),
            ConvNormAct(out_channels, out_channels, 3, padding=pad, norm=norm, act=act),
        )


class UNetEncoder(Encoder):
    """``depth`` levels with widths base, 2*base, ...; level i has reduction 2**i.

    Shape: (N, in_channels, H, W) -> [(N, base*2**i, H/2**i, W/2**i) for i in range(depth)],
    H and W multiples of 2**(depth-1) (the Segmentor pads for that). With ``padding="valid"`` (the paper)
    every conv trims a pixel on each side, so level i is smaller than H/2**i (see ``unet_valid_geometry``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        base_channels: int = 64,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        padding: str = "same",
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ConfigError(f"U-Net depth must be >= 2, got {depth}")
        if base_channels < 1:
            raise ConfigError(f"base_channels must be >= 1, got {base_channels}")
        widths = [base_channels * 2**i for i in range(depth)]
        self.pool = nn.MaxPool2d(2)
        self.blocks = nn.ModuleList(
            DoubleConv(c_in, c_out, norm, act, padding)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.feature_info = [FeatureInfo(c, 2**i) for i, c in enumerate(widths)]
        check_output_stride(self, "unet", output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        return features
