"""Colours: a checkpoint's palette and the overlay of a mask on its image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seglab.data.io import default_palette


def palette_of(meta: Any) -> list[list[int]]:
    """The checkpoint's palette as ``num_classes`` [r, g, b] int lists, or the default colours when it lacks one
    (a checkpoint saved from Python)."""
    palette = meta.palette if len(meta.palette) >= meta.num_classes else default_palette(meta.num_classes)
    return [[int(v) for v in colour] for colour in palette[: meta.num_classes]]


def shown(image: np.ndarray, meta: Any, bands: Sequence[int] | None = None) -> np.ndarray:
    """uint8 (H, W, 1 or 3) that pictures (overlays, the report, the viewer) show of a raw (H, W, C) image: an
    8-bit grayscale or RGB image as it is (as always), any other through the checkpoint's normalisation
    (``Normalization.display``: the unit range over 0..255). ``bands``: 0-based, one or three (``--display-bands``
    4,3,2 is (3, 2, 1), parsed by ``seglab.cli.display_bands``); ConfigError for a band the image lacks."""
    if image.dtype == np.uint8 and image.shape[2] in (1, 3) and not bands:
        return image
    return meta.normalization.display(image, bands)


def check_display_bands(meta: Any, bands: Sequence[int] | None) -> None:
    """ConfigError, before any work, for ``--display-bands`` (0-based) beyond the model's input bands."""
    from seglab.errors import ConfigError

    bad = [b + 1 for b in bands or () if not 0 <= b < meta.in_channels]
    if bad:
        raise ConfigError(
            f"--display-bands names band(s) {', '.join(map(str, bad))} but the model takes "
            f"{meta.in_channels}-band images; give bands within 1..{meta.in_channels}"
        )


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
