"""The encoder contract: a module returning a list of feature maps, described by FeatureInfo."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """One encoder output: its channel count and its reduction (stride) relative to the input."""

    channels: int
    reduction: int


class Encoder(nn.Module):
    """Base class: ``forward(x) -> list[Tensor]``, one tensor per entry of ``feature_info``, shallow to deep.

    Decoders are built from ``feature_info`` alone, never from an encoder's name.
    """

    feature_info: list[FeatureInfo]

    @property
    def output_stride(self) -> int:
        """The largest reduction: inputs are padded to a multiple of it."""
        return max(f.reduction for f in self.feature_info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
