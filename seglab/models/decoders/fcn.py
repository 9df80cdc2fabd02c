"""FCN (Long et al., 2015): class scores from the deepest features, refined by skips from strides 16 and 8."""

from __future__ import annotations

import torch
from torch import nn

from seglab.errors import ConfigError
from seglab.layers import ConvNormAct
from seglab.layers.resolve import ActArg, NormArg
from seglab.layers.sampling import BilinearUp
from seglab.models.encoders.base import FeatureInfo, feature_index
from seglab.models.heads import learned_upsample

# The skip strides each variant fuses, coarse to fine: FCN-32s none, FCN-16s pool4 (1/16), FCN-8s pool4, pool3.
FCN_VARIANTS: dict[str, tuple[int, ...]] = {"32s": (), "16s": (16,), "8s": (16, 8)}
FCN_UPSAMPLE = ("transposed", "bilinear")


class FCNDecoder(nn.Module):
    """Scores (N, num_classes, h, w) at the finest fused stride: 1/32 (32s), 1/16 (16s) or 1/8 (8s) of the
    input for a stride-32 encoder.

    The deepest features go through torchvision's FCNHead: 3x3 ConvNormAct to ``head_channels`` (default
    in/4), ``nn.Dropout(dropout)``, 1x1 conv to the classes. Each skip feature (the deepest one at stride 16,
    then 8, shallower than the last feature) gets a 1x1 score conv, initialised to zero so that the model
    starts as the coarser variant (the paper's staged training), and is added to the scores upsampled to its
    stride: learned 2s x 2s transposed convs initialised to bilinear (``upsample="transposed"``) or bilinear
    interpolation (``"bilinear"``). ``self.reduction`` is the stride of the output.
    """

    def __init__(
        self,
        feature_info: list[FeatureInfo],
        num_classes: int,
        variant: str = "8s",
        head_channels: int | None = None,
        dropout: float = 0.1,
        upsample: str = "transposed",
        norm: NormArg = "bn",
        act: ActArg = "relu",
    ) -> None:
        super().__init__()
        if variant not in FCN_VARIANTS:
            raise ConfigError(f"unknown FCN variant {variant!r}; choose one of: {', '.join(FCN_VARIANTS)}")
        if upsample not in FCN_UPSAMPLE:
            raise ConfigError(f"unknown FCN upsample {upsample!r}; choose one of: {', '.join(FCN_UPSAMPLE)}")
        deep = feature_info[-1]
        inter = head_channels or max(deep.channels // 4, 1)
        self.score = nn.Sequential(
            ConvNormAct(deep.channels, inter, 3, norm=norm, act=act),
            nn.Dropout(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )
        self.skip_index: list[int] = []
        scores, ups = [], []
        reduction = deep.reduction
        for stride in FCN_VARIANTS[variant]:
            if stride >= reduction:
                raise ConfigError(
                    f"FCN-{variant} fuses a skip at stride {stride}, but the encoder's deepest features are "
                    f"already at stride {reduction}; use variant '32s' or output_stride 32"
                )
            index = feature_index(feature_info, stride, below=len(feature_info) - 1)
            score = nn.Conv2d(feature_info[index].channels, num_classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            scale = reduction // stride
            up = (
                learned_upsample(num_classes, scale)
                if upsample == "transposed"
                else BilinearUp(num_classes, scale=scale)
            )
            self.skip_index.append(index)
            scores.append(score)
            ups.append(up)
            reduction = stride
        self.skip_scores = nn.ModuleList(scores)
        self.ups = nn.ModuleList(ups)
        self.reduction = reduction
        self.out_channels = num_classes

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.score(features[-1])
        for index, score, up in zip(self.skip_index, self.skip_scores, self.ups):
            skip = score(features[index])
            x = up(x, output_size=skip.shape[-2:]) + skip
        return x
