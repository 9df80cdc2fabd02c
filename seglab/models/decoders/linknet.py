"""The LinkNet decoder (Chaurasia & Culurciello, 2017, "LinkNet: Exploiting Encoder Representations for
Efficient Semantic Segmentation"): light blocks whose outputs are ADDED to the encoder's skip features, built from
FeatureInfo only, as smp's ``Linknet`` builds it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg, make_act, make_norm
from seglab.layers.sampling import ResizeConvUp, TransposedConvUp, Upsampler
from seglab.models.encoders.base import FeatureInfo


def check_final_block(feature_info: list[FeatureInfo], final_block: bool) -> None:
    """ConfigError when ``final_block`` would upsample features that are already at the input's resolution."""
    if final_block and feature_info[0].reduction == 1:
        raise ConfigError(
            "final_block upsamples the shallowest features by 2, but they are at the input's resolution already; "
            "set final_block to false (or null)"
        )


class LinkNetBlock(nn.Module):
    """1x1 ConvNormAct (in -> in / 4), learned upsampling by ``scale`` + norm + act, 1x1 ConvNormAct -> out.

    The upsampling is smp's and the paper's 3x3-class transposed conv: 2s x 2s, stride s (4x4, stride 2,
    padding 1 for s = 2), with a bias as smp's; at ``scale`` 1 (a dilated encoder's equal-stride skip) a 3x3 conv.
    Shape: (N, in_channels, h, w) -> (N, out_channels, ``size``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, scale: int, norm: NormArg = "bn", act: ActArg = "relu"
    ) -> None:
        super().__init__()
        mid = max(1, in_channels // 4)
        self.reduce = ConvNormAct(in_channels, mid, 1, norm=norm, act=act)
        self.up: Upsampler = (
            TransposedConvUp(mid, mid, scale, kernel_size=2 * scale)
            if scale > 1
            else ResizeConvUp(mid, mid, 1, kernel_size=3)
        )
        self.up_norm_act = nn.Sequential(make_norm(norm, mid), make_act(act))
        self.expand = ConvNormAct(mid, out_channels, 1, norm=norm, act=act)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.expand(self.up_norm_act(self.up(self.reduce(x), output_size=size)))


class LinkNetDecoder(nn.Module):
    """Walks the encoder features from deepest to shallowest: block k maps feature i's width to feature i-1's,
    upsamples to its size and adds it (no concatenation, so the decoder stays light). ``final_block`` adds
    smp's last block, without skip, at twice the shallowest feature's resolution and ``final_channels`` wide
    (smp's ``prefinal_channels``, 32). Block names: ``blocks[k]``, deepest first, then ``final``.
    Shape: features -> (N, out_channels, H / reduction, W / reduction).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        final_block: bool = False,
        final_channels: int = 32,
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        if len(feature_info) < 2:
            raise ConfigError(
                f"the LinkNet decoder needs at least 2 encoder features, got {len(feature_info)}"
            )
        check_final_block(feature_info, final_block)
        blocks = []
        for deep, skip in zip(feature_info[:0:-1], feature_info[-2::-1]):
            if deep.reduction % skip.reduction:
                raise ConfigError(f"cannot upsample from reduction {deep.reduction} to {skip.reduction}")
            blocks.append(
                LinkNetBlock(deep.channels, skip.channels, deep.reduction // skip.reduction, norm, act)
            )
        self.blocks = nn.ModuleList(blocks)
        first = feature_info[0]
        self.final = LinkNetBlock(first.channels, final_channels, 2, norm, act) if final_block else None
        self.out_channels = final_channels if final_block else first.channels
        self.reduction = first.reduction // (2 if final_block else 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, features[-2::-1]):
            x = block(x, skip.shape[-2:]) + skip
        if self.final is not None:
            x = self.final(x, (2 * x.shape[-2], 2 * x.shape[-1]))
        return x
