"""The realistic LLM rewrites of `fixtures/realistic_rewrites.jsonl`, served through the local OpenAI-compatible
test server, and the per-kind table of what the verifier catches. Used by `test_rewrite_verifier.py` and by
`benchmarks/bench_rewrite_verifier.py`.

Each record names a held-out GSM8K or MMLU test item of the shared data (`source`, `id`), a rewrite written as a
strong LLM following the packaged prompts would write it, its `kind` ("faithful" or the defect), whether telling
the defect needs understanding, and the scripted solver replies: `solver.rewrite` / `solver.original` are the
answers for seeds 0, 1, 2, ... (a seed past the list gets the first answer, so an unusable reply retried with a
fresh seed is answered).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from openai_server import Reply, last_user_message

from itd.core import Sample, load_benchmark

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "realistic_rewrites.jsonl"

_ITEM = re.compile(r"<item>\nQuestion: (.*?)\n\n(?:Solution|Options):\n", re.S)
_SOLVE = re.compile(r"<(?:problem|question)>\n(.*?)\n(?:\n[A-Z]\. |</problem>)", re.S)


@dataclass
class Record:
    """One fixture record with its original item."""

    original: Sample
    kind: str
    needs_understanding: bool
    rewrite: dict[str, Any]
    solver: dict[str, list[str]]
    variant: str | None = None
    note: str = ""

    @property
    def benchmark(self) -> str:
        return self.original.benchmark


def load_records(shared_data: Path, path: Path = FIXTURE) -> list[Record]:
    """The fixture records, each with its original item loaded from the shared data."""
    loaded: dict[str, dict[str, Sample]] = {}
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["source"] not in loaded:
            loaded[r["source"]] = {s.id: s for s in load_benchmark(shared_data / r["source"])}
        records.append(Record(loaded[r["source"]][r["id"]], r["kind"], r["needs_understanding"], r["rewrite"], r["solver"],
                              r.get("variant"), r.get("note", "")))
    return records


def responder(records: Sequence[Record]):
    """A stand-in for the rewriting and solving LLM: a rewrite prompt gets the record's rewrite; a solve prompt
    gets the scripted answer for its seed, for the rewrite or the original question it shows."""
    rewrites = {r.original.question.strip(): r for r in records}
    solves: dict[str, list[str]] = {}
    for r in records:
        solves[r.rewrite["question"].strip()] = r.solver["rewrite"]
        solves.setdefault(r.original.question.strip(), r.solver["original"])

    def respond(request: dict[str, Any]) -> Reply:
        text = last_user_message(request)
        m = _ITEM.search(text)
        if m and m.group(1).strip() in rewrites:
            return Reply.json(rewrites[m.group(1).strip()].rewrite)
        m = _SOLVE.search(text)
        if m and m.group(1).strip() in solves:
            votes = solves[m.group(1).strip()]
            seed = int(request.get("seed") or 0)
            answer = votes[seed] if seed < len(votes) else votes[0]
            return Reply.json({"reasoning": "worked it out", "answer": answer})
        return Reply.error(400, "the scripted model has no reply for this prompt", retry_after_ms=None)

    return respond


def caught(log_item: dict[str, Any]) -> bool:
    """Whether the verifier (or the rewriter's reply check) rejected the item's rewrite."""
    return log_item["status"] == "rejected"


def tally(records: Sequence[Record], runs: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows per (benchmark, kind): items, and per run (name -> {id: log item}) how many were rejected (defects)
    or kept (faithful)."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.benchmark, r.kind), []).append(r)
    rows = []
    for (bench, kind), rs in groups.items():
        row: dict[str, Any] = {"benchmark": bench, "kind": kind, "items": len(rs),
                               "needs_understanding": sum(r.needs_understanding for r in rs)}
        for name, log in runs.items():
            hits = [caught(log[r.original.id]) for r in rs]
            row[name] = sum(not h for h in hits) if kind == "faithful" else sum(hits)
        rows.append(row)
    return rows


def run_cli(records: Sequence[Record], url: str, workdir: Path, *, solver: bool, embedder: str = "auto",
            extra: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """`itd rewrite --method llm` (in this process) on the records' originals, one benchmark file per source
    benchmark; the per-item log records by original id."""
    from itd.cli.commands import main
    from itd.core import write_benchmark

    out: dict[str, dict[str, Any]] = {}
    for bench in ("gsm8k", "mmlu"):
        items = [r.original for r in records if r.benchmark == bench]
        if not items:
            continue
        tag = f"{bench}-{'solver' if solver else 'checks'}"
        src = workdir / f"{tag}.{'jsonl' if bench == 'gsm8k' else 'csv'}"
        write_benchmark(items, src)
        args = ["rewrite", str(src), "--method", "llm", "--base-url", url, "--model", "scripted", "--rounds", "1",
                "--embedder", embedder, "--cache-dir", str(workdir / f"cache-{tag}"), "--out", str(workdir / f"out-{tag}"),
                "--log", str(workdir / f"{tag}.log.jsonl"), "--quiet", "--json", *extra]
        if solver:
            args.append("--solver")
        with contextlib.redirect_stdout(io.StringIO()):  # the --json summary; the log has every item
            rc = main(args)
        if rc not in (0, 1):
            raise RuntimeError(f"itd rewrite exited {rc}")
        log = [json.loads(line) for line in (workdir / f"{tag}.log.jsonl").read_text().splitlines()]
        if len(log) != len(items):
            raise RuntimeError(f"{len(log)} log records for {len(items)} items")
        for original, rec in zip(items, log):  # the log keeps benchmark order; ids follow the written file
            out[original.id] = rec
    return out


def failed_checks(log_item: dict[str, Any]) -> Counter:
    """The names of the checks that failed on the item's last attempt (or the reply check's reason)."""
    attempts = log_item["attempts"]
    if not attempts:
        return Counter()
    last = attempts[-1]
    names = Counter(c["name"] for c in last.get("checks", []) if c["ok"] is False)
    if not names and last.get("reason"):
        names[last["reason"].split(":")[0]] += 1
    return names
