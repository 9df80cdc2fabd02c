"""encoder -> decoder -> head, written once for every architecture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.models.encoders.base import Encoder


class SegmentationHead(nn.Sequential):
    """Optional dropout, a 1x1 conv to ``num_classes``, and upsampling by ``scale`` to the input size."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), nn.Conv2d(in_channels, num_classes, 1)
        )


class Segmentor(nn.Module):
    """Any H x W in, logits (N, num_classes, H, W) out.

    Inputs are padded (``pad_mode``: "reflect" or "constant") to a multiple of the encoder's output stride and
    the logits cropped back, so users never see "must be divisible by 32".
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        head: nn.Module,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.pad_mode = pad_mode

    @property
    def stride(self) -> int:
        return self.encoder.output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.stride
        ph, pw = -h % s, -w % s
        if ph or pw:
            mode = self.pad_mode if (ph < h and pw < w) else "replicate"  # reflect needs pad < size
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        logits = self.head(self.decoder(self.encoder(x)))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
