"""Metric math on confusion matrices: pure functions on tensors.

Convention: ``cm[t, p]`` counts pixels of true class t predicted as p. Every score function also takes a stack
of matrices (..., C, C), e.g. the per-image matrices of ``confusion_matrix(..., per_image=True)``, and returns
(..., C) per-class scores (or (...) for ``average != "none"``).

Absent-class policy (one for all scores): a class with no ground-truth *and* no predicted pixels has an
undefined IoU/Dice/precision/recall. It scores ``absent`` (default NaN) and NaN is excluded from every mean, so
an image without class c neither rewards nor punishes c. Pass ``absent=1.0`` for the "both empty = perfect"
convention of per-image medical Dice, or ``absent=0.0`` for torchmetrics' ``zero_division=0`` per-class values.
A class that is present on one side only is always defined: missed (no prediction) or hallucinated (no
ground truth) gives IoU = Dice = 0, and precision or recall 0 where their denominator is empty.
Class accuracy (recall per class) follows the FCN/mmseg "mean accuracy": NaN where the class has no
ground-truth pixel, so ``mean_accuracy`` averages over the classes present in the ground truth.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Average = Literal["none", "macro", "micro", "weighted"]
NAN = float("nan")

# Bins the ignore trick may add before we fall back to an explicit mask (see confusion_matrix).
_MAX_EXTRA_BINS = 1 << 16


def confusion_matrix(  # noqa: C901 - hot path: its checks stay inline, ordered to save passes and syncs
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    *,
    per_image: bool = False,
    validate: bool | Literal["target"] = True,
) -> Tensor:
    """(C, C) int64 confusion matrix of integer labels ``pred`` and ``target`` (same shape, e.g. (N, H, W)).

    Pixels whose target is ``ignore_index`` are skipped. ``per_image=True`` returns (N, C, C), one matrix per
    leading index, from the same single ``bincount`` (their sum is the global matrix).

    Speed: one fused ``pred + C * target`` and one ``bincount``, no boolean compaction. Ignored pixels are
    not masked out: their codes land in the extra row ``ignore_index`` of an extended matrix, which is
    dropped. ``validate`` checks ``pred`` in [0, C) (one ``aminmax``, the only extra pass) and, for free,
    that the dropped rows hold only ignored pixels; ``"target"`` checks the target only (for argmax labels,
    in range by construction); False skips both and the host syncs they cost on a GPU (bad labels then give
    a wrong matrix instead of an error).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or pred.is_complex() or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"pred and target must hold integer labels, got {pred.dtype} and {target.dtype}; "
            "pass logits through argmax(1) first (seglab.metrics.ConfusionMatrix does this for you)"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    c = num_classes
    n_img = pred.shape[0] if per_image else 1
    if per_image and pred.dim() < 2:
        raise ValueError(f"per_image needs a batch dimension, got shape {tuple(pred.shape)}")

    # The extended matrix has true-label rows first_row..last_row; the classes are rows 0..C-1.
    first_row = 0 if ignore_index is None else min(0, ignore_index)
    last_row = c - 1 if ignore_index is None else max(c - 1, ignore_index)
    use_mask = (last_row - first_row + 1 - c) * c > _MAX_EXTRA_BINS
    if use_mask:  # a far-away ignore_index: one where() instead of a huge bincount
        first_row, last_row = 0, c
    rows = last_row - first_row + 1
    per_img_bins = rows * c
    wide = torch.int64 if n_img * per_img_bins >= 2**31 else torch.int32
    # int64 labels stay int64 (casting costs more than it saves); narrower ones (uint8, bool) are widened once.
    if pred.dtype != torch.int64:
        pred = pred.to(wide)
    if target.dtype != torch.int64:
        target = target.to(wide)
    if validate is True and pred.numel() and not _in_range(pred, 0, c - 1):
        bad = pred[(pred < 0) | (pred >= c)][0]
        raise ValueError(f"pred holds label {int(bad)} outside 0..{c - 1} (num_classes={c})")
    if (
        validate
        and per_image
        and target.numel()
        and not use_mask
        and not _in_range(target, first_row, last_row)
    ):
        # codes must stay inside their image's block of bins, else a bad label would alias into the next
        _raise_bad_target(target, c, ignore_index)
    shifted = target - first_row if first_row else target
    code = torch.add(pred, shifted, alpha=c)
    if use_mask:
        ignored = target == ignore_index
        if validate and not _in_range(torch.where(ignored, 0, target), 0, c - 1):
            _raise_bad_target(target, c, ignore_index)
        code = torch.where(ignored, c * c, code)  # the extra row c
    if n_img > 1:
        offsets = torch.arange(n_img, device=code.device, dtype=code.dtype) * per_img_bins
        code = code.reshape(n_img, -1) + offsets[:, None]
    try:
        counts = torch.bincount(code.reshape(-1), minlength=n_img * per_img_bins)
    except RuntimeError:  # negative codes: a target below every valid row
        _raise_bad_target(target, c, ignore_index)
    if counts.numel() > n_img * per_img_bins:
        _raise_bad_target(target, c, ignore_index)
    counts = counts.view(n_img, rows, c)
    start = -first_row
    if validate:
        per_row = counts.sum((0, 2))
        expected = torch.zeros_like(per_row)
        expected[start : start + c] = per_row[start : start + c]
        if use_mask:
            expected[c] = per_row[c]  # checked above
        elif ignore_index is not None:
            expected[ignore_index - first_row] = per_row[ignore_index - first_row]
        if not torch.equal(per_row, expected):
            _raise_bad_target(target, c, ignore_index)
    cm = counts[:, start : start + c]
    if ignore_index is not None and 0 <= ignore_index < c:
        cm = cm.clone()
        cm[:, ignore_index] = 0  # an in-range ignore_index: its row holds exactly the ignored pixels
    cm = cm.contiguous()
    return cm if per_image else cm[0]


