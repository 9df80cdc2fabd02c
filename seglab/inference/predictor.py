"""Checkpoints -> an uncertainty predictor: the one entry that ``seglab predict``, ``evaluate``, ``serve`` and
the report call (the predictors themselves live in ``seglab.uncertainty.predictors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from seglab.checkpoint import CheckpointMeta
from seglab.errors import CheckpointError
from seglab.inference.tiling import TiledModel
from seglab.uncertainty.build import Renormalize, load_members
from seglab.uncertainty.config import UncertaintyConfig
from seglab.uncertainty.predictors import TTA, Deterministic, Ensemble, MCDropout, Predictor, add_dropout


def build_predictor(
    checkpoint: str | Path,
    config: UncertaintyConfig,
    device: str = "cpu",
    tile: int | None = None,
    overlap: int = 32,
) -> tuple[Predictor, CheckpointMeta]:
    """The predictor ``config`` describes for ``checkpoint`` (plus ``config.ensemble``) and the main checkpoint's
    meta. Inputs are normalised with the main checkpoint's normalisation (each member's input is made from it); each model divides its logits by its own
    fitted temperature. With ``tile`` every model runs overlap-tile inference."""

    def tiled(m: nn.Module) -> nn.Module:
        return TiledModel(m, tile, overlap) if tile is not None else m

    members = load_members([checkpoint, *config.ensemble], device)
    model, meta = members[0]
    if meta.num_classes < 2:
        raise CheckpointError(
            f"uncertainty needs a model of at least 2 classes; {checkpoint} has {meta.num_classes}"
        )
    if config.method == "ensemble":
        models = [
            _renormalised(m, meta, mt, path) for (m, mt), path in zip(members, [checkpoint, *config.ensemble])
        ]
        return Ensemble([tiled(m.to(device)) for m in models], [mt.temperature for _, mt in members]), meta
    if config.method == "mc-dropout":
        if config.add_dropout > 0:
            add_dropout(model, config.add_dropout, "head")
        return MCDropout(tiled(model), config.samples, meta.temperature, config.seed), meta
    if config.method == "tta":
        return TTA(tiled(model), config.flips, config.scales, meta.temperature), meta
    return Deterministic(tiled(model), meta.temperature), meta


def _renormalised(
    model: nn.Module, main: CheckpointMeta, meta: CheckpointMeta, path: str | Path
) -> nn.Module:
    """``model`` (of ``meta``) fed the main checkpoint's model input: as it is when both normalise alike, else
    through :class:`Renormalize` (both steps are affine per band: the unit range, then mean/std; in raw values the
    main input is ``x * std * (hi - lo) + lo + mean * (hi - lo)``). CheckpointError where no affine map exists
    (a per-image stretch or clipping that differs between the two)."""
    a, b = main.normalization, meta.normalization
    unit = lambda n: (n.mode, n.lo, n.hi, n.percentiles, n.clip)  # noqa: E731
    if unit(a) == unit(b):
        return (
            model if (a.mean, a.std) == (b.mean, b.std) else Renormalize(model, a.mean, a.std, b.mean, b.std)
        )
    if "image" in (a.mode, b.mode) or a.clip or b.clip:
        raise CheckpointError(
            f"ensemble member {path} normalises images as {b.mode} but the first as {a.mode}; members with a "
            "per-image stretch or clipping must share the normalisation (train them with the same data.normalize)"
        )

    def raw(n: Any) -> tuple[list[float], list[float]]:
        span = [h - lo for lo, h in zip(n.lo, n.hi)]
        return [lo + m * d for lo, m, d in zip(n.lo, n.mean, span)], [s * d for s, d in zip(n.std, span)]

    return Renormalize(model, *raw(a), *raw(b))
