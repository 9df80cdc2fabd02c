"""The U-Net decoder: upsample, concatenate the skip feature, two 3x3 convs; built from FeatureInfo only."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import UPSAMPLERS, make_upsample
from seglab.models.encoders.base import FeatureInfo
from seglab.models.encoders.unet import DoubleConv

# U-Net's upsampling names: "transposed" is the paper's 2x2 up-convolution, "bilinear"/"nearest" are
# interpolation + 1x1 conv; other modes of seglab.layers.UPSAMPLERS pass through (non-learned ones keep channels).
UNET_UPSAMPLE: dict[str, tuple[str, dict]] = {
    "transposed": ("transposed", {"kernel_size": 2}),
    "bilinear": ("resize_conv", {"kernel_size": 1, "interp": "bilinear"}),
    "nearest": ("resize_conv", {"kernel_size": 1, "interp": "nearest"}),
}


def make_unet_upsample(name: str, in_channels: int, out_channels: int, scale: int) -> nn.Module:
    """The upsampling module of one U-Net decoder block; its ``out_channels`` may equal ``in_channels``."""
    if name == "max_unpool":
        raise ConfigError("U-Net has no pooling indices to unpool with; use segnet for max unpooling")
    mode, options = UNET_UPSAMPLE.get(name, (name, {}))
    learned = UPSAMPLERS[mode].trainable if mode in UPSAMPLERS else True
    return make_upsample(mode, in_channels, out_channels if learned else None, scale, **options)


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
        self.up = make_unet_upsample(upsample, in_channels, out_channels, scale)
        up_channels = self.up.out_channels
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, norm, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x, output_size=skip.shape[-2:]), skip], dim=1))


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
