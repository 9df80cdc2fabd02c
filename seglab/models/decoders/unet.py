"""The U-Net decoder: upsample, concatenate the skip feature, two 3x3 convs; built from FeatureInfo only."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import UPSAMPLERS, make_upsample
from seglab.models.encoders.base import FeatureInfo
from seglab.models.encoders.unet import DoubleConv, conv_padding
from seglab.models.segmentor import InputGeometry

# U-Net's upsampling names: "transposed" is the paper's 2x2 up-convolution, "bilinear"/"nearest" are
# interpolation + 1x1 conv, "nearest_interp"/"bilinear_interp" interpolation alone (smp's Unet: nearest, the
# channels kept into the concatenation); other modes of seglab.layers.UPSAMPLERS pass through (non-learned ones
# keep channels).
UNET_UPSAMPLE: dict[str, tuple[str, dict]] = {
    "transposed": ("transposed", {"kernel_size": 2}),
    "bilinear": ("resize_conv", {"kernel_size": 1, "interp": "bilinear"}),
    "nearest": ("resize_conv", {"kernel_size": 1, "interp": "nearest"}),
    "nearest_interp": ("nearest", {}),
    "bilinear_interp": ("bilinear", {}),
}


def make_unet_upsample(name: str, in_channels: int, out_channels: int, scale: int) -> nn.Module:
    """The upsampling module of one U-Net decoder block; its ``out_channels`` may equal ``in_channels``.

    ``scale`` 1 (a skip at the same reduction, as in dilated encoders) becomes a 1x1 conv for learned modes.
    """
    if name == "max_unpool":
        raise ConfigError("U-Net has no pooling indices to unpool with; use segnet for max unpooling")
    mode, options = UNET_UPSAMPLE.get(name, (name, {}))
    learned = UPSAMPLERS[mode].trainable if mode in UPSAMPLERS else True
    if scale == 1 and learned:
        mode, options = "resize_conv", {"kernel_size": 1}
    return make_upsample(mode, in_channels, out_channels if learned else None, scale, **options)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central ``size`` window of (N, C, H, W) ``x`` (the paper's cropping of skip features)."""
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


def unet_valid_geometry(depth: int) -> InputGeometry:
    """Input sizes of the paper's unpadded U-Net of ``depth`` levels.

    Each 3x3 valid conv at level i costs 2**i input pixels per side; there are two per encoder level, two per
    decoder level and two at the bottom: margin = 2 * 2 * (2**(d-1) - 1) + 2**d = 6 * 2**(d-1) - 4 pixels per
    side (92 for depth 5: 572 in, 388 out). The bottom size b gives an output of 2**(d-1) (b - 4) + 4, so
    outputs are 4 (mod 2**(d-1)).
    """
    multiple = 2 ** (depth - 1)
    return InputGeometry(multiple=multiple, offset=4 % multiple, margin=6 * multiple - 4)


class UpBlock(nn.Module):
    """(N, c_in, H, W) + skip (N, c_skip, sH, sW) -> (N, c_out, sH, sW), upsampling by ``scale``.

    ``skip_channels`` 0: a block without skip (smp's last block), called with ``skip=None``: (N, c_out, sH, sW).
    ``padding="valid"``: convs trim 2 px per side and the skip is centre-cropped to the upsampled size.
    ``dropout`` > 0 applies ``nn.Dropout2d`` to the block's input.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: int,
        upsample: str = "transposed",
        norm: NormArg = "bn",
        act: ActArg = "relu",
        padding: str = "same",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.valid = conv_padding(padding) == 0
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = make_unet_upsample(upsample, in_channels, out_channels, scale)
        up_channels = self.up.out_channels
        self.conv = DoubleConv(up_channels + skip_channels, out_channels, norm, act, padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.drop(x)
        if skip is None:
            scale = self.up.scale
            return self.conv(self.up(x, output_size=(x.shape[-2] * scale, x.shape[-1] * scale)))
        if self.valid:
            x = self.up(x)
            skip = center_crop(skip, x.shape[-2:])
        else:
            x = self.up(x, output_size=skip.shape[-2:])
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Walks the encoder features from deepest to shallowest; output has the shallowest feature's size.

    Decoder widths mirror the encoder: the block that merges skip i outputs skip i's channel count
    (the original U-Net), or ``decoder_channels[i]`` when given (deepest block first). ``final_block``: one more
    block, without skip, at twice the shallowest feature's resolution (smp's Unet, whose last block reaches the
    input's resolution); its width is the last of ``decoder_channels`` (which then has one more entry), else the
    shallowest skip's.
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        decoder_channels: list[int] | None = None,
        upsample: str = "transposed",
        norm: NormArg = "bn",
        act: ActArg = "relu",
        padding: str = "same",
        dropout: float = 0.0,
        final_block: bool = False,
    ) -> None:
        super().__init__()
        if len(feature_info) < 2:
            raise ConfigError(f"the U-Net decoder needs at least 2 encoder features, got {len(feature_info)}")
        skips = feature_info[:-1][::-1]
        outs = list(decoder_channels or [f.channels for f in skips] + [skips[-1].channels] * final_block)
        if len(outs) != len(skips) + final_block:
            raise ConfigError(f"decoder_channels needs {len(skips) + final_block} entries, got {len(outs)}")
        if final_block and conv_padding(padding) == 0:
            raise ConfigError("final_block needs padding='same' (the valid U-Net has no block without skip)")
        blocks, c_in, red_in = [], feature_info[-1].channels, feature_info[-1].reduction
        for skip, c_out in zip(skips, outs):
            if red_in % skip.reduction:
                raise ConfigError(f"cannot upsample from reduction {red_in} to {skip.reduction}")
            blocks.append(
                UpBlock(
                    c_in,
                    skip.channels,
                    c_out,
                    red_in // skip.reduction,
                    upsample,
                    norm,
                    act,
                    padding,
                    dropout,
                )
            )
            c_in, red_in = c_out, skip.reduction
        if final_block:
            blocks.append(UpBlock(c_in, 0, outs[-1], 2, upsample, norm, act, padding, dropout))
            c_in, red_in = outs[-1], max(red_in // 2, 1)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in
        self.reduction = red_in

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x
