"""The U-Net decoder: upsample, concatenate the skip feature, two 3x3 convs; built from FeatureInfo only."""

from __future__ import annotations

import torch
from torch import nn

from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo
from seglab.models.encoders.unet import DoubleConv


class UpBlock(nn.Module):
    """(N, c_in, H, W) + skip (N, c_skip, sH, sW) -> (N, c_out, sH, sW), upsampling by ``scale``."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: int,
        upsample: str = "transposed",
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        if upsample == "transposed":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale)
            up_channels = out_channels
        elif upsample in ("bilinear", "nearest"):
            kwargs = {"align_corners": False} if upsample == "bilinear" else {}
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=scale, mode=upsample, **kwargs),
                nn.Conv2d(in_channels, out_channels, 1),
            )
            up_channels = out_channels
        else:
            raise ValueError(f"unknown U-Net upsampling {upsample!r}; choose transposed, bilinear or nearest")
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, norm, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """Walks the encoder features from deepest to shallowest; output has the shallowest feature's size.

    Decoder widths mirror the encoder: the block that merges skip i outputs skip i's channel count
    (the original U-Net), or ``decoder_channels[i]`` when given.
    """

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        decoder_channels: list[int] | None = None,
        upsample: str = "transposed",
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        skips = feature_info[:-1][::-1]
        outs = decoder_channels or [f.channels for f in skips]
        if len(outs) != len(skips):
            raise ValueError(f"decoder_channels needs {len(skips)} entries, got {len(outs)}")
        blocks, c_in, red_in = [], feature_info[-1].channels, feature_info[-1].reduction
        for skip, c_out in zip(skips, outs):
            blocks.append(UpBlock(c_in, skip.channels, c_out, red_in // skip.reduction, upsample, norm, act))
            c_in, red_in = c_out, skip.reduction
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in
        self.reduction = red_in

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, skip)
        return x
