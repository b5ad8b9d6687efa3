"""The rewriter interface: a rewriter proposes a variant of one sample; `itd.rewriters.verify` decides whether
it may replace the original.

A rewriter never judges its own output. It returns a `Candidate` (the new sample plus the answer the rewrite
must have) or raises `NotRewritable` with the reason; `itd.rewriters.loop` runs the checks, the assurance rounds and
the bookkeeping.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from itd.core import Sample
from itd.core.errors import ITDError
from itd.core.progress import Progress
from itd.core.registry import Registry

__all__ = ["Candidate", "NotRewritable", "Rewriter", "REWRITERS", "Progress", "item_error"]




@dataclass(slots=True)
class Candidate:
    """A proposed rewrite of one sample.

    `expected_answer` is the gold answer the rewrite must have: the original one for meaning-preserving
    rewriters, the recomputed one for numeric re-instantiation, the remapped index for an option shuffle.
    `info` holds what the rewriter knows about how it was made (values substituted, permutation, raw LLM
    reply, token usage, whether it came from the cache); it goes into the per-item log.
    """

    sample: Sample
    expected_answer: str | int | None
    info: dict[str, Any] = field(default_factory=dict)


class NotRewritable(Exception):
    """This attempt produced no candidate: the item is outside what the rewriter handles, or the reply was
    unusable. `raw` keeps an LLM's raw reply for the log."""

    def __init__(self, reason: str, *, raw: str | None = None, info: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.info = info or {}


def item_error(stage: str, exc: BaseException) -> NotRewritable:
    """The failure of one item from an unexpected exception while `stage` ("rewriter", "verify", ...) worked on
    it: reason `"error: <stage>: <Type>: <message>"`, so the item is rejected with it and the run goes on."""
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:300] + "..."
    return NotRewritable(f"error: {stage}: {type(exc).__name__}: {message}" if message else
                         f"error: {stage}: {type(exc).__name__}")


class Rewriter(abc.ABC):
    """Base class of every rewriter.

    Subclasses implement `propose`; `attempt` (0, 1, ...) must lead to a different proposal on a retry, so a
    rejected rewrite is not proposed again. Rewriters that wait on I/O override `propose_many` to work on many
    samples at once.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    """What the rewrite keeps, which decides its checks (`itd.rewriters.verify.KINDS`): "paraphrase" (meaning
    and answer, new wording), "values" (wording, new numbers and answer), "order" (options, new order)."""
    changes_difficulty: ClassVar[bool] = False
    """True when the variant is known to be harder or easier than the original (e.g. MMLU-CF option
    replacement); the report says so."""

    Config: ClassVar[type]
    """The rewriter's config dataclass: its fields are the constructor's arguments (`REWRITERS.create`)."""

    @classmethod
    def from_config(cls, config: Any) -> "Rewriter":
        """The rewriter built from an instance of its `Config`."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    @abc.abstractmethod
    def propose(self, sample: Sample, attempt: int = 0) -> Candidate:
        """Return a candidate rewrite of `sample`, or raise `NotRewritable`."""

    def propose_many(
        self, jobs: Sequence[tuple[Sample, int]], progress: Progress | None = None
    ) -> list[Candidate | NotRewritable]:
        """`propose` for each `(sample, attempt)`, in order; failures are returned, not raised: an unexpected
        exception on one item is that item's `NotRewritable` (`item_error`). An `ITDError` (an endpoint lost, a
        missing dependency) is about the run, not the item, and is raised."""
        out: list[Candidate | NotRewritable] = []
        for i, (sample, attempt) in enumerate(jobs):
            try:
                out.append(self.propose(sample, attempt))
            except NotRewritable as exc:
                out.append(exc)
            except ITDError:
                raise
            except Exception as exc:  # one bad item is that item's problem
                out.append(item_error("rewriter", exc))
            if progress:
                progress(i + 1, len(jobs))
        return out

    def config(self) -> dict[str, Any]:
        """The settings that determine this rewriter's output, for the manifest (never a secret)."""
        return {"method": self.name}


REWRITERS: Registry[type[Rewriter]] = Registry("rewriter")
