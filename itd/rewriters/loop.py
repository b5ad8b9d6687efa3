"""Rewrite flagged items, verify every rewrite, and re-detect the accepted ones (the assurance rounds).

Round r proposes one rewrite (attempt r) for every item still pending, verifies the candidates, and re-runs the
assurance detectors on those that passed. An item is `rewritten` once a candidate passes both; items whose
candidates failed or stayed flagged are retried next round, up to `rounds`, and end `rejected` with every
attempt kept. Items that were not flagged are `unchanged`. A rejected item is never swapped in: the output keeps
the original in its place (or drops it when asked).

One bad item is that item's problem: an unexpected exception while proposing, verifying or re-detecting one item
rejects that item with the reason `"error: <stage>: <Type>: <message>"` and the run goes on (a batch that raises is
split in halves until the item that raises is found). An `itd.core.errors.ITDError` raised in the loop is about the
run, not an item (the LLM endpoint lost, a dependency missing, a cache that cannot be written) and stops it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence, TypeVar

from itd.core import Sample
from itd.core.errors import InputError, ITDError
from itd.core.io import atomic_write, manifest_path, write_json
from itd.core.progress import StageCountingProgress
from itd.rewriters import REWRITERS, Candidate, NotRewritable, Rewriter
from itd.rewriters.base import item_error
from itd.rewriters.verify import Check, Verifier, VerifyConfig

__all__ = ["Attempt", "ItemRewrite", "RewriteReport", "rewrite", "build_rewriter", "load_flagged", "STATUSES"]

STATUSES = ("rewritten", "rejected", "unchanged")

Progress = StageCountingProgress
"""`progress(stage, done, total, counters)`: stage like "round 1: rewriting"; counters hold the rewritten and
still-pending counts and the rewriter's own (LLM calls, cache hits, tokens)."""


@dataclass(slots=True)
class Attempt:
    """One proposal for one item: the candidate (if any), its checks, and why it was not used."""

    round: int
    accepted: bool
    reason: str | None
    checks: list[Check] = field(default_factory=list)
    candidate: Candidate | None = None
    raw: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"round": self.round, "accepted": self.accepted, "reason": self.reason}
        rec["checks"] = [c.to_dict() for c in self.checks]
        if self.candidate is not None:
            s = self.candidate.sample
            rec["candidate"] = {"question": s.question, "choices": list(s.choices) if s.choices else None,
                                "solution": s.solution, "answer": s.answer}
            rec["expected_answer"] = self.candidate.expected_answer
        info = dict(self.candidate.info if self.candidate is not None else self.info)
        raw = info.pop("raw", None) or self.raw
        if raw is not None:
            rec["raw"] = raw
        if info:
            rec["info"] = info
        return rec


@dataclass(slots=True)
class ItemRewrite:
    """One benchmark item's outcome: its status, the sample to use, and every attempt."""

    original: Sample
    status: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Sample:
        """The accepted rewrite when `rewritten`, else the original."""
        if self.status == "rewritten":
            return next(a.candidate.sample for a in reversed(self.attempts) if a.accepted and a.candidate)
        return self.original

    @property
    def rounds(self) -> int:
        return len(self.attempts)

    @property
    def reasons(self) -> list[str]:
        return [a.reason for a in self.attempts if a.reason]

    def to_dict(self) -> dict[str, Any]:
        """The per-item log record."""
        return {
            "id": self.original.id,
            "source": self.original.source.to_dict() if self.original.source else None,
            "status": self.status,
            "rounds": self.rounds,
            "attempts": [a.to_dict() for a in self.attempts],
        }


