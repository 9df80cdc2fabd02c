"""Heads: the last step from decoder features (or fused class scores) to logits."""

from __future__ import annotations

import torch
from torch import nn

from seglab.layers.sampling import TransposedConvUp


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


class ScoreUpsampleHead(nn.Module):
    """FCN's last step: class scores at 1/``scale`` -> scores at full resolution by learned upsampling
    (``mode="transposed"``) or, with ``mode="bilinear"``, unchanged (the Segmentor interpolates, as
    torchvision's FCN does). Shape: (N, C, h, w) -> (N, C, scale*h, scale*w) or (N, C, h, w)."""

    def __init__(self, num_classes: int, scale: int, mode: str = "transposed") -> None:
        super().__init__()
        self.up = learned_upsample(num_classes, scale) if mode == "transposed" and scale > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.up is None else self.up(x)
