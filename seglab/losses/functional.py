"""Loss math: pure functions on logits (N, C, H, W) and int64 targets (N, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> None:
    """Raise a clear ValueError for shape mismatches or labels outside [0, C) other than ignore_index."""
    if (
        logits.dim() != target.dim() + 1
        or logits.shape[0] != target.shape[0]
        or logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
            "expected (N, C, H, W) and (N, H, W)"
        )
    bad = (target < 0) | (target >= logits.shape[1])
    if ignore_index is not None:
        bad &= target != ignore_index
    if bad.any():
        value = int(target[bad][0])
        raise ValueError(
            f"target holds label {value} outside 0..{logits.shape[1] - 1} (ignore_index={ignore_index})"
        )


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = 255, smooth: float = 1.0
) -> torch.Tensor:
    """Soft multiclass Dice loss over the batch: 1 - mean_c (2|P_c T_c| + s) / (|P_c| + |T_c| + s).

    Ignored pixels are removed from both numerator and denominator.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(1)
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    v = valid.unsqueeze(1).to(probs.dtype)
    probs, onehot = probs * v, onehot * v
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()
