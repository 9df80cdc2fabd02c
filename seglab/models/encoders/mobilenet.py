"""A small native MobileNet (v1, Howard et al., 2017) made of depthwise-separable convolutions."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct, DepthwiseSeparableConv2d
from seglab.layers.resolve import ActArg, NormArg
from seglab.models.encoders.base import Encoder, FeatureInfo

# MobileNet v1 after its stem (a 3x3 stride-2 conv of width base): (width / base, stride) of each
# depthwise-separable block, grouped into the stages whose outputs are the features (reductions 2 .. 32).
MOBILENET_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((2, 1),),
    ((4, 2), (4, 1)),
    ((8, 2), (8, 1)),
    ((16, 2), (16, 1), (16, 1), (16, 1), (16, 1), (16, 1)),
    ((32, 2), (32, 1)),
)


class MobileNetEncoder(Encoder):
    """MobileNet v1: a 3x3 stride-2 stem, then 13 depthwise-separable blocks; ``base_channels`` (32) is the
    stem width (MobileNet's width multiplier is base / 32).

    Shape: (N, in_channels, H, W) -> [(N, base*2**(i+1), H/2**(i+1), W/2**(i+1)) for i in range(depth)].
    ``output_stride`` 8 or 16 replaces the later stride-2 blocks by stride 1 and dilates the blocks after
    them instead (as DeepLab does), so the deepest features stay at 1/8 or 1/16. Trainable.
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        base_channels: int = 32,
        norm: NormArg = "bn",
        act: ActArg = "relu",
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= depth <= len(MOBILENET_STAGES):
            raise ConfigError(f"MobileNet encoder depth must be 1..{len(MOBILENET_STAGES)}, got {depth}")
        natural = 2**depth
        if output_stride is not None and (output_stride not in (8, 16, 32) or output_stride > natural):
            raise ConfigError(
                f"the mobilenet encoder of depth {depth} supports output_stride 8, 16 or 32 up to {natural}, "
                f"got {output_stride}"
            )
        target = output_stride or natural
        self.stem = ConvNormAct(in_channels, base_channels, 3, stride=2, norm=norm, act=act)
        reduction, dilation, c_in = 2, 1, base_channels
        stages, self.feature_info = [], []
        for stage in MOBILENET_STAGES[:depth]:
            blocks = []
            for mult, stride in stage:
                c_out = base_channels * mult
                block_dilation = dilation
                if stride > 1 and reduction >= target:
                    dilation *= stride  # keep the resolution; the blocks after this one see further instead
                    stride = 1
                reduction *= stride
                blocks.append(
                    DepthwiseSeparableConv2d(
                        c_in, c_out, 3, stride, dilation=block_dilation, norm=norm, act=act, dw_act=act
                    )
                )
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(FeatureInfo(c_in, reduction))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
