"""The `Sample` record that travels through every stage, with the GSM8K answer helpers it needs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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


