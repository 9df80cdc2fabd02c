"""Boundary IoU and boundary F1 against straightforward SciPy implementations of their definitions."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglab.metrics import boundary_f1, boundary_iou
from seglab.metrics.boundary import dilate_disk, inner_boundary


def blobs(seed, shape=(2, 24, 28), classes=3):
    """Smooth random label maps: blurred noise, arg-maxed over classes."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(classes, *shape)), sigma=(0, 0, 3, 3))
    return torch.from_numpy(noise.argmax(0))


def ref_band(mask, width, inside=None):
    """Official Boundary IoU band: mask minus its d-fold 3x3 erosion, zero outside the image."""
    keep = mask if inside is None else mask | inside
    eroded = ndimage.binary_erosion(keep, np.ones((3, 3)), iterations=width, border_value=0)
    return mask & ~eroded


def ref_boundary_iou(pred, target, classes, d, ignore=None):
    out = []
    for c in range(classes):
        inter = union = 0
        for p, t in zip(pred.numpy(), target.numpy(), strict=True):
            ign = None if ignore is None else t == ignore
            valid = np.ones_like(t, bool) if ign is None else ~ign
            g, q = ref_band(t == c, d, ign) & valid, ref_band((p == c) & valid, d, ign) & valid
            inter, union = inter + (g & q).sum(), union + (g | q).sum()
        out.append(inter / union if union else np.nan)
    return np.array(out)


def ref_boundary_f1(pred, target, classes, tol):
    out = []
    for c in range(classes):
        mp = np_ = mg = ng = 0
        for p, t in zip(pred.numpy(), target.numpy(), strict=True):
            bg, bp = ref_band(t == c, 1), ref_band(p == c, 1)
            near_g = ndimage.distance_transform_edt(~bg) <= tol if bg.any() else np.zeros_like(bg)
            near_p = ndimage.distance_transform_edt(~bp) <= tol if bp.any() else np.zeros_like(bp)
            mp, np_ = mp + (bp & near_g).sum(), np_ + bp.sum()
            mg, ng = mg + (bg & near_p).sum(), ng + bg.sum()
        prec, rec = mp / max(np_, 1), mg / max(ng, 1)
        out.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return np.array(out)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_boundary_iou_matches_reference(d):
    target, pred = blobs(0), blobs(1)
    ours = boundary_iou(pred, target, 3, ignore_index=None, tolerance=d).numpy()
    assert np.allclose(ours, ref_boundary_iou(pred, target, 3, d))


def test_boundary_iou_ignored_pixels_make_no_boundary():
    target, pred = blobs(2), blobs(3)
    target[:, 8:14, 5:20] = 255
    ours = boundary_iou(pred, target, 3, tolerance=2).numpy()
    assert np.allclose(ours, ref_boundary_iou(pred, target, 3, 2, ignore=255))
    # whatever the prediction says inside the ignored region changes nothing
    pred2 = pred.clone()
    pred2[:, 8:14, 5:20] = 0
    assert np.allclose(boundary_iou(pred2, target, 3, tolerance=2).numpy(), ours)


@pytest.mark.parametrize("tol", [0, 1, 2.5])
def test_boundary_f1_matches_reference(tol):
    target, pred = blobs(4), blobs(5)
    ours = boundary_f1(pred, target, 3, ignore_index=None, tolerance=tol).numpy()
    assert np.allclose(ours, ref_boundary_f1(pred, target, 3, tol))


def test_disk_dilation_is_euclidean():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    ref = ndimage.distance_transform_edt(~mask[0].numpy()) <= 2.5
    assert np.array_equal(dilate_disk(mask, 2.5)[0].numpy(), ref)


def test_inner_boundary_counts_the_image_border_as_outside():
    full = torch.ones(1, 5, 5, dtype=torch.bool)
    band = inner_boundary(full, 1)[0]
    assert band.sum() == 16 and not band[1:4, 1:4].any()


def test_shift_by_one_pixel_is_forgiven_within_tolerance_only():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1
    pred = torch.roll(target, 1, dims=2)
    assert boundary_f1(target, target, 2, tolerance=0)[1] == 1.0
    assert boundary_f1(pred, target, 2, tolerance=1)[1] == 1.0
    assert boundary_f1(pred, target, 2, tolerance=0)[1] < 0.8
    # region IoU barely notices what boundary IoU sees: 56/72 vs a much lower band overlap
    band_iou = float(boundary_iou(pred, target, 2, tolerance=1)[1])
    assert band_iou < 56 / 72 - 0.2
    assert torch.isnan(boundary_iou(target, target, 3, tolerance=1)[2])  # class 2 absent from both
