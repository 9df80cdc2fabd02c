"""Layer arguments accept a name or a class (``norm="bn"`` or ``nn.BatchNorm2d``), resolved here once."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from seglab.errors import ConfigError

NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "bn": nn.BatchNorm2d,
    "batchnorm": nn.BatchNorm2d,
    "in": nn.InstanceNorm2d,
    "gn": lambda c: nn.GroupNorm(min(32, c) if c % min(32, c) == 0 else 1, c),
    "none": None,
}

ACTS: dict[str, Callable[[], nn.Module] | None] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "none": None,
}

NormArg = str | type[nn.Module] | Callable[[int], nn.Module] | None
ActArg = str | type[nn.Module] | Callable[[], nn.Module] | None


def make_norm(norm: NormArg, channels: int) -> nn.Module:
    """A normalisation layer over ``channels`` (Identity for ``None``/``"none"``)."""
    if isinstance(norm, str):
        if norm.lower() not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
        norm = NORMS[norm.lower()]
    return nn.Identity() if norm is None else norm(channels)


def make_act(act: ActArg) -> nn.Module:
    """An activation module (Identity for ``None``/``"none"``)."""
    if isinstance(act, str):
        if act.lower() not in ACTS:
            raise ConfigError(f"unknown activation {act!r}; choose one of: {', '.join(ACTS)}")
        act = ACTS[act.lower()]
    return nn.Identity() if act is None else act()
