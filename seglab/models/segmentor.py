"""encoder -> decoder -> head, written once for every architecture."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seglab.errors import ConfigError
from seglab.models.encoders.base import Encoder
from seglab.models.heads import SegmentationHead

PAD_MODES = ("reflect", "constant", "replicate")


@dataclass(frozen=True)
class InputGeometry:
    """Which input sizes a network takes, per axis.

    The logits cover an output window of size ``o`` for an input of size ``o + 2 * margin``, where
    ``o % multiple == offset % multiple`` and the input is at least ``min_size``. "Same"-padded networks have
    margin 0 and offset 0 (``multiple`` is the encoder's output stride); the paper's "valid" U-Net loses a
    margin of context on each side and needs o = 4 (mod 2**(depth-1)). ``min_size``: e.g. Inception's 75.
    """

    multiple: int = 1
    offset: int = 0
    margin: int = 0
    min_size: int = 1

    def output_size(self, size: int) -> int:
        """The smallest valid output window that covers ``size`` pixels."""
        o = max(size, self.min_size - 2 * self.margin, 1)
        return o + (self.offset - o) % self.multiple


class Segmentor(nn.Module):
    """Any H x W in, logits (N, num_classes, H, W) out: ``features = encoder(x)``, then
    ``head(decoder(features), features)``.

    The decoder turns the encoder's features into features (``decoder.out_channels`` channels, never class
    scores); the head makes the class scores from them, reading the encoder's ``features`` too where its
    architecture scores skips (FCN, LR-ASPP; other heads ignore them).

    Inputs are padded (``pad_mode``: "reflect", "constant" (zeros) or "replicate") at the bottom and right to
    the next size the network takes (a multiple of the encoder's output stride, see :class:`InputGeometry`),
    with ``margin`` more on every side for "valid" networks, and the logits are cropped back, so users never
    see "must be divisible by 32". Reflect padding falls back to replicate when the pad exceeds the image.
    Logits below the input resolution are upsampled bilinearly first (``align_corners=True``: smp's
    ``UpsamplingBilinear2d``, which the smp checkpoint loader sets; the size, not a scale factor, is given, which
    is the same sampling when the input is a multiple of the logits' stride).

    ``freeze_encoder()`` stops gradients into the encoder and keeps it in eval mode (batch-norm statistics
    and dropout frozen too) even when the model trains; ``unfreeze_encoder()`` undoes it.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        head: nn.Module,
        pad_mode: str = "reflect",
        geometry: InputGeometry | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"unknown pad_mode {pad_mode!r}; choose one of: {', '.join(PAD_MODES)}")
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.pad_mode = pad_mode
        self.align_corners = align_corners
        self.geometry = geometry or InputGeometry(
            multiple=encoder.output_stride, min_size=getattr(encoder, "min_input_size", 1)
        )
        self.encoder_frozen = False

    @property
    def stride(self) -> int:
        return self.geometry.multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        g = self.geometry
        oh, ow = g.output_size(h), g.output_size(w)
        m = g.margin
        pads = (m, m + ow - w, m, m + oh - h)  # left, right, top, bottom
        if any(pads):
            fits = max(pads[:2]) < w and max(pads[2:]) < h  # reflect needs pad < size
            mode = self.pad_mode if (fits or self.pad_mode != "reflect") else "replicate"
            x = F.pad(x, pads, mode=mode)
        features = self.encoder(x)
        logits = self.head(self.decoder(features), features)
        if logits.shape[-2:] != (oh, ow):
            if m:
                raise RuntimeError(f"logits of {tuple(logits.shape[-2:])} do not fit the geometry {g}")
            logits = F.interpolate(logits, size=(oh, ow), mode="bilinear", align_corners=self.align_corners)
        return logits[..., :h, :w]

    def freeze_encoder(self) -> Segmentor:
        """Train only the decoder and head: encoder parameters get no gradients and the encoder stays in eval
        mode (running batch-norm statistics, no dropout). Returns self."""
        self.encoder_frozen = True
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        return self

    def unfreeze_encoder(self) -> Segmentor:
        """Undo :meth:`freeze_encoder`: the encoder trains again (and follows the model's train/eval mode)."""
        self.encoder_frozen = False
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        self.encoder.train(self.training)
        return self

    def train(self, mode: bool = True) -> Segmentor:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self


__all__ = ["PAD_MODES", "InputGeometry", "SegmentationHead", "Segmentor"]
