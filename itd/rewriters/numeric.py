"""GSM8K numeric re-instantiation: new numbers in the question, the worked solution recomputed exactly.

No model is involved. For one GSM8K item the rewriter

1. reads the solution's calculator chain: the `<<expr=result>>` annotations, plain equations the solution left
   unannotated ("99 + 5 = $104", "2(60) = 120") and trivial annotations whose computation is in the prose
   ("9 - 3 = <<6=6>>6");
2. explains every number the chain uses: an *input* stated in the question (digits, "$1,200", "2.50", "20%", a
   number word such as "three"), a form derived from one (20% used as .2, .8 or 1.2; "1.25 hours" as 75
   minutes; "45 cents" as 0.45), the result of an earlier step, or a *constant* ("twice", "half", "a dozen", a
   fraction "3/4", 60 minutes, 100 percent, 7 days). A number it cannot explain makes the item not rewritable;
3. resolves numbers with two readings: an input equal to an earlier result is tied to it (drawn equal, or solved
   for), and with `partial` an input whose reading stays ambiguous (an input equal to a constant of the
   question, an input a result may have been worked out from in the head) keeps its value;
4. draws new values for the other inputs (same kind: integers stay integers, cents stay cents, percentages stay
   below 100, words stay words; by default the same digit count and decimal places, near the old value and
   leaning down just enough that a set's magnitudes do not drift up), deterministic in seed, item id and attempt,
   and recomputes every step with exact fractions, searching until each result keeps its kind (integer, sign, a
   short decimal, order of magnitude, and the order of results when the solution compares them), the final
   answer changes, and every operation keeps what makes it hard (`itd.rewriters.difficulty`: digit counts of
   operands and results, exact divisions, carries and borrows, decimal places), giving these up one at a time
   in a stated order only where no values hold them (`_LEVELS`; `info["difficulty"]` says what held);
5. writes the new values into the question, the annotations, the prose that restates them and the `#### N`
   line, formatted like the original (thousands commas, `$`, cents, number words, "a"/"an"), and annotates the
   prose equations it recomputed;
6. re-executes the new solution (`itd.rewriters.chain.check_chain`) and re-reads the new question (every input
   carries its new value, every other number is unchanged) before emitting the candidate.

Items it cannot handle raise `NotRewritable` with a reason of the form "category: detail", for example
"unexplained number: 40 in step 1" or "non-integer intermediate: no values in 2000 draws (...)".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from itd.data import Sample, gsm8k_final_answer
from itd.rewriters.base import REWRITERS, Candidate, NotRewritable, Rewriter
from itd.rewriters.chain import (
    MAX_DIGITS,
    Expression,
    ExpressionError,
    check_chain,
    compile_expression,
    number_value,
    parse_chain,
    parse_number,
)
from itd.rewriters.difficulty import CONSTRAINTS, broken, int_digits
from itd.rewriters.difficulty import decimal_places as _decimal_places
from itd.validate import is_int

__all__ = ["NumericRewriter", "NumericConfig", "GENERIC_CONSTANTS", "number_words"]

# ---------------------------------------------------------------------------------------------------------------------
# number words

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_VALUE = {w: i for i, w in enumerate(_UNITS)} | {w: 10 * i for i, w in enumerate(_TENS) if w}
_ORDINALS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "fourth": 4, "fourths": 4, "quarter": 4,
             "quarters": 4, "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7,
             "eighth": 8, "eighths": 8, "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10}
_MULTIPLES = {"twice": 2, "double": 2, "doubled": 2, "doubles": 2, "pair": 2, "pairs": 2, "couple": 2, "triple": 3,
              "tripled": 3, "triples": 3, "thrice": 3, "quadruple": 4, "quadrupled": 4, "once": 1,
              "dozen": 12, "dozens": 12, "hundred": 100, "hundreds": 100, "thousand": 1000, "percent": 100,
              "score": 20, "halved": 2}
_WORD_RE = re.compile(
    r"\b(?:(?P<tens>twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:-(?P<unit>one|two|three|four|five|six|"
    r"seven|eight|nine))?|(?P<small>zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
    r"fourteen|fifteen|sixteen|seventeen|eighteen|nineteen))\b",
    re.I,
)
_CONST_WORD_RE = re.compile(r"\b(" + "|".join(sorted([*_ORDINALS, *_MULTIPLES], key=len, reverse=True)) + r")\b", re.I)


def number_words(n: int) -> str:
    """English words for 0 <= n <= 99 ("forty-two")."""
    if not 0 <= n <= 99:
        raise ValueError(f"no words for {n}")
    if n < 20:
        return _UNITS[n]
    tens, unit = divmod(n, 10)
    return _TENS[tens] + ("-" + _UNITS[unit] if unit else "")


_UNITS_TABLE: dict[str, tuple[int, ...]] = {
    "hour": (60, 3600), "minute": (60,), "day": (24,), "week": (7,), "year": (12, 52, 365), "month": (30,),
    "foot": (12,), "feet": (12,), "yard": (3, 36), "mile": (5280,), "gallon": (4, 8, 16, 128), "quart": (2, 4, 32),
    "pint": (2, 16), "cup": (8,), "pound": (16,), "ton": (2000,), "kilogram": (1000,), "kg": (1000,),
    "liter": (1000,), "litre": (1000,), "meter": (100, 1000), "metre": (100, 1000), "kilometer": (1000,),
    "dollar": (100,), "dozen": (12,),
}
"""Unit conversions: "1.25 hours" may be used as 75 (minutes), "15 gallons" as 120 (pints)."""


def _unit_key(word: str) -> str:
    w = word.lower()
    if w in _UNITS_TABLE:
        return w
    for suffix in ("es", "s"):
        if w.endswith(suffix) and w[: -len(suffix)] in _UNITS_TABLE:
            return w[: -len(suffix)]
    return ""


_KNOWN: dict[str, tuple[str, ...]] = {
    r"\bquarters\b": ("25", "0.25"), r"\bdimes?\b": ("10", "0.1"), r"\bnickels?\b": ("5", "0.05"),
    r"\bpenn(?:y|ies)\b": ("1", "0.01"), r"\btwenties\b": ("20",), r"\btens\b": ("10",), r"\bfives\b": ("5",),
    r"\balphabet\b": ("26",), r"\bfebruary\b": ("28", "29"),
    r"\b(?:april|june|september|november)\b": ("30",),
}
"""What some words mean in numbers: coins and bills, the alphabet, the days of a month."""

_CONVERSIONS: dict[tuple[str, str], Fraction] = {
    (small, big): Fraction(f) for small, big, f in (
        ("feet", "yard", 3), ("foot", "yard", 3), ("inche", "foot", 12), ("inch", "foot", 12), ("inche", "feet", 12),
        ("inche", "yard", 36), ("minute", "hour", 60), ("second", "minute", 60), ("second", "hour", 3600),
        ("hour", "day", 24), ("day", "week", 7), ("day", "year", 365), ("week", "year", 52), ("month", "year", 12),
        ("ounce", "pound", 16), ("oz", "pound", 16), ("cent", "dollar", 100), ("quart", "gallon", 4),
        ("pint", "gallon", 8), ("cup", "gallon", 16), ("pint", "quart", 2), ("cup", "quart", 4), ("cup", "pint", 2),
        ("feet", "mile", 5280), ("centimeter", "meter", 100), ("cm", "meter", 100), ("meter", "kilometer", 1000),
        ("gram", "kilogram", 1000), ("milliliter", "liter", 1000), ("ml", "liter", 1000), ("pound", "ton", 2000),
        ("egg", "dozen", 12), ("item", "dozen", 12), ("day", "month", 30), ("week", "month", 4),
    )
}
_CONVERSION = re.compile(
    r"(?:\b(?:1|one|an?|each|every|per)\s+(?P<big2>[a-z]+)\s*(?:=|is|are|has|have|equals|contains)?\s*)?"
    r"\b(?P<n>\d+)\s*(?P<small>[a-z]+)\s*(?:/|per|in an?|in one|in 1|in|for each|for every|every|each|an?)?\s*"
    r"(?:1\s+)?(?P<big>[a-z]+)?", re.I)
"""Spelled-out conversions: "3 feet / 1 yard", "60 minutes in an hour", "1 foot = 12 inches"."""

_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
_COMPARISON = re.compile(
    r"[<>≥≤]|\b(?:greater|larger|bigger|smaller|cheaper|better|best|maximi[sz]e|minimi[sz]e|higher|lower|exceeds?|"
    r"more expensive|less expensive|biggest|largest|smallest|highest|lowest|compare[ds]?|whichever)\b", re.I)

GENERIC_CONSTANTS: frozenset[Fraction] = frozenset(
    Fraction(x) for x in ("0", "1", "2", "3", "4", "5", "7", "10", "12", "24", "30", "31", "52", "60", "100", "365",
                          "1000", "3600", "1/100", "1/10", "1/2", "1/4", "3/4")
)
"""Numbers a solution may use without the question stating them (units, halves, percent, calendar)."""

# ---------------------------------------------------------------------------------------------------------------------
# number tokens

_NUM_RE = re.compile(r"(?:(?<=\$)\d{1,3}(?:[ \xa0]\d{3})+(?!\d)|\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+")
"""A number as written: "1,000", "2.50", ".5", and "$400 000" (a space between thousands after a dollar sign)."""


def _num_value(text: str) -> Fraction:
    return number_value(text)


@dataclass(slots=True)
class _Style:
    commas: bool = False
    decimals: int = 0
    sep: str = ","  # the thousands separator: "," or " " ("$400 000")
    lead0: bool = True
    word: bool = False
    cap: bool = False


@dataclass(slots=True)
class _Tok:
    start: int
    end: int
    text: str
    value: Fraction
    style: _Style
    context: str = ""  # "" | fraction | time | ordinal | one | frac-word | scaled-word
    money: bool = False
    percent: bool = False
    scale: int = 1
    unit: str = ""  # the word after the number
    half_more: bool = False  # "three and a half"


def _style_of(text: str) -> _Style:
    dec = len(text.split(".", 1)[1]) if "." in text else 0
    sep = " " if re.search(r"\d[ \xa0]\d", text) else ","
    return _Style(commas=sep in text, decimals=dec, lead0=not text.startswith("."), sep=sep)


def _tokens(text: str, words: bool = True) -> list[_Tok]:
    """Number tokens of `text` (digits and, when `words`, cardinal number words) with their context."""
    out: list[_Tok] = []
    for m in _NUM_RE.finditer(text):
        s, e = m.span()
        if s > 0 and (text[s - 1].isalpha() or text[s - 1] == "_" or text[s - 1].isdigit()):
            continue
        raw = m.group(0)
        tok = _Tok(s, e, raw, _num_value(raw), _style_of(raw))
        before, after = text[max(0, s - 12):s], text[e:e + 16]
        if re.match(r"/\s?\d", after) or re.search(r"\d\s?/$", before):
            tok.context = "fraction"
        elif re.match(r":\d", after) or re.search(r"\d:$", before) or re.match(r"\s?(?:[ap]\.?m\b|[AP]\.?M\b|o'clock)", after):
            tok.context = "time"
        elif re.match(r"(?:st|nd|rd|th)\b", after):
            tok.context = "ordinal"
        elif before.endswith("#"):
            tok.context = "label"  # "horse #12"
        if not tok.context and re.match(r"\s+\d+\s?/\s?\d+", after):
            tok.context = "mixed"  # "3 1/2"
        tok.money = before.rstrip().endswith("$") or bool(re.search(r"\$\s?$", before))
        tok.percent = bool(re.match(r"\s?(?:%|percent\b|per cent\b)", after))
        sc = re.match(r"[\s-]?(million|billion|thousand|dozen)\b", after, re.I)
        if sc:
            tok.scale = {"million": 10**6, "billion": 10**9, "thousand": 1000, "dozen": 12}[sc.group(1).lower()]
        out.append(tok)
    if words:
        for m in _WORD_RE.finditer(text):
            s, e = m.span()
            if m.group("tens"):
                v = _WORD_VALUE[m.group("tens").lower()] + (_WORD_VALUE[m.group("unit").lower()] if m.group("unit") else 0)
            else:
                v = _WORD_VALUE[m.group("small").lower()]
            raw = m.group(0)
            tok = _Tok(s, e, raw, Fraction(v), _Style(word=True, cap=raw[0].isupper()))
            after = text[e:e + 20]
            if re.match(r"[\s-](?:" + "|".join(_ORDINALS) + r")\b", after, re.I):
                tok.context = "frac-word"
            elif re.match(r"[\s-](?:hundred|thousand|million|billion)\b", after, re.I):
                tok.context = "scaled-word"
            elif v <= 1:
                tok.context = "one"
            elif s > 0 and text[s - 1] == "-" and s > 1 and text[s - 2].isalpha():
                tok.context = "one"  # "forty-two" handled above; "x-two" compounds are names
            tok.percent = bool(re.match(r"\s?(?:%|percent\b)", after))
            out.append(tok)
        out.sort(key=lambda t: t.start)
    for tok in out:
        after = text[tok.end:tok.end + 40]
        m = re.match(r"[\s-]*([A-Za-z]+)", after)
        tok.unit = m.group(1).lower() if m else ""
        tok.half_more = bool(re.match(r"\s+(?:[a-z]+\s+)?and a half\b", after))
    return out


def _format(value: Fraction, style: _Style | None = None) -> str | None:
    """`value` written in the style of an original token: words, thousands commas, cents, no leading zero.
    None when it cannot be written that way (a non-terminating decimal, a word for a non-integer)."""
    st = style or _Style()
    if st.word:
        if value.denominator != 1 or not 0 <= value <= 99:
            return None
        w = number_words(int(value))
        return w[0].upper() + w[1:] if st.cap else w
    neg = value < 0
    v = -value if neg else value
    digits = _decimal_places(v)
    if digits is None:
        return None
    if st.decimals == 2 and digits <= 2:
        digits = 2
    scaled = int(v * 10**digits)
    ip, fp = divmod(scaled, 10**digits)
    s = f"{ip:,}".replace(",", st.sep) if st.commas else str(ip)
    if digits:
        s += "." + str(fp).zfill(digits)
        if not st.lead0 and ip == 0:
            s = s[1:]
    return ("-" if neg else "") + s


# ---------------------------------------------------------------------------------------------------------------------
# analysis: roles of the numbers


@dataclass(slots=True)
class _Var:
    value: Fraction
    toks: list[_Tok]
    word: bool = False
    money: bool = False
    percent: bool = False
    decimals: int = 0
    scales: set[int] = field(default_factory=set)
    fallback: list[str] = field(default_factory=list)  # derivations tried for otherwise unexplained numbers
    frozen: str | None = None  # why it keeps its value
    used: bool = False


# A role says where a number's new value comes from:
#   ("var", i, kind)   input variable i; kind: "" (itself), "pct" (/100), "compl" (1 - v/100), "plus" (1 + v/100),
#                      "rest" (100 - v), "half" (v + 1/2, "three and a half"), "scale:N" (v * N, units)
#   ("step", j)        the stated result of step j
#   ("const", value)   unchanged
Role = tuple


@dataclass(slots=True)
class _StepInfo:
    expr: Expression
    expr_span: tuple[int, int]  # in the solution
    lit_spans: list[tuple[int, int]]  # in the solution
    result_span: tuple[int, int] | None  # annotation result text, or the prose result token
    result_text: str
    stated: Fraction
    synthetic: bool  # a prose equation without annotation
    roles: list[Role] = field(default_factory=list)
    echo: tuple[int, int] | None = None  # prose number right after the annotation
    end: int = 0  # end of the annotation and its echo (of the result, for a prose equation)
    parts: list[str] = field(default_factory=list)  # a prose expression around its numbers: "", "*(", ")", ...
    mirror: tuple[int, int] | None = None  # the literal of a trivial annotation <<6=6>> restating the result
    prose_expr: bool = False  # the expression is prose ("9 - 3 = <<6=6>>6" or an unannotated equation)
    factor: Fraction = Fraction(1)  # a percentage of a percentage: "20% * 40% = 8%" is (20*40)/100

    def value(self, lits: list[Fraction]) -> Fraction:
        return self.expr.value(lits) * self.factor if self.factor != 1 else self.expr.value(lits)


def _derive(v: Fraction, kind: str) -> Fraction:
    if kind == "":
        return v
    if kind == "pct":
        return v / 100
    if kind == "compl":
        return 1 - v / 100
    if kind == "plus":
        return 1 + v / 100
    if kind == "rest":
        return 100 - v
    if kind == "half":
        return v + Fraction(1, 2)
    if kind.startswith("scale:"):
        return v * int(kind[6:])
    raise AssertionError(kind)


class _Plan:
    """Everything about one item that does not depend on the values drawn."""

    def __init__(self, sample: Sample, keep: dict[Fraction, str] | None = None):
        self.sample = sample
        self.keep = keep or {}  # question numbers to keep, with the reason
        self.unit_consts: set[Fraction] = set()
        self.fractions: set[tuple[Fraction, Fraction]] = set()  # (numerator, denominator) stated in the question
        self.frac_parts: set[Fraction] = set()
        self.question = sample.question
        self.solution = sample.solution or ""
        self.qtoks = _tokens(self.question)
        self.vars: list[_Var] = []
        self.qconst: set[Fraction] = set()
        self.steps: list[_StepInfo] = []
        self.prose: list[tuple[_Tok, tuple[Role, ...]]] = []
        self.final_step = -1
        self.final_span: tuple[int, int] | None = None
        self.final_style = _Style()
        self.ties: list[tuple[int, str, int]] = []  # (input, derivation, step) that must stay equal
        self.defined: dict[int, tuple[str, int]] = {}  # input -> (derivation, step) it is computed from
        self.tie_checks: list[tuple[int, str, int]] = []
        self.dropped: set[tuple[int, int]] = set()  # (input, step) ties read as the step
        self._taken: set[int] = set()
        self._analyse()

    # ---- question ----------------------------------------------------------------------------------------------
    def _question_numbers(self) -> None:
        by_value: dict[Fraction, _Var] = {}
        for tok in self.qtoks:
            if tok.context:
                if tok.context != "fraction":
                    self.qconst.add(tok.value)
                continue
            var = by_value.get(tok.value)
            if var is None:
                var = by_value[tok.value] = _Var(tok.value, [])
                self.vars.append(var)
            var.toks.append(tok)
            var.word |= tok.style.word
            var.money |= tok.money
            var.percent |= tok.percent
            var.decimals = max(var.decimals, tok.style.decimals)
            if tok.scale != 1:
                var.scales.add(tok.scale)
            if re.match(r"cents?\b", tok.unit) and "pct" not in var.fallback:
                var.fallback.append("pct")
            for f in _UNITS_TABLE.get(_unit_key(tok.unit), ()):
                if f"scale:{f}" not in var.fallback:
                    var.fallback.append(f"scale:{f}")
            if tok.half_more and "half" not in var.fallback:
                var.fallback.append("half")
        for var in self.vars:
            if var.value in (0, 1) or (var.percent and var.value == 100):
                var.frozen = "one, zero or 100%"
                self.qconst.add(var.value)
            elif var.value in self.keep:
                var.frozen = self.keep[var.value]
        for tok in self.qtoks:
            if tok.context == "mixed":
                m = re.match(r"\s+(\d+)\s?/\s?(\d+)", self.question[tok.end:])
                if m and int(m.group(2)):
                    self.qconst.add(tok.value + Fraction(int(m.group(1)), int(m.group(2))))
        if re.search(r"\b(?:a|an|one)\s+\w+\s+and\s+a\s+half\b", self.question, re.I):
            self.qconst.add(Fraction(3, 2))
        # a conversion the solution spells out ("3 feet / 1 yard", "60 minutes in an hour") is a constant, even
        # when an input of the question has the same value
        for m in _CONVERSION.finditer(self.solution):
            big, small = _unit_key(m.group("big") or m.group("big2") or ""), m.group("small").lower()
            factor = Fraction(m.group("n"))
            if _CONVERSIONS.get((small.rstrip("s"), big)) == factor or _CONVERSIONS.get((small, big)) == factor:
                self.qconst.add(factor)
        # "a four-week month", "a 24-hour day": the number is the conversion, not an input
        for m in re.finditer(r"\b(\d+|[a-z]+)[- ]([a-z]+)[- ]([a-z]+)\b", self.question, re.I):
            n = _WORD_VALUE.get(m.group(1).lower()) if not m.group(1).isdigit() else int(m.group(1))
            small, big = m.group(2).lower().rstrip("s"), _unit_key(m.group(3))
            if n is not None and _CONVERSIONS.get((small, big)) == n:
                self.qconst.add(Fraction(n))
        text = self.question.lower()
        for word, values in _KNOWN.items():
            if re.search(word, text):
                self.qconst.update(Fraction(v) for v in values)
        for word in re.findall(r"[A-Za-z]+", self.question + " " + self.solution):
            for f in _UNITS_TABLE.get(_unit_key(word), ()):
                if f >= 10:
                    self.unit_consts.add(Fraction(f))
        for m in _CONST_WORD_RE.finditer(self.question):
            n = _ORDINALS.get(m.group(1).lower()) or _MULTIPLES[m.group(1).lower()]
            self.qconst.update({Fraction(n), Fraction(1, n)})
        # A fraction a/b is a constant; its parts are read as such where the expression has them as a pair
        # ("15*4/5"). The denominator of 1/b is also a constant on its own ("8/2" for 1/2 of 8).
        for m in re.finditer(r"(\d+)\s?/\s?(\d+)", self.question):
            a, b = int(m.group(1)), int(m.group(2))
            if b:
                self.fractions.add((Fraction(a), Fraction(b)))
                self.qconst.update({Fraction(a, b), 1 - Fraction(a, b)})
                self.frac_parts.update({Fraction(a), Fraction(b)})
                if a == 1:
                    self.qconst.add(Fraction(b))
        for tok in self.qtoks:
            if tok.context == "frac-word":
                m = re.match(r"[\s-](\w+)", self.question[tok.end:])
                d = _ORDINALS.get(m.group(1).lower(), 1) if m else 1
                self.fractions.add((tok.value, Fraction(d)))
                self.qconst.update({tok.value / d, 1 - tok.value / d})
                self.frac_parts.update({tok.value, Fraction(d)})
                if tok.value == 1:
                    self.qconst.add(Fraction(d))
            elif tok.context == "scaled-word":
                raise NotRewritable(f"number words not supported: {self.question[tok.start:tok.end + 9].strip()!r}")

    # ---- chain -------------------------------------------------------------------------------------------------
    def _annotation_steps(self) -> list[_StepInfo]:
        out = []
        for i, st in enumerate(parse_chain(self.solution), 1):
            if st.result is None:
                raise NotRewritable(f"unsupported annotation: step {i} <<{st.expression}>> has no '='")
            try:
                expr = compile_expression(st.expression)
                stated = parse_number(st.result)
            except ValueError as exc:
                raise NotRewritable(f"unsupported annotation: step {i}: {exc}") from None
            try:
                value = expr.value()
            except ExpressionError as exc:
                raise NotRewritable(f"annotation: {exc} at {_clip(self.solution[st.span[0]:st.span[1]])}") from None
            if value != stated:
                raise NotRewritable(f"original chain does not re-execute: step {i} {st.expression}={st.result}")
            e0 = st.span[0] + 2
            spans = [(e0 + m.start(), e0 + m.end()) for m in _NUM_RE.finditer(st.expression)]
            if len(spans) != len(expr.literals) or re.search(r"[%$x×,]", st.expression):
                raise NotRewritable(f"unsupported annotation: step {i} {st.expression!r}")
            r0 = e0 + len(st.expression) + 1
            info = _StepInfo(expr, (e0, e0 + len(st.expression)), spans, (r0, r0 + len(st.result)), st.result, stated,
                             False)
            if len(expr.literals) == 1:
                # "9 - 3 = <<6=6>>6": the computation is in the prose, the annotation only states the result
                lo = self.solution.rfind("\n", 0, st.span[0]) + 1
                m = self._TAIL.search(self.solution, lo, st.span[0])
                parsed = m and self._parse_prose_expr(m.group("expr"), m.start("expr"), False)
                if m and parsed and parsed[0].value() == stated:
                    info = _StepInfo(parsed[0], m.span("expr"), parsed[1], (r0, r0 + len(st.result)), st.result,
                                     stated, False, parts=parsed[2], mirror=spans[0], prose_expr=True)
            m = re.match(r"\s?\$?\s?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?!\d|\.\d|/\d)",
                         self.solution[st.span[1]:])
            if m and number_value(m.group(1)) == stated:
                info.echo = (st.span[1] + m.start(1), st.span[1] + m.end(1))
            info.end = info.echo[1] if info.echo else st.span[1]
            out.append(info)
        return out

    _NUM = r"(?:(?:(?<=\$)\d{1,3}(?:[ \xa0]\d{3})+(?!\d)|\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    _UNIT = (r"(?:/[A-Za-z]+)?(?:[ \xa0]+(?!(?:x|X|minus|plus|times|divided|multiplied|equals|is|are|was|and|or|of|to|"
             r"for|in|by|per|so|that|which|then|more|less|left|than|a|an|the)\b)[A-Za-z]+(?:/[A-Za-z]+)?){0,3}"
             r"(?:[ \xa0]+per[ \xa0]+[A-Za-z]+)?")
    _OP = r"[ \xa0]*(?:[-+*/×−–÷x]|minus|plus|times|divided by|multiplied by)[ \xa0]*"
    _TERM = r"\(*\$?" + _NUM + r"%?" + _UNIT + r"\)*"
    _JOIN = r"(?:" + _OP + r"|[ \xa0]*(?=\()|(?<=\))[ \xa0]*(?=[\d.$]))"
    _EQ = re.compile(
        r"(?<![\w.$/(])(?P<expr>" + _TERM + "(?:" + _JOIN + _TERM + r")+)[ \xa0]*(?:=|equals)[ \xa0]*"
        r"\$?(?P<res>" + _NUM + r")(?P<pct>%)?(?![\d/]|\.\d|\s*<<)"
    )
    _TAIL = re.compile(r"(?<![\w.$/(])(?P<expr>" + _TERM + "(?:" + _JOIN + _TERM + r")+)[ \xa0]*(?:=|equals)[ \xa0]*\$?[ \xa0]*$")
    _OPS = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/", "minus": "-",
            "plus": "+", "times": "*", "divided by": "/", "multiplied by": "*"}

    def _parse_prose_expr(self, text: str, x0: int, pct_result: bool) -> tuple[Expression, list[tuple[int, int]], list[str]] | None:
        """A prose expression such as "$600/month * 12 months" or "2(40 + 9)" as (expression, literal spans,
        the clean text around the literals). Percent signs are only allowed when the result is a percentage too
        (percentage points)."""
        if "%" in text and not pct_result:
            return None
        nums = list(_NUM_RE.finditer(text))
        bounds = [0] + [p for k in nums for p in k.span()] + [len(text)]
        parts = []
        for n in range(len(nums) + 1):
            gap = text[bounds[2 * n]:bounds[2 * n + 1]]
            gap = re.sub(r"(?:^|(?<=[\s\xa0%]))/[A-Za-z]+|(?<=[A-Za-z])/[A-Za-z]+", " ", gap)  # "/month"
            gap = re.sub(r"[A-Za-z]+(?:/[A-Za-z]+)*", lambda g: g.group(0) if g.group(0) in (
                "x", "minus", "plus", "times", "divided", "by", "multiplied") else " ", gap)
            gap = re.sub(r"[\s\xa0$%]+", " ", gap).strip()
            m = re.fullmatch(r"(\)*)\s*(.*?)\s*(\(*)", gap)
            assert m is not None
            close, op, open_ = m.groups()
            if op:
                if op not in self._OPS:
                    return None
                op = self._OPS[op]
            elif 0 < n < len(nums):
                if not (close or open_):
                    return None
                op = "*"  # "2(60)", "(3)(4)": implicit multiplication
            if (n == 0 or n == len(nums)) and op:
                return None
            parts.append(close + op + open_)
        clean = parts[0] + "".join(re.sub(r"[,\s\xa0]", "", k.group(0)) + parts[i + 1] for i, k in enumerate(nums))
        try:
            expr = compile_expression(clean)
        except ValueError:
            return None
        if len(expr.literals) != len(nums):
            return None
        return expr, [(x0 + k.start(), x0 + k.end()) for k in nums], parts

    def _prose_steps(self) -> list[_StepInfo]:
        """Plain `a op b = c` equations outside the annotations that re-execute ("99 + 5 = $104",
        "16 pencils / 2 pencils/pair = 8", "7 / 20 * 100% = 35%")."""
        out = []
        sol = self.solution
        blocked = [st.span for st in parse_chain(sol)]
        fin = sol.find("####")
        for m in self._EQ.finditer(sol, 0, fin if fin >= 0 else len(sol)):
            if any(s < m.end() and m.start() < e for s, e in blocked):
                continue
            parsed = self._parse_prose_expr(m.group("expr"), m.start("expr"), bool(m.group("pct")))
            if not parsed:
                continue
            expr, spans, parts = parsed
            try:
                stated = _num_value(m.group("res"))
                value = expr.value()
            except ValueError:
                continue
            # "20% * 40% = 8%": a percentage of a percentage is divided by 100
            factors = (Fraction(1), Fraction(1, 100)) if m.group("pct") else (Fraction(1),)
            factor = next((f for f in factors if value * f == stated), None)
            if factor is None:
                continue
            out.append(_StepInfo(expr, m.span("expr"), spans, m.span("res"), m.group("res"), stated, True,
                                 end=m.end("res"), parts=parts, prose_expr=True, factor=factor))
        return out

    def _candidates(self, x: Fraction, k: int) -> tuple[list[Role], list[Role]]:
        """(input roles, step roles before k) whose value is x."""
        ins: list[Role] = []
        for i, var in enumerate(self.vars):
            v = var.value
            if v == x:
                ins.append(("var", i, ""))
            elif var.percent:
                for kind in ("pct", "compl", "plus", "rest"):
                    if _derive(v, kind) == x:
                        ins.append(("var", i, kind))
                        break
            for sc in var.scales:
                if v * sc == x:
                    ins.append(("var", i, f"scale:{sc}"))
        steps = [("step", j) for j in range(k - 1, -1, -1) if self.steps[j].stated == x]
        return ins, steps

    def _literal_role(self, x: Fraction, k: int, divisor: bool = False) -> Role:
        if divisor and x == 100 and any(v.percent for v in self.vars):
            return ("const", x)  # "40/100": the percent base, even when $100 is an input too
        ins, steps = self._candidates(x, k)
        if len(steps) > 1:  # the same value twice in one expression: two different earlier results
            steps = [r for r in steps if r[1] not in self._taken] + [r for r in steps if r[1] in self._taken]
        if steps:
            self._taken.add(steps[0][1])
        direct = [r for r in ins if r[2] == ""]
        live = [r for r in ins if not self.vars[r[1]].frozen]
        if steps and live:
            # Both an input and an earlier result: tie them, so the new values keep the coincidence and
            # either reading stays right (an input the chain can compute is drawn as that result).
            cands = [r for r in live if r[2] == ""] or live
            if len({r[1] for r in cands}) > 1:
                raise _Refreeze(f"ambiguous input: {_show(x)} can come from several question numbers",
                                {self.vars[r[1]].value for r in cands})
            self.ties.append((cands[0][1], cands[0][2], steps[0][1]))
            self.vars[cands[0][1]].used = True
            return steps[0]
        if steps:
            return steps[0]
        if direct:
            ins = direct
        if len({r[1] for r in ins}) > 1:
            raise _Refreeze(f"ambiguous input: {_show(x)} can come from several question numbers",
                            {self.vars[r[1]].value for r in ins})
        if ins:
            role = ins[0]
            var = self.vars[role[1]]
            if x in self.qconst and not var.frozen:
                var.frozen = f"{_show(x)} is also a constant of the question"
            var.used = True
            return role
        if x in self.qconst or x in self.frac_parts:
            return ("const", x)
        if x in GENERIC_CONSTANTS:
            if x in (3, 4, 5, 10):
                # a small number the question does not state may be worked out from an input ("4 times as much"
                # -> 100/5, "twice 5 years" -> 10): keep any input it could come from
                near = {v.value for v in self.vars if not v.frozen and x in (v.value + 1, v.value - 1, 2 * v.value)}
                if near:
                    raise _Refreeze(f"ambiguous input: {_show(x)} in step {k + 1} may be worked out from "
                                    f"{', '.join(_show(v) for v in sorted(near))}", near)
            return ("const", x)
        # a number the question states in other units or as cents ("1.25 hours" used as 75 minutes)
        fb = [(i, kind) for i, var in enumerate(self.vars) if not var.frozen for kind in var.fallback
              if _derive(var.value, kind) == x]
        if len({i for i, _ in fb}) == 1:
            self.vars[fb[0][0]].used = True
            return ("var", fb[0][0], fb[0][1])
        if x in self.unit_consts:
            return ("const", x)
        raise NotRewritable(f"unexplained number: {_show(x)} in step {k + 1}")

    def _analyse(self) -> None:
        if re.search(r"\bround(?:s|ed|ing)?\s+(?:\w+\s+)?(?:up|down|off|to\s+the\s+nearest)\b", self.solution, re.I):
            raise NotRewritable("rounding: the solution rounds a number, which re-execution cannot follow")
        self._question_numbers()
        steps = self._annotation_steps()
        steps += self._prose_steps()
        if not steps:
            raise NotRewritable("no annotations")
        steps.sort(key=lambda s: s.expr_span[0])
        self.steps = steps
        for k, st in enumerate(steps):
            self._taken = set()  # earlier results this expression already uses ("15+15": two steps)
            lits, spans = st.expr.literals, st.lit_spans
            pair = [False] * len(lits)
            for n in range(len(lits) - 1):
                if (lits[n], lits[n + 1]) in self.fractions and \
                        self.solution[spans[n][1]:spans[n + 1][0]].strip() == "/":
                    pair[n] = pair[n + 1] = True
            st.roles = [("const", x) if pair[n] else self._literal_role(x, k, self.solution[:a].rstrip().endswith("/"))
                        for n, (x, (a, _)) in enumerate(zip(lits, spans))]
        # final answer
        fin = self.solution.find("####")
        final = gsm8k_final_answer(self.solution)
        if final is None:
            raise NotRewritable("final answer not computed by the chain: no '#### N'")
        try:
            fval = parse_number(final)
        except ValueError:
            raise NotRewritable(f"final answer not computed by the chain: {final!r} is not a number") from None
        for j in range(len(steps) - 1, -1, -1):
            if steps[j].stated == fval:
                self.final_step = j
                break
        else:
            raise NotRewritable(f"final answer not computed by the chain: {final} is no step's result")
        m = re.search(r"\S.*?(?=\s*$)", self.solution[fin + 4:], re.S)
        if m:
            self.final_span = (fin + 4 + m.start(), fin + 4 + m.end())
            self.final_style = _style_of(m.group(0))
        # frozen and unused inputs become constants
        for var in self.vars:
            if not var.used and not var.frozen:
                var.frozen = "not used by the chain"
        self._unused_restated()
        self._unused_results()
        for st in steps:
            st.roles = [("const", st.expr.literals[n]) if r[0] == "var" and self.vars[r[1]].frozen else r
                        for n, r in enumerate(st.roles)]
        dependent = []
        for i, kind, j in self.ties:
            if self.vars[i].frozen:
                raise _Refreeze(f"ambiguous input: {_show(_derive(self.vars[i].value, kind))} is both a number "
                                f"kept from the question and the result of step {j + 1}",
                                {self.vars[n].value for n in self._deps(j, {})})
            if i in self.defined:
                self.tie_checks.append((i, kind, j))
            elif i in self._deps(j, {}):
                dependent.append((i, kind, j))
            else:
                self.defined[i] = (kind, j)
        for i, kind, j in dependent:
            if self._identity(i, kind, j):
                continue  # the result always equals the input (a step such as 180*1): either reading holds
            # The result is computed from that input and equals it only at the original values. For a
            # percentage (30% of $100 is $30, then "100-30"; 40% off $100 leaves $60, then "100+60") the later
            # use is the result; otherwise there is no telling which one is meant.
            if self.vars[i].percent:
                self.dropped.add((i, j))
            elif self._deps(j, {}) - {i}:
                # keep the coincidence: another input of the step is solved for so that both readings agree
                self.tie_checks.append((i, kind, j))
            else:
                raise _Refreeze(f"ambiguous input: {_show(_derive(self.vars[i].value, kind))} is both stated "
                                f"in the question and computed from it in step {j + 1}",
                                {self.vars[n].value for n in self._deps(j, {})})
        self.tie_checks = [t for t in self.tie_checks if not self._identity(*t)]
        for i, (kind, j) in self.defined.items():
            if not any(not self.vars[n].frozen for n in self._deps(j, {})):
                raise _Refreeze(f"ambiguous input: {_show(_derive(self.vars[i].value, kind))} is both stated in "
                                f"the question and the result of step {j + 1}, which uses no number that changes",
                                {self.vars[i].value})
        if not any(not v.frozen for v in self.vars):
            raise NotRewritable("no input numbers: the chain uses no number of the question that can change")
        if all(v.frozen or i in self.defined for i, v in enumerate(self.vars)):
            raise NotRewritable("no input numbers: every input is tied to a result")
        if not any(not self.vars[n].frozen for n in self._deps(self.final_step, {})):
            raise NotRewritable("final answer not computed by the chain: it uses no number that changes")
        self._prose_roles()
        self._schedule()
        # A solution that compares results (a cheaper deal, the larger of two amounts, a copy of an earlier
        # result as the answer) is only right while the results keep their order.
        self.compares = bool(_COMPARISON.search(_ANNOTATION_RE.sub(" ", self.solution))) or any(
            len(st.roles) == 1 and st.roles[0][0] == "step" for st in steps
        ) or self.final_step != len(steps) - 1

    def _schedule(self) -> None:
        """Order the steps so that a step comes after the steps and tied inputs it uses; `need[p]` lists the
        drawn inputs first used by the p-th step of that order."""
        n = len(self.steps)
        deps: list[set[int]] = []
        for st in self.steps:
            d = set()
            for r in st.roles:
                if r[0] == "step":
                    d.add(r[1])
                elif r[0] == "var" and r[1] in self.defined:
                    d.add(self.defined[r[1]][1])
            deps.append(d)
        order: list[int] = []
        state = [0] * n

        def visit(k: int) -> None:
            if state[k] == 2:
                return
            if state[k] == 1:
                raise NotRewritable("ambiguous input: the tied inputs form a cycle")
            state[k] = 1
            for j in sorted(deps[k]):
                visit(j)
            state[k] = 2
            order.append(k)

        for k in range(n):
            visit(k)
        self.order = order
        self.defined_by: dict[int, list[int]] = {}
        for i, (_, j) in self.defined.items():
            self.defined_by.setdefault(j, []).append(i)
        drawn = {i for i, v in enumerate(self.vars) if not v.frozen and i not in self.defined}
        seen: set[int] = set()
        self.need: list[list[int]] = []
        for k in order:
            here = []
            for r in self.steps[k].roles:
                if r[0] == "var" and r[1] in drawn and r[1] not in seen:
                    seen.add(r[1])
                    here.append(r[1])
            self.need.append(here)
        self.unreached = sorted(drawn - seen)
        self.drawn = sorted(drawn)
        self.solvers: dict[tuple[int, int], list[int]] = {}
        for i, _, j in self.tie_checks:
            deps = self._deps(j, {}) | (self._deps(self.defined[i][1], {}) if i in self.defined else {i})
            self.solvers[(i, j)] = sorted((deps & drawn) - {i})

    def _unused_restated(self) -> None:
        """A question number the chain never uses stays as it is, unless the prose restates it and it can be
        computed from numbers that change (a total such as "the remaining 24 liters" = 10 + 15 - 1): keeping it
        while its parts change would make the question inconsistent."""
        unused = {v.value for v in self.vars if v.frozen == "not used by the chain"}
        if not unused:
            return
        inside = [st.span for st in parse_chain(self.solution)]
        fin = self.solution.find("####")
        restated = {tok.value for tok in _tokens(self.solution[: fin if fin >= 0 else None])
                    if tok.value in unused and not tok.context and not any(s <= tok.start < e for s, e in inside)}
        live = [v.value for v in self.vars if not v.frozen]
        others = sorted({t.value for t in self.qtoks})
        for u in sorted(restated):
            if (u >= 10 or u.denominator != 1) and _combines(u, live, [x for x in others if x != u]):
                raise NotRewritable(f"input used outside the chain: {_show(u)} is stated in the question and the "
                                    "prose, and follows from numbers that change")

    def _unused_results(self) -> None:
        """A result no later step uses was probably used in the head: "spent $9.25" and then ".75 / .25" where
        .75 = 10 - 9.25 happens to be the price of an apple. A later number that such a result and one other
        number give is not trusted as an input: it and everything the result comes from are kept."""
        steps = self.steps
        used = {r[1] for st in steps for r in st.roles if r[0] == "step"}
        unused = [j for j in range(len(steps)) if j not in used and j != self.final_step]
        if not unused:
            return
        pool = {t.value for t in self.qtoks} | self.qconst | GENERIC_CONSTANTS
        for u in unused:
            uv = steps[u].stated
            near = pool | {steps[m].stated for m in range(u)}
            for k in range(u + 1, len(steps)):
                for x, r in zip(steps[k].expr.literals, steps[k].roles):
                    if r[0] != "var" or self.vars[r[1]].frozen:
                        continue
                    if any(x in (a - uv, uv - a, a + uv) for a in near if a not in (x, uv)):
                        keep = {self.vars[r[1]].value} | {self.vars[n].value for n in self._deps(u, {})
                                                          if not self.vars[n].frozen}
                        raise _Refreeze(f"unused result: step {u + 1} ({_show(uv)}) is used outside the annotations, "
                                        f"maybe as {_show(x)} in step {k + 1}", keep)

    def _identity(self, i: int, kind: str, j: int) -> bool:
        """Whether input i (derived by `kind`) equals the result of step j whatever values are drawn."""
        rng = random.Random(0)
        live = [n for n, v in enumerate(self.vars) if not v.frozen and n not in self.defined]
        for _ in range(3):
            drawn = {n: Fraction(rng.randint(2, 10**6), rng.choice((1, 1, 10, 100))) for n in live}
            try:
                values, results = _recompute(self, drawn, check=False)
            except (_Failure, ValueError, ZeroDivisionError):
                return False
            if _derive(values[i], kind) != results[j]:
                return False
        return True

    def _deps(self, j: int, memo: dict[int, set[int]]) -> set[int]:
        """Inputs that step j depends on, through earlier steps and inputs computed from steps."""
        if j in memo:
            return memo[j]
        memo[j] = out = set()
        for r in self.steps[j].roles:
            if r[0] == "var":
                out.add(r[1])
                if r[1] in self.defined:
                    out |= self._deps(self.defined[r[1]][1], memo)
            elif r[0] == "step":
                out |= self._deps(r[1], memo)
        return out

    def _prose_roles(self) -> None:
        """Roles of the numbers in the solution's prose: one role, or several that must keep equal values."""
        sol = self.solution
        covered: set[int] = set()
        for st in self.steps:
            covered.update(s for s, _ in st.lit_spans)
            if st.synthetic and st.result_span:
                covered.add(st.result_span[0])
        for st in parse_chain(sol):
            covered.update(range(*st.span))
        if self.final_span:
            covered.update(range(self.final_span[0], len(sol)))
        echo = {st.echo[0]: j for j, st in enumerate(self.steps) if st.echo}
        toks = [t for t in _tokens(sol) if t.start not in covered]
        roles: dict[int, tuple[Role, ...]] = {}
        for n, t in enumerate(toks):
            if t.start in echo:
                roles[n] = (("step", echo[t.start]),)
        # the stretch of a line before a step restates its expression and often announces its result
        prev_end = 0
        for k, st in enumerate(self.steps):
            lo = max(prev_end, sol.rfind("\n", 0, st.expr_span[0]) + 1)
            prev_end = st.end
            stretch = [n for n, t in enumerate(toks) if lo <= t.start and t.end <= st.expr_span[0] and n not in roles]
            li, ti = len(st.roles) - 1, len(stretch) - 1
            while li >= 0 and ti >= 0:
                n = stretch[ti]
                if toks[n].value == st.expr.literals[li]:
                    roles[n] = (st.roles[li],)
                    li -= 1
                ti -= 1
            for n in stretch:
                if n in roles:
                    continue
                x = toks[n].value
                local = [r for lit, r in zip(st.expr.literals, st.roles) if lit == x]
                if x == st.stated:
                    # announced result ("He makes $10.5 ... because 7 x 1.5 = <<...>>"), unless the number
                    # restates an operand ("she puts $1200 away so that leaves 2400-1200 = <<...>>")
                    between = sol[toks[n].end:st.expr_span[0]]
                    if not local or re.search(r"\b(?:because|since|as)\b", between):
                        local = [("step", k)]
                if local:
                    roles[n] = tuple(dict.fromkeys(local))
        for n, t in enumerate(toks):
            r = roles.get(n) or self._prose_role(t)
            if r and any(x[0] != "const" for x in r):
                self.prose.append((t, r))

    def _prose_role(self, tok: _Tok) -> tuple[Role, ...]:
        x = tok.value
        ins, _ = self._candidates(x, len(self.steps))
        ins = [r for r in ins if not self.vars[r[1]].frozen] if not tok.context else []
        direct = [r for r in ins if r[2] == ""]
        ins = direct or ins
        steps = [j for j, st in enumerate(self.steps) if st.stated == x]
        before = [j for j in steps if self.steps[j].expr_span[0] < tok.start]
        if before and ins and all((r[1], before[-1]) in self.dropped for r in ins):
            return (("step", before[-1]),)
        out: list[Role] = list(ins)
        if before:
            out.append(("step", before[-1]))
        elif steps and not ins:
            out.append(("step", steps[0]))
        return tuple(out)


