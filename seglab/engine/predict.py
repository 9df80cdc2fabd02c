"""Prediction: a checkpoint on image files or folders -> palette index-mask PNGs and colour overlays
(and, with ``uncertainty``, per-pixel uncertainty heatmaps; see ``seglab.uncertainty``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from seglab.data.io import IMAGE_SUFFIXES, class_index, default_palette, read_image, save_png
from seglab.engine.tiling import TiledModel
from seglab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from seglab.uncertainty.config import UncertaintyConfig


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in given folders; DataError if none or missing."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input {item} does not exist")
    if not files:
        raise DataError("no input images given")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise DataError(
                f"inputs {stems[f.stem]} and {f} share the name {f.stem!r}; outputs would collide"
            )
        stems[f.stem] = f
    return files


def image_tensor(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """One uint8 (H, W, C) image as the normalised float batch (1, C, H, W) a model takes."""
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(mean, device=device)[:, None, None]) / torch.tensor(std, device=device)[
        :, None, None
    ]
    return x.unsqueeze(0)


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
) -> torch.Tensor:
    """Class probabilities (C, H, W) for one uint8 (H, W, C) image of any size (the model pads and crops);
    the logits are divided by ``temperature`` (a checkpoint's fitted one) first. With ``tile`` the image is
    predicted tile by tile with ``overlap`` pixels of mirrored context (overlap-tile, for large images)."""
    x = image_tensor(image, mean, std, device)
    logits = (model if tile is None else TiledModel(model, tile, overlap))(x)
    return (logits[0] / temperature).softmax(0)


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
    """Blend the palette colour of every non-zero label into the image; label 0 (background) stays as it is."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    colours = np.asarray(palette, dtype=np.float32)[np.clip(mask, 0, len(palette) - 1)]
    out = rgb.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return out.round().astype(np.uint8)


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
) -> list[dict[str, Any]]:
    """Write ``<stem>_mask.png`` (palette PNG of class indices) and ``<stem>_overlay.png`` per input image.

    ``prob_maps`` (class names or indices): also ``<stem>_prob_<class>.png``, the probability of that class as
    8-bit grayscale (255 = 1.0), e.g. the ISBI membrane map. ``threshold`` (with one ``prob_maps`` class): the
    mask labels that class wherever its probability is at least ``threshold``, the best other class elsewhere.

    With ``uncertainty`` (an UncertaintyConfig or a method name: deterministic, mc-dropout, tta, ensemble) the
    mask is the argmax of that predictor's mean probabilities, and ``<stem>_uncertainty.png`` (entropy or mutual
    information on the fixed scale 0 .. log C, viridis) and optionally ``<stem>_uncertainty.npz`` (every raw map)
    are written too.
    """
    from seglab.checkpoint import load_checkpoint
    from seglab.engine.train import resolve_device

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
    if threshold is not None and (len(prob_idx) != 1 or not 0.0 < threshold < 1.0):
        raise ConfigError(f"--threshold needs one --prob class and a value in (0, 1), got {threshold} with "
                          f"{len(prob_idx)} classes")  # fmt: skip
    files = collect_inputs(inputs)
    out = Path(out_dir)
    # a checkpoint saved from Python may lack a palette: fall back to the default colours
    palette = meta.palette if len(meta.palette) >= meta.num_classes else default_palette(meta.num_classes)
    results = []
    if progress:
        from tqdm.auto import tqdm

        files = tqdm(files, desc="predict", leave=False, dynamic_ncols=True)
    for path in files:
        image = read_image(path, meta.in_channels)
        if predictor is None:
            probs = predict_probs(model, image, meta.mean, meta.std, dev, meta.temperature, tile, overlap)
        else:
            result = predictor(image_tensor(image, meta.mean, meta.std, dev))
            probs = result.probs[0]
        if threshold is None:
            labels = probs.argmax(0).cpu().numpy().astype(np.uint8)
        else:
            labels = threshold_labels(probs, prob_idx[0], threshold).cpu().numpy().astype(np.uint8)
        record: dict[str, Any] = {"input": str(path), "mask": str(out / f"{path.stem}_mask.png")}
        save_png(Path(record["mask"]), labels, palette)
        for c in prob_idx:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", meta.class_names[c])
            record[f"prob_{name}"] = str(out / f"{path.stem}_prob_{name}.png")
            save_png(Path(record[f"prob_{name}"]), (probs[c] * 255).round().byte().cpu().numpy())
        if write_overlay:
            record["overlay"] = str(out / f"{path.stem}_overlay.png")
            save_png(Path(record["overlay"]), overlay(image, labels, palette))
        if predictor is not None:
            record.update(write_outputs(out, path.stem, result, uncertainty, meta.num_classes))
        results.append(record)
    return results
