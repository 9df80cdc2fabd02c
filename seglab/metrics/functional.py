"""Metric math on confusion matrices: pure functions on tensors.

Convention: ``cm[t, p]`` counts pixels of true class t predicted as p. A class with no ground-truth and no
predicted pixels has an undefined IoU/Dice: NaN, excluded from the means.
"""

from __future__ import annotations

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """(C, C) int64 confusion matrix of integer ``pred`` and ``target`` of the same shape; ignored pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    if ignore_index is not None:
        valid = target != ignore_index
        target, pred = target[valid], pred[valid]
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).view(
        num_classes, num_classes
    )


def iou(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU = TP / (TP + FP + FN); NaN for classes absent from both prediction and target."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)


def dice(cm: torch.Tensor) -> torch.Tensor:
    """Per-class Dice = 2TP / (2TP + FP + FN); NaN for classes absent from both prediction and target."""
    cm = cm.double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.nan)


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diag().sum() / total) if total > 0 else float("nan")


def summarize(cm: torch.Tensor) -> dict[str, float | list[float]]:
    """Pixel accuracy, per-class IoU and Dice and their NaN-excluding means."""
    ious, dices = iou(cm), dice(cm)
    return {
        "pixel_accuracy": pixel_accuracy(cm),
        "miou": float(ious.nanmean()),
        "mean_dice": float(dices.nanmean()),
        "iou": ious.tolist(),
        "dice": dices.tolist(),
    }
