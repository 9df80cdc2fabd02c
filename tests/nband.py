"""Helpers of the N-band tests (tests/engine/test_engine_predict_nband.py, tests/serve/test_serve_nband.py): a
12-bit image in 16 bits, a dataset normalisation worked out by hand, a tiny N-band checkpoint that records it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seglab.checkpoint import CheckpointMeta, save_checkpoint
from seglab.data.normalize import Normalization
from seglab.models.factory import create_model

TINY = {"depth": 2, "base_channels": 4}
PALETTE = [[0, 0, 0], [255, 0, 0]]


def twelve_bit(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A dark 12-bit image in 16 bits with bright blobs: most values far below 65535."""
    rng = np.random.default_rng(seed)
    img = rng.integers(100, 600, shape).astype(np.uint16)
    img[8:20, 10:30] += 3000
    return img


def dataset_norm(bands: int) -> Normalization:
    """A dataset normalisation of a 12-bit camera: per band its own range and statistics."""
    lo = [100.0 + 10 * b for b in range(bands)]
    hi = [4000.0 - 50 * b for b in range(bands)]
    mean = [0.3 + 0.02 * b for b in range(bands)]
    std = [0.2 - 0.01 * b for b in range(bands)]
    return Normalization("dataset", lo, hi, mean, std, [0.5, 99.5])


def normalised(n: Normalization, raw: np.ndarray) -> torch.Tensor:
    """(C, H, W): ((x - lo) / (hi - lo) - mean) / std per band, written out."""
    lo, hi = np.asarray(n.lo), np.asarray(n.hi)
    unit = ((raw.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    x = torch.from_numpy(unit).permute(2, 0, 1)
    return (x - torch.tensor(n.mean)[:, None, None]) / torch.tensor(n.std)[:, None, None]


def make_checkpoint(folder: Path, norm: Normalization, seed: int = 0) -> Path:
    """A tiny 2-class U-Net of ``norm.bands`` input bands, random weights, recording ``norm``; its head's bias
    puts the class boundary at the median of a 12-bit image's logits (so both classes appear)."""
    torch.manual_seed(seed)
    model = create_model("unet", num_classes=2, in_channels=norm.bands, **TINY).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 2][-1]
    raw = twelve_bit((40, 40, norm.bands), seed=99)
    with torch.inference_mode():
        logits = model(normalised(norm, raw)[None])[0]
        head.bias[1] -= (logits[1] - logits[0]).median()
    meta = CheckpointMeta(
        arch="unet",
        num_classes=2,
        in_channels=norm.bands,
        model_params=dict(TINY),
        class_names=["bg", "fg"],
        palette=PALETTE,
        mean=list(norm.mean),
        std=list(norm.std),
        normalize=norm.to_dict(),
    )
    return save_checkpoint(folder / "best", model, meta)
