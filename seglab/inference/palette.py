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
