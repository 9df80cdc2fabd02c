"""The Mix Transformer (MiT) encoders of SegFormer (Xie et al., 2021, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers"): MiT-B0, B1 and B2, written here because neither timm nor any other
maintained library seglab depends on provides them as a ``features_only`` backbone.

Four stages, each an overlapping patch embedding (a 7x7 stride-4 conv, then 3x3 stride-2 convs, padded so any
size works), transformer blocks with efficient self-attention (keys and values from a sequence reduced by a
ratio-R strided conv, R = 8, 4, 2, 1) and a Mix-FFN (an MLP with a 3x3 depthwise conv in place of position
embeddings), and a LayerNorm. Widths, depths, heads, ratios, norms and init are those of the paper and of smp's
``mix_transformer`` (same parameter count; :func:`mit_state_from_smp` maps an smp encoder's state dict to this one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo, check_output_stride

# name -> (stage widths, blocks per stage). Heads, reduction ratios and the MLP ratio are shared by all.
MIT_VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
}
MIT_WIDTH_MULTS = (1, 2, 5, 8)  # stage width / base_channels, for every variant
MIT_HEADS = (1, 2, 5, 8)
MIT_SR_RATIOS = (8, 4, 2, 1)
MIT_MLP_RATIO = 4
BLOCK_EPS = (
    1e-6  # the blocks' and stage norms' LayerNorm eps (the patch embedding and reduction norms keep 1e-5)
)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, zero a sample's residual branch with probability
    ``p`` and scale the others by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


def to_map(x: torch.Tensor) -> torch.Tensor:
    """Tokens (N, H, W, C) -> map (N, C, H, W), a view (the blocks keep tokens channels-last, so LayerNorm and
    Linear act on the last dim and no reshape of the symbolic H and W is needed: exports trace fast)."""
    return x.permute(0, 3, 1, 2)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Map (N, C, H, W) -> tokens (N, H, W, C), a view."""
    return x.permute(0, 2, 3, 1)


class OverlapPatchEmbed(nn.Module):
    """A ``kernel`` x ``kernel`` conv of ``stride`` with padding kernel // 2 (patches overlap), then LayerNorm.

    Shape: (N, in, H, W) -> tokens (N, ceil(H/stride), ceil(W/stride), out).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_tokens(self.proj(x)))


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the tokens reduced ``sr_ratio`` times per axis
    (an ``sr_ratio`` x ``sr_ratio`` stride-``sr_ratio`` conv and a LayerNorm): cost N * N / R**2 instead of N**2.

    Shape: tokens (N, H, W, C) -> (N, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr: nn.Module = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm: nn.Module = nn.LayerNorm(dim)
        else:
            self.sr = self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        heads = self.num_heads
        q = self.q(x).flatten(1, 2).unflatten(-1, (heads, -1)).transpose(1, 2)  # (N, heads, H*W, C / heads)
        if self.sr_ratio > 1:
            x = self.norm(to_tokens(self.sr(to_map(x))))
        k, v = self.kv(x).flatten(1, 2).unflatten(-1, (2, heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2).unflatten(1, (height, width)))


class MixFFN(nn.Module):
    """Mix-FFN: Linear to ``hidden``, a 3x3 depthwise conv over the map (the position information), GELU, Linear.

    Shape: tokens (N, H, W, C) -> (N, H, W, C).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(to_tokens(self.dwconv(to_map(self.fc1(x))))))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + Mix-FFN(LN(x)), each residual branch under
    stochastic depth ``drop_path``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_EPS)
        self.mlp = MixFFN(dim, dim * MIT_MLP_RATIO)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MiTStage(nn.Module):
    """Patch embedding, ``len(drop_paths)`` blocks, LayerNorm. Shape: (N, in, H, W) -> (N, dim, H/s, W/s)."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        kernel: int,
        stride: int,
        heads: int,
        sr: int,
        drop_paths: list[float],
    ) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, kernel, stride)
        self.blocks = nn.ModuleList(MiTBlock(dim, heads, sr, p) for p in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=BLOCK_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return to_map(self.norm(x))


def _init_weights(m: nn.Module) -> None:
    """The reference init: Linear truncated normal (std 0.02), LayerNorm 1 and 0, conv normal(0, sqrt(2 / fan_out))."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)


