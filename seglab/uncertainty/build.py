"""The checkpoints an uncertainty predictor combines (loaded, checked to agree, renormalised to one input),
and the per-image outputs of ``seglab predict --uncertainty``. The entry that builds a predictor is
``seglab.inference.build_predictor``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint
from seglab.errors import CheckpointError
from seglab.files import atomic_write
from seglab.uncertainty.config import UncertaintyConfig
from seglab.uncertainty.functional import UncertaintyResult

COLORMAP = "viridis"  # perceptually uniform


class Renormalize(nn.Module):
    """Feeds ``model`` images normalised with (``in_mean``, ``in_std``) after re-normalising them to its own
    (``mean``, ``std``): ensemble members trained with different input statistics share one input."""

    def __init__(
        self,
        model: nn.Module,
        in_mean: Sequence[float],
        in_std: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model
        t = lambda v: torch.tensor(list(v), dtype=torch.float32)[:, None, None]  # noqa: E731
        # x_model = (x_in * in_std + in_mean - mean) / std = x_in * scale + shift
        self.register_buffer("scale", t(in_std) / t(std), persistent=False)
        self.register_buffer("shift", (t(in_mean) - t(mean)) / t(std), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale + self.shift)


def load_members(
    checkpoints: Sequence[str | Path], device: str = "cpu", backend: str | None = None
) -> list[tuple[nn.Module, CheckpointMeta]]:
    """Load every checkpoint (in ``backend``, see ``load_checkpoint``: an exported file is a model called like a
    module, which TTA, ensembles and a deterministic pass need; only MC dropout needs a PyTorch module);
    CheckpointError unless all agree with the first on classes, resize and input channels."""
    members = [load_checkpoint(c, device=device, backend=backend) for c in checkpoints]
    _, first = members[0]
    for path, (_, meta) in zip(checkpoints[1:], members[1:]):
        name = checkpoint_paths(path)[0]
        if meta.num_classes != first.num_classes or meta.class_names != first.class_names:
            raise CheckpointError(
                f"ensemble member {name} predicts {meta.num_classes} classes ({', '.join(meta.class_names)}) but "
                f"{checkpoint_paths(checkpoints[0])[0]} predicts {first.num_classes} "
                f"({', '.join(first.class_names)}); ensemble checkpoints of the same task"
            )
        if meta.resize != first.resize:
            raise CheckpointError(
                f"ensemble member {name} was trained on images resized by {meta.resize} but "
                f"{checkpoint_paths(checkpoints[0])[0]} by {first.resize} (data.resize); the members see one input"
            )
        if meta.in_channels != first.in_channels:
            raise CheckpointError(
                f"ensemble member {name} takes {meta.in_channels} input channels but the first takes "
                f"{first.in_channels}; ensemble checkpoints trained on the same images"
            )
    return members


def heatmap(values: np.ndarray | Tensor, num_classes: int, colormap: str = COLORMAP) -> np.ndarray:
    """An (H, W) map in nats as uint8 RGB (H, W, 3) on the fixed scale 0 .. log C (comparable across images).
    Coloured in blocks of rows: the colormap's float64 RGBA never exists for the whole image."""
    import matplotlib

    v = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    cmap = matplotlib.colormaps[colormap]
    out = np.empty((*v.shape, 3), np.uint8)
    rows = max(1, (1 << 16) // max(1, v.shape[-1]))
    for r in range(0, v.shape[0], rows):
        scaled = np.clip(v[r : r + rows] / math.log(num_classes), 0.0, 1.0)
        out[r : r + rows] = (cmap(scaled)[..., :3] * 255).round().astype(np.uint8)
    return out


def save_maps(path: Path, result: UncertaintyResult) -> None:
    """Every raw map of a single-image result as float32 arrays in one compressed ``.npz`` (written atomically)."""
    arrays = {name: t[0].detach().cpu().float().numpy() for name, t in result.maps().items()}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def write_outputs(
    out: Path, stem: str, result: UncertaintyResult, config: UncertaintyConfig, num_classes: int
) -> dict[str, Any]:
    """``<stem>_uncertainty.png`` (and ``<stem>_uncertainty.npz`` with ``save_maps``) for a one-image result;
    returns their paths and the image's mean entropy and mutual information."""
    from seglab.data.io import save_png

    values = result.entropy[0] if config.heatmap == "entropy" else result.mutual_information[0]
    record: dict[str, Any] = {"uncertainty": str(out / f"{stem}_uncertainty.png")}
    save_png(Path(record["uncertainty"]), heatmap(values, num_classes))
    if config.save_maps:
        record["maps"] = str(out / f"{stem}_uncertainty.npz")
        save_maps(Path(record["maps"]), result)
    record["mean_entropy"] = float(result.entropy.mean())
    record["mean_mutual_information"] = float(result.mutual_information.mean())
    return record
