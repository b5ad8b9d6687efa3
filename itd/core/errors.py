"""Errors a user can act on (each names the file and line; the CLI turns it into exit code 2), and optional imports:
`require` names the extra that brings a missing package, `quiet_transformers` silences its progress bars."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["ITDError", "InputError", "MissingDependencyError", "EndpointError", "require", "quiet_transformers"]


class ITDError(Exception):
    """Base class of every error `itd` reports to a user without a traceback."""


class InputError(ITDError):
    """Bad user input: a file that cannot be read or parsed, a missing field, a bad option.

    `path` and `line` (1-based) locate the problem when known.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        return where + self.message

    def __reduce__(self):  # keep the fields when raised in a worker process
        return (type(self), (self.message, self.path, self.line))


class MissingDependencyError(ITDError):
    """An optional dependency is not installed; the message carries the install command."""

    def __init__(self, module: str, extra: str, purpose: str):
        self.module, self.extra, self.purpose = module, extra, purpose
        super().__init__(
            f"{purpose} needs the optional dependency '{module}'. Install it with: pip install 'itd[{extra}]'"
        )

    def __reduce__(self):
        return (type(self), (self.module, self.extra, self.purpose))


class EndpointError(ITDError):
    """An LLM endpoint cannot be reached (checked before the work starts) or was lost during the run: the run
    stops (exit 2) instead of recording every remaining item as failed. `url` is the endpoint with any
    credentials removed."""

    def __init__(self, message: str, url: str | None = None):
        self.message, self.url = message, url
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.message, self.url))


def require(module: str, extra: str, purpose: str):
    """Import and return an optional module, or raise `MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars on stderr inside the block: itd draws its own."""
    logging = require("transformers", "probes", "Hugging Face models").utils.logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