class MiTEncoder(Encoder):
    """Mix Transformer MiT-B0 (``variant``; the subclasses are B1 and B2) for ``depth`` stages (4: features at
    1/4, 1/8, 1/16, 1/32 of widths ``base_channels`` * (1, 2, 5, 8); base 32 for B0, 64 for B1 and B2).

    Shape: (N, in_channels, H, W) -> [(N, c_i, ceil(H / 4 / 2**i), ceil(W / 4 / 2**i))]. The Segmentor pads
    inputs to a multiple of 32, which the reduction convs need (a stage-1 map of at least 8 x 8).
    ``drop_path``: the stochastic-depth rate of the last block (linear from 0 over all blocks; 0.1 as smp).
    ``norm`` and ``act`` are the decoder's: the transformer keeps its LayerNorm and GELU. Trainable.
    """

    variant: ClassVar[str] = "mit_b0"

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 4,
        base_channels: int | None = None,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        output_stride: int | None = None,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        widths, blocks = MIT_VARIANTS[self.variant]
        if not 1 <= depth <= len(blocks):
            raise ConfigError(f"{self.variant} encoder depth must be 1..{len(blocks)}, got {depth}")
        base = base_channels or widths[0]
        dims = [base * m for m in MIT_WIDTH_MULTS]
        n = sum(blocks)  # the stochastic depth decay rule: linear from 0 to drop_path
        rates = [drop_path * i / max(n - 1, 1) for i in range(n)]
        stages, self.feature_info, c_in, reduction = [], [], in_channels, 1
        for i in range(depth):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            first = sum(blocks[:i])
            drop_paths = rates[first : first + blocks[i]]
            stages.append(MiTStage(c_in, dims[i], kernel, stride, MIT_HEADS[i], MIT_SR_RATIOS[i], drop_paths))
            c_in, reduction = dims[i], reduction * stride
            self.feature_info.append(FeatureInfo(dims[i], reduction))
        self.stages = nn.ModuleList(stages)
        self.apply(_init_weights)
        check_output_stride(self, self.variant, output_stride)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MiTB1Encoder(MiTEncoder):
    variant = "mit_b1"


class MiTB2Encoder(MiTEncoder):
    variant = "mit_b2"


# smp's (and the reference's) state-dict names -> this encoder's: (pattern, replacement); stage numbers from 1 in
# smp, from 0 here (the replacement's {stage}). Tried in order; the first match renames the key.
SMP_MIT_KEYS: tuple[tuple[str, str], ...] = (
    (r"patch_embed(\d)\.(proj|norm)\.", "stages.{stage}.embed.\\2."),
    (r"block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.", "stages.{stage}.blocks.\\2.mlp.dwconv."),
    (r"block(\d)\.(\d+)\.", "stages.{stage}.blocks.\\2."),
    (r"norm(\d)\.", "stages.{stage}.norm."),
)


def mit_state_from_smp(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An smp ``mix_transformer`` encoder's state dict (keys without the ``encoder.`` prefix) in this encoder's
    names, by :data:`SMP_MIT_KEYS`; a classifier ``head.*`` is dropped; ConfigError on a key no rule renames."""
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        for pattern, replacement in SMP_MIT_KEYS:
            match = re.match(pattern, key)
            if match:
                new = match.expand(replacement.format(stage=int(match.group(1)) - 1))
                out[new + key[match.end() :]] = value
                break
        else:
            raise ConfigError(f"{key!r} is not a key of an smp MiT encoder")
    return out
