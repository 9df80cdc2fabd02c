"""One image -> probabilities -> labels: the one per-image path of ``seglab predict``, ``seglab evaluate``,
``seglab serve`` and the report.

Every output has the input image's size. A checkpoint trained with ``data.resize`` sees the image resized as
in training; its logits are upsampled bilinearly to the image's size before the softmax and the argmax.

Memory: with ``tile`` nothing of full-image size is float except what is asked for; the labels (1 byte per
pixel) and each requested probability map (1 byte) are filled tile by tile (with ``resize``, the logits at the
model's resolution are kept and upsampled in blocks of rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seglab.data.io import class_index
from seglab.data.transforms import resize_image, resized_size
from seglab.inference.tiling import iter_tiles


def normalise(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """A unit-range image (..., C, H, W) (``Normalization.unit``'s: uint8 for 0..255, else float) -> the model's
    float input on ``device``: uint8 divided by 255, then ``(u - mean) / std`` per band (the checkpoint's)."""
    scale = x.dtype == torch.uint8
    x = x.to(device).to(torch.float32, copy=True)
    if scale:
        x.div_(255)
    x.sub_(torch.tensor(mean, device=device)[:, None, None])
    return x.div_(torch.tensor(std, device=device)[:, None, None])


def image_tensor(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    resize: dict[str, Any] | None = None,
) -> torch.Tensor:
    """One unit-range (H, W, C) image (``Normalization.unit``'s, uint8 or float) as the normalised float batch
    (1, C, H, W) a model takes; with ``resize`` (a checkpoint's) resized first, as training resized it
    (``seglab.data.transforms.resize_image``: uint8 stays uint8, as in training; float is resized as float)."""
    src = torch.from_numpy(image).permute(2, 0, 1)
    if resize:
        src = resize_image(src, resized_size(*image.shape[:2], resize))
    return normalise(src, mean, std, device).unsqueeze(0)


def _source_index(
    n_out: int, n_in: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` output pixels, the two input pixels and the weight of the second that bilinear
    upsampling (align_corners False, as F.interpolate) blends."""
    centres = torch.arange(n_out, device=device, dtype=torch.float64) + 0.5
    src = (centres * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    return i0, (i0 + 1).clamp_(max=n_in - 1), (src - i0).float()


def upsample_rows(logits: torch.Tensor, size: tuple[int, int], r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of ``logits`` (C, h, w) upsampled bilinearly to ``size`` (H, W): equal to
    ``F.interpolate(logits[None], size, mode="bilinear")[0, :, r0:r1]`` without making the whole of it."""
    (h, w), (out_h, out_w) = logits.shape[-2:], size
    i0, i1, fy = (t[r0:r1] for t in _source_index(out_h, h, logits.device))
    j0, j1, fx = _source_index(out_w, w, logits.device)
    rows = logits[:, i0] * (1 - fy)[:, None] + logits[:, i1] * fy[:, None]  # (C, r1 - r0, w)
    return rows[..., j0] * (1 - fx) + rows[..., j1] * fx


def _prob_windows(
    model: Any,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    temperature: float,
    tile: int | None,
    overlap: int,
    resize: dict[str, Any] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(y0, x0, probabilities (C, h, w)) of the unit-range ``image`` (``Normalization.unit``'s) at once, or tile
    by tile with ``tile`` (each tile is standardised on its own: the unit image is the only full-size input).
    With ``resize`` the model sees the resized image (whole or tile by tile) and its logits come back upsampled
    to the image's size, in blocks of rows (y0, 0, probabilities)."""
    src = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)  # a view, no copy
    if resize:
        h, w = image.shape[:2]
        src = resize_image(src, resized_size(h, w, resize))
    if tile is None:
        logits = model(normalise(src, mean, std, device))[0]
        if not resize:
            yield 0, 0, (logits / temperature).softmax(0)
            return
    else:
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: normalise(t, mean, std, device)  # noqa: E731
        if not resize:
            for y0, x0, logits in iter_tiles(model, src, tile, overlap, prepare):
                yield y0, x0, (logits[0] / temperature).softmax(0)
            return
        logits = None
        for y0, x0, part in iter_tiles(model, src, tile, overlap, prepare):
            if logits is None:
                logits = part.new_empty(part.shape[1], *src.shape[-2:])
            logits[:, y0 : y0 + part.shape[2], x0 : x0 + part.shape[3]] = part[0]
        assert logits is not None
    rows = max(1, (1 << 22) // max(1, logits.shape[0] * w))  # about 16 MB of float probabilities at a time
    for r0 in range(0, h, rows):
        yield r0, 0, (upsample_rows(logits, (h, w), r0, min(h, r0 + rows)) / temperature).softmax(0)


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    temperature: float = 1.0,
    tile: int | None = None,
    overlap: int = 32,
    resize: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Class probabilities (C, H, W) for one unit-range (H, W, C) image (``Normalization.unit``'s: an 8-bit image
    as it is for ``imagenet``) of any size (the model pads and crops), standardised with ``mean`` and ``std``;
    the logits are divided by ``temperature`` (a checkpoint's fitted one) first. With ``tile`` the image is
    predicted tile by tile with ``overlap`` pixels of mirrored context (overlap-tile, for large images). With
    ``resize`` (a checkpoint's) the model sees the image resized and its logits are upsampled bilinearly to
    (H, W) before the softmax."""
    h, w = image.shape[:2]
    out: torch.Tensor | None = None
    for y0, x0, probs in _prob_windows(model, image, mean, std, device, temperature, tile, overlap, resize):
        if out is None and tuple(probs.shape[-2:]) == (h, w):
            return probs
        if out is None:
            out = probs.new_empty(probs.shape[0], h, w)
        out[:, y0 : y0 + probs.shape[1], x0 : x0 + probs.shape[2]] = probs
    assert out is not None
    return out


@torch.inference_mode()
def image_probs(
    model: Any, meta: Any, image: np.ndarray, device: torch.device, tile: int | None = None, overlap: int = 32
) -> tuple[torch.Tensor, Any]:
    """(probabilities (C, H, W), the predictor's result or None) of one raw (H, W, C) image (``read_image``'s:
    uint8, uint16 or float32), as ``predict`` computes them: ``model`` is a checkpoint's model (with ``meta``'s
    normalisation, temperature and resize; tiled with ``tile``) or an uncertainty predictor (its mean
    probabilities)."""
    from seglab.uncertainty.predictors import Predictor

    norm = meta.normalization
    image = norm.unit(image)
    if not isinstance(model, Predictor):
        probs = predict_probs(
            model, image, norm.mean, norm.std, device, meta.temperature, tile, overlap, meta.resize
        )
        return probs, None
    x = image_tensor(image, norm.mean, norm.std, device, meta.resize)
    result = model(x, image.shape[:2] if meta.resize else None)
    return result.probs[0], result


def instance_object_class(meta: Any, method: str, instance_class: str | int | None) -> int | None:
    """Check ``--instances METHOD`` and resolve ``--instance-class`` (name or index) for ``meta``'s model: the
    class whose probability is "object", or None for an interior_boundary model (see ``seglab.instances.infer``)."""
    from seglab.instances.infer import check_method, object_class_of

    check_method(method)
    index = None if instance_class is None else class_index(meta.class_names, instance_class)
    return object_class_of(meta.class_names, meta.target, index)


def _labels_and_maps(
    probs: torch.Tensor, prob_idx: Sequence[int], threshold: float | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 labels (argmax, or ``threshold`` on the one ``prob_idx`` class) and 8-bit maps of ``prob_idx``."""
    labels = probs.argmax(0) if threshold is None else threshold_labels(probs, prob_idx[0], threshold)
    maps = [(probs[c] * 255).round().byte().cpu().numpy() for c in prob_idx]
    return labels.cpu().numpy().astype(np.uint8), maps


@torch.inference_mode()
def predict_labels(
    model: Any,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    temperature: float = 1.0,
    tile: int | None = None,
    overlap: int = 32,
    prob_idx: Sequence[int] = (),
    threshold: float | None = None,
    resize: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels uint8 (H, W) of one unit-range (H, W, C) image (``Normalization.unit``'s; standardised with
    ``mean`` and ``std``) (the argmax, or with ``threshold`` see
    :func:`threshold_labels` on the one ``prob_idx`` class) and the 8-bit probability map (255 = 1.0) of each
    ``prob_idx`` class. With ``tile`` they are filled tile by tile: no full-image logits or probabilities. With
    ``resize`` (a checkpoint's) the model sees the image resized and its logits are upsampled bilinearly to
    (H, W) before the softmax and the argmax, in blocks of rows."""
    h, w = image.shape[:2]
    labels = np.empty((h, w), np.uint8)
    maps = [np.empty((h, w), np.uint8) for _ in prob_idx]
    windows = _prob_windows(model, image, mean, std, device, temperature, tile, overlap, resize)
    for y0, x0, probs in windows:
        lab, pm = _labels_and_maps(probs, prob_idx, threshold)
        win = np.s_[y0 : y0 + lab.shape[0], x0 : x0 + lab.shape[1]]
        labels[win] = lab
        for full, part in zip(maps, pm):
            full[win] = part
    return labels, maps


@dataclass
class ImagePrediction:
    """What :func:`predict_image` gives for one image: ``labels`` uint8 (H, W); ``maps``: the 8-bit probability
    map of each asked class; ``probs`` (C, H, W) unless the image was predicted tile by tile without them;
    ``result``: the uncertainty predictor's UncertaintyResult (entropy, mutual information ...) or None."""

    labels: np.ndarray
    maps: list[np.ndarray]
    probs: torch.Tensor | None
    result: Any


def predict_image(
    model: Any,
    meta: Any,
    image: np.ndarray,
    device: torch.device,
    *,
    tile: int | None = None,
    overlap: int = 32,
    prob_idx: Sequence[int] = (),
    threshold: float | None = None,
    need_probs: bool = False,
) -> ImagePrediction:
    """One raw (H, W, C) image (``read_image``'s) through a checkpoint's model or an uncertainty predictor
    (``seglab.uncertainty``), exactly as ``seglab predict`` and ``seglab serve`` do it: the one per-image path of
    both. The image becomes its unit range once (``meta.normalization.unit``); each tile is standardised on its
    own. A plain model without ``need_probs`` goes tile by tile (:func:`predict_labels`), so no full-image
    probabilities exist."""
    from seglab.uncertainty.predictors import Predictor

    if not isinstance(model, Predictor) and not need_probs:
        norm = meta.normalization
        labels, maps = predict_labels(
            model,
            norm.unit(image),
            norm.mean,
            norm.std,
            device,
            meta.temperature,
            tile,
            overlap,
            prob_idx,
            threshold,
            meta.resize,
        )
        return ImagePrediction(labels, maps, None, None)
    probs, result = image_probs(model, meta, image, device, tile, overlap)
    labels, maps = _labels_and_maps(probs, prob_idx, threshold)
    return ImagePrediction(labels, maps, probs, result)


def threshold_labels(probs: torch.Tensor, cls: int, threshold: float) -> torch.Tensor:
    """Labels (H, W) from probabilities (C, H, W): ``cls`` wherever its probability is >= ``threshold``, else
    the most probable other class (for two classes: a threshold on one class's probability map)."""
    others = probs.clone()
    others[cls] = -1.0
    labels = others.argmax(0)
    labels[probs[cls] >= threshold] = cls
    return labels
