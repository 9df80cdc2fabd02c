"""Pyramid decoders, built from FeatureInfo only: FPN's semantic branch (Kirillov et al., 2019, "Panoptic Feature
Pyramid Networks"), PSPNet's pyramid pooling module (Zhao et al., 2017, "Pyramid Scene Parsing Network") and
UPerNet (Xiao et al., 2018, "Unified Perceptual Parsing": pyramid pooling on the deepest feature + FPN fusion of
every level), laid out as smp 0.6 and MMSegmentation build them.

Adaptive average pooling is computed by :func:`adaptive_avg_pool` (two small averaging matrices): exactly
``F.adaptive_avg_pool2d``, but an ONNX graph exported with dynamic sizes runs at any size (the exporter bakes the
example's bin boundaries into ``adaptive_avg_pool2d``, whose graph is then wrong or fails at other sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import FeatureInfo

PSP_BINS = (1, 2, 3, 6)  # PSPNet's pyramid: 1x1, 2x2, 3x3 and 6x6 bins
FPN_MERGES = ("add", "cat")


def adaptive_pool_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """The (bins, size) matrix whose row i averages PyTorch's adaptive bin i of ``size`` samples: from
    floor(i * size / bins) to ceil((i + 1) * size / bins), exclusive. Built from the (possibly symbolic) size."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(size, device=like.device)
    inside = (j[None] >= start[:, None]) & (j[None] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as P_h @ x @ P_w^T (:func:`adaptive_pool_matrix`), so a dynamic-size
    ONNX export computes the bins from the input's size. Shape: (N, C, H, W) -> (N, C, bins, bins)."""
    h, w = x.shape[-2:]
    return adaptive_pool_matrix(h, bins, x) @ x @ adaptive_pool_matrix(w, bins, x).transpose(0, 1)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: for each bin count b of ``bins``, adaptive average pooling to b x b, a 1x1
    ConvNormAct to ``branch_channels`` and bilinear upsampling back to H x W; concatenated after the input
    (before it with ``input_last``, as smp's PSPNet).

    Shape: (N, C, H, W) -> (N, C + len(bins) * branch_channels, H, W). The 1x1 bin's branch has ``pool_norm``
    (default none: a conv with bias, so batch size 1 trains, as seglab's ASPP image pooling; smp does the same
    in PSPNet; ``"bn"`` is MMSegmentation's and smp's UPerNet's).
    """

    def __init__(
        self,
        in_channels: int,
        branch_channels: int,
        bins: Sequence[int] = PSP_BINS,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
        align_corners: bool = False,
        input_last: bool = False,
    ) -> None:
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        if not self.bins or min(self.bins) < 1:
            raise ConfigError(f"pyramid pooling bins must be positive integers, got {tuple(bins)}")
        self.branches = nn.ModuleList(
            ConvNormAct(in_channels, branch_channels, 1, norm=pool_norm if b == 1 else norm, act=act)
            for b in self.bins
        )
        self.align_corners, self.input_last = align_corners, input_last
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for b, branch in zip(self.bins, self.branches):
            y = branch(adaptive_avg_pool(x, b))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners))
        return torch.cat(outs[1:] + outs[:1] if self.input_last else outs, dim=1)


class PSPDecoder(nn.Module):
    """PSPNet (Zhao et al., 2017): pyramid pooling (bins 1, 2, 3, 6, branches of C / len(bins) channels) on the
    deepest feature, then a ``fuse_kernel`` ConvNormAct to ``channels`` (the paper's 3x3 to 512; smp's PSPNet
    uses a 1x1). The paper's dropout 0.1 before the classifier is the head's. ``input_last``: the features after
    the pooled branches in the concatenation (smp's order).

    Shape: deepest (N, C, H/r, W/r) -> (N, ``channels``, H/r, W/r).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int = 512,
        bins: Sequence[int] = PSP_BINS,
        branch_channels: int | None = None,
        fuse_kernel: int = 3,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
        align_corners: bool = False,
        input_last: bool = False,
    ) -> None:
        super().__init__()
        deep = feature_info[-1]
        branch = branch_channels or max(1, deep.channels // len(bins))
        self.ppm = PyramidPooling(
            deep.channels, branch, bins, norm, act, pool_norm, align_corners, input_last
        )
        self.fuse = ConvNormAct(self.ppm.out_channels, channels, fuse_kernel, norm=norm, act=act)
        self.out_channels = channels
        self.reduction = deep.reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.ppm(features[-1]))


def pyramid_levels(feature_info: list[FeatureInfo], levels: int, arch: str) -> list[FeatureInfo]:
    """The deepest ``levels`` features (FPN's and UPerNet's C2..C5 at 1/4 .. 1/32 for a ResNet), checked."""
    if levels < 1:
        raise ConfigError(f"{arch} needs levels >= 1, got {levels}")
    return feature_info[-levels:]


class ConvUp(nn.Sequential):
    """FPN's segmentation-branch stage: a 3x3 ConvNormAct, then 2x bilinear upsampling when ``upsample``."""

    def __init__(
        self, in_channels: int, out_channels: int, upsample: bool, norm: NormArg, act: ActArg, align: bool
    ) -> None:
        up = (
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=align) if upsample else nn.Identity()
        )
        super().__init__(ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act), up)


class FPNDecoder(nn.Module):
    """FPN's semantic segmentation branch (Kirillov et al., 2019; smp's FPN): a top-down pyramid over the deepest
    ``levels`` features (1x1 lateral convs to ``pyramid_channels``, the coarser level upsampled (nearest) and
    added), then each pyramid level brought to the finest level's resolution by log2(r / r_finest) stages of
    3x3 ConvNormAct (GroupNorm by default, as the paper) + 2x bilinear upsampling (one conv, no upsampling, for
    the finest level), and merged by ``merge`` "add" (the paper) or "cat".

    Shape: (N, ``segmentation_channels`` (x levels for "cat"), H/r, W/r), r the finest level's reduction (1/4
    for the usual encoders); the Segmentor upsamples the logits to the input. ``align_corners``: of the 2x
    upsampling (smp's FPN uses True).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        merge: str = "add",
        levels: int = 4,
        norm: NormArg = "gn",
        act: ActArg = "relu",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if merge not in FPN_MERGES:
            raise ConfigError(f"unknown FPN merge {merge!r}; choose one of: {', '.join(FPN_MERGES)}")
        used = pyramid_levels(feature_info, levels, "FPN")
        self.levels, self.merge = len(used), merge
        finest = used[0].reduction
        self.lateral = nn.ModuleList(nn.Conv2d(f.channels, pyramid_channels, 1) for f in used)
        branches = []
        for f in used:
            ratio = f.reduction // finest
            if f.reduction % finest or ratio & (ratio - 1):
                raise ConfigError(
                    f"FPN upsamples by powers of 2, but the encoder's features at reduction {f.reduction} are "
                    f"not a power of 2 coarser than {finest}"
                )
            steps = int(math.log2(ratio))
            stages = [ConvUp(pyramid_channels, segmentation_channels, steps > 0, norm, act, align_corners)]
            stages += [
                ConvUp(segmentation_channels, segmentation_channels, True, norm, act, align_corners)
                for _ in range(1, steps)
            ]
            branches.append(nn.Sequential(*stages))
        self.branches = nn.ModuleList(branches)
        self.out_channels = segmentation_channels * (self.levels if merge == "cat" else 1)
        self.reduction = finest

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        used = features[-self.levels :]
        p = self.lateral[-1](used[-1])
        pyramid = [p]
        for lateral, skip in zip(self.lateral[-2::-1], used[-2::-1]):
            p = F.interpolate(p, size=skip.shape[-2:], mode="nearest") + lateral(skip)
            pyramid.insert(0, p)
        outs = [branch(level) for branch, level in zip(self.branches, pyramid)]
        return torch.stack(outs).sum(dim=0) if self.merge == "add" else torch.cat(outs, dim=1)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (smp's UPerNet normalises every feature with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class UPerNetDecoder(nn.Module):
    """UPerNet (Xiao et al., 2018; MMSegmentation's UPerHead, smp's UPerNet): pyramid pooling (bins 1, 2, 3, 6, each
    branch ``channels`` wide) and a 3x3 ConvNormAct on the deepest of the ``levels`` features; 1x1 lateral
    ConvNormActs on the others, fused top-down (bilinear upsampling + add) and each refined by a 3x3 ConvNormAct;
    every level resized to the finest, concatenated (fine to coarse) and fused by a 3x3 ConvNormAct.
    ``feature_norm``: LayerNorm each feature first (smp does, for transformer encoders).

    Shape: (N, ``channels``, H/r, W/r), r the finest level's reduction (1/4 for the usual encoders).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        channels: int = 256,
        levels: int = 4,
        bins: Sequence[int] = PSP_BINS,
        feature_norm: bool = False,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        pool_norm: NormArg = "none",
    ) -> None:
        super().__init__()
        used = pyramid_levels(feature_info, levels, "UPerNet")
        self.levels = len(used)
        self.feature_norms = nn.ModuleList(
            LayerNorm2d(f.channels, eps=1e-6) if feature_norm else nn.Identity() for f in used
        )
        self.ppm = PyramidPooling(used[-1].channels, channels, bins, norm, act, pool_norm)
        self.bottleneck = ConvNormAct(self.ppm.out_channels, channels, 3, norm=norm, act=act)
        self.lateral = nn.ModuleList(
            ConvNormAct(f.channels, channels, 1, norm=norm, act=act) for f in used[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3, norm=norm, act=act) for _ in used[:-1]
        )
        self.fuse = ConvNormAct(self.levels * channels, channels, 3, norm=norm, act=act)
        self.out_channels = channels
        self.reduction = used[0].reduction

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        used = [norm(f) for norm, f in zip(self.feature_norms, features[-self.levels :])]
        x = self.bottleneck(self.ppm(used[-1]))
        outs = [x]
        for lateral, conv, skip in zip(self.lateral[::-1], self.fpn_convs[::-1], used[-2::-1]):
            skip = lateral(skip)
            x = skip + F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            outs.insert(0, conv(x))
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        return self.fuse(torch.cat(outs, dim=1))
