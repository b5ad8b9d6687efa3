"""Scan results: one `SampleResult` per benchmark item, the `ScanReport` around them, and its JSONL form."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from itd.data import Sample
from itd.detectors.base import Evidence, Finding
from itd.io import atomic_write, manifest_path, write_json

__all__ = ["LABELS", "SampleResult", "ScanReport", "label_of"]

LABELS = ("clean", "input_contaminated", "input_and_label_contaminated")


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

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: label counts, statistics and the contaminated ids."""
        return {
            "samples": len(self.results),
            "labels": self.counts(),
            "contaminated_ids": [r.sample.id for r in self.contaminated],
            "stats": self.stats,
        }

    def write_jsonl(self, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        """One JSON record per sample, written atomically; the manifest goes beside it."""
        with atomic_write(path) as f:
            for r in self.results:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        if manifest is not None:
            write_json(manifest_path(path), {**manifest, "summary": self.summary()})
