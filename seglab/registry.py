"""One small registry type: names -> builders, duplicate names are an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from seglab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("unet")`` (defaults to the object's ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register {obj!r} without a name")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def list(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
