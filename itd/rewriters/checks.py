"""The deterministic checks of a paraphrase (an LLM rewrite), one function each, and the `Check` they return.

What they look for is what real LLM rewriters get wrong without any understanding needed to see it:

- math: a number of the question changed or lost (`numbers_kept`), a number the solution computes with that the
  question no longer states (`operands_stated`), the final answer or a step's result written into the question
  (`answer_not_stated`), a unit changed under the same numbers (`units_kept`);
- multiple choice: options left verbatim although they are ordinary prose (`options_rephrased`; names, terms,
  numbers, formulas and code may stay, as the packaged prompt says), duplicate options (`distinct_options`),
  a hint at the key (`no_answer_hint`: its text echoed in the question, a key much longer or more hedged than
  the original's), and, given option embeddings, an option whose meaning moved to another slot
  (`option_alignment`).

Each check returns a `Check` with a reason in words and its evidence (numbers found, similarities) for the
per-item log. Numbers are read by `itd.core.numbers`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from rapidfuzz import fuzz

from itd.core import Sample
from itd.core.numbers import Number, equivalent, format_value, read_numbers, unit_dimension, units_in
from itd.rewriters.chain import compile_expression, parse_chain, parse_number

__all__ = [
    "Check",
    "numbers_kept",
    "operands_stated",
    "answer_not_stated",
    "units_kept",
    "options_rephrased",
    "distinct_options",
    "no_answer_hint",
    "option_alignment",
    "option_similarity",
    "near_copy",
    "is_prose",
    "normalize_option",
    "MATH_PARAPHRASE_CHECKS",
]


@dataclass(frozen=True, slots=True)
class Check:
    """One verification check: `ok` is True, False, or None when the check did not apply or could not run;
    `detail` says why in words; `evidence` keeps what it read (numbers, similarities, votes) for the log."""

    name: str
    ok: bool | None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["evidence"]:
            del d["evidence"]
        return d


# ---------------------------------------------------------------------------------------------------------------------
# math


def _quantities(text: str) -> list[Number]:
    """The quantities of a question a rewrite must keep: ordinals are positions, not amounts."""
    return [n for n in read_numbers(text) if n.form != "ordinal"]


def _match(old: Sequence[Number], new: Sequence[Number]) -> tuple[list[tuple[Number, Number]], list[Number], list[Number]]:
    """Pair each old quantity with an unused new one of the same amount (exact values first, then a
    percentage with its fraction); the unpaired old and new ones."""
    pool = list(new)
    pairs: list[tuple[Number, Number]] = []
    unpaired: list[Number] = []
    for exact in (True, False):
        rest = []
        for n in (old if exact else unpaired):
            j = next((k for k, m in enumerate(pool) if (m.value == n.value if exact else equivalent(n, m))), None)
            if j is None:
                rest.append(n)
            else:
                pairs.append((n, pool.pop(j)))
        unpaired = rest
    return pairs, unpaired, pool


def numbers_kept(original: Sample, new: Sample) -> Check:
    """Every quantity of the original question (digits, number words, fractions, percentages, money) is in the
    rewritten question as many times. The number one is exempt: "one", "a", "an" and "each" say the same."""
    old, now = _quantities(original.question), read_numbers(new.question)
    _, missing, added = _match([n for n in old if n.value != 1], now)
    evidence = {"original": [n.to_dict() for n in old], "rewrite": [n.to_dict() for n in now],
                "missing": [n.to_dict() for n in missing], "added": [n.to_dict() for n in added if n.form != "ordinal"]}
    if missing:
        lost = ", ".join(f"{format_value(n.value)} ({n.text!r})" for n in missing)
        return Check("numbers_kept", False, f"the rewritten question lacks {lost} of the original question", evidence)
    return Check("numbers_kept", True, f"all {len(old)} number(s) of the original question kept", evidence)


def _step_results(solution: str | None) -> list[Fraction]:
    results = []
    for st in parse_chain(solution or ""):
        try:
            results.append(parse_number(st.result or ""))
        except ValueError:
            continue
    return results


def operands_stated(original: Sample, new: Sample) -> Check:
    """Every number the rewritten solution computes with is either a result of an earlier step, stated in the
    rewritten question, or general knowledge (a number the original question does not state either: 60
    minutes, 100 percent)."""
    old_q = {n.value for n in _quantities(original.question)} | {n.value / 100 for n in _quantities(original.question) if n.unit == "percent"}
    now = _quantities(new.question)
    new_q = {n.value for n in now} | {n.value / 100 for n in now if n.unit == "percent"}
    seen: set[Fraction] = set()
    missing: list[tuple[int, str]] = []
    used = 0
    for i, st in enumerate(parse_chain(new.solution or ""), 1):
        try:
            expr = compile_expression(st.expression)
        except ValueError:
            continue  # the chain check reports what cannot be evaluated
        for value, text in zip(expr.literals, expr.literal_text):
            if value in seen or value == 1:
                continue
            if value in old_q:
                used += 1
                if value not in new_q:
                    missing.append((i, text))
        try:
            seen.add(parse_number(st.result or ""))
        except ValueError:
            pass
    evidence = {"missing": [{"step": i, "operand": t} for i, t in missing]}
    if missing:
        what = ", ".join(f"{t} (step {i})" for i, t in missing)
        return Check("operands_stated", False, f"the solution uses {what}, which the rewritten question does not state", evidence)
    return Check("operands_stated", True, f"{used} operand(s) taken from the question, all stated", evidence)


def answer_not_stated(original: Sample, new: Sample, answer: Any) -> Check:
    """The final answer and the results of the solution's steps do not appear in the rewritten question more
    often than in the original question (0 and 1 are too common to tell)."""
    targets: dict[Fraction, str] = {}
    for solution in (original.solution, new.solution):
        for r in _step_results(solution):
            targets.setdefault(r, f"the result of a step ({format_value(r)})")
    try:
        targets[parse_number(str(answer))] = f"the final answer {answer}"
    except ValueError:
        pass
    old, now = _quantities(original.question), _quantities(new.question)
    leaked = []
    for value, what in targets.items():
        if value in (0, 1):
            continue
        probe = Number(value, "", "digits", None, 0, 0)
        if sum(equivalent(probe, n) for n in now) > sum(equivalent(probe, n) for n in old):
            leaked.append(what)
    evidence = {"checked": sorted(format_value(v) for v in targets), "leaked": leaked}
    if leaked:
        return Check("answer_not_stated", False, f"the rewritten question states {'; '.join(leaked)}", evidence)
    return Check("answer_not_stated", True, f"none of {len(targets)} result(s) stated in the question", evidence)


def units_kept(original: Sample, new: Sample) -> Check:
    """A number keeps its unit ("3 hours" stays hours), and a unit the question no longer mentions is not
    replaced by another of the same dimension; unless the unit was renamed throughout: the old one appears
    nowhere in the rewrite (question and solution, compound units like "mph" included) and the new one nowhere
    in the original (km renamed miles everywhere keeps the answer; hours renamed minutes next to "mph" does
    not)."""
    pairs, _, _ = _match(_quantities(original.question), _quantities(new.question))
    changes = {(a.unit, b.unit) for a, b in pairs if a.unit and b.unit and a.unit != b.unit and a.value == b.value}
    old_units, new_units = units_in(original.question), units_in(new.question)
    gone, came = set(old_units) - set(new_units), set(new_units) - set(old_units)
    changes |= {(g, c) for g in gone for c in came if unit_dimension(g) and unit_dimension(g) == unit_dimension(c)}
    in_rewrite = units_in(new.question + "\n" + (new.solution or ""))
    in_original = units_in(original.question + "\n" + (original.solution or ""))
    bad = sorted((a, b) for a, b in changes if in_rewrite[a] or in_original[b])
    evidence = {"original_units": dict(old_units), "rewrite_units": dict(new_units),
                "renamed": sorted(f"{a} -> {b}" for a, b in changes)}
    if bad:
        why = "; ".join(f"{a} became {b}" + (f" but the rewrite still uses {a}" if in_rewrite[a] else f" although the original also uses {b}")
                        for a, b in bad)
        return Check("units_kept", False, f"a unit changed under the same numbers: {why}", evidence)
    if changes:
        return Check("units_kept", True, "unit(s) renamed throughout: " + ", ".join(evidence["renamed"]), evidence)
    return Check("units_kept", True, "units kept", evidence)


MATH_PARAPHRASE_CHECKS = (numbers_kept, operands_stated, units_kept)
"""The math checks of a paraphrase that need only the original and the new sample (`answer_not_stated` also
needs the gold answer)."""


# ---------------------------------------------------------------------------------------------------------------------
# multiple choice

_LETTERS_RE = re.compile(r"[A-Za-z]+")
_STOP = set("""a an the of to in on at by for with from and or but not no nor as is are was were be been being it its this
that these those which who whom whose what when where why how than then there their they them he she his her him we our
you your i me my do does did has have had can could may might will would shall should must only also any all some each
into onto about over under between after before during such other another more most less least very much many one""".split())
_HEDGES = re.compile(r"\b(generally|usually|typically|often|mostly|commonly|frequently|normally|primarily|largely|"
                     r"in (?:most|many|some) (?:cases|instances|circumstances)|in general|as a rule|tends? to|"
                     r"depending on|under (?:most|normal) conditions|for the most part)\b", re.I)


def normalize_option(text: str) -> str:
    """An option's text for comparison: spacing and a final period only."""
    # spacing only: case, signs and symbols carry meaning in options ("BbEe" vs "BBEe", "i" vs "-i")
    return " ".join(text.split()).rstrip(".")


