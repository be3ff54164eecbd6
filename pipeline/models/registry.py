"""A name -> constructor registry (timm's habit): duplicates refused, unknown names answered with
the list of known ones. ``pipeline.models`` keeps one for models, ``backbones`` one for encoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.core.errors import ConfigError


class Registry:
    """Constructors by name, for one kind of thing (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator adding ``fn`` under ``name``; a second ``name`` raises ``ValueError``."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = fn
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (unknown names are ignored)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., Any]:
        """The constructor of ``name``; ``ConfigError`` listing the known names otherwise."""
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._items[name]
