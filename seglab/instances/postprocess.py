"""Semantic output -> instance label maps: pure functions on 2-D arrays or tensors.

Three ways to turn a per-pixel prediction into objects, from simplest to most robust:

* ``components``: threshold the foreground and take connected components. Cheap and exact for isolated
  objects, but two objects that touch (or are joined by a single mis-predicted pixel) become one, because
  nothing in a foreground mask says where one object ends and the next begins.
* ``watershed``: the Euclidean distance to the background peaks near each object's centre and dips at the
  neck where two convex objects touch. One seed per significant peak (h-maxima, or ``peak_local_max``)
  and a watershed of ``-distance`` cut the mask along the necks. A shape prior, not a prediction: it
  fails on non-convex objects (over-split) and on touching objects without a neck (under-split).
* ``learned``: a three-class network (background / interior / boundary, trained on
  ``interior_boundary_target``) predicts the separation itself. Interior regions are separated by the
  predicted boundary band, so they are the seeds; a watershed of ``1 - P(interior)`` inside the
  foreground gives each boundary pixel back to its nearest seed.

All functions return ``np.int32`` label maps (H, W): 0 background, objects 1..K consecutive, deterministic.
Seeds are numbered in raster order (components by their first pixel, seeds within each; unseeded fallback
regions after them) before the final ``relabel_sequential``, so equal input gives equal output. SciPy and scikit-image are imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "components",
    "instance_overlay",
    "instance_palette",
    "interior_boundary_target",
    "learned",
    "watershed",
]

_PROB_EPS = 1e-4  # tolerance on probabilities slightly outside [0, 1] (float / softmax rounding)


# --------------------------------------------------------------------------------------------- helpers
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {tuple(a.shape)} dtype {a.dtype}")
    return a


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity!r}")


def _check_nonneg(value: float, name: str) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _probabilities(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """(values, is_bool): a bool mask as is, anything numeric as float32 probabilities checked in [0, 1]."""
    a = _to_numpy(x, name)
    if a.dtype == np.bool_:
        return a, True
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a bool mask or probabilities, got shape {a.shape} dtype {a.dtype}")
    p = a.astype(np.float32, copy=False)
    if p.size:
        lo, hi = float(np.min(p)), float(np.max(p))  # NaN propagates and fails the check below
        if not (lo >= -_PROB_EPS and hi <= 1 + _PROB_EPS):
            raise ValueError(
                f"{name} must hold probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                f"(shape {a.shape}, dtype {a.dtype})"
            )
    return p, False


def _mask(x: Any, name: str, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(foreground mask, probabilities or None when a bool mask was given)."""
    p, is_bool = _probabilities(x, name)
    if is_bool:
        return p, None
    return p >= threshold, p


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(2, connectivity)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every object with fewer than ``min_size`` pixels (in place on ``labels``)."""
    if min_size > 1 and labels.size:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return labels


def _finish(labels: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    labels = _remove_small(np.asarray(labels, dtype=np.int64), min_size)
    out, _, _ = relabel_sequential(labels)
    return out.astype(np.int32, copy=False)


def _seed_unseeded(markers: np.ndarray, comps: np.ndarray, n_comps: int) -> np.ndarray:
    """Give every connected component of the mask that holds no seed a seed of its own: the whole
    component (it is isolated, so the watershed gives it exactly that region either way)."""
    if n_comps == 0:
        return markers
    seeded = np.zeros(n_comps + 1, dtype=bool)
    seeded[comps[markers > 0]] = True
    seeded[0] = True
    missing = np.flatnonzero(~seeded)
    if missing.size:
        new_id = np.zeros(n_comps + 1, dtype=markers.dtype)
        new_id[missing] = markers.max() + 1 + np.arange(missing.size, dtype=markers.dtype)
        add = new_id[comps]
        markers = np.where(add > 0, add, markers)
    return markers


def _h_maxima_markers(dist: np.ndarray, comps: np.ndarray, n_comps: int, h: float) -> np.ndarray:
    """Seeds = h-maxima of ``dist`` computed per connected component of the mask (on the component's
    bounding box, ``dist`` zeroed outside it), each 8-connected plateau of maxima one seed, numbered
    component by component. Per component is about 3x faster than ``h_maxima`` on the whole image for a
    few hundred blobs on 1 Mpx, and keeps a seed from spanning two diagonally touching components."""
    from scipy import ndimage
    from skimage.morphology import h_maxima

    markers = np.zeros(dist.shape, dtype=np.int64)
    if n_comps == 0:
        return markers
    peak = np.asarray(ndimage.maximum(dist, comps, np.arange(1, n_comps + 1)))
    eight = _structure(2)
    offset = 0
    for i, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None or peak[i - 1] < h:  # no h-maximum possible: the component gets the fallback seed
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        own = comps[box] == i
        maxima = h_maxima(np.where(own, dist[box], 0.0), h).astype(bool) & own
        seeds, k = ndimage.label(maxima, structure=eight)
        if k:
            sub = markers[box]
            sub[seeds > 0] = seeds[seeds > 0] + offset
            offset += k
    return markers


# --------------------------------------------------------------------------------------------- methods
def components(
    foreground: Any, *, threshold: float = 0.5, min_size: int = 0, connectivity: int = 1
) -> np.ndarray:
    """Connected components of the foreground: the baseline (touching objects merge).

    ``foreground``: bool mask, or probabilities in [0, 1] (pixels ``>= threshold`` are foreground), (H, W).
    ``connectivity``: 1 = 4-neighbours, 2 = 8-neighbours. Objects with fewer than ``min_size`` pixels are
    removed. Returns int32 (H, W), objects 1..K in raster order of their first pixel.
    """
    from scipy import ndimage

    _check_connectivity(connectivity)
    _check_nonneg(min_size, "min_size")
    mask, _ = _mask(foreground, "foreground", threshold)
    labels, _ = ndimage.label(mask, structure=_structure(connectivity))
    return _finish(labels, min_size)


def watershed(
    foreground: Any,
    *,
    threshold: float = 0.5,
    h: float = 2.0,
    min_distance: int | None = None,
    sigma: float = 0.0,
    min_size: int = 0,
    fill: bool = False,
    connectivity: int = 1,
) -> np.ndarray:
    """Distance-transform seeded watershed: splits touching convex objects at their necks.

    mask = ``foreground >= threshold`` (or the bool mask); dist = Euclidean distance to the background,
    Gaussian-smoothed with ``sigma`` px when ``sigma > 0``. Seeds: with ``min_distance=None`` the h-maxima
    of dist within each mask component (peaks at least ``h`` px above the saddle joining them to a higher
    peak; each 8-connected plateau one seed), else ``skimage.feature.peak_local_max(dist, min_distance=...)``
    per component.
    A mask component with no seed becomes one object of its own, so no foreground region is lost. The
    watershed of ``-dist`` inside the mask (same ``connectivity``) labels every mask pixel; objects with
    fewer than ``min_size`` pixels are then removed (set to 0).

    ``fill=True`` (EM-style images where cells tile the image and thin predicted membranes belong to the
    neighbouring cells): after the small objects are removed, the objects are grown over the whole image by a
    second watershed whose markers are the objects themselves. Its elevation is ``1 - p`` when probabilities
    were given (background pixels go to the object across the lowest-probability ridge, i.e. the split runs
    along the middle of the membrane), or the distance to the nearest object for a bool mask (each
    background pixel goes to its nearest object). Flat stretches are flooded breadth-first, so ties go to the
    nearest object as well. Every pixel is then labelled, unless there is no object at all (all zeros).
    """
    from scipy import ndimage
    from skimage.segmentation import watershed as sk_watershed

    _check_connectivity(connectivity)
    _check_nonneg(min_size, "min_size")
    _check_nonneg(sigma, "sigma")
    if min_distance is None and not h > 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    if min_distance is not None and min_distance < 1:
        raise ValueError(f"min_distance must be >= 1 or None, got {min_distance!r}")
    mask, p = _mask(foreground, "foreground", threshold)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)

    dist = ndimage.distance_transform_edt(mask)
    if sigma > 0:
        dist = ndimage.gaussian_filter(dist, sigma)
    comps, n_comps = ndimage.label(mask, structure=_structure(connectivity))

    if min_distance is None:
        markers = _h_maxima_markers(dist, comps, n_comps, h)
    else:
        from skimage.feature import peak_local_max

        coords = peak_local_max(dist, min_distance=int(min_distance), labels=comps, exclude_border=False)
        coords = coords[np.lexsort((coords[:, 1], coords[:, 0]))] if len(coords) else coords  # raster order
        markers = np.zeros(mask.shape, dtype=np.int64)
        markers[coords[:, 0], coords[:, 1]] = np.arange(1, len(coords) + 1)
    markers = _seed_unseeded(markers.astype(np.int64, copy=False), comps, n_comps)

    labels = sk_watershed(-dist, markers, mask=mask, connectivity=connectivity)
    labels = _remove_small(labels.astype(np.int64, copy=False), min_size)
    if fill and labels.any():
        elevation = 1.0 - p if p is not None else ndimage.distance_transform_edt(labels == 0)
        labels = sk_watershed(elevation, labels, connectivity=connectivity)
    return _finish(labels, 0)


def learned(
    interior: Any,
    foreground: Any,
    *,
    seed_threshold: float = 0.5,
    threshold: float = 0.5,
    min_seed_size: int = 0,
    min_size: int = 0,
    connectivity: int = 1,
) -> np.ndarray:
    """Learned separation from a three-class (background / interior / boundary) prediction.

    ``interior`` = P(interior), ``foreground`` = P(interior) + P(boundary) = 1 - P(background), each (H, W)
    probabilities or bool masks. Seeds = connected components of ``interior >= seed_threshold`` inside the
    foreground mask (``foreground >= threshold``), seeds under ``min_seed_size`` px dropped. A watershed of
    ``1 - interior`` inside the mask gives each boundary pixel to its nearest seed through the interior
    landscape; a mask component without any seed becomes one object of its own. Objects under
    ``min_size`` px are removed.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed as sk_watershed

    _check_connectivity(connectivity)
    _check_nonneg(min_size, "min_size")
    _check_nonneg(min_seed_size, "min_seed_size")
    inner, inner_bool = _probabilities(interior, "interior")
    mask, _ = _mask(foreground, "foreground", threshold)
    if inner.shape != mask.shape:
        raise ValueError(f"interior shape {inner.shape} and foreground shape {mask.shape} must match")
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)

    structure = _structure(connectivity)
    seed_mask = (inner if inner_bool else inner >= seed_threshold) & mask
    seeds, _ = ndimage.label(seed_mask, structure=structure)
    seeds = _remove_small(seeds, min_seed_size)
    comps, n_comps = ndimage.label(mask, structure=structure)
    seeds = _seed_unseeded(seeds.astype(np.int64, copy=False), comps, n_comps)

    elevation = 1.0 - inner.astype(np.float32)
    labels = sk_watershed(elevation, seeds, mask=mask, connectivity=connectivity)
    return _finish(labels, min_size)


