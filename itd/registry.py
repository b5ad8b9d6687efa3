"""A small typed plugin registry with "did you mean" errors (detectors, rewriters, benchmark formats)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from itd.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to plugin factories of one kind.

    >>> detectors = Registry("detector")
    >>> @detectors.register("ngram")
    ... class NGram: ...
    """

    def __init__(self, kind: str):
        if not kind:
            raise ValueError("a registry needs a kind name")
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers `obj` under `name`; a name can be registered once."""
        if not name or name != name.strip().lower():
            raise ValueError(f"{self.kind} names are lowercase and non-empty, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the plugin called `name`, or raise `InputError` with the closest known names."""
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        raise InputError(f"unknown {self.kind} {name!r}.{hint} Known: {known}.")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
