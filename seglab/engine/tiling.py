"""Overlap-tile inference (Ronneberger et al., 2015) for images larger than memory or than the training crops.

The image is mirrored by ``overlap`` pixels at its border; each ``tile`` x ``tile`` block of the output is
predicted from the block plus ``overlap`` pixels of context on every side, and only its centre is kept. Every
output pixel therefore comes from one tile that saw its full context: no seams and no averaging, and for a
network whose receptive field radius is at most ``overlap`` the result equals one pass over the mirrored image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size``; the last tile is shifted to end at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return [*starts, size - tile]


@torch.inference_mode()
def predict_tiled(
    model: torch.nn.Module, image: torch.Tensor, tile: int = 256, overlap: int = 32
) -> torch.Tensor:
    """Logits (N, K, H, W) of ``model`` on ``image`` (N, C, H, W), predicted tile by tile with mirrored context."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    n, _, h, w = image.shape
    mode = "reflect" if overlap < min(h, w) else "replicate"  # reflection needs the image to be wider
    padded = F.pad(image, (overlap, overlap, overlap, overlap), mode=mode) if overlap else image
    out: torch.Tensor | None = None
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            th, tw = min(tile, h), min(tile, w)
            patch = padded[..., y0 : y0 + th + 2 * overlap, x0 : x0 + tw + 2 * overlap]
            logits = model(patch)[..., overlap : overlap + th, overlap : overlap + tw]
            if out is None:
                out = logits.new_empty(n, logits.shape[1], h, w)
            out[..., y0 : y0 + th, x0 : x0 + tw] = logits
    assert out is not None
    return out


class TiledModel(nn.Module):
    """``model`` run by overlap-tile inference: a drop-in model, so every predictor (TTA, MC dropout, ensembles)
    and every evaluation loop can use the strategy unchanged."""

    def __init__(self, model: nn.Module, tile: int = 256, overlap: int = 32) -> None:
        super().__init__()
        self.model, self.tile, self.overlap = model, tile, overlap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return predict_tiled(self.model, x, self.tile, self.overlap)
