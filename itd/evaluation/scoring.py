"""Scoring: answers read from generated text as lm-evaluation-harness reads them (GSM8K strict-match and
flexible-extract, MCQ letters), the gold answers they are compared with, and the result records (`ItemResult`,
`EvalResult`)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.io import content_key
from itd.core.render import LETTERS
from itd.core.validate import is_int

__all__ = [
    "normalize_answer",
    "extract_strict",
    "extract_flexible",
    "parse_letter",
    "gold_number",
    "gold_letter",
    "sample_key",
    "ItemResult",
    "EvalResult",
]

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k "strict-match"
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval gsm8k "flexible-extract"
_IGNORE = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))  # lm-eval's regexes_to_ignore
_ANSWER_LETTER = re.compile(r"(?i:\banswer\b(?:\s+is)?)\s*[:\-]?\s*[\(\[]?\s*([A-Z])(?![A-Za-z0-9'])")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])|\(([a-z])\)")
_ARTICLE_A = re.compile(r"\s+(?!is\b)[a-z]")  # "A cat" is an article, "A is right" a letter


# ---------------------------------------------------------------------------------------------------------------------
# Answers


def normalize_answer(text: str) -> str:
    """lm-eval gsm8k's normalisation before exact match: commas, "$", everything up to the last "#### " and one
    trailing period removed; lowercased."""
    for rx in _IGNORE:
        text = rx.sub("", text)
    return text.lower()


def extract_strict(text: str | None) -> str | None:
    """lm-eval's strict-match: the number after the first "#### " (`#### (\\-?[0-9\\.\\,]+)`), or None."""
    m = _STRICT.search(text or "")
    return m.group(1).strip() if m else None


def extract_flexible(text: str | None) -> str | None:
    """lm-eval's flexible-extract: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, or None."""
    matches = _FLEXIBLE.findall(text or "")
    if not matches:
        return None
    found = [g for g in matches[-1] if g]
    return found[0].strip() if found else None


def parse_letter(text: str | None, n_choices: int = 4) -> str | None:
    """The option letter a generated answer names, or None.

    First the letter after "answer"/"answer is"/"Answer:" (optionally in brackets); else the first standalone
    capital letter among the first `n_choices` (not part of a word; an "A" followed by a lowercase word is an
    article), or a lowercase one in parentheses ("(b)").
    """
    if not text:
        return None
    valid = LETTERS[:n_choices]
    for m in _ANSWER_LETTER.finditer(text):
        if m.group(1) in valid:
            return m.group(1)
    for m in _STANDALONE_LETTER.finditer(text):
        letter = m.group(1) or m.group(2).upper()
        if letter not in valid:
            continue
        if m.group(1) == "A" and _ARTICLE_A.match(text, m.end()):
            continue
        return letter
    return None


def gold_number(sample: Sample) -> str:
    """The normalised gold final answer of a math item (`normalize_answer`); InputError when it has none."""
    if sample.answer is None or str(sample.answer).strip() == "":
        raise InputError(f"item {sample.id!r} has no gold answer")
    return normalize_answer(str(sample.answer).strip())


def gold_letter(sample: Sample) -> str:
    """The letter of a multiple-choice item's correct option; InputError unless its answer is a choice index."""
    if not is_int(sample.answer) or not 0 <= sample.answer < len(sample.choices or ()):
        raise InputError(f"multiple-choice item {sample.id!r} needs a choice index as its answer, got {sample.answer!r}")
    if len(sample.choices or ()) > len(LETTERS):
        raise InputError(f"item {sample.id!r} has more choices than letters")
    return LETTERS[sample.answer]


def sample_key(sample: Sample) -> str:
    """What a rewrite changes: question, choices and answer."""
    return content_key(sample.question, list(sample.choices) if sample.choices is not None else None, sample.answer)


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(slots=True)
class ItemResult:
    """One item's outcome.

    `gold`: the normalised final answer (GSM8K) or the correct letter (MCQ). `prediction`: the generated text,
    or the chosen letter under log-likelihood scoring. `extracted`: GSM8K ``{"strict", "flexible"}``, MCQ
    ``{"letter"}`` (None: nothing found). `scores`: correctness under each GSM8K extraction (MCQ: ``{"letter"}``).
    `correct`: by the config's metric (MCQ: the letter). `parsed`: an answer was found for that metric; an
    unparsed item is wrong. `loglikelihoods`: per letter, under log-likelihood scoring. `error`: why a backend
    gave no output. `sample_key`: hash of the item's question, choices and answer (tells rewritten items apart).
    """

    id: str
    kind: str  # "math" or "mcq"
    gold: str
    correct: bool
    parsed: bool
    prediction: str | None = None
    extracted: dict[str, str | None] = field(default_factory=dict)
    scores: dict[str, bool] = field(default_factory=dict)
    loglikelihoods: list[float] | None = None
    error: str | None = None
    sample_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ItemResult:
        """The inverse of `to_dict`."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(slots=True)
class EvalResult:
    """The outcome of `evaluate`: one `ItemResult` per sample, in input order, and how it was produced:
    `prompt_style` (resolved), `max_gen_toks` (the generation budget) and `stop` (generation's stop sequences)
    are what an lm-eval task needs to reproduce it (`itd.pipeline.export.export_lm_eval`)."""

    items: list[ItemResult]
    model: dict[str, Any]
    config: dict[str, Any]
    prompt_style: str
    mcq_mode: str
    metric: str
    stats: dict[str, int] = field(default_factory=dict)
    max_gen_toks: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.items)

    @property
    def accuracy(self) -> float:
        """Share of items correct (unparsed and failed items count as wrong); NaN for no items."""
        return sum(it.correct for it in self.items) / self.n if self.items else math.nan

    @property
    def accuracy_by_metric(self) -> dict[str, float]:
        """Accuracy under every score the items have ("strict", "flexible" for GSM8K; "letter" for MCQ)."""
        names = dict.fromkeys(name for it in self.items for name in it.scores)
        return {name: sum(bool(it.scores.get(name)) for it in self.items) / self.n for name in names}

    @property
    def unparsed(self) -> list[str]:
        """Ids of the items with no parseable answer (counted as wrong), in order."""
        return [it.id for it in self.items if not it.parsed]

    @property
    def errors(self) -> dict[str, str]:
        """Id -> error of the items the backend gave no output for."""
        return {it.id: it.error for it in self.items if it.error}

    def by_id(self) -> dict[str, ItemResult]:
        """Id -> item result."""
        return {it.id: it for it in self.items}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary and every item."""
        return {
            "model": self.model,
            "config": self.config,
            "prompt_style": self.prompt_style,
            "mcq_mode": self.mcq_mode,
            "metric": self.metric,
            "max_gen_toks": self.max_gen_toks,
            "stop": list(self.stop),
            "n": self.n,
            "accuracy": self.accuracy if self.items else None,
            "accuracy_by_metric": self.accuracy_by_metric,
            "unparsed": self.unparsed,
            "stats": dict(self.stats),
            "items": [it.to_dict() for it in self.items],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """The inverse of `to_dict` (derived figures are recomputed)."""
        return cls(
            items=[ItemResult.from_dict(x) for x in d["items"]],
            model=dict(d.get("model", {})),
            config=dict(d.get("config", {})),
            prompt_style=d.get("prompt_style", ""),
            mcq_mode=d.get("mcq_mode", ""),
            metric=d.get("metric", ""),
            stats=dict(d.get("stats", {})),
            max_gen_toks=d.get("max_gen_toks"),
            stop=list(d.get("stop") or ()),
        )
