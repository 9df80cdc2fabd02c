"""create_model(arch, ...): builds a registered architecture, with one clear error for arguments it does not take."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from seglab.errors import ConfigError
from seglab.models.archs import MODELS

FIXED_ARGUMENTS = ("num_classes", "in_channels")  # create_model's own; every architecture takes them


def create_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; returns a module mapping (N, in_channels, H, W) to logits (N, C, H, W).

    ConfigError for an unknown ``arch`` (listing the known ones), a keyword argument ``arch`` does not take
    (naming it and listing the accepted ones) and an invalid value (the builder's ValueError or TypeError).
    """
    builder = MODELS.get(arch)
    accepted = [p for p in inspect.signature(builder).parameters if p not in FIXED_ARGUMENTS]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{unknown[0]} is not an argument of {arch}; accepted: {', '.join(sorted(accepted))}"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    from seglab.models.from_smp import build_from_smp, is_smp_checkpoint

    try:
        if is_smp_checkpoint(kwargs.get("weights")):  # a whole smp model: its structure and tensors
            return build_from_smp(arch, builder, num_classes, in_channels, kwargs)
        if not _names_weights(
            kwargs
        ):  # weights fix the size (and may download); else count before allocating
            _check_size(arch, builder, num_classes, in_channels, kwargs)
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {arch!r}: {e}") from None


def resolved_params(arch: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as a checkpoint records them: with an smp checkpoint as ``weights``, plus the structure read
    from it (the recorded model is rebuilt without the file)."""
    from seglab.models.from_smp import is_smp_checkpoint, smp_arguments

    return (
        smp_arguments(arch, params["weights"], params) if is_smp_checkpoint(params.get("weights")) else params
    )


def _names_weights(arguments: Any) -> bool:
    """Whether model arguments name weights anywhere (``weights``, or an encoder mapping's ``weights``)."""
    if isinstance(arguments, dict):
        return any((k == "weights" and v) or _names_weights(v) for k, v in arguments.items())
    return False


MAX_PARAMETERS = 2 * 10**9  # 8 GB of float32 weights (and 3 times more to train): beyond any model here


def _check_size(arch: str, builder: Any, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> None:
    """ConfigError for a model of more than MAX_PARAMETERS parameters, counted on PyTorch's meta device (no
    memory, no random numbers drawn), before the real build would fill the machine's memory (``depth: 99``).
    A builder that cannot run on the meta device is not checked."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
        count = sum(p.numel() for p in model.parameters())
    except (ValueError, TypeError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - not buildable on the meta device: the real build decides
        if not isinstance(e, OverflowError) and "overflow" not in str(e).lower():
            return
        count = None  # a tensor too large to even count
    if count is None or count > MAX_PARAMETERS:
        size = "a tensor beyond 2**63 elements" if count is None else f"{count:.3g} parameters"
        raise ConfigError(
            f"model {arch!r} with {kwargs or 'its defaults'} is too large ({size}; at most "
            f"{MAX_PARAMETERS:.0e}, 8 GB of weights); lower depth, widths or channels"
        )


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return MODELS.list()


__all__ = ["MODELS", "create_model", "list_models"]