def _in_range(x: Tensor, lo: int, hi: int) -> bool:
    x_lo, x_hi = torch.aminmax(x)
    return lo <= int(x_lo) and int(x_hi) <= hi


def _raise_bad_target(target: Tensor, num_classes: int, ignore_index: int | None) -> None:
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    value = int(target[bad][0]) if bool(bad.any()) else "?"
    raise ValueError(f"target holds label {value} outside 0..{num_classes - 1} (ignore_index={ignore_index})")


def _stats(cm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TP, FP, FN per class as float64, shape (..., C)."""
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return tp, cm.sum(-2) - tp, cm.sum(-1) - tp


def _ratio(num: Tensor, den: Tensor, absent_mask: Tensor, absent: float) -> Tensor:
    """num / den; 0 where den is 0 but the class is present somewhere; ``absent`` where it is nowhere."""
    out = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    return torch.where(absent_mask, torch.full_like(num, absent), out)


def _average(per_class: Tensor, cm: Tensor, average: Average, micro: Tensor | None = None) -> Tensor:
    if average == "none":
        return per_class
    if average == "macro":
        return per_class.nanmean(-1)
    if average == "weighted":  # by ground-truth frequency (FCN's "frequency weighted")
        support = cm.double().sum(-1)  # classes without ground truth weigh 0, whatever their score
        total = support.sum(-1)
        weighted = (support * per_class.nan_to_num(0.0)).sum(-1)
        return torch.where(total > 0, weighted / total.clamp_min(1), torch.full_like(total, NAN))
    if average == "micro" and micro is not None:
        return micro
    raise ValueError(f"average must be one of none, macro, micro, weighted; got {average!r}")


def iou(cm: Tensor, average: Average = "none", absent: float = NAN) -> Tensor:
    """Per-class IoU = TP / (TP + FP + FN) = |A n B| / |A u B|; ``absent`` for classes in neither.

    ``average``: "macro" (NaN-excluding class mean = mIoU), "weighted" (by ground-truth frequency = fwIoU),
    "micro" (sum TP / sum (TP + FP + FN) over classes), "none" (per class).
    """
    tp, fp, fn = _stats(cm)
    union = tp + fp + fn
    per_class = _ratio(tp, union, union == 0, absent)
    micro = None
    if average == "micro":
        micro = _safe(tp.sum(-1), union.sum(-1))
    return _average(per_class, cm, average, micro)


def dice(cm: Tensor, average: Average = "none", absent: float = NAN) -> Tensor:
    """Per-class Dice (F1) = 2TP / (2TP + FP + FN) = 2 IoU / (1 + IoU); ``absent`` for classes in neither."""
    tp, fp, fn = _stats(cm)
    den = 2 * tp + fp + fn
    per_class = _ratio(2 * tp, den, den == 0, absent)
    micro = _safe(2 * tp.sum(-1), den.sum(-1)) if average == "micro" else None
    return _average(per_class, cm, average, micro)


def precision(cm: Tensor, average: Average = "none", absent: float = NAN) -> Tensor:
    """Per-class precision TP / (TP + FP): 0 for a class never predicted but present in the ground truth."""
    tp, fp, fn = _stats(cm)
    per_class = _ratio(tp, tp + fp, tp + fp + fn == 0, absent)
    micro = _safe(tp.sum(-1), (tp + fp).sum(-1)) if average == "micro" else None
    return _average(per_class, cm, average, micro)


def recall(cm: Tensor, average: Average = "none", absent: float = NAN) -> Tensor:
    """Per-class recall TP / (TP + FN): 0 for a class predicted but absent from the ground truth."""
    tp, fp, fn = _stats(cm)
    per_class = _ratio(tp, tp + fn, tp + fp + fn == 0, absent)
    micro = _safe(tp.sum(-1), (tp + fn).sum(-1)) if average == "micro" else None
    return _average(per_class, cm, average, micro)


def class_accuracy(cm: Tensor) -> Tensor:
    """Per-class accuracy TP / (TP + FN), NaN where the class has no ground-truth pixel (FCN convention)."""
    tp, _, fn = _stats(cm)
    support = tp + fn
    return torch.where(support > 0, tp / support.clamp_min(1), torch.full_like(tp, NAN))


def _safe(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, NAN))


def pixel_accuracy(cm: Tensor) -> float:
    """Correct pixels / valid pixels (NaN for an empty matrix)."""
    total = cm.sum()
    return float(cm.diagonal(dim1=-2, dim2=-1).sum().double() / total) if total > 0 else NAN


def pixel_error(cm: Tensor) -> float:
    """1 - pixel accuracy: the ISBI 2012 "pixel error" when ``cm`` is the 2 x 2 membrane/cell matrix."""
    return 1.0 - pixel_accuracy(cm)


def mean_accuracy(cm: Tensor) -> float:
    """Mean class accuracy over the classes present in the ground truth (= balanced accuracy)."""
    return _nanmean(class_accuracy(cm))


def fw_iou(cm: Tensor) -> float:
    """Frequency-weighted IoU: sum_c freq_c IoU_c with freq_c the class's share of ground-truth pixels."""
    return float(iou(cm, "weighted"))


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.cpu().tolist()]