def _combines(u: Fraction, live: list[Fraction], others: list[Fraction]) -> bool:
    """Whether u is a total of changing numbers a, b: a + b, a * b or a + b ± c for a question number c."""
    for a in live:
        for b in live:
            if b == a or u in (a, b):
                continue
            if u in (a + b, a * b):
                return True
            for c in others:
                if c not in (a, b) and u in (a + b + c, a + b - c):
                    return True
    return False


def _show(x: Fraction) -> str:
    return _format(x) or str(x)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


MAX_ITEM_CHARS = 4000
"""Longest question, and longest solution, the numeric rewriter reads (GSM8K's longest are under 1,300): its
pattern matching grows faster than linearly on long runs of terms, so a longer text is not rewritable."""
_LONG_DIGITS = re.compile(r"(?<!\d)\d{%d,}" % (MAX_DIGITS + 1))


def _check_size(sample: Sample) -> None:
    """NotRewritable when the item is outside the bounds the rewriter's analysis is made for."""
    for part, text in (("question", sample.question), ("solution", sample.solution or "")):
        m = _LONG_DIGITS.search(text)
        if m:
            raise NotRewritable(f"number too large: {len(m.group())} digits in the {part} (limit {MAX_DIGITS})")
        if len(text) > MAX_ITEM_CHARS:
            raise NotRewritable(f"item too long: the {part} has {len(text)} characters (limit {MAX_ITEM_CHARS})")


