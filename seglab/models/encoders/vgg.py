"""A VGG-style encoder that keeps its max-pooling indices (SegNet, Badrinarayanan et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct, MaxPoolDown
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo, PooledFeatures, check_output_stride

# VGG16's 13 convs: (3x3 convs per stage, width as a multiple of base_channels); a 2x2 max pool ends each stage.
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))

# Bayesian SegNet ("central" variant) puts dropout after the deepest three encoder and decoder stages.
CENTRAL_STAGES = 3


class VGGEncoder(Encoder):
    """``depth`` VGG16 stages (convs -> norm -> act, then a 2x2 max pool that returns its indices).

    Shape: (N, in_channels, H, W) -> :class:`PooledFeatures` with ``depth + 1`` features: each stage's
    output before its pool, (N, c_i, H/2**i, W/2**i), then the last pool's output (N, c, H/2**depth, ...);
    ``indices[i]`` are the indices of the pool after stage i. With base 64 and depth 5 the convs are
    exactly VGG16's (64, 64, 128, 128, 256 x 3, 512 x 6). ``dropout`` > 0 adds ``nn.Dropout2d`` after the
    pools of the deepest three stages (Bayesian SegNet); ``convs_per_stage`` lists the convs of each stage.
    """

    pool_indices = True

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        base_channels: int = 64,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        dropout: float = 0.0,
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= depth <= len(VGG16_STAGES):
            raise ConfigError(f"VGG encoder depth must be 1..{len(VGG16_STAGES)}, got {depth}")
        if base_channels < 1:
            raise ConfigError(f"base_channels must be >= 1, got {base_channels}")
        stages = VGG16_STAGES[:depth]
        self.convs_per_stage = [n for n, _ in stages]
        widths = [base_channels * m for _, m in stages]
        blocks = []
        c_in = in_channels
        for (n, _), c in zip(stages, widths):
            convs = [ConvNormAct(c_in if j == 0 else c, c, 3, norm=norm, act=act) for j in range(n)]
            blocks.append(nn.Sequential(*convs))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.pools = nn.ModuleList(MaxPoolDown(c, scale=2, return_indices=True) for c in widths)
        self.drops = nn.ModuleList(
            nn.Dropout2d(dropout) if dropout > 0 and i >= depth - CENTRAL_STAGES else nn.Identity()
            for i in range(depth)
        )
        self.feature_info = [FeatureInfo(c, 2**i) for i, c in enumerate(widths)]
        self.feature_info.append(FeatureInfo(widths[-1], 2**depth))
        check_output_stride(self, "vgg", output_stride)

    def forward(self, x: torch.Tensor) -> PooledFeatures:
        features, indices = [], []
        for block, pool, drop in zip(self.blocks, self.pools, self.drops):
            x = block(x)
            features.append(x)
            x, idx = pool(x)
            x = drop(x)
            indices.append(idx)
        features.append(x)
        return PooledFeatures(features, indices)
