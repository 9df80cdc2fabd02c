"""The label-resolution ceiling: the mIoU that a perfect model at scale s could reach at full resolution.

For each scale s, every label map is turned into one-hot class maps, resized to s (bilinear with antialiasing:
the class shares of each low-resolution pixel, what a perfect model at that scale would predict), upsampled
bilinearly back to the label's size (as ``seglab evaluate`` upsamples logits) and its argmax scored against the
original labels with seglab's ConfusionMatrix. The loss of mIoU is the price of the resolution alone: the planner
picks the smallest scale whose ceiling stays close to full resolution's (``seglab.plan.rules``).

Ignored pixels stay ignored: they are no class in the one-hot maps (all zeros) and are not scored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)


def ceiling(
    masks: Iterable[Any], num_classes: int, scales: Sequence[float] = SCALES, ignore_index: int = 255
) -> dict[float, dict[str, Any]]:
    """Per scale: ``miou``, ``iou`` (per class) and the other ``ConfusionMatrix.compute`` scores of the perfect
    model at that scale, and ``pixels`` (per image at that scale). ``masks``: (H, W) integer label maps (NumPy
    or torch), values in [0, num_classes) or ``ignore_index``.

    Scale 1 is exact by definition (every labelled pixel right) and costs nothing; each other scale is one
    downsampling and one upsampling of the one-hot maps, made once per mask."""
    meter = CeilingMeter(num_classes, scales, ignore_index)
    for mask in masks:
        meter.add(mask)
    return meter.compute()


class CeilingMeter:
    """``ceiling`` one mask at a time (``add``), so that a caller measuring other things of the same masks need
    not keep them all: ``compute`` gives what ``ceiling`` gives."""

    def __init__(self, num_classes: int, scales: Sequence[float] = SCALES, ignore_index: int = 255) -> None:
        self.scales = [float(s) for s in scales]
        bad = [s for s in self.scales if not 0 < s <= 1]
        if bad:
            raise ValueError(f"scales must be in (0, 1], got {bad[0]!r}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrices = {s: np.zeros((num_classes, num_classes), np.int64) for s in self.scales}
        self.pixels = dict.fromkeys(self.scales, 0)
        self.masks = 0

    def add(self, mask: Any) -> None:
        target = mask.numpy() if hasattr(mask, "numpy") else np.asarray(mask)
        target = target.astype(np.int64, copy=False)
        _one_mask(target, self.num_classes, self.ignore_index, self.scales, self.matrices, self.pixels)
        self.masks += 1

    def compute(self) -> dict[float, dict[str, Any]]:
        import torch

        from seglab.metrics import ConfusionMatrix

        if self.masks == 0:
            raise ValueError("no masks to measure the resolution ceiling of")
        out = {}
        for s in self.scales:
            meter = ConfusionMatrix(self.num_classes, self.ignore_index)
            meter.matrix += torch.from_numpy(self.matrices[s])
            out[s] = {**meter.compute(), "pixels": self.pixels[s] / self.masks}
        return out


def _one_mask(
    target: np.ndarray, num_classes: int, ignore_index: int, scales: list[float], matrices: dict, pixels: dict
) -> None:
    """Add one (H, W) label map to each scale's confusion matrix (``matrices[s][true, predicted]``).

    The one-hot maps are a sparse (classes x H, W) matrix (one 1 per labelled pixel; ignored pixels are no
    class), and the antialiased resize is PyTorch's, as two sparse products with its weights (``_aa_weights``):
    the same sums as ``F.interpolate(..., antialias=True)`` at a third of its time. Only the classes the mask
    holds get a map (an absent class is 0 everywhere and never wins the argmax)."""
    import scipy.sparse as sp

    h, w = target.shape
    valid = target != ignore_index
    labels = np.where(valid, target, num_classes)  # ignored: the extra row, dropped from the matrix
    if labels.min() < 0 or labels.max() > num_classes:
        raise ValueError(f"mask values must be in [0, {num_classes}) or {ignore_index}")
    counts = np.bincount(labels.ravel(), minlength=num_classes + 1)
    present = np.flatnonzero(counts[:num_classes])
    base = labels.ravel() * num_classes
    onehot = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        pixels[s] += size[0] * size[1]
        if s == 1 or len(present) == 0:  # a perfect model at full resolution: the labels themselves
            matrices[s][present, present] += counts[present]
            continue
        if onehot is None:
            channel = np.zeros(num_classes + 1, np.int64)
            channel[present] = np.arange(len(present))
            ys, xs = np.nonzero(valid)
            rows = channel[target[ys, xs]] * h + ys
            ones = np.ones(len(ys), np.float32)
            onehot = sp.csr_matrix((ones, (rows, xs)), shape=(len(present) * h, w))
        cols = (onehot @ _aa_weights(w, size[1])).toarray()  # (C x H, w'): each row resized
        cols = cols.reshape(len(present), h, size[1]).transpose(1, 0, 2).reshape(h, -1)
        low = (_aa_weights(h, size[0]).T @ cols).reshape(size[0], len(present), size[1])
        pred = _upsampled_argmax(low.transpose(1, 0, 2), present, (h, w))
        cm = np.bincount(base + pred.ravel(), minlength=(num_classes + 1) * num_classes)
        matrices[s] += cm[: num_classes * num_classes].reshape(num_classes, num_classes)


@functools.lru_cache(maxsize=64)
def _aa_weights(n_in: int, n_out: int) -> Any:
    """The weights of PyTorch's antialiased bilinear resize along one axis, n_in -> n_out, as a sparse (n_in,
    n_out) float32 matrix: the resize of each unit vector (so exactly its weights, whatever its version)."""
    import scipy.sparse as sp
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        eye = torch.eye(n_in)[None, :, None, :]  # n_in channels of a 1 x n_in image
        weights = F.interpolate(eye, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)
    return sp.csr_matrix(weights[0, :, 0, :].numpy())


def _linear(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear source indices and weights along one axis (align_corners False, no scale given):
    output i reads inputs i0 and i1 = min(i0 + 1, n_in - 1) with weights l0 and l1, in float32 as it does."""
    f = np.float32
    real = f(f(n_in) / f(n_out)) * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5)
    real = np.maximum(real, f(0))
    i0 = real.astype(np.int64)
    l1 = np.clip(real - i0.astype(f), f(0), f(1)).astype(f)
    return i0, np.minimum(i0 + 1, n_in - 1), (f(1) - l1).astype(f), l1


