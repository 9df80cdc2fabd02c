"""Prediction: a checkpoint on image files or folders -> palette index-mask PNGs and colour overlays
(and, with ``uncertainty``, per-pixel uncertainty heatmaps; see ``seglab.uncertainty``).

Every output has the input image's size. A checkpoint trained with ``data.resize`` sees the image resized as in
training; its logits are upsampled bilinearly to the image's size before the softmax and the argmax.

Memory: with ``tile`` nothing of full-image size is float except what is asked for; the labels (1 byte per
pixel), each requested probability map (1 byte) and the overlay (3 bytes) are filled tile by tile (with
``resize``, the logits at the model's resolution are kept and upsampled in blocks of rows).
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seglab.data.io import IMAGE_SUFFIXES, class_index, default_palette, read_image, save_png
from seglab.data.transforms import resize_image, resized_size, stretch_image
from seglab.errors import ConfigError, DataError
from seglab.files import OutputKind, guard_file, is_seglab_png
from seglab.models.tiling import iter_tiles

if TYPE_CHECKING:
    from seglab.uncertainty.config import UncertaintyConfig

# The files predict writes: <stem>_mask.png, _overlay.png, _prob_<class>.png, _uncertainty.png / .npz,
# _instances.png, _instances_overlay.png
OUTPUT_NAME = re.compile(r".+_(mask|overlay|uncertainty|instances|instances_overlay|prob_[A-Za-z0-9_.-]+)\.(png|npz)")


class PredictError(DataError):
    """Some inputs could not be read; the others were predicted. ``results``: the records of the predicted
    images (as :func:`predict` returns them); ``failures``: (input path, reason) per skipped image."""

    def __init__(self, message: str, results: list[dict[str, Any]], failures: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.results, self.failures = results, failures


def collect_inputs(inputs: Sequence[str | Path], out_dir: str | Path | None = None) -> list[Path]:
    """Image files given directly or found (non-recursively) in given folders; DataError if none or missing.

    With ``out_dir``, files inside it named like predict's outputs (``*_mask.png``, ``*_overlay.png``,
    ``*_prob_*.png``, ``*_uncertainty.png``) are left out, so predicting into the input folder (or a folder that
    a shell glob passes back in) never predicts on earlier outputs."""
    out = Path(out_dir).resolve() if out_dir is not None else None

    def ours(p: Path) -> bool:
        return out is not None and p.parent.resolve() == out and OUTPUT_NAME.fullmatch(p.name) is not None

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            kept = [p for p in found if not ours(p)]
            if not kept and not (found and item.resolve() == out):
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += kept
        elif item.is_file():
            if not ours(item):
                files.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    if not files:
        raise DataError("no input images given" + (f" (only earlier outputs in {out_dir})" if inputs else ""))
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(
                f"inputs {stems[f.stem]} and {f} share the name {f.stem!r}; outputs would collide"
            )
        stems[f.stem] = f
    return files


def normalise(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float on ``device``, scaled to 0..1 and normalised with ``mean`` and ``std``."""
    x = x.to(device).to(torch.float32, copy=True).div_(255)
    x.sub_(torch.tensor(mean, device=device)[:, None, None])
    return x.div_(torch.tensor(std, device=device)[:, None, None])


