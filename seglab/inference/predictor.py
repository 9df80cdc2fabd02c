"""Checkpoints -> an uncertainty predictor: the one entry that ``seglab predict``, ``evaluate``, ``serve`` and
the report call (the predictors themselves live in ``seglab.uncertainty.predictors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from seglab.checkpoint import CheckpointMeta, checkpoint_paths
from seglab.errors import CheckpointError, ConfigError
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
    backend: str | None = None,
) -> tuple[Predictor, CheckpointMeta]:
    """The predictor ``config`` describes for ``checkpoint`` (plus ``config.ensemble``) and the main checkpoint's
    meta. Inputs are normalised with the main checkpoint's normalisation (each member's input is made from it); each model divides its logits by its own
    fitted temperature. With ``tile`` every model runs overlap-tile inference. ``backend``: the runtime of every
    member (``load_checkpoint``; default: each file's own); MC dropout needs torch (it samples dropout layers)."""

    def tiled(m: nn.Module) -> nn.Module:
        return TiledModel(m, tile, overlap) if tile is not None else m

    check_method(checkpoint, config.method, backend)
    members = load_members([checkpoint, *config.ensemble], device, backend)
    model, meta = members[0]
    if meta.num_classes < 2:
        raise CheckpointError(
            f"uncertainty needs a model of at least 2 classes; {checkpoint} has {meta.num_classes}"
        )
    if config.method == "ensemble":
        models = [
            _renormalised(m, meta, mt, path) for (m, mt), path in zip(members, [checkpoint, *config.ensemble])
        ]
        moved = [
            m.to(device) if isinstance(m, nn.Module) else m for m in models
        ]  # a runtime stays on the CPU
        return Ensemble([tiled(m) for m in moved], [mt.temperature for _, mt in members]), meta
    if config.method == "mc-dropout":
        if config.add_dropout > 0:
            add_dropout(model, config.add_dropout, "head")
        return MCDropout(tiled(model), config.samples, meta.temperature, config.seed), meta
    if config.method == "tta":
        return TTA(tiled(model), config.flips, config.scales, meta.temperature), meta
    return Deterministic(tiled(model), meta.temperature), meta


def check_method(checkpoint: str | Path, method: str, backend: str | None) -> None:
    """ConfigError (one line) for MC dropout on a model that runs outside PyTorch (it samples dropout layers;
    TTA and ensembles only call the model): a check before any work, from the file and ``backend`` alone."""
    from seglab.models.runtime import check_backend

    weights = checkpoint_paths(checkpoint)[0]
    runtime = check_backend(weights, backend)
    if method == "mc-dropout" and runtime != "torch":
        raise ConfigError(
            f"MC dropout samples the dropout layers of a PyTorch model, but {weights.name} runs in {runtime}; "
            "use --uncertainty tta or ensemble, or --backend torch on the seglab checkpoint"
        )


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
