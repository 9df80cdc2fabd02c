"""Streaming meters: accumulate integer counts per batch, compute the metrics once.

Counts (not scores) are accumulated, so meters are exact, order-independent and mergeable: across batches,
across runs (``merge``, ``state_dict``) and across processes (``all_reduce``, a sum of int64 tensors).
The counts stay on the device of the inputs, so ``update`` never forces a copy to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab.metrics import boundary as MB
from seglab.metrics import functional as MF


def logits_to_labels(pred: Tensor, target: Tensor) -> Tensor:
    """Labels from logits (N, C, H, W): argmax over C, or ``> 0`` for single-channel (sigmoid) outputs."""
    if pred.dim() == target.dim() + 1:
        if pred.shape[1] == 1:
            return (pred[:, 0] > 0).long()
        return pred.argmax(1)
    if pred.is_floating_point():
        raise ValueError(
            f"float pred of shape {tuple(pred.shape)} with target {tuple(target.shape)}: pass integer labels "
            "of the target's shape or logits (N, C, H, W)"
        )
    return pred


def all_reduce_sum(t: Tensor, group: Any = None) -> None:
    """Sum ``t`` in place over the processes (a CPU tensor travels through the GPU under nccl)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if t.device.type == "cpu" and dist.get_backend(group) == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM, group=group)
        t.copy_(on_gpu)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


