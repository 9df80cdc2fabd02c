"""Heads: the last step, from decoder features to class scores (logits).

Every head is called as ``head(x, features)``: ``x`` the decoder's output (N, decoder.out_channels, h, w),
``features`` the encoder's list, which heads with skip classifiers read (FCN's stride-16/8 scores, LR-ASPP's
low-level classifier) and the others ignore. So the head's input is always features, never class scores, and
dropout put on it (``add_dropout(where="head")``) drops feature channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.layers.sampling import BilinearUp, TransposedConvUp
from seglab.models.encoders.base import FeatureInfo, feature_index


class SegmentationHead(nn.Sequential):
    """Optional dropout, then a ``kernel_size`` conv (1x1 by default) to ``num_classes``. Trainable.

    Shape: (N, in_channels, h, w) -> (N, num_classes, h, w); the Segmentor upsamples to the input size.
    ``dropout`` > 0 inserts an ``nn.Dropout2d`` (found by type by MC-dropout predictors).
    """

    def __init__(
        self, in_channels: int, num_classes: int, dropout: float = 0.0, kernel_size: int = 1
    ) -> None:
        super().__init__(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(in_channels, num_classes, kernel_size, padding=(kernel_size - 1) // 2),
        )

    def forward(self, x: Tensor, features: Sequence[Tensor] | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x)


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """The (k, k) kernel with which a transposed conv of stride k // 2 is bilinear interpolation (FCN's
    initialisation of its learned upsampling): outer(t, t), t_i = 1 - |i - c| / f, f = ceil(k / 2)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    t = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(t, t).float()


def learned_upsample(channels: int, scale: int) -> TransposedConvUp:
    """FCN's learned upsampling: a 2s x 2s transposed conv of stride s without bias, channels to
    themselves, initialised to bilinear interpolation (each channel to itself). Trainable."""
    up = TransposedConvUp(channels, channels, scale, kernel_size=2 * scale, bias=False)
    weight = up.conv.weight
    with torch.no_grad():
        weight.zero_()
        if weight.device.type != "meta":
            kernel = bilinear_kernel(2 * scale).to(weight.dtype)
            for c in range(channels):
                weight[c, c] = kernel
    return up


# The skip strides each FCN variant fuses, coarse to fine: FCN-32s none, FCN-16s pool4 (1/16), FCN-8s pool4, pool3.
FCN_VARIANTS: dict[str, tuple[int, ...]] = {"32s": (), "16s": (16,), "8s": (16, 8)}
FCN_UPSAMPLE = ("transposed", "bilinear")


class FCNHead(nn.Module):
    """FCN's scoring and skip fusion (Long et al., 2015), from the decoder's features at the deepest stride.

    ``nn.Dropout(dropout)`` and a 1x1 conv score the decoder's features (FCN's ``score_fr``; with the
    :class:`~seglab.models.decoders.FCNDecoder` in front, torchvision's ``FCNHead``). Each skip of ``variant``
    (the deepest encoder feature at stride 16, then 8, shallower than the last) gets a 1x1 score conv
    (``score_pool4``, ``score_pool3``), initialised to zero so the model starts as the coarser variant (the
    paper's staged training), and is added to the scores upsampled to its stride: learned 2s x 2s transposed
    convs initialised to bilinear (``upsample="transposed"``) or bilinear interpolation (``"bilinear"``). The
    fused scores are then upsampled to the input by a learned transposed conv (``"transposed"``), or left to
    the Segmentor's bilinear interpolation (``"bilinear"``, as torchvision's FCN does).

    The fusion adds class scores, so it is the head's: its learned upsamplings map classes to classes.
    Shape: x (N, in_channels, H/r, W/r) -> (N, num_classes, H, W) (transposed), or at the finest skip's stride.
    """

    def __init__(
        self,
        *,
        feature_info: Sequence[FeatureInfo],
        in_channels: int,
        num_classes: int,
        variant: str = "8s",
        upsample: str = "transposed",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in FCN_VARIANTS:
            raise ConfigError(f"unknown FCN variant {variant!r}; choose one of: {', '.join(FCN_VARIANTS)}")
        if upsample not in FCN_UPSAMPLE:
            raise ConfigError(f"unknown FCN upsample {upsample!r}; choose one of: {', '.join(FCN_UPSAMPLE)}")
        self.drop = nn.Dropout(dropout)
        self.score = nn.Conv2d(in_channels, num_classes, 1)
        self.skip_index: list[int] = []
        scores, ups = [], []
        reduction, transposed = feature_info[-1].reduction, upsample == "transposed"
        for stride in FCN_VARIANTS[variant]:
            if stride >= reduction:
                raise ConfigError(
                    f"FCN-{variant} fuses a skip at stride {stride}, but the encoder's deepest features are "
                    f"already at stride {reduction}; use variant '32s' or output_stride 32"
                )
            index = feature_index(list(feature_info), stride, below=len(feature_info) - 1)
            score = nn.Conv2d(feature_info[index].channels, num_classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            scale = reduction // stride
            up = learned_upsample(num_classes, scale) if transposed else BilinearUp(num_classes, scale=scale)
            ups.append(up)
            self.skip_index.append(index)
            scores.append(score)
            reduction = stride
        self.skip_scores = nn.ModuleList(scores)
        self.ups = nn.ModuleList(ups)
        self.up = learned_upsample(num_classes, reduction) if transposed and reduction > 1 else None

    def fuse(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fused class scores at the finest skip's stride (before the final upsampling)."""
        scores = self.score(self.drop(x))
        for index, score, up in zip(self.skip_index, self.skip_scores, self.ups):
            skip = score(features[index])
            scores = up(scores, output_size=skip.shape[-2:]) + skip
        return scores

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        scores = self.fuse(x, features)
        return scores if self.up is None else self.up(scores)


class LRASPPHead(nn.Module):
    """LR-ASPP's classifiers (Howard et al., 2019): a 1x1 conv scores the decoder's (high-level) features and a
    1x1 conv scores the encoder's low-level features ``features[low_index]``; the two are added. Layout and
    state-dict names are those of torchvision's ``LRASPPHead`` classifiers.

    Shape: x (N, in_channels, h, w), features[low_index] (N, low_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, *, in_channels: int, low_channels: int, low_index: int, num_classes: int) -> None:
        super().__init__()
        self.low_index = low_index
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.low_classifier(features[self.low_index]) + self.high_classifier(x)
