"""Streaming confusion matrix: accumulate per batch, compute the metrics once."""

from __future__ import annotations

import torch

from seglab.metrics import functional as MF


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix over batches; mergeable across runs with ``merge``."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: labels (N, H, W) or logits (N, C, H, W); ``target``: (N, H, W)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.matrix += MF.confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> dict[str, float | list[float]]:
        return MF.summarize(self.matrix)
