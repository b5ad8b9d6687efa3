"""Benchmark data layer: the `Sample` record that travels through every stage, loaders and writers.

Loaders (GSM8K JSONL, MMLU CSV in three layouts, generic JSONL/CSV with a field map, HF datasets) and writers
that emit samples back in their source layout live here too.

Every sample records its `layout`, the exact shape it was read from:

- ``gsm8k``: JSONL ``{"question", "answer"}``, the answer a worked solution ending ``#### N``;
- ``mmlu-index``: CSV with header ``question,choice0,choice1,choice2,choice3,answer``, 0-based index answers;
- ``mmlu-letter``: the original headerless MMLU CSV ``question,A,B,C,D,answer`` with letter answers;
- ``mmlu-index-noheader`` / ``mmlu-letter-header``: the two rarer mixes of the above;
- ``mmlu-hf``: JSONL records of Hugging Face ``cais/mmlu``: ``question, subject, choices[4], answer`` (int);
- ``jsonl`` / ``csv``: generic files; with a field map the layout is ``jsonl:{...}`` / ``csv:{...}``, the map's
  non-default entries as compact JSON.

Records without an id field get the positional id ``<file stem>:<line>``. Positional ids are not written back:
they are derived again from the output file. The same goes for the subject of an MMLU CSV file (its name).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from itd.errors import InputError, require
from itd.io import atomic_write
from itd.registry import Registry

__all__ = [
    "Source",
    "Sample",
    "strip_calculator_annotations",
    "gsm8k_final_answer",
    "BenchmarkFormat",
    "FORMATS",
    "detect_format",
    "load_benchmark",
    "load_hf_dataset",
    "write_benchmark",
]

BENCHMARKS = ("gsm8k", "mmlu", "generic")

_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations `<<expr=result>>` from a worked solution."""
    return _ANNOTATION.sub("", text) if "<<" in text else text


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer after `####`, commas removed (`#### 1,000` -> `1000`); None when absent."""
    # Linear-time equivalent of `re.search(r"####\s*(.+?)\s*$", solution, re.S)`, which backtracks
    # quadratically on long whitespace runs after the marker.
    i = solution.find("####")
    if i < 0 or i + 4 == len(solution):
        return None
    return solution[i + 4 :].strip().replace(",", "").strip()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a sample came from: a file and the 1-based line (JSONL) or data row (CSV, header excluded)."""

    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line}


@dataclass(slots=True)
class Sample:
    """One benchmark item.

    `answer` is the gold answer: the final number as a string for GSM8K, the 0-based choice index for MCQ,
    free text otherwise. `layout` names the source layout so a writer can emit the sample back unchanged;
    `extra` keeps every field the loader did not map, so writing back loses nothing.
    """

    id: str
    benchmark: str
    question: str
    answer: str | int | None = None
    choices: tuple[str, ...] | None = None
    solution: str | None = None
    subject: str | None = None
    source: Source | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if not isinstance(self.question, str):
            raise TypeError("question must be a string")
        if self.choices is not None:
            self.choices = tuple(self.choices)
            if isinstance(self.answer, int) and not 0 <= self.answer < len(self.choices):
                raise ValueError(f"answer index {self.answer} out of range for {len(self.choices)} choices")

    @property
    def is_mcq(self) -> bool:
        return self.choices is not None

    def prompt_text(self) -> str:
        """The input part as it would appear in a corpus: the question, then every choice on its own line."""
        if self.choices:
            return self.question + "\n" + "\n".join(self.choices)
        return self.question

    def answer_text(self) -> str:
        """The label part: the worked solution (annotations stripped), the correct choice, or the answer text."""
        if self.solution:
            return strip_calculator_annotations(self.solution)
        if self.choices is not None and isinstance(self.answer, int):
            return self.choices[self.answer]
        return "" if self.answer is None else str(self.answer)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (used in reports and logs)."""
        return {
            "id": self.id,
            "benchmark": self.benchmark,
            "question": self.question,
            "answer": self.answer,
            "choices": list(self.choices) if self.choices is not None else None,
            "solution": self.solution,
            "subject": self.subject,
            "source": self.source.to_dict() if self.source else None,
            "extra": self.extra,
            "layout": self.layout,
        }
