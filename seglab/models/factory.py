"""create_model(arch, ...) and the model registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from seglab.registry import Registry

MODELS: Registry = Registry("model")


def create_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; returns a module mapping (N, in_channels, H, W) to logits (N, C, H, W)."""
    import seglab.models.archs  # noqa: F401  (registers the architectures)

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS.get(arch)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    import seglab.models.archs  # noqa: F401

    return MODELS.list()
