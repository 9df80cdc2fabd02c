"""Boundary-aware metrics: boundary IoU and boundary F1 at a pixel tolerance.

Region IoU is dominated by object interiors, so a blurry outline costs little; these scores look only at the
pixels near the contours.

- Boundary IoU (Cheng et al., 2021): per class, the band G_d of ground-truth pixels within ``tolerance``
  (chessboard distance) of the mask's outside, the same band P_d of the prediction, IoU = |G_d n P_d| /
  |G_d u P_d|. Like the reference implementation (square erosion of a zero-padded mask), the image border
  counts as outside.
- Boundary F1 (BF score, Csurka et al., 2013): per class, the 1-pixel contours B_G, B_P; precision = share
  of B_P within Euclidean distance ``tolerance`` of B_G, recall = share of B_G within ``tolerance`` of B_P.

Ignored pixels neither create boundaries (they count as inside every mask when eroding) nor are counted.
Counts are pooled over all images before the ratios, like the confusion matrix; a class with no boundary
pixel in either map scores ``absent`` (NaN by default, excluded from means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.metrics.functional import NAN


def inner_boundary(mask: Tensor, width: int, inside: Tensor | None = None) -> Tensor:
    """Pixels of ``mask`` (N, H, W) bool within chessboard distance ``width`` of a pixel outside it.

    Pixels set in ``inside`` (e.g. ignored ones) are not "outside"; beyond the image border is.
    """
    if width <= 0:
        return torch.zeros_like(mask)
    keep = mask if inside is None else mask | inside
    outside = F.pad((~keep).float().unsqueeze(1), (width, width, width, width), value=1.0)
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1)[:, 0] > 0
    return mask & near_outside


def dilate_disk(mask: Tensor, radius: float) -> Tensor:
    """Pixels within Euclidean distance ``radius`` of a set pixel of ``mask`` (N, H, W) bool."""
    r = int(radius)
    if r <= 0:
        return mask.clone()
    ax = torch.arange(-r, r + 1, device=mask.device, dtype=torch.float32)
    kernel = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= radius**2).float()[None, None]
    return F.conv2d(mask.float().unsqueeze(1), kernel, padding=r)[:, 0] > 0.5


def boundary_counts(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255, tolerance: float = 2
) -> Tensor:
    """(6, C) int64 counts of labels ``pred``/``target`` (N, H, W) for both boundary scores; sum them over batches.

    The boundary-IoU band is ``int(tolerance)`` pixels wide; the BF match radius is ``tolerance`` itself.

    Rows: boundary-IoU intersection, union; BF matched prediction contour, prediction contour, matched
    ground-truth contour, ground-truth contour.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"expected pred and target of one shape (N, H, W), got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    counts = torch.zeros(6, num_classes, dtype=torch.int64, device=pred.device)
    ignored = None if ignore_index is None else target == ignore_index
    valid = torch.ones_like(target, dtype=torch.bool) if ignored is None else ~ignored
    present = torch.zeros(num_classes, dtype=torch.bool, device=pred.device)
    present[pred[valid].unique().clamp(0, num_classes - 1)] = True
    present[target[valid].unique().clamp(0, num_classes - 1)] = True
    for c in present.nonzero()[:, 0].tolist():
        g, p = target == c, (pred == c) & valid
        g_band = inner_boundary(g, int(tolerance), ignored) & valid
        p_band = inner_boundary(p, int(tolerance), ignored) & valid
        g_edge = inner_boundary(g, 1, ignored) & valid
        p_edge = inner_boundary(p, 1, ignored) & valid
        counts[0, c] = (g_band & p_band).sum()
        counts[1, c] = (g_band | p_band).sum()
        counts[2, c] = (p_edge & dilate_disk(g_edge, tolerance)).sum()
        counts[3, c] = p_edge.sum()
        counts[4, c] = (g_edge & dilate_disk(p_edge, tolerance)).sum()
        counts[5, c] = g_edge.sum()
    return counts


def boundary_iou_from_counts(counts: Tensor, absent: float = NAN) -> Tensor:
    inter, union = counts[0].double(), counts[1].double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, absent))


def boundary_f1_from_counts(counts: Tensor, absent: float = NAN) -> Tensor:
    c = counts.double()
    prec = torch.where(c[3] > 0, c[2] / c[3].clamp_min(1), torch.zeros_like(c[3]))
    rec = torch.where(c[5] > 0, c[4] / c[5].clamp_min(1), torch.zeros_like(c[5]))
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-300), torch.zeros_like(prec))
    return torch.where((c[3] == 0) & (c[5] == 0), torch.full_like(f1, absent), f1)


def boundary_iou(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    tolerance: int = 2,
    absent: float = NAN,
) -> Tensor:
    """Per-class boundary IoU (C,) of labels (N, H, W) with a band of ``tolerance`` pixels."""
    return boundary_iou_from_counts(
        boundary_counts(pred, target, num_classes, ignore_index, tolerance), absent
    )


def boundary_f1(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None = 255,
    tolerance: float = 2,
    absent: float = NAN,
) -> Tensor:
    """Per-class boundary F1 (C,) of labels (N, H, W): contours matched within ``tolerance`` pixels."""
    return boundary_f1_from_counts(
        boundary_counts(pred, target, num_classes, ignore_index, tolerance), absent
    )
