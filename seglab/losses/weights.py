"""Per-pixel and per-class loss weights, computed from masks in the data pipeline (NumPy, not per step).

Class weights from pixel counts: ``balanced_class_weights`` (total / (K * count_c), scikit-learn's "balanced") and
``median_frequency_weights`` (median_c freq / freq(c), freq(c) counted only over the images that hold c; Eigen &
Fergus 2015, SegNet); ``train.class_weights`` takes either by name (see ``seglab.engine.data.class_weights``).

The U-Net border weight map (Ronneberger et al., 2015, eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies, d1 and d2 are the distances to the nearest and second-nearest object.
The second term is large only on background pixels squeezed between two objects, so the network is made to
learn the thin separating gaps that keep touching cells apart. It is applied to background pixels, where
those gaps are; an object pixel's d1 is 0 and it keeps w_c. Needs SciPy (``distance_transform_edt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def balanced_class_weights(counts: Any, eps: float = 0.0) -> np.ndarray:
    """Inverse-frequency class weights total / (K * count_c) over the K classes present (absent: 0).

    The scikit-learn "balanced" rule: the weighted class totals are all equal; usable as ``weight`` of
    ``cross_entropy`` from the training set's pixel counts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return np.zeros_like(counts)
    out = np.zeros_like(counts)
    out[present] = counts.sum() / (present.sum() * counts[present] + eps)
    return out


def median_frequency_weights(per_image_counts: Any) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015; SegNet) from pixel counts per image and class.

    ``per_image_counts``: (N, C), the pixels of class c in image i (ignored pixels left out). With
    ``freq(c) = pixels of c / pixels of the images in which c is present`` (an image's pixels: the sum of its
    row), ``weight(c) = median(freq) / freq(c)``, the median taken over the classes present in some image (of an
    even number, the mean of the middle two). Classes present in no image get weight 0. The median class gets 1,
    rarer classes more; usable as ``weight`` of ``cross_entropy``.
    """
    counts = np.asarray(per_image_counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"per_image_counts must be (images, classes), got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("per_image_counts must be pixel counts >= 0")
    image_pixels = counts.sum(1, keepdims=True)  # (N, 1)
    pixels = counts.sum(0)
    seen_in = ((counts > 0) * image_pixels).sum(0)  # pixels of the images that hold each class
    present = pixels > 0
    out = np.zeros(counts.shape[1])
    if not present.any():
        return out
    freq = pixels[present] / seen_in[present]
    out[present] = np.median(freq) / freq
    return out


def unet_weight_map(
    mask: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    instances: bool = False,
    class_weights: Sequence[float] | None = None,
    ignore_index: int | None = 255,
    background: int = 0,
    connectivity: int = 1,
) -> np.ndarray:
    """U-Net weight map (H, W) float32 of a 2-D mask; use it as ``pixel_weight`` of ``cross_entropy``.

    ``mask``: a binary/semantic mask whose non-``background`` pixels are split into objects by connected
    components (``connectivity`` 1: 4-neighbours, 2: 8), or with ``instances=True`` an instance mask whose
    ids (except ``background``) are the objects. w_c is ``class_weights[label]`` per mask label (for
    ``instances=True``: index 0 background, 1 objects), by default ``balanced_class_weights`` of the mask.
    Pixels equal to ``ignore_index`` get weight 0 and are no object.
    """
    from scipy import ndimage

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"unet_weight_map needs a 2-D mask (H, W), got shape {m.shape}")
    if np.issubdtype(m.dtype, np.floating):
        raise ValueError(f"mask must hold integer labels, got {m.dtype}")
    m = m.astype(np.int64)
    ignored = np.zeros(m.shape, bool) if ignore_index is None else m == ignore_index
    fg = (m != background) & ~ignored
    if instances:
        objects = np.where(fg, m, 0)
        ids = np.unique(objects[fg])
        classes = fg.astype(np.int64)
    else:
        structure = ndimage.generate_binary_structure(2, connectivity)
        objects, n = ndimage.label(fg, structure=structure)
        ids = np.arange(1, n + 1)
        classes = np.where(ignored, 0, m)

    if class_weights is None:
        counts = np.bincount(classes[~ignored].ravel(), minlength=int(classes.max()) + 1)
        wc_table = balanced_class_weights(counts)
    else:
        wc_table = np.asarray(class_weights, dtype=np.float64)
        if wc_table.size <= int(classes.max()):
            raise ValueError(
                f"class_weights has {wc_table.size} entries, the mask needs {int(classes.max()) + 1}"
            )
    weight = wc_table[classes]

    # nearest and second-nearest object distances, one EDT per object, two running minima
    d1 = np.full(m.shape, np.inf)
    d2 = np.full(m.shape, np.inf)
    for i in ids:
        d = ndimage.distance_transform_edt(objects != i)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    if len(ids) >= 2:
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        weight = weight + np.where(fg | ignored, 0.0, border)
    weight[ignored] = 0.0
    return weight.astype(np.float32)
