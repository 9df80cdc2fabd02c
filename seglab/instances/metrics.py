"""Exact instance-segmentation metrics on label maps, per image and streamed over a data set.

Inputs are instance label maps: integer (H, W) arrays or tensors, 0 = background, every positive id one
object (ids need not be consecutive). ``pred`` is the prediction, ``target`` the ground truth.

Everything is derived from one sparse contingency table (``overlaps``): the area of each object and the
intersection of every (true, pred) pair that overlaps, computed in one pass over the pixels.

- Matching at IoU threshold t >= 0.5: a pair matches when IoU > t (strictly, as in the Kaggle Data Science
  Bowl 2018 metric and Panoptic Quality). TP = matched pairs, FP = unmatched predicted objects, FN =
  unmatched true objects.
- DSB score (Kaggle DSB 2018) of an image: mean of TP / (TP + FP + FN) over t = 0.50, 0.55, ..., 0.95.
- AJI (Kumar et al. 2017, IEEE TMI): each true object takes the prediction of largest IoU (ties: smallest
  pred id); C sums their intersections, U their unions (a true object without overlap adds its area), then
  U adds the area of every prediction never taken. AJI = C / U. As in the original, a prediction may be
  taken by several true objects (its union then counts each time).
- PQ, SQ, RQ (Kirillov et al. 2019), one "thing" class, matches at 0.5: SQ = mean IoU of the matches,
  RQ = TP / (TP + FP/2 + FN/2), PQ = SQ * RQ.
- Adapted Rand error / precision / recall: ``seglab.metrics.rand.adapted_rand_error`` (true label 0
  ignored).

Empty images: no true and no predicted object scores 1.0 (DSB, AJI, PQ, SQ, RQ: nothing to find, nothing
found); exactly one side empty scores 0.0. The Rand scores are whatever ``adapted_rand_error`` returns
(NaN when undefined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from seglab.metrics.rand import adapted_rand_error

# 0.5, 0.55, ..., 0.95 as the doubles nearest to those decimals (np.round divides an integer by 100), so that
# an IoU equal to a threshold (e.g. 3/5 vs 0.6) compares equal and does not count as a match: IoU = i / u
# is correctly rounded too, and distinct fractions with u < 1e12 differ by far more than one rounding error.
DSB_THRESHOLDS: np.ndarray = np.round(0.5 + 0.05 * np.arange(10), 2)

# dense (n_true + 1) x (n_pred + 1) bincount of the pairs up to this many cells (+ 4 per pixel), else unique
_DENSE_PAIRS = 1 << 22


def _as_labels(x: Any, name: str) -> np.ndarray:
    """An int64 NumPy array of a label map; float labels are refused (likely logits or probabilities)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():  # before .numpy(), which has no bfloat16
            raise ValueError(f"{name} must be an integer instance label map, got float dtype {x.dtype}")
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        raise ValueError(f"{name} must be an integer instance label map, got float dtype {arr.dtype}")
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be an integer instance label map, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative ids (min {arr.min()}): 0 is background, objects are > 0")
    return arr


