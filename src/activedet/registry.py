"""Registries for what users swap: detector presets, pseudo-label filters, acquisition scores,
selection strategies. Unknown names fail listing the valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from activedet.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories/objects of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
