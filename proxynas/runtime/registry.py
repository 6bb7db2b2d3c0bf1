"""A small name -> object registry, after timm's ``@register_model``.

Each registry instance lives beside the things it registers (datasets in ``data``,
networks in ``networks``, condensation methods in ``condense``), so lookups never
need an if/elif chain on names.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from proxynas.exceptions import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise an error that lists the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what the entries are, for error messages ("dataset", "network")
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@REG.register("name")``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=3)
        self._entries[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names in registration order, filtered by an fnmatch pattern."""
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