def _pair(pred: Any, target: Any, ndim: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_labels(pred, "pred"), _as_labels(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: pred {tuple(p.shape)}, target {tuple(t.shape)}")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"expected (H, W) label maps, got pred {tuple(p.shape)}, target {tuple(t.shape)}")
    return p, t


def _compact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, areas, x relabelled 0..K): the objects' sorted ids, their pixel counts, and the map with id
    ``ids[k]`` as k + 1 (background stays 0). A lookup table when ids are small, else ``np.unique``."""
    top = int(x.max()) if x.size else 0
    if top <= 4 * x.size + 65536:
        counts = np.bincount(x, minlength=top + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, counts[ids], lut[x]
    ids = np.unique(x)
    ids = ids[ids > 0]
    index = np.searchsorted(ids, x) + 1  # cheaper than return_inverse (an argsort of the pixels)
    index[x == 0] = 0
    return ids, np.bincount(index, minlength=ids.size + 1)[1:], index


@dataclass(frozen=True)
class Overlaps:
    """The sparse contingency of two label maps: the only place pixels are counted.

    ``pair_true`` / ``pair_pred`` index ``true_ids`` / ``pred_ids`` (sorted ids), one entry per overlapping
    (true, pred) pair, sorted by true then pred id; ``intersection`` is that pair's pixel count.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @cached_property
    def union(self) -> np.ndarray:
        """|G ∪ S| of each overlapping pair (int64)."""
        return self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.intersection

    @cached_property
    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair (float64, correctly rounded i / u)."""
        return self.intersection / self.union

    def matches(self, threshold: float = 0.5) -> np.ndarray:
        """Boolean mask of the matched pairs (IoU > threshold, strictly); one-to-one as threshold >= 0.5."""
        _check_threshold(threshold)
        return self.iou > threshold


def _check_threshold(threshold: float) -> None:
    # IoU > t >= 0.5 makes matches one-to-one: if G matched S1 and S2 (disjoint), |G ∩ Si| > |G ∪ Si| / 2
    # >= |G| / 2 for both, so |G ∩ S1| + |G ∩ S2| > |G|, impossible; symmetrically for S. So the matched pairs
    # can be counted directly, no assignment (Hungarian) step is needed.
    if not 0.5 <= threshold <= 1.0:
        raise ValueError(
            f"IoU threshold must be in [0.5, 1] (matches are one-to-one from 0.5), got {threshold}"
        )


def overlaps(pred: Any, target: Any) -> Overlaps:
    """The sparse (true, pred) contingency of two (H, W) instance label maps, in one pass over the pixels."""
    p, t = _pair(pred, target)
    true_ids, true_areas, tc = _compact(t.reshape(-1))
    pred_ids, pred_areas, pc = _compact(p.reshape(-1))
    width = pred_ids.size + 1
    cells = (true_ids.size + 1) * width
    if cells <= _DENSE_PAIRS + 4 * tc.size:
        table = np.bincount(tc * width + pc, minlength=cells)
        keys = np.flatnonzero(table)
        counts = table[keys]
    else:  # too many objects for a dense table: sort the keys of the pixels where both sides are objects
        both = (tc > 0) & (pc > 0)
        keys, counts = np.unique(tc[both] * width + pc[both], return_counts=True)
    ti, pi = np.divmod(keys, width)
    keep = (ti > 0) & (pi > 0)  # drop background rows/columns
    return Overlaps(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_areas=true_areas.astype(np.int64),
        pred_areas=pred_areas.astype(np.int64),
        pair_true=ti[keep] - 1,
        pair_pred=pi[keep] - 1,
        intersection=counts[keep].astype(np.int64),
    )


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den > 0 else empty


def _dsb(ov: Overlaps) -> float:
    """Mean over the 10 DSB thresholds of TP / (TP + FP + FN) = TP / (n_true + n_pred - TP)."""
    if ov.n_true + ov.n_pred == 0:
        return 1.0
    tp = (ov.iou[None, :] > DSB_THRESHOLDS[:, None]).sum(1)
    den = ov.n_true + ov.n_pred - tp
    return float(np.mean(tp / den))


def _aji(ov: Overlaps) -> tuple[float, int, int]:
    """(AJI, C, U): each true object takes its best-IoU prediction from the pair table (no pixel pass)."""
    if ov.pair_true.size:
        # sort by (true, -IoU, pred id) and keep the first pair of each true object
        order = np.lexsort((ov.pair_pred, -ov.iou, ov.pair_true))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ov.pair_true[order][1:] != ov.pair_true[order][:-1]
        best = order[first]
    else:
        best = np.zeros(0, dtype=np.int64)
    c = int(ov.intersection[best].sum())
    u = int(ov.union[best].sum())
    has_pred = np.zeros(ov.n_true, dtype=bool)
    has_pred[ov.pair_true[best]] = True
    u += int(ov.true_areas[~has_pred].sum())
    used = np.zeros(ov.n_pred, dtype=bool)
    used[ov.pair_pred[best]] = True
    u += int(ov.pred_areas[~used].sum())
    return _ratio(c, u, 1.0), c, u


def _scores(ov: Overlaps) -> dict[str, float | int]:
    """Every per-image score but the Rand ones, as plain Python numbers (picklable rows)."""
    matched = ov.matches(0.5)
    tp = int(matched.sum())
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    iou_sum = float(ov.iou[matched].sum())
    empty = 1.0 if ov.n_true + ov.n_pred == 0 else 0.0
    sq = _ratio(iou_sum, tp, empty)
    rq = _ratio(tp, tp + fp / 2 + fn / 2, empty)
    aji_value, c, u = _aji(ov)
    return {
        "dsb": _dsb(ov),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "iou_sum": iou_sum,
        "aji": aji_value,
        "aji_c": c,
        "aji_u": u,
        "pq": sq * rq,
        "sq": sq,
        "rq": rq,
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
    }


def image_scores(pred: Any, target: Any, *, rand: bool = True) -> dict[str, float | int]:
    """All scores of one image: ``dsb``; ``tp``, ``fp``, ``fn``, ``iou_sum`` at IoU 0.5; ``aji`` with its
    ``aji_c`` and ``aji_u``; ``pq``, ``sq``, ``rq``; ``n_true``, ``n_pred``; and (``rand=True``)
    ``rand_error``, ``rand_precision``, ``rand_recall``. Plain ints/floats, so rows can be gathered/saved."""
    p, t = _pair(pred, target)
    row = _scores(overlaps(p, t))
    if rand:
        err, prec, rec = adapted_rand_error(p, t)
        row.update(rand_error=float(err), rand_precision=float(prec), rand_recall=float(rec))
    return row


def dsb_score(pred: Any, target: Any) -> float:
    """Kaggle DSB 2018 score of one image: mean over t = 0.50..0.95 of TP / (TP + FP + FN) at IoU > t."""
    return _dsb(overlaps(pred, target))


def aji(pred: Any, target: Any) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017) of one image."""
    return _aji(overlaps(pred, target))[0]


def panoptic_quality(pred: Any, target: Any) -> tuple[float, float, float]:
    """(PQ, SQ, RQ) of one image, one object class, matches at IoU > 0.5."""
    row = _scores(overlaps(pred, target))
    return float(row["pq"]), float(row["sq"]), float(row["rq"])


def match_counts(pred: Any, target: Any, threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image at IoU > ``threshold`` (>= 0.5, so matches are one-to-one)."""
    ov = overlaps(pred, target)
    tp = int(ov.matches(threshold).sum())
    return tp, ov.n_pred - tp, ov.n_true - tp


def _mean(values: list[float], skip_nan: bool = False) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if skip_nan:
        arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


class InstanceMeter:
    """Streams instance metrics over images, keeping one row of ``image_scores`` per image.

    Per-image rows (not pooled counts) make every score independent of batching and of how a split is
    sharded over processes (``all_reduce`` gathers the rows). ``compute`` reports:

    - pooled over the data set (sum TP, FP, FN at IoU 0.5 over images first): ``precision``, ``recall``,
      ``f1`` (NaN when their denominator is 0);
    - means over images: ``dsb_score``, ``ap50`` (TP / (TP + FP + FN) at 0.5, 1.0 for an image with no
      object on either side), ``aji``, ``pq``, ``sq``, ``rq``; and ``rand_error``, ``rand_precision``,
      ``rand_recall`` skipping NaN (as ``RandMeter``);
    - totals: ``num_images``, ``num_true``, ``num_pred``.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float | int]] = []

    def update(self, pred: Any, target: Any) -> None:
        """``pred``, ``target``: instance label maps (H, W) or batches (N, H, W), arrays or tensors."""
        p, t = _pair(pred, target, ndim=None)
        if p.ndim == 2:
            p, t = p[None], t[None]
        if p.ndim != 3:
            raise ValueError(f"expected (H, W) or (N, H, W) label maps, got {tuple(p.shape)}")
        for pi, ti in zip(p, t):
            self.rows.append(image_scores(pi, ti))

    def reset(self) -> None:
        self.rows.clear()

    def __len__(self) -> int:
        return len(self.rows)

    def all_reduce(self, group: Any = None) -> None:
        """Gather every process's per-image rows (no-op when ``torch.distributed`` is not initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, self.rows, group=group)
            self.rows = [row for part in gathered for row in part]

    def compute(self) -> dict[str, float]:
        """The data-set scores (see the class docstring); NaN means for a meter that saw no image."""
        rows = self.rows
        tp = sum(int(r["tp"]) for r in rows)
        fp = sum(int(r["fp"]) for r in rows)
        fn = sum(int(r["fn"]) for r in rows)
        out: dict[str, float] = {
            "dsb_score": _mean([r["dsb"] for r in rows]),
            "precision": _ratio(tp, tp + fp, math.nan),
            "recall": _ratio(tp, tp + fn, math.nan),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn, math.nan),
            "ap50": _mean([_ratio(r["tp"], r["tp"] + r["fp"] + r["fn"], 1.0) for r in rows]),
        }
        for key in ("aji", "pq", "sq", "rq"):
            out[key] = _mean([r[key] for r in rows])
        for key in ("rand_error", "rand_precision", "rand_recall"):
            out[key] = _mean([r[key] for r in rows], skip_nan=True)
        out["num_images"] = len(rows)
        out["num_true"] = sum(int(r["n_true"]) for r in rows)
        out["num_pred"] = sum(int(r["n_pred"]) for r in rows)
        return out