def image_tensor(
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    resize: dict[str, Any] | None = None,
) -> torch.Tensor:
    """One uint8 (H, W, C) image as the normalised float batch (1, C, H, W) a model takes; with ``resize`` (a
    checkpoint's) resized first, as training resized it (``seglab.data.transforms.resize_image``)."""
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
    """(y0, x0, probabilities (C, h, w)) of the whole image at once, or tile by tile with ``tile`` (each tile is
    normalised on its own: the uint8 image is the only full-size input). With ``resize`` the model sees the
    resized image (whole or tile by tile) and its logits come back upsampled to the image's size, in blocks of
    rows (y0, 0, probabilities)."""
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
    """Class probabilities (C, H, W) for one uint8 (H, W, C) image of any size (the model pads and crops);
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
    """(probabilities (C, H, W), the predictor's result or None) of one uint8 (H, W, C) image, as ``predict``
    computes them: ``model`` is a checkpoint's model (with ``meta``'s contrast stretch, normalisation, temperature
    and resize; tiled with ``tile``) or an uncertainty predictor (its mean probabilities)."""
    from seglab.uncertainty.predictors import Predictor

    image = stretch_image(image, meta.stretch)
    if not isinstance(model, Predictor):
        probs = predict_probs(model, image, meta.mean, meta.std, device, meta.temperature, tile, overlap,
                              meta.resize)  # fmt: skip
        return probs, None
    x = image_tensor(image, meta.mean, meta.std, device, meta.resize)
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
    """Labels uint8 (H, W) of one uint8 (H, W, C) image (the argmax, or with ``threshold`` see
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
    """One uint8 (H, W, C) image through a checkpoint's model or an uncertainty predictor (``seglab.uncertainty``),
    exactly as ``seglab predict`` and ``seglab serve`` do it: the one per-image path of both. A plain model
    without ``need_probs`` goes tile by tile (:func:`predict_labels`), so no full-image probabilities exist."""
    from seglab.uncertainty.predictors import Predictor

    if not isinstance(model, Predictor) and not need_probs:
        labels, maps = predict_labels(model, stretch_image(image, meta.stretch), meta.mean, meta.std, device,
                                      meta.temperature, tile, overlap, prob_idx, threshold, meta.resize)  # fmt: skip
        return ImagePrediction(labels, maps, None, None)
    probs, result = image_probs(model, meta, image, device, tile, overlap)
    labels, maps = _labels_and_maps(probs, prob_idx, threshold)
    return ImagePrediction(labels, maps, probs, result)


def palette_of(meta: Any) -> list[list[int]]:
    """The checkpoint's palette as ``num_classes`` [r, g, b] int lists, or the default colours when it lacks one
    (a checkpoint saved from Python)."""
    palette = meta.palette if len(meta.palette) >= meta.num_classes else default_palette(meta.num_classes)
    return [[int(v) for v in colour] for colour in palette[: meta.num_classes]]


def threshold_labels(probs: torch.Tensor, cls: int, threshold: float) -> torch.Tensor:
    """Labels (H, W) from probabilities (C, H, W): ``cls`` wherever its probability is >= ``threshold``, else
    the most probable other class (for two classes: a threshold on one class's probability map)."""
    others = probs.clone()
    others[cls] = -1.0
    labels = others.argmax(0)
    labels[probs[cls] >= threshold] = cls
    return labels


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend the palette colour of every non-zero label into the image; label 0 (background) stays as it is.
    Works in blocks of rows, so beyond the uint8 result it needs only a few MB whatever the image size."""
    out = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image.copy()
    colours = np.asarray(palette, dtype=np.float32)
    rows = max(1, (1 << 18) // max(1, mask.shape[1]))
    for r in range(0, mask.shape[0], rows):
        block, m = out[r : r + rows], mask[r : r + rows]
        fg = m > 0
        if fg.any():
            blend = (1 - alpha) * block[fg].astype(np.float32) + alpha * colours[
                np.clip(m[fg], 0, len(palette) - 1)
            ]
            block[fg] = blend.round().astype(np.uint8)
    return out


def predict(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    write_overlay: bool = True,
    device: str = "cpu",
    progress: bool = True,
    uncertainty: UncertaintyConfig | str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    prob_maps: Sequence[str | int] = (),
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
    instances: str | None = None,
    instance_class: str | int | None = None,
    instance_params: Any = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Write ``<stem>_mask.png`` (palette PNG of class indices) and ``<stem>_overlay.png`` per input image, both
    of the image's size (a checkpoint trained with ``data.resize`` sees the image resized, and its logits are
    upsampled to the image's size before the softmax; probability and uncertainty maps too).

    ``prob_maps`` (class names or indices): also ``<stem>_prob_<class>.png``, the probability of that class as
    8-bit grayscale (255 = 1.0), e.g. the ISBI membrane map. ``threshold`` (with one ``prob_maps`` class): the
    mask labels that class wherever its probability is at least ``threshold``, the best other class elsewhere.

    With ``uncertainty`` (an UncertaintyConfig or a method name: deterministic, mc-dropout, tta, ensemble) the
    mask is the argmax of that predictor's mean probabilities, and ``<stem>_uncertainty.png`` (entropy or mutual
    information on the fixed scale 0 .. log C, viridis) and optionally ``<stem>_uncertainty.npz`` (every raw map)
    are written too.

    With ``instances`` (components, watershed or learned; see ``seglab.instances``) the probabilities also become
    an instance label map: ``<stem>_instances.png`` (16-bit, 0 = no object, 1..K) and
    ``<stem>_instances_overlay.png`` (a colour per object, outlined). ``instance_class``: the object class of a
    model of more than two classes; ``instance_params``: an ``InstanceParams``.

    Returns one record (the input and its output paths) per image. An image that cannot be read is skipped:
    ``log`` (default: standard error) gets one line naming it, the other images are predicted, and at the end
    :class:`PredictError` (a DataError; ``.results`` and ``.failures``) says how many failed and why. Any other
    error (a bad checkpoint or flag, an output folder blocked by a file) stops at once, before the first image.
    Files in ``out_dir`` named like these outputs are never taken as inputs (``out_dir`` may be an input folder).
    Before the first image, ``out_dir`` and every output name are checked (``seglab.files.guard_dir``/``guard_file``):
    never a data set or a run folder itself; a file already at an output name must be an earlier PNG/NPZ output
    (``overwrite``: replace a file of another kind, never a checkpoint, state or data-set file).
    """
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.device import resolve_device
    from seglab.files import ensure_dir, guard_dir

    guard_dir(out_dir, "output folder")
    dev = resolve_device(device)
    predictor = None
    if uncertainty is not None:
        from seglab.uncertainty.build import build_predictor, write_outputs
        from seglab.uncertainty.config import UncertaintyConfig

        if isinstance(uncertainty, str):
            uncertainty = UncertaintyConfig(method=uncertainty)
        predictor, meta = build_predictor(checkpoint, uncertainty, str(dev), tile, overlap)
    else:
        model, meta = load_checkpoint(checkpoint, device=str(dev))
    prob_idx = [class_index(meta.class_names, c) for c in prob_maps]
    if instances is not None:
        from seglab.instances.infer import instances_from_probs
        from seglab.instances.postprocess import instance_overlay

        obj = instance_object_class(meta, instances, instance_class)
    if threshold is not None and (len(prob_idx) != 1 or not 0.0 < threshold < 1.0):
        raise ConfigError(f"--threshold needs one --prob class and a value in (0, 1), got {threshold} with "
                          f"{len(prob_idx)} classes")  # fmt: skip
    files = collect_inputs(inputs, out_dir)
    suffixes = ["_mask.png", *(f"_prob_{_safe(meta.class_names[c])}.png" for c in prob_idx)]
    suffixes += ["_overlay.png"] * write_overlay + ["_instances.png", "_instances_overlay.png"] * (instances is not None)
    if uncertainty is not None:
        suffixes += ["_uncertainty.png"] + ["_uncertainty.npz"] * bool(uncertainty.save_maps)
    for path in files:
        for suffix in suffixes:
            guard_file(Path(out_dir) / f"{path.stem}{suffix}", PREDICTION, overwrite)
    out = ensure_dir(out_dir)  # after every check of the arguments, before the first image
    palette = palette_of(meta)
    results: list[dict[str, Any]] = []
    failures: list[tuple[Path, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(files, desc="predict", leave=False, dynamic_ncols=True, disable=None)  # no bar in a log file
    for path in bar if bar is not None else files:
        try:
            image = read_image(path, meta.in_channels)
        except DataError as e:  # skip it, name it, carry on; summarised at the end
            failures.append((path, str(e)))
            _log(log, f"skipped {path.name}: {e}", bar)
            continue
        p = predict_image(model if predictor is None else predictor, meta, image, dev, tile=tile, overlap=overlap,
                          prob_idx=prob_idx, threshold=threshold, need_probs=instances is not None)  # fmt: skip
        labels, maps, probs, result = p.labels, p.maps, p.probs, p.result
        record: dict[str, Any] = {"input": str(path), "mask": str(out / f"{path.stem}_mask.png")}
        save_png(Path(record["mask"]), labels, palette)
        for c, prob in zip(prob_idx, maps):
            name = _safe(meta.class_names[c])
            record[f"prob_{name}"] = str(out / f"{path.stem}_prob_{name}.png")
            save_png(Path(record[f"prob_{name}"]), prob)
        if write_overlay:
            record["overlay"] = str(out / f"{path.stem}_overlay.png")
            save_png(Path(record["overlay"]), overlay(image, labels, palette))
        if instances is not None:
            objects = instances_from_probs(probs, instances, target=meta.target, object_class=obj,
                                           params=instance_params)  # fmt: skip
            if objects.max(initial=0) > 65535:
                raise DataError(f"{path} has {objects.max()} objects; a 16-bit instance map holds at most 65535")
            record["instances"] = str(out / f"{path.stem}_instances.png")
            record["objects"] = int(objects.max(initial=0))
            save_png(Path(record["instances"]), objects.astype(np.uint16))
            record["instances_overlay"] = str(out / f"{path.stem}_instances_overlay.png")
            save_png(Path(record["instances_overlay"]), instance_overlay(image, objects))
        if predictor is not None:
            record.update(write_outputs(out, path.stem, result, uncertainty, meta.num_classes))
        results.append(record)
    if failures:
        shown = "; ".join(f"{p.name} ({why})" for p, why in failures[:3])
        more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        raise PredictError(f"predicted {len(results)} of {len(files)} images into {out}; {len(failures)} failed: "
                           f"{shown}{more}", results, failures)  # fmt: skip
    return results


def _safe(name: str) -> str:
    """A class name as it appears in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _is_prediction(path: Path) -> bool:
    """An earlier output of predict: a PNG seglab wrote, or an NPZ of uncertainty maps (``--save-maps``)."""
    if path.suffix == ".png":
        return is_seglab_png(path)
    try:
        with zipfile.ZipFile(path) as z:
            return {"entropy.npy", "probs.npy"} <= set(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


PREDICTION = OutputKind("prediction", (".png", ".npz"), _is_prediction)


def _log(log: Callable[[str], None] | None, line: str, bar: Any = None) -> None:
    """``line`` to ``log`` (default: standard error), clearing a progress bar around it."""
    write = log or (lambda text: print(text, file=sys.stderr))
    if bar is None:
        write(line)
        return
    with bar.external_write_mode(file=sys.stderr):
        write(line)