def _upsampled_argmax(low: np.ndarray, present: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The argmax of ``low`` (C, h, w) upsampled bilinearly to ``size`` (as ``F.interpolate`` does, align_corners
    False), as class ids (``present[channel]``; 0 where every channel is 0, as the argmax over all classes
    gives), without upsampling every channel.

    An output pixel is a convex combination of its 2 x 2 low-resolution neighbours; if the same class is the
    (first) largest in each of them, it is in the combination too. So only pixels whose neighbours disagree
    (those near a class boundary) are interpolated, with PyTorch's own indices, weights and order of sums."""
    (h, w), (c, hl, wl) = size, low.shape
    y0, y1, ly0, ly1 = _linear(hl, h)
    x0, x1, lx0, lx1 = _linear(wl, w)
    flat = np.ascontiguousarray(low, dtype=np.float32).reshape(c, hl * wl)  # a class's map in a row
    ids = present.astype(np.int32)
    first, top = _first_max(flat)
    lab = np.where(top > 0, ids[first], 0).reshape(hl, wl)
    nxt_y, nxt_x = np.minimum(np.arange(hl) + 1, hl - 1), np.minimum(np.arange(wl) + 1, wl - 1)
    down = lab[nxt_y]
    uniform = (lab == down) & (lab == lab[:, nxt_x]) & (lab == down[:, nxt_x])
    out = np.where(uniform, lab, -1).take(y0, 0).take(x0, 1)  # -1: neighbours disagree
    ys, xs = np.nonzero(out < 0)
    if len(ys):
        a0, a1, b0, b1 = y0[ys] * wl, y1[ys] * wl, x0[xs], x1[xs]
        wx0, wx1, wy0, wy1 = lx0[xs], lx1[xs], ly0[ys], ly1[ys]
        at = functools.partial(np.take, flat, axis=1)
        v = (at(a0 + b0) * wx0 + at(a0 + b1) * wx1) * wy0 + (at(a1 + b0) * wx0 + at(a1 + b1) * wx1) * wy1
        first, top = _first_max(v)
        out[ys, xs] = np.where(top > 0, ids[first], 0)
    return out


def _first_max(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, value) of the first largest of each column of ``v`` (C, n): ``argmax(0)`` one row at a time
    (NumPy's reductions across a short, strided axis are many times slower)."""
    best, index = v[0].copy(), np.zeros(v.shape[1], np.int64)
    for k in range(1, len(v)):
        better = v[k] > best  # (strictly: a tie keeps the first)
        index[better] = k
        np.maximum(best, v[k], out=best)
    return index, best
