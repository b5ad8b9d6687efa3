"""Scan results: one `SampleResult` per benchmark item, the `ScanReport` around them, and its JSONL form."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from itd.core import Sample, write_benchmark
from itd.core.errors import InputError
from itd.core.io import atomic_group, atomic_write, manifest_path, write_json
from itd.detectors.base import Evidence, Finding

__all__ = ["LABELS", "CLEAN_POLICIES", "SampleResult", "ScanReport", "label_of"]

LABELS = ("clean", "input_contaminated", "input_and_label_contaminated")
CLEAN_POLICIES = ("drop", "mark")
MARK_FIELD = "contamination"


def label_of(findings: Sequence[Finding]) -> str:
    """OpenCompass-style label from every detector's findings on one sample.

    Any part found makes the item contaminated; it is `input_and_label_contaminated` when both the question and
    the answer part were found (by any detector).
    """
    inp = any(f.input_hit for f in findings)
    lab = any(f.label_hit for f in findings)
    if inp and lab:
        return LABELS[2]
    if inp or lab:
        return LABELS[1]
    return LABELS[0]


@dataclass(slots=True)
class SampleResult:
    """The scan's verdict on one sample, with the numbers and evidence behind it."""

    sample: Sample
    label: str
    findings: list[Finding]

    @property
    def evidence(self) -> list[Evidence]:
        evs = [e for f in self.findings for e in f.evidence]
        return sorted(evs, key=lambda e: -e.score)

    @property
    def detected_by(self) -> list[str]:
        return [f.detector for f in self.findings if f.input_hit or f.label_hit]

    def to_dict(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.sample.id,
            "source": self.sample.source.to_dict() if self.sample.source else None,
            "label": self.label,
            "detected_by": self.detected_by,
        }
        for f in self.findings:
            rec.update(f.details)
            if not f.checked:
                rec.setdefault("unchecked", []).append(f.detector)
        rec["evidence"] = [e.to_dict() for e in self.evidence]
        return rec


@dataclass(slots=True)
class ScanReport:
    """Results of a corpus scan, in benchmark order, plus run statistics and the effective config."""

    results: list[SampleResult]
    config: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of samples per label (every label present, zeros included)."""
        c = Counter(r.label for r in self.results)
        return {label: c.get(label, 0) for label in LABELS}

    @property
    def contaminated(self) -> list[SampleResult]:
        return [r for r in self.results if r.label != "clean"]

    def by_id(self) -> dict[str, SampleResult]:
        return {r.sample.id: r for r in self.results}

    def breakdown(self, by: str) -> dict[str, dict[str, Any]]:
        """Items per label for each benchmark file (`by="file"`) or subject (`by="subject"`), with the share of
        contaminated items; groups in name order. Items without a file or subject are grouped under "-"."""
        groups: dict[str, Counter] = {}
        for r in self.results:
            if by == "file":
                key = r.sample.source.file if r.sample.source else "-"
            elif by == "subject":
                key = r.sample.subject or "-"
            else:
                raise ValueError(f"breakdown by 'file' or 'subject', not {by!r}")
            groups.setdefault(key, Counter())[r.label] += 1
        out = {}
        for key in sorted(groups):
            c = groups[key]
            total = sum(c.values())
            out[key] = {"samples": total, "labels": {label: c.get(label, 0) for label in LABELS},
                        "contaminated_share": round((total - c.get(LABELS[0], 0)) / total, 4)}
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: label counts, their split per benchmark file (and per subject, when items have
        one), statistics and the contaminated ids."""
        out = {
            "samples": len(self.results),
            "labels": self.counts(),
            "by_file": self.breakdown("file"),
        }
        if any(r.sample.subject for r in self.results):
            out["by_subject"] = self.breakdown("subject")
        out["contaminated_ids"] = [r.sample.id for r in self.contaminated]
        out["stats"] = self.stats
        return out

    def write_jsonl(self, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        """One JSON record per sample, written atomically; with a `manifest`, the report and the manifest beside
        it commit as one unit (`itd.core.io.atomic_group`)."""
        if manifest is None:
            with atomic_write(path) as f:
                self._write_records(f)
            return
        with atomic_group([path, manifest_path(path)]) as staged:
            with open(staged.path(path), "w", encoding="utf-8") as f:
                self._write_records(f)
            write_json(staged.path(manifest_path(path)), {**manifest, "summary": self.summary()})

    def _write_records(self, f) -> None:
        for r in self.results:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")

    def write_clean(self, out: str | os.PathLike, *, policy: str = "drop", directory: bool = False,
                    format: str | None = None, manifest: dict[str, Any] | None = None) -> list[Path]:
        """Write the benchmark back in its source layout without its contaminated items (`policy="drop"`), or
        whole with each record's label in a `contamination` field (`"mark"`); returns the files written.

        `directory`: the benchmark was a directory, so `out` is one too, with a file per source file. The files
        and the manifest (`<out>.manifest.json`, with the summary and the ids dropped) are staged and committed
        together: a failed write leaves `out` as it was.
        """
        if policy not in CLEAN_POLICIES:
            raise InputError(f"unknown clean policy {policy!r}; choose {' or '.join(CLEAN_POLICIES)}")
        if policy == "drop":
            samples = [r.sample for r in self.results if r.label == LABELS[0]]
        else:
            samples = [dataclasses.replace(r.sample, extra={**r.sample.extra, MARK_FIELD: r.label}) for r in self.results]
        if not samples:
            raise InputError("every item is contaminated: a cleaned benchmark would be empty, nothing was written", str(out))
        out = Path(out)
        if directory and out.exists() and any(out.iterdir()):
            raise InputError("the directory for the cleaned benchmark is not empty", str(out))
        dropped = [r.sample.id for r in self.results if r.label != LABELS[0]] if policy == "drop" else []
        with atomic_group([out, manifest_path(out)]) as staged:
            target = staged.path(out)
            if directory:
                target.mkdir()
            written = write_benchmark(samples, target, format=format)
            if policy == "mark":
                _check_marked(written)
            write_json(staged.path(manifest_path(out)), {**(manifest or {}), "policy": policy,
                                                         "items_written": len(samples), "dropped_ids": dropped,
                                                         "summary": self.summary()})
        return [out / p.name if directory else out for p in written]


def _check_marked(files: list[Path]) -> None:
    """A marked set must carry its labels: a fixed-column layout (headerless MMLU CSV) has no room for them."""
    for f in files:
        with open(f, encoding="utf-8") as fh:
            first = fh.readline()
        if MARK_FIELD not in first:
            raise InputError(f"the layout of {f.name} has fixed columns and cannot carry a {MARK_FIELD!r} field; "
                             "use the drop policy, or write the set as JSONL (--format jsonl)")
