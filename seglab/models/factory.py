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
    try:
        return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {arch!r}: {e}") from None


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return MODELS.list()


__all__ = ["MODELS", "create_model", "list_models"]