def is_prose(option: str) -> bool:
    """Whether an option is ordinary prose a paraphrase must reword: at least four words, mostly letters (not a
    formula, number or code) and not mostly capitalised (not a proper name or title). Shorter options are
    names or terms ("Meiosis", "Hypoglossal nerve", "True, False")."""
    words = _LETTERS_RE.findall(option)
    if len(words) < 4:
        return False
    visible = [c for c in option if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.75 * len(visible):
        return False
    content = [w for w in words if w.lower() not in _STOP]
    capitalised = sum(w[0].isupper() for w in content[1:]) if len(content) > 1 else 0
    return capitalised < 0.6 * max(1, len(content) - 1)


def options_rephrased(original: Sample, new: Sample, allow_verbatim: bool = False) -> Check:
    """Every option that is ordinary prose (`is_prose`) is reworded; names, terms, numbers, formulas and code
    may stay as they are."""
    old, now = original.choices or (), new.choices or ()
    prose = [i for i, o in enumerate(old) if is_prose(o)]
    verbatim = [i for i in prose if i < len(now) and normalize_option(old[i]) == normalize_option(now[i])]
    kept_terms = [i for i, o in enumerate(old) if i not in prose and i < len(now) and normalize_option(o) == normalize_option(now[i])]
    evidence = {"prose_options": prose, "verbatim_prose": verbatim, "verbatim_terms": kept_terms}
    if verbatim and not allow_verbatim:
        return Check("options_rephrased", False, f"prose option(s) {verbatim} left verbatim", evidence)
    detail = f"{len(prose)} prose option(s) reworded" + (f", {len(kept_terms)} name(s)/term(s) kept" if kept_terms else "")
    return Check("options_rephrased", True, detail + (" (verbatim allowed)" if verbatim else ""), evidence)


def _option_words(text: str) -> tuple[str, ...]:
    return tuple(_stem(w.lower()) for w in re.findall(r"\w+", text) if w.lower() not in ("a", "an", "the"))


def distinct_options(original: Sample, new: Sample) -> Check:
    """No two options say the same words (up to case, punctuation, articles and word endings), unless the
    original pair did too. Options that differ in one word ("plus"/"minus") are distinct."""
    old, now = original.choices or (), new.choices or ()
    words = [_option_words(c) for c in now]
    before = [_option_words(c) for c in old]
    same = [(i, j) for i in range(len(now)) for j in range(i + 1, len(now))
            if words[i] == words[j] and not (j < len(old) and before[i] == before[j])]
    evidence = {"duplicates": same}
    if same:
        return Check("distinct_options", False, "duplicate options " + ", ".join(f"{i} and {j}" for i, j in same), evidence)
    return Check("distinct_options", True, f"{len(now)} distinct options", evidence)


def _content_words(text: str) -> set[str]:
    return {_stem(w.lower()) for w in _LETTERS_RE.findall(text) if len(w) >= 4 and w.lower() not in _STOP}


def _stem(word: str) -> str:
    for suffix in ("ies", "es", "s", "ed", "ing", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _relative_length(choices: Sequence[str], key: int) -> float:
    others = [len(c.strip()) for i, c in enumerate(choices) if i != key]
    return len(choices[key].strip()) / max(1, max(others, default=1))


def no_answer_hint(original: Sample, new: Sample, key: int, max_length_ratio: float = 1.6) -> Check:
    """The rewrite does not point at the key: the question does not newly state the key's text or most of its
    distinctive words, the key is not much longer than every other option unless it already was
    (`max_length_ratio` times the longest other option, and 1.3 times its original ratio), and it gains no
    hedging ("usually", "in most cases") that no other option has."""
    old, now = original.choices or (), new.choices or ()
    okey = original.answer
    hints: list[str] = []
    evidence: dict[str, Any] = {}
    # 1. the key named by the question
    q_old, q_new = original.question.lower(), new.question.lower()
    for gold in {old[okey].strip(), now[key].strip()}:
        if len(gold) >= 4 and _LETTERS_RE.search(gold):
            pattern = re.compile(r"(?<!\w)" + re.escape(gold.lower()) + r"(?!\w)")
            if pattern.search(q_new) and not pattern.search(q_old):
                hints.append(f"the question states the correct option {gold!r}")
    others = set().union(*(_content_words(c) for i, c in enumerate(now) if i != key), *(_content_words(c) for i, c in enumerate(old) if i != okey))
    distinctive = (_content_words(now[key]) | _content_words(old[okey])) - others
    echoed = sorted((distinctive & _content_words(new.question)) - _content_words(original.question))
    evidence["key_words_echoed"] = echoed
    key_words = _content_words(now[key]) - others
    if not hints and echoed and len(set(echoed) & key_words) * 2 >= max(1, len(key_words)):
        hints.append(f"the question repeats the correct option's words {echoed}")
    # 2. the key made obviously longer
    rel_old, rel_new = _relative_length(old, okey), _relative_length(now, key)
    evidence["key_length_ratio"] = {"original": round(rel_old, 2), "rewrite": round(rel_new, 2)}
    if rel_new >= max_length_ratio and rel_new >= 1.3 * rel_old:
        hints.append(f"the correct option is {rel_new:.1f}x the longest other option (original {rel_old:.1f}x)")
    # 3. the key hedged
    gained = len(_HEDGES.findall(now[key])) - len(_HEDGES.findall(old[okey]))
    hedged_others = [i for i, c in enumerate(now) if i != key and _HEDGES.search(c)]
    evidence["key_hedges_added"] = max(0, gained)
    if gained > 0 and not hedged_others:
        hints.append(f"only the correct option is hedged ({', '.join(sorted({h.lower() for h in _HEDGES.findall(now[key])}))})")
    if hints:
        return Check("no_answer_hint", False, "; ".join(hints), evidence)
    return Check("no_answer_hint", True, "no hint at the key", evidence)


def option_similarity(cosine: Sequence[Sequence[float]], new: Sequence[str], old: Sequence[str]) -> list[list[float]]:
    """Similarity of rewritten option i to original option j: the mean of the embedding cosine and the
    character-level ratio (the embedding alone barely tells "deep to its superior border" from "deep to its
    inferior border"); 1.0 for identical text."""
    sim = []
    for i, a in enumerate(new):
        row = []
        for j, b in enumerate(old):
            if normalize_option(a) == normalize_option(b):
                row.append(1.0)
            else:
                row.append((float(cosine[i][j]) + fuzz.ratio(a.lower(), b.lower()) / 100) / 2)
        sim.append(row)
    return sim


def option_alignment(similarity: Sequence[Sequence[float]], margin: float, source: str) -> Check:
    """Each rewritten option is closest to its own original option: `similarity[i][j]` compares rewritten
    option i with original option j. Option i has moved to slot j when it is closer to original j than to its
    own and original j is closer to it than to its own rewrite (a swap or rotation; by more than 0.01), or when
    it is more than `margin` closer to original j (the key's meaning on another slot, a distractor turned into
    the key)."""
    n = len(similarity)
    moved = []
    for i, row in enumerate(similarity):
        j = max(range(len(row)), key=lambda c: row[c])
        if j == i or j >= n:
            continue
        gap = row[j] - row[i]
        mutual = max(range(n), key=lambda r: similarity[r][j]) == i
        if gap > margin or (mutual and gap > 0.01):
            moved.append((i, j, round(row[j], 3), round(row[i], 3)))
    evidence = {"similarity": [[round(x, 3) for x in row] for row in similarity], "source": source}
    if moved:
        why = "; ".join(f"option {i} is closer to original option {j} ({a}) than to its own ({b})" for i, j, a, b in moved)
        return Check("option_alignment", False, why, evidence)
    return Check("option_alignment", True, f"every option closest to its own original ({source})", evidence)


def near_copy(original: Sample, new: Sample, max_ratio: float) -> Check:
    """The rewrite is not a near-copy (rapidfuzz ratio >= `max_ratio`): the question and, for multiple choice,
    the prose options (names and terms may stay verbatim, so they do not count)."""
    def text(s: Sample, like: Sample) -> str:
        if not s.choices:
            return s.question
        return "\n".join([s.question] + [c for c, o in zip(s.choices, like.choices or ()) if is_prose(o)])

    ratio = fuzz.ratio(text(original, original).lower(), text(new, original).lower()) / 100.0
    ok = ratio < max_ratio
    return Check("near_copy", ok, f"similarity {ratio:.3f} {'<' if ok else '>='} {max_ratio}", {"ratio": round(ratio, 3)})
