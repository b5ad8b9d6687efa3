"""A small typed plugin registry with "did you mean" errors (detectors, rewriters, benchmark formats)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from itd.core.errors import InputError

__all__ = ["Registry", "close_names", "config_from_table", "did_you_mean", "typed_value"]

T = TypeVar("T")

# difflib ratio a name needs to be suggested: "jsonl" for "json" (0.89) or "csv" for "cvs" (0.67), but not
# "mmlu" for "xml" (0.57), which only shares two letters
_CLOSE_CUTOFF = 0.6


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names close enough to `name` to suggest as "did you mean" (possibly none)."""
    return difflib.get_close_matches(str(name).strip().lower(), list(known), n=n, cutoff=_CLOSE_CUTOFF)


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

    def get(self, name: str, *, also: Iterable[str] = ()) -> T:
        """Return the plugin called `name`, or raise `InputError` with the close known names (if any) and the
        list of valid ones; `also` are names valid where the caller looks up (such as "auto") but not plugins."""
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key]
        valid = sorted({*self._entries, *also})
        close = close_names(key, valid)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(valid) or 'none'}.")

    def create(self, name: str, config: Any = None, **context: Any) -> Any:
        """Build the plugin called `name` from `config`, an instance of the plugin's own config dataclass (its
        `Config`; None: the defaults), and the caller's `context` (settings of the stage that runs it, e.g. a
        scan's worker count). The one way a plugin is built, by the CLI and the pipeline alike."""
        plugin: Any = self.get(name)
        config_type = getattr(plugin, "Config", None)
        if config_type is None:
            raise TypeError(f"{self.kind} {name!r} has no Config dataclass")
        if config is None:
            config = config_type()
        elif not isinstance(config, config_type):
            raise InputError(f"{self.kind} {name!r} is configured by a {config_type.__name__}, got a "
                             f"{type(config).__name__}")
        return plugin.from_config(config, **context)

    def config_for(self, name: str, options: Mapping[str, Any]) -> Any:
        """The config of plugin `name` from a flat mapping of options: those its `Config` has fields for; the
        others (another plugin's options) are left out."""
        config_type = getattr(self.get(name), "Config")
        fields = {f.name for f in dataclasses.fields(config_type)}
        return config_type(**{k: v for k, v in options.items() if k in fields})

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def config_from_table(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """An instance of the config dataclass `cls` from a table of its fields (a TOML table, a mapping from the
    library), each value checked against the field's annotation; an unknown key, a wrong type or a value its
    constructor refuses is an InputError naming `where` (and the closest key)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise InputError(f"{where}: unknown key {key!r}{did_you_mean(key, names)}")
        kwargs[key] = typed_value(hints[key], value, f"{where} {key}")
    try:
        return cls(**kwargs)
    except InputError as exc:
        raise InputError(f"{where}: {exc.message}") from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None


def typed_value(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against the annotation `hint`; TOML arrays become tuples where the field is a tuple."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return typed_value(arg, value, where)
            except InputError as exc:
                errors.append(exc.message)
        raise InputError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(typed_value(args[0] if args else Any, v, where) for v in value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and hint is not bool:  # bool is an int subclass; true is no number here
        raise InputError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise InputError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def did_you_mean(key: str, names: Any) -> str:
    """"; did you mean 'x'?" for the closest of `names`, else "; known: ..." (the end of an error message)."""
    close = close_names(str(key), names, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
