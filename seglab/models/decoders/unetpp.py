"""The U-Net++ decoder (Zhou et al., 2018, "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation"): nested dense skip pathways, built from FeatureInfo only, as smp's ``UnetPlusPlus`` builds it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import UPSAMPLERS, make_upsample
from seglab.models.decoders.linknet import check_final_block
from seglab.models.encoders.base import FeatureInfo
from seglab.models.encoders.unet import DoubleConv


def default_decoder_channels(count: int) -> list[int]:
    """smp's decoder widths for ``count`` nodes, deepest first: 256, 128, 64, 32, 16, 16, ..."""
    return [max(16, 256 >> i) for i in range(count)]


class NestedNode(nn.Module):
    """One node X^{i,j}: upsample X^{i+1,j-1} (non-learned) to level i's size, concatenate it with the
    level's earlier nodes X^{i,j-1}, ..., X^{i,0} (in that order, smp's), then two 3x3 ConvNormAct.

    Shape: x (N, in_channels, h, w), skips (N, skip_channels in all, H, W) -> (N, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: int,
        upsample: str = "nearest",
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        self.up = make_upsample(upsample, in_channels, None, scale)
        self.scale = scale
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, norm, act)

    def forward(
        self, x: torch.Tensor, skips: Sequence[torch.Tensor], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        # exactly ``scale`` x (the Segmentor pads for it): no size argument, so an ONNX export stays dynamic
        # (interpolating to a given size bakes the traced size into the graph)
        exact = size is None or (x.shape[-2] * self.scale, x.shape[-1] * self.scale) == tuple(size[-2:])
        x = self.up(x) if exact else self.up(x, output_size=size)
        return self.conv(torch.cat([x, *skips], dim=1))


class UNetPlusPlusDecoder(nn.Module):
    """U-Net++'s nested decoder over encoder features X^{0,0} ... X^{n-1,0} (shallow to deep).

    Node X^{i,j} (level i < n - 1, 1 <= j <= n - 1 - i) merges the upsampled X^{i+1,j-1} with every earlier node
    of its level (the dense skip pathway). Widths as smp's: the nodes fed from the bottleneck, X^{i,n-1-i}, have
    ``decoder_channels`` (deepest first; default the encoder's own, mirrored: the paper's), the inner nodes the
    encoder's width at their level. The output is X^{0,n-1}; ``final_block`` adds smp's last node, without
    skip, at twice its resolution, of ``decoder_channels[n - 1]`` channels (then ``decoder_channels`` has n
    entries). ``upsample``: a non-learned mode ("nearest", smp's default; "bilinear", "bed_of_nails").
    Node names ``nodes["x_{i}_{j}"]`` are the paper's; smp's ``blocks.x_{d}_{l}`` is ``x_{n-2-l}_{l-d+1}``.
    Deep supervision (the paper's option) is not built.
    Shape: features -> (N, out_channels, H / reduction, W / reduction).
    """

    def __init__(
        self,
        *,
        feature_info: list[FeatureInfo],
        decoder_channels: Sequence[int] | None = None,
        final_block: bool = False,
        upsample: str = "nearest",
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        n = len(feature_info)
        if n < 2:
            raise ConfigError(f"the U-Net++ decoder needs at least 2 encoder features, got {n}")
        if upsample not in UPSAMPLERS or UPSAMPLERS[upsample].trainable or upsample == "max_unpool":
            modes = [m for m, c in UPSAMPLERS.items() if not c.trainable and m != "max_unpool"]
            raise ConfigError(
                f"U-Net++ upsamples without learning before it concatenates; upsample must be one of: "
                f"{', '.join(modes)}, got {upsample!r}"
            )
        check_final_block(feature_info, final_block)
        mirrored = [f.channels for f in feature_info[:-1]][::-1]
        outs = list(decoder_channels) if decoder_channels is not None else mirrored
        if decoder_channels is None and final_block:
            outs.append(max(1, mirrored[-1] // 2))
        if len(outs) != n - 1 + final_block:
            raise ConfigError(
                f"decoder_channels needs {n - 1 + final_block} entries (one per decoder level, deepest first"
                f"{', plus the final block' if final_block else ''}), got {len(outs)}"
            )
        for deep, shallow in zip(feature_info[1:], feature_info[:-1]):
            if deep.reduction % shallow.reduction:
                raise ConfigError(f"cannot upsample from reduction {deep.reduction} to {shallow.reduction}")

        def width(i: int, j: int) -> int:
            return outs[n - 2 - i] if j > 0 and i + j == n - 1 else feature_info[i].channels

        nodes = {}
        for j in range(1, n):
            for i in range(n - j):
                scale = feature_info[i + 1].reduction // feature_info[i].reduction
                skip = feature_info[i].channels * j  # X^{i,0..j-1}: the inner nodes keep the level's width
                nodes[f"x_{i}_{j}"] = NestedNode(
                    width(i + 1, j - 1), skip, width(i, j), scale, upsample, norm, act
                )
        self.nodes = nn.ModuleDict(nodes)
        self.final = NestedNode(outs[-2], 0, outs[-1], 2, upsample, norm, act) if final_block else None
        self.depth = n
        self.out_channels = outs[-1]
        self.reduction = feature_info[0].reduction // (2 if final_block else 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        grid = [[f] for f in features]  # grid[i][j] is X^{i,j}
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                node = self.nodes[f"x_{i}_{j}"]
                grid[i].append(node(grid[i + 1][j - 1], grid[i][::-1], features[i].shape[-2:]))
        x = grid[0][-1]
        if self.final is not None:
            x = self.final(x, [])
        return x