@dataclass(slots=True)
class RewriteReport:
    """Results of `rewrite`, in benchmark order."""

    items: list[ItemRewrite]
    rewriter: dict[str, Any]
    verify: dict[str, Any]
    rounds: int
    assurance: list[str]
    changes_difficulty: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        c = Counter(it.status for it in self.items)
        return {s: c.get(s, 0) for s in STATUSES}

    def samples(self, drop_rejected: bool = False) -> list[Sample]:
        """The decontaminated set: rewrites in place of their originals; rejected items kept unchanged (or
        dropped with `drop_rejected`)."""
        return [it.final for it in self.items if not (drop_rejected and it.status == "rejected")]

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: counts, rounds needed, the commonest rejection reasons (last attempt per rejected
        item), the failed checks over every attempt, the attempts the solver could not verify, the rewriter's
        stats."""
        rewritten = [it for it in self.items if it.status == "rewritten"]
        reasons = Counter(_reason_kind(it.reasons[-1]) for it in self.items if it.status == "rejected" and it.reasons)
        attempts = [a for it in self.items for a in it.attempts]
        by_check = Counter(c.name for a in attempts for c in a.checks if c.ok is False)
        unverifiable = sum(1 for a in attempts for c in a.checks if c.evidence.get("unverifiable"))
        return {
            "items": len(self.items),
            "counts": self.counts(),
            "rounds_needed": dict(sorted(Counter(it.rounds for it in rewritten).items())),
            "rejection_reasons": dict(reasons.most_common()),
            "rejections_by_check": dict(by_check.most_common()),
            "unverifiable": unverifiable,
            "rejected_ids": [it.original.id for it in self.items if it.status == "rejected"],
            "method": self.rewriter.get("method"),
            "changes_difficulty": self.changes_difficulty,
            "assurance": self.assurance,
            "stats": self.stats,
        }

    def write_log(self, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        """The per-item JSONL log (every item, every attempt and check), atomically; the manifest beside it."""
        with atomic_write(path) as f:
            for it in self.items:
                f.write(json.dumps(it.to_dict(), ensure_ascii=False, default=str) + "\n")
        if manifest is not None:
            write_json(manifest_path(path), {**manifest, "summary": self.summary()})


def _reason_kind(reason: str) -> str:
    """The category of a rejection reason: "check failed: chain", "bad reply: invalid JSON", "positional key"."""
    parts = [p.strip() for p in reason.split(":")]
    if parts[0] in ("check failed", "still flagged", "bad reply", "error") and len(parts) > 1:
        return f"{parts[0]}: {parts[1]}"
    return parts[0]


_Job = TypeVar("_Job")
_Out = TypeVar("_Out")


def _per_item(call: Callable[[list[_Job]], list[_Out]], jobs: list[_Job],
              failed: Callable[[_Job, Exception], _Out]) -> list[_Out]:
    """`call(jobs)`, one output per job. When it raises anything but an `ITDError`, the batch is split in halves
    (recursively) so that only the jobs that raise on their own get `failed(job, exc)`."""
    if not jobs:
        return []
    try:
        out = list(call(jobs))
        if len(out) != len(jobs):
            raise RuntimeError(f"{len(out)} results for {len(jobs)} items")
        return out
    except ITDError:
        raise
    except Exception as exc:
        if len(jobs) == 1:
            return [failed(jobs[0], exc)]
    half = len(jobs) // 2
    return _per_item(call, jobs[:half], failed) + _per_item(call, jobs[half:], failed)


def _assure(detector: Any, samples: list[Sample], kind: str) -> list[str | None]:
    """Per sample: why `detector` still flags it ("still flagged: <name>: <why>"), or None when it is clean."""
    still = detector.still_flagged(samples, kind)
    return [f"still flagged: {detector.name}: {still[s.id]}" if s.id in still else None for s in samples]


def build_rewriter(method: str, **options: Any) -> Any:
    """The registered rewriter `method`, built through `REWRITERS.create` from the `options` its config has
    fields for (`seed`, `mmlu_cf`, `llm`, `math_prompt`, ...); options of other rewriters are left out, so the
    CLI and the pipeline pass every option they have."""
    from itd.rewriters import REWRITERS

    return REWRITERS.create(method, REWRITERS.config_for(method, options))


def load_flagged(path: str | os.PathLike) -> set[str]:
    """Ids flagged in an `itd detect --out` JSONL (`"flag": true`) or an `itd scan` JSONL (label not clean)."""
    flagged: set[str] = set()
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the flagged-items file: {exc.strerror}", path=str(path)) from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=n) from None
            if not isinstance(rec, dict) or "id" not in rec or not ("flag" in rec or "label" in rec):
                raise InputError("expected a record with 'id' and 'flag' (itd detect) or 'label' (itd scan)", path=str(path), line=n)
            if rec.get("flag") is True or rec.get("label", "clean") != "clean":
                flagged.add(str(rec["id"]))
    return flagged


def rewrite(
    samples: Sequence[Sample],
    rewriter: Rewriter | str = "numeric",
    verify: Verifier | VerifyConfig | None = None,
    *,
    flagged: Collection[str] | None = None,
    rounds: int = 3,
    assurance: Sequence[Any] = (),
    progress: Progress | None = None,
) -> RewriteReport:
    """Rewrite the `flagged` items of `samples` (all of them when None) and return the `RewriteReport`.

    `rewriter`: a `Rewriter` or a registered name (built with default settings). `verify`: the `Verifier` (or
    its config) run on every candidate. `assurance`: detectors re-run on accepted candidates
    (`itd.rewriters.assure.ModelAssurance`, `CorpusAssurance`); a candidate they still flag is retried next round.
    """
    if rounds < 1:
        raise InputError(f"rounds must be >= 1, got {rounds}")
    if isinstance(rewriter, str):
        rewriter = REWRITERS.get(rewriter)()
    verifier = verify if isinstance(verify, Verifier) else Verifier(verify)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise InputError(f"sample ids must be unique to rewrite; {dup!r} appears more than once")
    wanted = set(ids) if flagged is None else set(flagged)
    items = [ItemRewrite(s, "rejected" if s.id in wanted else "unchanged") for s in samples]
    pending = [it for it in items if it.status == "rejected"]
    counters: dict[str, Any] = {"rewritten": 0, "pending": len(pending)}

    def report(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total, {**counters, **getattr(rewriter, "stats", {})})

    for r in range(rounds):
        if not pending:
            break
        stage = f"round {r + 1}"
        jobs = [(it.original, r) for it in pending]

        def propose(batch: list[tuple[Sample, int]], _stage: str = stage, _n: int = len(jobs)) -> list[Any]:
            tick = (lambda d, t: report(f"{_stage}: rewriting", d, t)) if len(batch) == _n else None
            return rewriter.propose_many(batch, tick)

        proposals = _per_item(propose, jobs, lambda job, exc: item_error("rewriter", exc))
        made = [(it, p) for it, p in zip(pending, proposals) if isinstance(p, Candidate)]
        for it, p in zip(pending, proposals):
            if isinstance(p, NotRewritable):
                it.attempts.append(Attempt(r + 1, False, p.reason, raw=p.raw, info=p.info))
        report(f"{stage}: verifying", 0, len(made))
        checks = _per_item(lambda pairs: verifier.verify_many(pairs, rewriter.kind), [(it.original, c) for it, c in made],
                           lambda pair, exc: [Check("error", False, item_error("verify", exc).reason)])
        report(f"{stage}: verifying", len(made), len(made))
        passed = []
        for (it, cand), cs in zip(made, checks):
            failed = [c for c in cs if c.ok is False]
            reason = None
            if failed:
                crashed = [c.detail for c in failed if c.name == "error"]
                reason = crashed[0] if crashed else f"check failed: {'; '.join(f'{c.name}: {c.detail}' for c in failed)}"
            attempt = Attempt(r + 1, not failed, reason, cs, cand)
            it.attempts.append(attempt)
            if not failed:
                passed.append((it, attempt))
        for a in assurance:
            report(f"{stage}: assurance ({a.name})", 0, len(passed))
            verdicts = _per_item(lambda batch, _a=a: _assure(_a, batch, rewriter.kind),
                                 [attempt.candidate.sample for _, attempt in passed],
                                 lambda sample, exc, _a=a: item_error(f"assurance ({_a.name})", exc).reason)
            for (it, attempt), verdict in zip(passed, verdicts):
                if verdict is not None:
                    attempt.accepted = False
                    attempt.reason = verdict
            report(f"{stage}: assurance ({a.name})", len(passed), len(passed))
            passed = [(it, attempt) for it, attempt in passed if attempt.accepted]
        for it, _ in passed:
            it.status = "rewritten"
        pending = [it for it in pending if it.status != "rewritten"]
        counters.update(rewritten=sum(it.status == "rewritten" for it in items), pending=len(pending))
    counters["rejected"] = len(pending)
    return RewriteReport(
        items,
        rewriter.config(),
        verifier.config.to_dict() | {"solver": verifier.solver is not None, "judge": verifier.judge is not None},
        rounds,
        [a.name for a in assurance],
        changes_difficulty=rewriter.changes_difficulty,
        stats={k: v for k, v in counters.items() if k != "pending"} | dict(getattr(rewriter, "stats", {})),
    )