# --------------------------------------------------------------------------------------------- targets
def interior_boundary_target(instances: Any, *, width: int = 2) -> np.ndarray:
    """Three-class training target from an instance label map: 0 background, 1 interior, 2 boundary.

    ``instances``: (H, W) non-negative integer labels (0 background). A pixel of an object is boundary when
    some pixel within Chebyshev distance ``width`` (the (2*width+1)^2 square window) has a different label,
    another object's or background; else interior. Pixels outside the image count as copies of the nearest
    edge pixel (``mode="nearest"``), so the image edge (e.g. of a random crop) makes no boundary. Touching
    objects are thus separated by a boundary band about ``2 * width`` px wide, a lone object gets a band
    ``width`` px wide inside its outline. Returns int64 (H, W). Ignore pixels are the caller's business.
    """
    from scipy import ndimage

    inst = _to_numpy(instances, "instances")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width!r}")
    if inst.dtype == np.bool_:
        inst = inst.astype(np.int64)
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must be an integer label map, got shape {inst.shape} dtype {inst.dtype}")
    if inst.size and inst.min() < 0:
        raise ValueError(f"instances must be >= 0 (0 background), got min {inst.min()} (shape {inst.shape})")
    size = 2 * int(width) + 1
    maxf = ndimage.maximum_filter(inst, size=size, mode="nearest")
    minf = ndimage.minimum_filter(inst, size=size, mode="nearest")
    obj = inst > 0
    target = obj.astype(np.int64)
    target[obj & (maxf != minf)] = 2
    return target


