"""Progress callbacks: the shapes every stage reports in, and the adapters between them.

A stage that does one kind of work reports `progress(done, total)` (`Progress`) in its own unit (items, tokens,
bytes); one that runs several stages reports `progress(stage, done, total)` (`StageProgress`). The LLM client and
the rewrite loop add their counters (calls, cache hits, rewritten, pending): `CountingProgress` and
`StageCountingProgress`. A caller that runs a stage under a name of its own wraps its callback with `under`
(a `Progress` from a `StageProgress`) or `prefixed` (a `StageProgress` whose stages are sub-stages of one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Progress", "StageProgress", "CountingProgress", "StageCountingProgress", "under", "prefixed"]


class Progress(Protocol):
    """`progress(done, total)`: the work has advanced to `done` of `total` units."""

    def __call__(self, done: int, total: int, /) -> None: ...


class StageProgress(Protocol):
    """`progress(stage, done, total)`: the named stage has advanced to `done` of `total` units."""

    def __call__(self, stage: str, done: int, total: int, /) -> None: ...


class CountingProgress(Protocol):
    """`progress(done, total, counters)`: a `Progress` with named counts of what happened so far."""

    def __call__(self, done: int, total: int, counters: Mapping[str, Any], /) -> None: ...


class StageCountingProgress(Protocol):
    """`progress(stage, done, total, counters)`: a `StageProgress` with named counts of what happened so far."""

    def __call__(self, stage: str, done: int, total: int, counters: Mapping[str, Any], /) -> None: ...


def under(progress: StageProgress | None, stage: str) -> Progress | None:
    """A `Progress` that reports to `progress` as `stage` (None for None)."""
    if progress is None:
        return None

    def update(done: int, total: int) -> None:
        progress(stage, done, total)

    return update


def prefixed(progress: StageProgress | None, stage: str) -> StageProgress | None:
    """A `StageProgress` whose stages `progress` sees as sub-stages of `stage` ("stage: sub"; None for None)."""
    if progress is None:
        return None

    def update(sub: str, done: int, total: int) -> None:
        progress(f"{stage}: {sub}", done, total)

    return update