class ConfusionMatrix:
    """Accumulates a (C, C) int64 confusion matrix over batches (``cm[t, p]``) and computes every metric.

    ``absent`` is the score of a class with neither ground-truth nor predicted pixels (NaN: excluded from the
    means; see ``seglab.metrics.functional``). ``per_image=True`` also accumulates per-image IoU and Dice
    (the samplewise reduction, at no extra bincount) and ``compute`` then adds ``miou_per_image``,
    ``mean_dice_per_image`` and per-class ``iou_per_image`` / ``dice_per_image``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        *,
        absent: float = MF.NAN,
        per_image: bool = False,
        validate: bool = True,
    ) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.absent, self.per_image, self.validate = absent, per_image, validate
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        # per image: sums and counts of defined (non-NaN) scores; row 0 IoU, row 1 Dice
        self.image_sums = torch.zeros(2, num_classes, dtype=torch.float64)
        self.image_counts = torch.zeros(2, num_classes, dtype=torch.int64)
        self.image_mean_sums = torch.zeros(2, dtype=torch.float64)
        self.image_mean_counts = torch.zeros(2, dtype=torch.int64)  # images with a defined mean

    def _tensors(self) -> dict[str, Tensor]:
        return {
            "matrix": self.matrix,
            "image_sums": self.image_sums,
            "image_counts": self.image_counts,
            "image_mean_sums": self.image_mean_sums,
            "image_mean_counts": self.image_mean_counts,
        }

    def _to(self, device: torch.device) -> None:
        if self.matrix.device != device:
            for name, t in self._tensors().items():
                setattr(self, name, t.to(device))

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: labels (N, H, W) or logits (N, C, H, W) (argmax; C = 1: ``> 0``); ``target``: (N, H, W)."""
        labels = logits_to_labels(pred, target)
        self._to(labels.device)
        # argmax/threshold labels are in range by construction: only the target needs checking then
        validate = "target" if self.validate and labels is not pred else self.validate
        cms = MF.confusion_matrix(
            labels,
            target,
            self.num_classes,
            self.ignore_index,
            per_image=self.per_image,
            validate=validate,
        )
        if not self.per_image:
            self.matrix += cms
            return
        self.matrix += cms.sum(0)
        scores = MF.per_image_scores(cms, self.absent)
        for row, (key, mean_key) in enumerate((("iou", "miou"), ("dice", "mean_dice"))):
            vals, means = scores[key], scores[mean_key]
            self.image_sums[row] += vals.nan_to_num(0.0).sum(0)
            self.image_counts[row] += (~vals.isnan()).sum(0)
            self.image_mean_sums[row] += means.nan_to_num(0.0).sum()
            self.image_mean_counts[row] += (~means.isnan()).sum()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another meter's counts (another run, another shard of the data)."""
        if other.num_classes != self.num_classes or other.per_image != self.per_image:
            raise ValueError("can only merge meters with the same num_classes and per_image")
        for name, t in self._tensors().items():
            t += getattr(other, name).to(t.device)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the counts over all processes of ``torch.distributed`` (no-op when it is not initialised)."""
        for t in self._tensors().values():
            all_reduce_sum(t, group)

    def reset(self) -> None:
        for t in self._tensors().values():
            t.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {name: t.detach().cpu().clone() for name, t in self._tensors().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in self._tensors().items():
            t.copy_(state[name])

    def compute(self) -> dict[str, float | list[float]]:
        """``seglab.metrics.functional.summarize`` of the matrix (+ the per-image reductions if enabled)."""
        out = MF.summarize(self.matrix.cpu(), self.absent)
        if self.per_image:
            counts = self.image_counts.cpu().double()
            per_class = torch.where(counts > 0, self.image_sums.cpu() / counts.clamp_min(1), MF.NAN)
            n = self.image_mean_counts.cpu().double()
            means = torch.where(n > 0, self.image_mean_sums.cpu() / n.clamp_min(1), MF.NAN)
            out["miou_per_image"] = float(means[0])
            out["mean_dice_per_image"] = float(means[1])
            out["iou_per_image"] = [float(v) for v in per_class[0]]
            out["dice_per_image"] = [float(v) for v in per_class[1]]
        return out


class BoundaryMeter:
    """Streams the counts of boundary IoU and boundary F1 (see ``seglab.metrics.boundary``) over batches."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        *,
        tolerance: float = 2,
        absent: float = MF.NAN,
    ) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.tolerance, self.absent = tolerance, absent
        self.counts = torch.zeros(6, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: labels (N, H, W) or logits (N, C, H, W); ``target``: (N, H, W)."""
        labels = logits_to_labels(pred, target)
        if self.counts.device != labels.device:
            self.counts = self.counts.to(labels.device)
        self.counts += MB.boundary_counts(labels, target, self.num_classes, self.ignore_index, self.tolerance)

    def merge(self, other: BoundaryMeter) -> None:
        self.counts += other.counts.to(self.counts.device)

    def all_reduce(self, group: Any = None) -> None:
        all_reduce_sum(self.counts, group)

    def reset(self) -> None:
        self.counts.zero_()

    def compute(self) -> dict[str, float | list[float]]:
        biou = MB.boundary_iou_from_counts(self.counts.cpu(), self.absent)
        bf1 = MB.boundary_f1_from_counts(self.counts.cpu(), self.absent)
        return {
            "boundary_miou": MF._nanmean(biou),
            "boundary_mf1": MF._nanmean(bf1),
            "boundary_iou": [float(v) for v in biou],
            "boundary_f1": [float(v) for v in bf1],
        }


class RandMeter:
    """Mean adapted Rand error (ISBI 2012) over images: the segments of each image are the connected components
    of ``class_index`` (e.g. the cells between membranes), in the prediction and in the ground truth.

    Ground-truth pixels outside the class (membrane, ``ignore_index``) are left out, as in the challenge."""

    def __init__(self, class_index: int, connectivity: int = 1) -> None:
        self.class_index, self.connectivity = class_index, connectivity
        self.scores: list[tuple[float, float, float]] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: labels (N, H, W) or logits (N, C, H, W); ``target``: (N, H, W)."""
        from seglab.metrics.rand import adapted_rand_error, label_components

        labels = logits_to_labels(pred, target).cpu()
        for p, t in zip(labels, target.cpu()):
            segs_p = label_components(p == self.class_index, self.connectivity)
            segs_t = label_components(t == self.class_index, self.connectivity)
            self.scores.append(adapted_rand_error(segs_p, segs_t))

    def reset(self) -> None:
        self.scores.clear()

    def all_reduce(self, group: Any = None) -> None:
        """Gather every process's per-image scores (no-op when ``torch.distributed`` is not initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, self.scores, group=group)
            self.scores = [s for part in gathered for s in part]

    def compute(self) -> dict[str, float]:
        """Means over images (NaN scores, e.g. of an image without cells, are skipped)."""
        arr = np.asarray(self.scores, dtype=np.float64).reshape(-1, 3)
        keys = ("rand_error", "rand_precision", "rand_recall")
        cols = [arr[np.isfinite(arr[:, i]), i] for i in range(3)]
        return {k: float(c.mean()) if c.size else float("nan") for k, c in zip(keys, cols)}