def summarize(cm: Tensor, absent: float = NAN) -> dict[str, float | list[float]]:
    """Every confusion-matrix metric of a (C, C) matrix; means exclude NaN (see the module's absent policy).

    Scalars: pixel_accuracy, mean_accuracy, miou, fwiou, mean_dice, mean_precision, mean_recall.
    Per-class lists: iou, dice, precision, recall, accuracy.
    """
    ious, dices = iou(cm, absent=absent), dice(cm, absent=absent)
    precs, recs, accs = precision(cm, absent=absent), recall(cm, absent=absent), class_accuracy(cm)
    return {
        "pixel_accuracy": pixel_accuracy(cm),
        "mean_accuracy": _nanmean(accs),
        "miou": _nanmean(ious),
        "fwiou": fw_iou(cm),
        "mean_dice": _nanmean(dices),
        "mean_precision": _nanmean(precs),
        "mean_recall": _nanmean(recs),
        "iou": _floats(ious),
        "dice": _floats(dices),
        "precision": _floats(precs),
        "recall": _floats(recs),
        "accuracy": _floats(accs),
    }


def _nanmean(t: Tensor) -> float:
    if t.numel() == 0 or bool(t.isnan().all()):
        return NAN
    return float(t.nanmean())


def per_image_scores(cms: Tensor, absent: float = NAN) -> dict[str, Tensor]:
    """Per-image IoU and Dice of stacked matrices (N, C, C): (N, C) per class and (N,) NaN-excluding means.

    Averaging the (N,) means over images gives the "per-image" (samplewise) reduction, which differs from
    the global one: a small object missed in one image costs that image's whole share.
    """
    ious, dices = iou(cms, absent=absent), dice(cms, absent=absent)
    return {"iou": ious, "dice": dices, "miou": ious.nanmean(-1), "mean_dice": dices.nanmean(-1)}
