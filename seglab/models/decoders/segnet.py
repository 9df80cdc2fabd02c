"""SegNet's decoder: max-unpool with the encoder's pooling indices, then convs; a mirror of the encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import UPSAMPLERS, make_upsample
from seglab.models.encoders.base import FeatureInfo
from seglab.models.encoders.vgg import CENTRAL_STAGES


class SegNetBlock(nn.Module):
    """Upsample (max-unpool with ``indices``, or another non-learned mode) to the skip level's size, then
    ``num_convs`` 3x3 ConvNormAct: in -> level channels -> ... -> ``out_channels``; optional
    ``nn.Dropout2d`` on the output (Bayesian SegNet). Shape: (N, c_in, h, w) -> (N, out, s*h, s*w)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        out_channels: int,
        num_convs: int,
        scale: int,
        upsample: str = "max_unpool",
        norm: NormArg = "bn",
        act: ActArg = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ConfigError(f"a SegNet decoder block needs >= 1 conv, got {num_convs}")
        self.up = make_upsample(upsample, in_channels, None, scale)
        widths = [in_channels] + [channels] * (num_convs - 1) + [out_channels]
        self.convs = nn.Sequential(
            *(ConvNormAct(a, b, 3, norm=norm, act=act) for a, b in zip(widths[:-1], widths[1:]))
        )
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, size: Sequence[int], indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.drop(self.convs(self.up(x, indices=indices, output_size=size)))


class SegNetDecoder(nn.Module):
    """One block per encoder level, deepest first; output at the shallowest level's size and channels.

    ``feature_info``: the levels (features before each pool) then the bottleneck (the last pool's output).
    Block i upsamples to level i's size (``upsample="max_unpool"`` uses ``features.indices[i]``, which the
    encoder must provide: :class:`~seglab.models.encoders.PooledFeatures`), then runs ``convs[i]`` convs whose
    last one outputs level i-1's channels (level 0's for the last block): VGG16's mirror for SegNet.
    ``dropout`` > 0: ``nn.Dropout2d`` after the deepest three blocks (Bayesian SegNet, "central").
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        convs: Sequence[int] | None = None,
        upsample: str = "max_unpool",
        norm: NormArg = "bn",
        act: ActArg = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLERS:
            raise ConfigError(f"unknown upsample mode {upsample!r}; choose one of: {', '.join(UPSAMPLERS)}")
        if UPSAMPLERS[upsample].trainable:
            raise ConfigError(
                f"SegNet upsamples without learning (max_unpool, bed_of_nails, nearest, bilinear); "
                f"{upsample!r} is learned: use fcn or unet for learned upsampling"
            )
        levels, bottom = feature_info[:-1], feature_info[-1]
        if not levels:
            raise ConfigError("the SegNet decoder needs at least 2 encoder features")
        convs = list(convs) if convs is not None else [2] * len(levels)
        if len(convs) != len(levels):
            raise ConfigError(f"SegNet convs needs {len(levels)} entries, got {len(convs)}")
        self.needs_indices = upsample == "max_unpool"
        blocks, c_in, red_in = [], bottom.channels, bottom.reduction
        n = len(levels)
        for i in range(n - 1, -1, -1):
            level = levels[i]
            if red_in % level.reduction:
                raise ConfigError(f"cannot upsample from reduction {red_in} to {level.reduction}")
            out = levels[max(i - 1, 0)].channels
            drop = dropout if i >= n - CENTRAL_STAGES else 0.0
            blocks.append(
                SegNetBlock(
                    c_in, level.channels, out, convs[i], red_in // level.reduction, upsample, norm, act, drop
                )
            )
            c_in, red_in = out, level.reduction
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in
        self.reduction = red_in

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        indices = getattr(features, "indices", None)
        if self.needs_indices and indices is None:
            raise ValueError("max unpooling needs an encoder that returns PooledFeatures (pooling indices)")
        x = features[-1]
        n = len(features) - 1
        for block, i in zip(self.blocks, range(n - 1, -1, -1)):
            x = block(x, features[i].shape[-2:], indices[i] if self.needs_indices else None)
        return x
