"""Overlap-tile inference (Ronneberger et al., 2015) for images larger than memory or than the training crops.

The image is mirrored by ``overlap`` pixels at its border; each ``tile`` x ``tile`` block of the output is
predicted from the block plus ``overlap`` pixels of context on every side, and only its centre is kept. Every
output pixel therefore comes from one tile that saw its full context: no seams and no averaging, and for a
network whose receptive field radius is at most ``overlap`` the result equals one pass over the mirrored image.

Memory is bounded by the tile: the mirrored image is never built (each tile cuts its window out of the image
and mirrors only the part that crosses the border, which gives the same pixels), and :func:`iter_tiles` hands
out one tile's logits at a time, so a caller that keeps only labels needs no full-image logits at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from seglab.validate import check_tiling


def tile_starts(size: int, tile: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size``; the last tile is shifted to end at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return [*starts, size - tile]


def tile_window(
    image: torch.Tensor,
    y0: int,
    x0: int,
    th: int,
    tw: int,
    overlap: int,
    mode: str,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The input of one tile: the block (``y0``, ``x0``, ``th``, ``tw``) of ``image`` (N, C, H, W) with ``overlap``
    pixels of context on every side, mirrored (``mode``) only where the window crosses the image border; equal
    to the same window of the whole image padded by ``overlap``. ``prepare`` (e.g. normalisation, elementwise)
    runs on the cut-out block before padding."""
    h, w = image.shape[-2:]
    top, left = max(0, y0 - overlap), max(0, x0 - overlap)
    bottom, right = min(h, y0 + th + overlap), min(w, x0 + tw + overlap)
    patch = image[..., top:bottom, left:right]
    if prepare is not None:
        patch = prepare(patch)
    pads = (
        left - (x0 - overlap),
        x0 + tw + overlap - right,
        top - (y0 - overlap),
        y0 + th + overlap - bottom,
    )
    return F.pad(patch, pads, mode=mode) if any(pads) else patch


@torch.inference_mode()
def iter_tiles(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int = 256,
    overlap: int = 32,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(y0, x0, logits (N, K, th, tw)) per tile of ``image`` (N, C, H, W), in row-major order. The tiles cover
    the image; the last tile of a row or column is shifted to end at the border and so overlaps its neighbour:
    write them in order (the later tile wins), as :func:`predict_tiled` does. ``prepare`` turns each cut-out
    block into the model's input (e.g. uint8 -> normalised float on the model's device)."""
    check_tiling(tile, overlap)
    h, w = image.shape[-2:]
    mode = "reflect" if overlap < min(h, w) else "replicate"  # reflection needs the image to be wider
    th, tw = min(tile, h), min(tile, w)
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            patch = tile_window(image, y0, x0, th, tw, overlap, mode, prepare)
            yield y0, x0, model(patch)[..., overlap : overlap + th, overlap : overlap + tw]


@torch.inference_mode()
def predict_tiled(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int = 256, overlap: int = 32
) -> torch.Tensor:
    """Logits (N, K, H, W) of ``model`` on ``image`` (N, C, H, W), predicted tile by tile with mirrored context.
    Beyond the output itself, memory is one tile's input and activations."""
    n, _, h, w = image.shape
    out: torch.Tensor | None = None
    for y0, x0, logits in iter_tiles(model, image, tile, overlap):
        if out is None:
            out = logits.new_empty(n, logits.shape[1], h, w)
        out[..., y0 : y0 + logits.shape[-2], x0 : x0 + logits.shape[-1]] = logits
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
