"""Segmentation-level scores for EM/cell data: adapted Rand error (ISBI 2012, SNEMI3D, CREMI).

Pixel metrics reward a membrane map that is right almost everywhere, yet one missing membrane pixel can
merge two cells. The Rand scores instead compare *which pixels belong together*: over pixel pairs,

- Rand precision = pairs in one segment of both labelings / pairs in one predicted segment (splits hurt it
  little, merges a lot);
- Rand recall = pairs in one segment of both / pairs in one ground-truth segment (splits hurt it);
- adapted Rand error = 1 - F-score of the two (``alpha`` weights precision vs recall, 0.5 = harmonic mean).

As in scikit-image's ``adapted_rand_error``, pixels whose *ground-truth* label is in ``ignore_labels``
(default: 0, the membrane/background) are left out; predicted label 0 is an ordinary segment. Pairs are
ordered pairs of distinct pixels: sum_ij n_ij^2 - n from the contingency table n_ij.
Note: scikit-image (0.26) returns precision and recall swapped with respect to its own docstring
(scikit-image issue #6485); the error itself is symmetric at alpha = 0.5 and agrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def label_components(mask: Any, connectivity: int = 1) -> np.ndarray:
    """Connected components of a binary (H, W) or (D, H, W) mask: background 0, objects 1..K (int64).

    ``connectivity`` 1: edge neighbours (4 in 2D), ``mask.ndim``: also corners (8 in 2D). Needs SciPy.
    """
    from scipy import ndimage

    arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    structure = ndimage.generate_binary_structure(arr.ndim, connectivity)
    labels, _ = ndimage.label(arr.astype(bool), structure=structure)
    return labels.astype(np.int64)


def adapted_rand_error(
    pred: Any, target: Any, ignore_labels: Sequence[int] = (0,), alpha: float = 0.5
) -> tuple[float, float, float]:
    """(error, precision, recall) of two labelings of one image or volume (integer arrays or tensors).

    The labels are segment ids (e.g. ``label_components`` of a thresholded cell map), not classes.
    Returns NaN scores when no pair of (non-ignored) pixels shares a segment on the side concerned.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    p, t = torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target must have the same number of pixels, got {p.numel()} and {t.numel()}"
        )
    if p.is_floating_point() or t.is_floating_point():
        raise ValueError("pred and target must be integer segment labelings")
    if len(ignore_labels):
        keep = ~torch.isin(t, torch.as_tensor(list(ignore_labels), dtype=t.dtype, device=t.device))
        p, t = p[keep], t[keep]
    n = p.numel()
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    _, p_id = torch.unique(p, return_inverse=True)
    _, t_id = torch.unique(t, return_inverse=True)
    n_pred = int(p_id.max()) + 1
    # contingency table n_ij, kept sparse: counts of the distinct (true, pred) pairs
    _, n_ij = torch.unique(t_id.long() * n_pred + p_id.long(), return_counts=True)
    a = torch.bincount(t_id).double()  # ground-truth segment sizes
    b = torch.bincount(p_id).double()  # predicted segment sizes
    both = float((n_ij.double() ** 2).sum()) - n
    same_true = float((a**2).sum()) - n
    same_pred = float((b**2).sum()) - n
    prec = both / same_pred if same_pred > 0 else float("nan")
    rec = both / same_true if same_true > 0 else float("nan")
    den = alpha * same_pred + (1 - alpha) * same_true
    error = 1.0 - both / den if den > 0 else float("nan")
    return error, prec, rec