# ---------------------------------------------------------------------------------------------------------------------
# drawing values


def _draw(var: _Var, rng: random.Random, mode: int) -> Fraction:
    """A new value for an input: same kind (integer, cents, percent below 100, number word) and order of
    magnitude. `mode` varies the roundness kept: 0 keeps the trailing zeros, 1 drops one, 2 keeps the small
    divisors (2, 3, 4, 5, 6) of the significant digits, which keeps more divisions exact."""
    v = var.value
    if var.word:
        lo, hi = max(2, int(v) // 2), min(99, max(6, int(2 * v)))
        step = math.gcd(int(v), rng.choice((60, 12, 10))) if mode == 2 and v.denominator == 1 else 1
        ks = range(-(-lo // step) * step, hi + 1, step)
        return Fraction(rng.choice(ks if len(ks) > 1 else range(lo, hi + 1)))
    if _is_year(var):
        return v + rng.choice([d for d in range(-30, 31) if d])
    d = var.decimals
    m = int(v * 10**d)
    t = 0
    while m % 10**(t + 1) == 0:
        t += 1
    if mode == 1 and t:
        t -= 1
    k = m // 10**t
    lo, hi = max(1, k // 2), max(9, 2 * k)
    if v >= 2:
        lo = max(lo, -(-2 * 10**d // 10**t))  # never 1 or less: "1 eggs", a factor that changes nothing
    if var.percent and v < 100:
        hi = min(hi, (100 * 10**d - 1) // 10**t)
        while hi < lo + 1 and t:
            t -= 1
            k, lo, hi = k * 10, lo * 10, min(hi * 10 + 9, (100 * 10**d - 1) // 10**t)
    step = math.gcd(k, rng.choice((60, 12, 10))) if mode == 2 else 1
    lo_k, hi_k = -(-lo // step), hi // step
    if hi_k - lo_k < 1:
        lo_k, hi_k, step = lo, hi, 1
    x = k
    for _ in range(20):
        x = rng.randint(lo_k, hi_k) * step
        if not (d and (x * 10**t) % 10**d == 0):
            break  # a decimal number stays a decimal number
    return Fraction(x * 10**t, 10**d)


def _is_year(var: _Var) -> bool:
    v = var.value
    return v.denominator == 1 and 1900 <= v <= 2100 and not var.money and not var.toks[0].style.commas


_TILT = 0.3
"""How far `_draw_near`'s window leans down, in octaves: new values are drawn log-uniformly between
old * 2**(-1 - _TILT) and old * 2**(1 - _TILT). Numbers at the bottom of their digit range (2, 10, 100) can only
grow, and the chain's checks reject more moves down than up (a new value may not repeat another input's, and
small numbers crowd), so a window centred on the old value makes a set's numbers drift up. The tilt is the one
under which rewrites of GSM8K *train* do not drift (chosen without looking at test; see
`benchmarks/bench_rewrite_difficulty.py --calibrate`)."""


@functools.lru_cache(maxsize=65536)
def _near_range(v: Fraction, d: int, percent: bool, drop_zero: bool) -> tuple[int, int, int, int, int]:
    """(t, k, lo, hi, places) for `_draw_near`: the new value is x * 10**t / 10**d for an integer x in lo..hi,
    other than k (the old value's digits), with `places` decimal places."""
    m = int(v * 10**d)
    t = 0
    while m and m % 10**(t + 1) == 0:
        t += 1
    if drop_zero and t:
        t -= 1
    k = m // 10**t
    n = len(str(k))
    lo, hi = 10 ** (n - 1), 10**n - 1
    if v >= 2:
        lo = max(lo, -(-2 * 10**d // 10**t))  # never 1 or less: "1 eggs", a factor that changes nothing
    if percent and v < 100:
        hi = min(hi, (100 * 10**d - 1) // 10**t)
    return t, k, lo, hi, _places(k, t, d)


def _places(x: int, t: int, d: int) -> int:
    """Decimal places of x * 10**t / 10**d."""
    y, p = x * 10**t, d
    while p and y % 10 == 0:
        y, p = y // 10, p - 1
    return p


def _draw_near(var: _Var, rng: random.Random, mode: int, spread: bool = False) -> Fraction:
    """A new value for an input with the digit count and decimal places of the old one, log-uniform within
    about a factor 2 of it (leaning down by `_TILT` so that a set's magnitudes do not drift up), anywhere in the
    digit range (log-uniform) with `spread` or when that window holds no other value. `mode` 1 drops one trailing
    zero of the old value; 0 and 2 keep them (keeping small divisors too, as `_draw` does in mode 2, would let a
    value only grow)."""
    v = var.value
    if _is_year(var):
        return v + rng.choice([d for d in range(-30, 31) if d])
    d = var.decimals
    t, k, lo, hi, places = _near_range(v, d, var.percent, mode == 1)

    def value(x: int) -> Fraction | None:
        ok = x != k and lo <= x <= hi and _places(x, t, d) == places
        return Fraction(x * 10**t, 10**d) if ok else None

    for _ in range(0 if spread else 32):
        new = value(round(k * 2 ** rng.uniform(-1 - _TILT, 1 - _TILT)))
        if new is not None:
            return new
    for _ in range(32):
        new = value(round(math.exp(rng.uniform(math.log(lo - 0.5), math.log(hi + 0.5)))))
        if new is not None:
            return new
    return v  # no other value of this shape: the search rejects it as unchanged


@dataclass(frozen=True, slots=True)
class _Rules:
    """What one search for values holds: the difficulty constraints `held` (names of
    `itd.rewriters.difficulty.CONSTRAINTS`), and with `near` new inputs drawn by `_draw_near` (digit count
    kept, near the old value, no drift up) rather than by `_draw` (same order of magnitude, up to twice)."""

    held: frozenset[str]
    near: bool
    share: float = 1.0  # of `max_tries`, the draws this search may make
    spread: float = 0.0  # the chance that `_draw_near` draws from the whole digit range
    best_of: int = 0  # keep searching until this many values are found and take the one breaking the fewest

    def draw(self, var: _Var, rng: random.Random, mode: int) -> Fraction:
        if not self.near:
            return _draw(var, rng, mode)
        return _draw_near(var, rng, mode, bool(self.spread) and rng.random() < self.spread)


_WIDE = _Rules(frozenset(), False)
_LEVELS: tuple[_Rules, ...] = (
    _Rules(frozenset(CONSTRAINTS), True, 0.25),
    *(_Rules(frozenset(CONSTRAINTS[:n]), True, 0.125) for n in range(len(CONSTRAINTS) - 1, 0, -1)),
    _Rules(frozenset(), True, 0.25, 0.5, best_of=8),
    _WIDE,
)
"""The searches tried in turn: every constraint, inputs drawn near the old values (a quarter of `max_tries`);
then giving the constraints up one at a time from the last of `CONSTRAINTS` (carry count, decimal places, carry
presence, exact divisions; an eighth of the draws each, and only where an earlier search was stopped by one of
the constraints given up); then none held, half the inputs drawn anywhere in their digit range, the best of 8
values kept (the fewest steps breaking each constraint, in the order of `CONSTRAINTS`; a quarter of the draws);
last the wide draw of `keep_difficulty=False` (all of `max_tries`)."""


def _original_ops(plan: _Plan) -> list[tuple[list, Fraction]]:
    """The operations and exact result of every original step (computed once per plan)."""
    old = getattr(plan, "original_ops", None)
    if old is None:
        old = [(st.expr.operations(), st.value(list(st.expr.literals))) for st in plan.steps]
        plan.original_ops = old  # type: ignore[attr-defined]
    return old


def _step_broken(plan: _Plan, k: int, values: dict[int, Fraction], results: list[Fraction | None],
                 x: Fraction) -> set[str]:
    """The difficulty constraints that step k breaks with the new values, given its new result `x`."""
    old = _original_ops(plan)
    st = plan.steps[k]
    lits = [_new_value(r, values, results) for r in st.roles]  # type: ignore[arg-type]
    try:
        ops = st.expr.operations(lits)
    except ValueError:
        return set(CONSTRAINTS)
    return broken(old[k][0], ops, old[k][1], x)


def _input_broken(var: _Var, x: Fraction) -> set[str]:
    """The shape constraints an input computed from a tied result breaks."""
    out = set()
    if int_digits(x) != int_digits(var.value):
        out.add("digits")
    if _decimal_places(x) != _decimal_places(var.value):
        out.add("decimals")
    return out


def _drift(plan: _Plan, values: dict[int, Fraction]) -> float:
    """How far the new question numbers moved on the whole: the sum of log10(new / old)."""
    return sum(math.log10(abs(x / plan.vars[i].value)) for i, x in values.items() if x and plan.vars[i].value)


def _broken_count(plan: _Plan, values: dict[int, Fraction], results: list[Fraction]) -> tuple[int, ...]:
    """For each constraint of `CONSTRAINTS`, the number of steps (and tied inputs) that break it."""
    counts = dict.fromkeys(CONSTRAINTS, 0)
    for k, x in enumerate(results):
        for c in _step_broken(plan, k, values, results, x):
            counts[c] += 1
    for i in plan.defined:
        for c in _input_broken(plan.vars[i], values[i]):
            counts[c] += 1
    return tuple(counts.values())


def _difficulty_broken(plan: _Plan, values: dict[int, Fraction], results: list[Fraction]) -> set[str]:
    """The difficulty constraints the new values break anywhere in the chain."""
    out: set[str] = set()
    for k, x in enumerate(results):
        out |= _step_broken(plan, k, values, results, x)  # type: ignore[arg-type]
    for i in plan.defined:
        out |= _input_broken(plan.vars[i], values[i])
    return out


class _Failure(Exception):
    """This item (or this draw of values) cannot be rewritten; the message is the reason."""


class _Refreeze(NotRewritable):
    """An ambiguity that keeping `values` unchanged resolves: every reading then gives the same number."""

    def __init__(self, reason: str, values: set[Fraction]):
        super().__init__(reason)
        self.values = values


def _inverse(x: Fraction, kind: str) -> Fraction:
    if kind == "":
        return x
    if kind == "pct":
        return x * 100
    if kind == "compl":
        return (1 - x) * 100
    if kind == "plus":
        return (x - 1) * 100
    if kind == "rest":
        return 100 - x
    if kind == "half":
        return x - Fraction(1, 2)
    return x / int(kind[6:])


def _valid_input(var: _Var, x: Fraction) -> bool:
    """Whether `x` can replace the input `var` (an input computed from a tied result)."""
    v = var.value
    if x <= 0 or x == v:
        return False
    if v.denominator == 1 and v >= 2 and (x.denominator != 1 or x < 2):
        return False
    dp = _decimal_places(x)
    if dp is None or dp > max(var.decimals, 2 if var.money else 0):
        return False
    if var.word and not 2 <= x <= 99:
        return False
    if var.percent and v < 100 and x >= 100:
        return False
    return x <= max(20 * v, 100)


def _evaluate_step(st, var_value, step_value):
    """A step's value from its literals' roles: a question variable (through its derivation), an earlier step's
    result, or a constant."""
    lits = []
    for r in st.roles:
        if r[0] == "var":
            lits.append(_derive(var_value(r[1]), r[2]))
        elif r[0] == "step":
            lits.append(step_value(r[1]))
        else:
            lits.append(r[1])
    try:
        return st.value(lits)
    except ExpressionError as exc:
        raise _Failure(str(exc)) from None


def _check_result(k: int, x: Fraction, old: Fraction) -> None:
    """_Failure(category) when the new result of step k is not of the kind the original had."""
    if old.denominator == 1 and x.denominator != 1:
        raise _Failure(f"non-integer intermediate: step {k + 1}")
    if (x > 0) != (old > 0) or (x < 0) != (old < 0):
        raise _Failure(f"sign change: step {k + 1}")
    if old.denominator != 1:
        dp = _decimal_places(x)
        if dp is None or dp > max(2, _decimal_places(old) or 0):
            raise _Failure(f"non-integer intermediate: step {k + 1} is not a short decimal")
    if abs(x) > max(10 * abs(old), 20) or (abs(old) >= 20 and abs(x) < abs(old) / 10):
        raise _Failure(f"implausible size: step {k + 1}")


def _recompute(plan: _Plan, drawn: dict[int, Fraction], check: bool = True,
               ties: bool = True) -> tuple[dict[int, Fraction], list[Fraction]]:
    """New inputs (drawn ones plus those tied to results) and new stated results of every step;
    _Failure(category) when a result changes kind (unless `check` is false)."""
    values = dict(drawn)
    results: list[Fraction | None] = [None] * len(plan.steps)

    def var_value(i: int) -> Fraction:
        if i not in values:
            kind, j = plan.defined[i]
            x = _inverse(step_value(j), kind)
            if check and not _valid_input(plan.vars[i], x):
                raise _Failure(f"tied input out of range: input {_show(plan.vars[i].value)}")
            values[i] = x
        return values[i]

    def step_value(k: int) -> Fraction:
        done = results[k]
        if done is not None:
            return done
        st = plan.steps[k]
        x = _evaluate_step(st, var_value, step_value)
        if check:
            _check_result(k, x, st.stated)
        results[k] = x
        return x

    for k in range(len(plan.steps)):
        step_value(k)
    for i in plan.defined:
        var_value(i)
    for i, kind, j in plan.tie_checks if ties else ():
        if _derive(values[i], kind) != results[j]:
            raise _Failure("tie broken")
    return values, results  # type: ignore[return-value]


def _new_value(role: Role, values: dict[int, Fraction], results: list[Fraction]) -> Fraction:
    if role[0] == "var":
        return _derive(values[role[1]], role[2])
    if role[0] == "step":
        return results[role[1]]
    return role[1]


def _prose_agrees(plan: _Plan, values: dict[int, Fraction], results: list[Fraction]) -> bool:
    """A prose number with several readings is only rewritten when they all give the same new value."""
    for _, roles in plan.prose:
        if len(roles) > 1 and len({_new_value(r, values, results) for r in roles}) > 1:
            return False
    return True


def _order_ok(plan: _Plan, new: list[Fraction]) -> bool:
    """Whether the results keep their order, for items whose solution compares results."""
    if not plan.compares:
        return True
    old = [st.stated for st in plan.steps]
    n = len(old)
    for i in range(n):
        for j in range(i + 1, n):
            if old[i] != old[j] and (old[i] < old[j]) != (new[i] < new[j]):
                return False
    return True


class _Budget(Exception):
    """The search for values ran out of draws."""


class _Search:
    """Backtracking search for new input values: steps are computed in dependency order, each input is drawn
    when the first step that needs it is computed, and a step whose result changes kind is retried with new
    draws for its own inputs before going back to earlier ones. `budget` bounds the draws."""

    PER_STEP = 6

    def __init__(self, plan: _Plan, rng: random.Random, budget: int, seen: set,
                 avoid: dict[int, set[Fraction]] | None = None, rules: _Rules = _WIDE):
        self.plan, self.rng, self.budget, self.seen, self.rules = plan, rng, budget, seen, rules
        self.avoid = avoid or {}  # values each input took in earlier attempts
        self.values: dict[int, Fraction] = {}
        self.results: list[Fraction | None] = [None] * len(plan.steps)
        self.draws = 0
        self.reasons: dict[str, int] = {}
        self.old_final = plan.steps[plan.final_step].stated
        self.found: dict[tuple, tuple[tuple[int, ...], dict[int, Fraction], list[Fraction]]] = {}  # best_of

    def fail(self, why: str) -> None:
        cat = why.split(":")[0]
        self.reasons[cat] = self.reasons.get(cat, 0) + 1

    def run(self) -> tuple[dict[int, Fraction], list[Fraction]] | None:
        try:
            while True:
                before = self.draws
                if self._dfs(0):
                    return dict(self.values), list(self.results)  # type: ignore[arg-type]
                if self.draws == before:
                    break  # nothing is drawn: no other values to try
        except _Budget:
            pass
        if self.found:
            _, values, results = min(self.found.values(), key=lambda f: f[0])
            return values, results
        return None

    def _fresh(self, i: int, x: Fraction) -> bool:
        """A new value differs from the input's own old value (and earlier attempts' values when asked) and from
        the other inputs' new values."""
        return (x != self.plan.vars[i].value and x not in self.avoid.get(i, ())
                and all(x != y for j, y in self.values.items() if j != i))

    def _dfs(self, p: int) -> bool:
        plan = self.plan
        if p == len(plan.order):
            return self._finish()
        k = plan.order[p]
        new = plan.need[p]
        for _ in range(self.PER_STEP if new else 1):
            if new:
                self.draws += 1
                if self.draws > self.budget:
                    raise _Budget
                ok = True
                for i in new:
                    x = self.rules.draw(plan.vars[i], self.rng, self.rng.randrange(3))
                    if not self._fresh(i, x):
                        ok = False
                        break
                    self.values[i] = x
                if not ok:
                    self.fail("no distinct values")
                    for i in new:
                        self.values.pop(i, None)
                    continue
            added: list[int] = []
            try:
                self._step(k, added)
            except _Failure as exc:
                self.fail(str(exc))
            else:
                if self._dfs(p + 1):
                    return True
            self.results[k] = None
            for i in added:
                del self.values[i]
        for i in new:
            self.values.pop(i, None)
        return False

    def _step(self, k: int, added: list[int]) -> None:
        plan = self.plan
        st = plan.steps[k]
        x = _evaluate_step(st, self.values.__getitem__, self.results.__getitem__)
        _check_result(k, x, st.stated)
        if self.rules.held:
            if "digits" in self.rules.held and int_digits(x) != int_digits(_original_ops(plan)[k][1]):
                raise _Failure(f"digits: step {k + 1}")  # the quick check first: most draws fail it
            bad = _step_broken(plan, k, self.values, self.results, x) & self.rules.held
            if bad:
                raise _Failure(f"{next(c for c in CONSTRAINTS if c in bad)}: step {k + 1}")
        if k == plan.final_step and x == self.old_final:
            raise _Failure("same answer")
        if plan.compares:
            for m, y in enumerate(self.results):
                if y is not None:
                    o = plan.steps[m].stated
                    if o != st.stated and (o < st.stated) != (y < x):
                        raise _Failure("order change")
        self.results[k] = x
        for i in plan.defined_by.get(k, ()):
            kind = plan.defined[i][0]
            v = _inverse(x, kind)
            if not _valid_input(plan.vars[i], v) or not self._fresh(i, v) or (
                    _input_broken(plan.vars[i], v) & self.rules.held):
                for j in added:
                    del self.values[j]
                added.clear()
                self.results[k] = None
                raise _Failure(f"tied input out of range: input {_show(plan.vars[i].value)}")
            self.values[i] = v
            added.append(i)

    def _finish(self) -> bool:
        plan = self.plan
        for i in plan.unreached:
            self.values[i] = self.rules.draw(plan.vars[i], self.rng, 0)
        values, results = self.values, self.results
        ok = True
        if any(_derive(values[i], kind) != results[j] for i, kind, j in plan.tie_checks):
            repaired = self._repair()
            if repaired is None:
                self.fail("tie broken")
                ok = False
            else:
                values, results = repaired
        key = tuple(values[i] for i in sorted(values))
        if ok and (key in self.seen or any(x == plan.vars[i].value for i, x in values.items())
                   or len(set(values.values())) != len(values)):
            self.fail("no distinct values")
            ok = False
        if ok and not _prose_agrees(plan, values, results):  # type: ignore[arg-type]
            self.fail("ambiguous prose number")
            ok = False
        if ok and self.rules.best_of:
            score = (*_broken_count(plan, values, results), abs(_drift(plan, values)))
            self.found.setdefault(key, (score, dict(values), list(results)))
            ok = len(self.found) >= self.rules.best_of
            if ok:
                _, values, results = min(self.found.values(), key=lambda f: f[0])
        if not ok:
            for i in plan.unreached:
                del self.values[i]
            return False
        self.values, self.results = values, results  # type: ignore[assignment]
        return True

    def _repair(self) -> tuple[dict[int, Fraction], list[Fraction]] | None:
        """Solve for one input per broken tie (the results are linear in it) so that the tied input and
        result agree again; the whole chain is then recomputed and checked."""
        plan = self.plan
        drawn = {n: self.values[n] for n in plan.drawn}
        for i, kind, j in plan.tie_checks:
            for m in plan.solvers.get((i, j), ()):

                def gap(t: Fraction) -> Fraction:
                    vals, res = _recompute(plan, {**drawn, m: t}, check=False, ties=False)
                    return res[j] - _derive(vals[i], kind)

                try:
                    g1, g2, g3 = gap(Fraction(1)), gap(Fraction(2)), gap(Fraction(3))
                    if g2 == g1 or g3 - g2 != g2 - g1:
                        continue  # not linear in this input
                    t = 1 - g1 / (g2 - g1)
                    if not _valid_input(plan.vars[m], t) or gap(t) != 0:
                        continue
                except (_Failure, ValueError, ZeroDivisionError):
                    continue
                drawn[m] = t
                break
        try:
            values, results = _recompute(plan, drawn)
        except _Failure:
            return None
        for k, x in enumerate(results):
            if k == plan.final_step and x == self.old_final:
                return None
        if not _order_ok(plan, results):
            return None
        if self.rules.held and _difficulty_broken(plan, values, results) & self.rules.held:
            return None
        return values, results


# ---------------------------------------------------------------------------------------------------------------------
# rendering


def _article_edit(text: str, pos: int, new: str) -> tuple[int, int, str] | None:
    """When `a`/`an` directly precedes the number at `pos`, the edit that makes it agree with `new`."""
    base = max(0, pos - 8)
    m = re.search(r"\b([Aa]n?)\s+\$?$", text[base:pos])
    if not m:
        return None
    w = new.lower()
    if w[:1].isdigit():
        lead = w.split(".")[0].split(",")[0]
        vowel = w.startswith("8") or (len(lead) == 2 and lead in ("11", "18"))
    else:
        vowel = w.startswith(("eight", "eleven"))
    word = m.group(1)
    want = ("An" if word[0] == "A" else "an") if vowel else ("A" if word[0] == "A" else "a")
    return None if want == word else (base + m.start(1), base + m.end(1), want)


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    edits = sorted(set(edits))
    for (s0, e0, _), (s1, _, _) in zip(edits, edits[1:]):
        if s1 < e0:
            raise NotRewritable("internal: overlapping edits")
    parts, last = [], 0
    for s, e, new in edits:
        parts.append(text[last:s])
        parts.append(new)
        last = e
    parts.append(text[last:])
    return "".join(parts)


def _token_edits(text: str, start: int, end: int, new: str) -> list[tuple[int, int, str]]:
    edits = [(start, end, new)]
    art = _article_edit(text, start, new)
    if art:
        edits.append(art)
    return edits


# ---------------------------------------------------------------------------------------------------------------------
# the rewriter


@dataclass(frozen=True)
class NumericConfig:
    """The `numeric` rewriter's settings (see `NumericRewriter`)."""

    seed: int = 0
    max_tries: int = 2000
    partial: bool = True
    keep_difficulty: bool = True

    def __post_init__(self) -> None:
        if not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not is_int(self.max_tries) or not 1 <= self.max_tries <= 100_000:
            raise ValueError(f"max_tries must be an integer in 1..100000, got {self.max_tries!r}")
        for key in ("partial", "keep_difficulty"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")


@REWRITERS.register("numeric")
class NumericRewriter(Rewriter):
    """New numbers for a GSM8K item, the worked solution recomputed exactly (see the module docstring).

    `seed` fixes the values drawn (with the item id and the attempt); `max_tries` bounds the draws per attempt
    before the item is given up as not rewritable. With `partial` (the default) a question number whose reading is
    ambiguous keeps its value and the others change; `info["kept"]` lists the kept ones with the reason. With
    `partial=False` such an item is not rewritable: every number the chain uses changes.

    With `keep_difficulty` (the default) the new values keep what makes the item hard (see
    `itd.rewriters.difficulty`): the digit count of every operand and result, exact divisions, carries and
    borrows, decimal places, and new values near the old ones that do not drift up. Where no values hold
    them all, the constraints are given up one at a time in a stated order (`_LEVELS`), the last resort being
    the wide draw that `keep_difficulty=False` uses alone.

    `Candidate.info`: `values` (old -> new, as written), `tries` (draws of the search), `kept`, `annotated`
    (prose equations that got an annotation), `difficulty`: `held` (the constraints the rewrite keeps),
    `relaxed` (those its search was allowed to give up) and `draw` ("near" or "wide").
    """

    name = "numeric"
    kind = "values"
    changes_difficulty = False

    Config = NumericConfig

    def __init__(self, seed: int = 0, max_tries: int = 2000, partial: bool = True, keep_difficulty: bool = True):
        NumericConfig(seed, max_tries, partial, keep_difficulty)  # validates
        self.keep_difficulty = keep_difficulty
        self.seed = seed
        self.max_tries = max_tries
        self.partial = partial

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "seed": self.seed, "max_tries": self.max_tries, "partial": self.partial,
                "keep_difficulty": self.keep_difficulty}

    def plan(self, sample: Sample) -> _Plan:
        """The analysis of `sample` (inputs, steps, roles); NotRewritable when it cannot be rewritten. With
        `partial`, question numbers whose reading is ambiguous are kept and the analysis is repeated."""
        keep: dict[Fraction, str] = {}
        while True:
            try:
                plan = _Plan(sample, keep)
            except _Refreeze as exc:
                fresh = exc.values - set(keep)
                if not self.partial or not fresh:
                    raise NotRewritable(exc.reason) from None
                keep.update({v: exc.reason for v in fresh})
                continue
            if not self.partial:
                kept = [v for v in plan.vars if v.used and v.frozen and v.frozen != "one, zero or 100%"]
                if kept:
                    raise NotRewritable(f"ambiguous input: {_show(kept[0].value)} must keep its value "
                                        f"({kept[0].frozen})")
            return plan

    def _rng(self, sample: Sample) -> random.Random:
        digest = hashlib.sha256(f"itd-numeric\0{self.seed}\0{sample.id}".encode()).digest()
        return random.Random(int.from_bytes(digest[:16], "big"))

    def propose(self, sample: Sample, attempt: int = 0) -> Candidate:
        if sample.is_mcq or not sample.solution or "####" not in sample.solution:
            raise NotRewritable("not a worked math item")
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        _check_size(sample)
        try:
            plan = self.plan(sample)
        except ExpressionError as exc:  # a number of the text over the bounds (number_value)
            raise NotRewritable(str(exc)) from None
        rng = self._rng(sample)
        seen: set[tuple[Fraction, ...]] = set()
        used: dict[int, set[Fraction]] = {}
        for a in range(attempt + 1):
            values, results, tries, rules = self._search(plan, rng, seen, used)
            seen.add(tuple(values[i] for i in sorted(values)))
            for i, v in values.items():
                used.setdefault(i, set()).add(v)
        return self._render(plan, values, results, tries, rules)

    def _search(self, plan: _Plan, rng: random.Random, seen: set, used: dict[int, set[Fraction]]
                ) -> tuple[dict[int, Fraction], list[Fraction], int, _Rules]:
        """Values for one attempt and the rules they were searched under: the strictest rules of `_LEVELS`
        (only the wide draw without `keep_difficulty`) under which values are found. Under each, a retry first
        looks for values that all differ from the earlier attempts' (a rewrite rejected as too close to
        something is not proposed again with small changes; half the inputs drawn anywhere in their digit
        range), then for any values not proposed before."""
        found, search, draws = None, None, 0
        blocked: set[str] = set()  # constraints that stopped a search: giving up others cannot help
        for rules in _LEVELS if self.keep_difficulty else (_WIDE,):
            if rules.near and len(rules.held) < len(CONSTRAINTS) and not blocked - rules.held:
                continue
            for avoid in ((used, {}) if used else ({},)):
                budget = max(1, int(self.max_tries * rules.share) // (2 if avoid else 1))
                # values that all differ from earlier attempts' may lie outside a small number's near window
                wider = dataclasses.replace(rules, spread=max(rules.spread, 0.5)) if avoid and rules.near else rules
                search = _Search(plan, rng, budget, seen, avoid, wider)
                found = search.run()
                draws += search.draws
                blocked.update(r for r in search.reasons if r in CONSTRAINTS)
                if found is not None:
                    break
            if found is not None:
                break
        assert search is not None
        if found is None:
            reasons = search.reasons
            worst = max(reasons, key=lambda r: reasons[r]) if reasons else "no values"
            detail = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
            raise NotRewritable(f"{worst}: no values in {self.max_tries} draws ({detail})")
        values, results = found
        return values, results, draws, rules

    def _render(self, plan: _Plan, values: dict[int, Fraction], results: list[Fraction], tries: int,
                rules: _Rules) -> Candidate:
        q, sol = plan.question, plan.solution

        def new_of(role: Role) -> Fraction:
            return _new_value(role, values, results)

        def fmt(x: Fraction, style: _Style) -> str:
            s = _format(x, style)
            if s is None:
                s = _format(x, dataclasses.replace(style, word=False))
            if s is None:
                raise NotRewritable(f"unformattable number: {x}")
            return s

        prose_text = re.sub(r"<<[^<>]*>>", " ", sol)
        commas = any("," in t.text for t in plan.qtoks) or bool(re.search(r"\d,\d{3}(?!\d)", prose_text))

        def pfmt(x: Fraction, text: str, style: _Style) -> str:
            """Prose and question numbers: thousands commas where the item writes them elsewhere."""
            if commas and not style.word and len(text.split(".")[0]) < 4:
                style = dataclasses.replace(style, commas=True)
            return fmt(x, style)

        # question
        qedits: list[tuple[int, int, str]] = []
        for i, new in values.items():
            for tok in plan.vars[i].toks:
                qedits += _token_edits(q, tok.start, tok.end, pfmt(new, tok.text, tok.style))
        new_q = _apply(q, qedits)
        # solution
        sedits: list[tuple[int, int, str]] = []
        for k, st in enumerate(plan.steps):
            s0, e0 = st.expr_span
            sub = [(s - s0, e - s0, pfmt(new_of(role), sol[s:e], _style_of(sol[s:e])) if st.prose_expr
                    else fmt(new_of(role), _style_of(sol[s:e])))
                   for (s, e), role in zip(st.lit_spans, st.roles) if role[0] != "const"]
            new_expr = _apply(sol[s0:e0], sub)
            sedits.append((s0, e0, new_expr))
            res_style = _style_of(st.result_text)
            assert st.result_span is not None
            if st.synthetic:
                plain = fmt(results[k], dataclasses.replace(res_style, commas=False))
                shown = pfmt(results[k], st.result_text, res_style)
                lits = [fmt(new_of(r), _Style(decimals=_style_of(sol[a:b]).decimals)) if r[0] != "const"
                        else re.sub(r"[,\s\xa0]", "", sol[a:b]) for (a, b), r in zip(st.lit_spans, st.roles)]
                annot = st.parts[0] + "".join(x + st.parts[i + 1] for i, x in enumerate(lits))
                if st.factor != 1:
                    annot = f"({annot})/100"
                sedits.append((*st.result_span, f"<<{annot}={plain}>>{shown}"))
            else:
                sedits.append((*st.result_span, fmt(results[k], res_style)))
            if st.mirror:
                sedits.append((*st.mirror, fmt(results[k], _style_of(sol[st.mirror[0]:st.mirror[1]]))))
            if st.echo:
                s, e = st.echo
                sedits += _token_edits(sol, s, e, pfmt(results[k], sol[s:e], _style_of(sol[s:e])))
        for tok, roles in plan.prose:
            sedits += _token_edits(sol, tok.start, tok.end, pfmt(new_of(roles[0]), tok.text, tok.style))
        final = results[plan.final_step]
        if plan.final_span:
            sedits.append((*plan.final_span, fmt(final, plan.final_style)))
        new_sol = _apply(sol, sedits)
        answer = _format(final) or str(final)
        answer = answer.replace(",", "")
        self._verify(plan, values, new_q, new_sol, answer)
        cand = dataclasses.replace(plan.sample, question=new_q, solution=new_sol, answer=answer)
        info = {
            "values": {_show(plan.vars[i].value): _show(v) for i, v in values.items()},
            "tries": tries,
            "difficulty": {
                "held": [c for c in CONSTRAINTS if c not in _difficulty_broken(plan, values, results)],
                "relaxed": [c for c in CONSTRAINTS if c not in rules.held],
                "draw": "near" if rules.near else "wide",
            },
        }
        frozen = {_show(v.value): v.frozen for v in plan.vars
                  if v.frozen and v.frozen != "not used by the chain" and (v.used or v.value in plan.keep)}
        if frozen:
            info["kept"] = frozen
        annotated = sum(st.synthetic for st in plan.steps)
        if annotated:
            info["annotated"] = annotated
        return Candidate(cand, answer, info)

    def _verify(self, plan: _Plan, values: dict[int, Fraction], new_q: str, new_sol: str, answer: str) -> None:
        chk = check_chain(new_sol, answer)
        if not chk.ok:
            raise NotRewritable(f"verification failed: {chk.reason}")
        if len(parse_chain(new_sol)) != len(plan.steps):
            raise NotRewritable("verification failed: step count changed")
        # the question: same tokens, inputs carry their new values, everything else unchanged
        old_toks, new_toks = plan.qtoks, _tokens(new_q)
        if len(old_toks) != len(new_toks):
            raise NotRewritable("verification failed: the question's numbers could not be re-read")
        expect = {id(t): values[i] for i, v in enumerate(plan.vars) if i in values for t in v.toks}
        for o, n in zip(old_toks, new_toks):
            if id(o) in expect:
                if n.value != expect[id(o)] or n.value == o.value:
                    raise NotRewritable(f"verification failed: question number {o.text!r} became {n.text!r}")
            elif n.value != o.value:
                raise NotRewritable(f"verification failed: question number {o.text!r} changed to {n.text!r}")