# --------------------------------------------------------------------------------------------- display
def instance_palette(n: int, seed: int = 0) -> np.ndarray:
    """(n + 1, 3) uint8 colours: row 0 black (background), rows 1..n saturated colours with golden-ratio hue
    steps (adjacent ids about 137 degrees apart) and a value cycling over three levels. Deterministic; the
    start hue depends on ``seed``. Rows are distinct for n up to several hundred."""
    from matplotlib.colors import hsv_to_rgb

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    golden = (np.sqrt(5.0) - 1.0) / 2.0  # 0.618...
    start = (seed * golden * 0.5) % 1.0 if seed else 0.0
    i = np.arange(n, dtype=np.float64)
    hsv = np.empty((n, 3))
    hsv[:, 0] = (start + i * golden) % 1.0
    hsv[:, 1] = np.array([0.9, 0.75, 1.0])[np.arange(n) % 3]
    hsv[:, 2] = np.array([1.0, 0.85, 0.7])[(np.arange(n) // 3) % 3]
    rgb = np.round(hsv_to_rgb(hsv) * 255.0).astype(np.uint8) if n else np.zeros((0, 3), np.uint8)
    return np.concatenate([np.zeros((1, 3), np.uint8), rgb], axis=0)


def instance_overlay(image: Any, labels: Any, *, alpha: float = 0.5, outline: bool = True) -> np.ndarray:
    """Blend each object into ``image`` with its own colour from ``instance_palette(labels.max())``.

    ``image``: (H, W, 3), (H, W, 1) or (H, W) uint8; ``labels``: (H, W) non-negative integer labels. Object
    pixels become ``(1 - alpha) * image + alpha * colour``, background pixels are left as they are. With
    ``outline``, the inner object boundaries (``find_boundaries(mode="inner")``) are drawn in the object's
    full colour, so touching objects stay visibly separate. Returns uint8 (H, W, 3).
    """
    img = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    lab = _to_numpy(labels, "labels")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3) or img.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (H, W, 3) or (H, W, 1), got shape {img.shape} dtype {img.dtype}"
        )
    if img.shape[:2] != lab.shape:
        raise ValueError(f"labels shape {lab.shape} must match image (H, W) {img.shape[:2]}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise ValueError(f"labels must be an integer label map, got shape {lab.shape} dtype {lab.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    lab = lab.astype(np.int64, copy=False)
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 background), got min {lab.min()} (shape {lab.shape})")

    out = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img.copy()
    if lab.size == 0 or lab.max() == 0:
        return out
    palette = instance_palette(int(lab.max()))
    fg = lab > 0
    colour = palette[lab[fg]].astype(np.float32)
    blended = (1.0 - alpha) * out[fg].astype(np.float32) + alpha * colour
    out[fg] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    if outline:
        from skimage.segmentation import find_boundaries

        edge = find_boundaries(lab, mode="inner") & fg
        out[edge] = palette[lab[edge]]
    return out
