"""Checkpoints -> an uncertainty predictor: the one entry that ``seglab predict``, ``evaluate``, ``serve`` and
the report call (the predictors themselves live in ``seglab.uncertainty.predictors``)."""

from __future__ import annotations

from pathlib import Path

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
    meta. Inputs are normalised with the main checkpoint's mean/std; each model divides its logits by its own
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
            m
            if (mt.mean, mt.std) == (meta.mean, meta.std)
            else Renormalize(m, meta.mean, meta.std, mt.mean, mt.std)
            for m, mt in members
        ]
        return Ensemble([tiled(m.to(device)) for m in models], [mt.temperature for _, mt in members]), meta
    if config.method == "mc-dropout":
        if config.add_dropout > 0:
            add_dropout(model, config.add_dropout, "head")
        return MCDropout(tiled(model), config.samples, meta.temperature, config.seed), meta
    if config.method == "tta":
        return TTA(tiled(model), config.flips, config.scales, meta.temperature), meta
    return Deterministic(tiled(model), meta.temperature), meta
