"""The analysis of one GSM8K item for the numeric rewriter (steps 1-3 of `itd.rewriters.numeric`): what every
number of the calculator chain is (an input of the question, a derived form, an earlier result, a constant),
the ambiguities and how they resolve, and the exact recomputation of the chain for new input values.

Over 600 lines because `Plan` is one analysis whose passes share its state; split, they would pass that state
back and forth."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from fractions import Fraction

from itd.core import Sample, gsm8k_final_answer
from itd.rewriters.base import NotRewritable
from itd.rewriters.chain import (
    MAX_DIGITS,
    Expression,
    ExpressionError,
    compile_expression,
    number_value,
    parse_chain,
    parse_number,
)
from itd.rewriters.difficulty import decimal_places as _decimal_places
from itd.rewriters.numeric.words import (
    ANNOTATION_RE,
    COMPARISON,
    CONST_WORD_RE,
    CONVERSION,
    CONVERSIONS,
    GENERIC_CONSTANTS,
    KNOWN_CONSTANTS,
    MULTIPLES,
    NUM_RE,
    ORDINALS,
    UNITS_TABLE,
    WORD_VALUE,
    NumberToken,
    Style,
    format_number,
    num_value,
    number_tokens,
    style_of,
    unit_key,
)


@dataclass(slots=True)
class Var:
    value: Fraction
    toks: list[NumberToken]
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


def derive(v: Fraction, kind: str) -> Fraction:
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


class Plan:
    """Everything about one item that does not depend on the values drawn."""

    def __init__(self, sample: Sample, keep: dict[Fraction, str] | None = None):
        self.sample = sample
        self.keep = keep or {}  # question numbers to keep, with the reason
        self.unit_consts: set[Fraction] = set()
        self.fractions: set[tuple[Fraction, Fraction]] = set()  # (numerator, denominator) stated in the question
        self.frac_parts: set[Fraction] = set()
        self.question = sample.question
        self.solution = sample.solution or ""
        self.qtoks = number_tokens(self.question)
        self.vars: list[Var] = []
        self.qconst: set[Fraction] = set()
        self.steps: list[_StepInfo] = []
        self.prose: list[tuple[NumberToken, tuple[Role, ...]]] = []
        self.final_step = -1
        self.final_span: tuple[int, int] | None = None
        self.final_style = Style()
        self.ties: list[tuple[int, str, int]] = []  # (input, derivation, step) that must stay equal
        self.defined: dict[int, tuple[str, int]] = {}  # input -> (derivation, step) it is computed from
        self.tie_checks: list[tuple[int, str, int]] = []
        self.dropped: set[tuple[int, int]] = set()  # (input, step) ties read as the step
        self._taken: set[int] = set()
        self._analyse()

    # ---- question ----------------------------------------------------------------------------------------------
    def _question_numbers(self) -> None:
        by_value: dict[Fraction, Var] = {}
        for tok in self.qtoks:
            if tok.context:
                if tok.context != "fraction":
                    self.qconst.add(tok.value)
                continue
            var = by_value.get(tok.value)
            if var is None:
                var = by_value[tok.value] = Var(tok.value, [])
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
            for f in UNITS_TABLE.get(unit_key(tok.unit), ()):
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
        for m in CONVERSION.finditer(self.solution):
            big, small = unit_key(m.group("big") or m.group("big2") or ""), m.group("small").lower()
            factor = Fraction(m.group("n"))
            if CONVERSIONS.get((small.rstrip("s"), big)) == factor or CONVERSIONS.get((small, big)) == factor:
                self.qconst.add(factor)
        # "a four-week month", "a 24-hour day": the number is the conversion, not an input
        for m in re.finditer(r"\b(\d+|[a-z]+)[- ]([a-z]+)[- ]([a-z]+)\b", self.question, re.I):
            n = WORD_VALUE.get(m.group(1).lower()) if not m.group(1).isdigit() else int(m.group(1))
            small, big = m.group(2).lower().rstrip("s"), unit_key(m.group(3))
            if n is not None and CONVERSIONS.get((small, big)) == n:
                self.qconst.add(Fraction(n))
        text = self.question.lower()
        for word, values in KNOWN_CONSTANTS.items():
            if re.search(word, text):
                self.qconst.update(Fraction(v) for v in values)
        for word in re.findall(r"[A-Za-z]+", self.question + " " + self.solution):
            for f in UNITS_TABLE.get(unit_key(word), ()):
                if f >= 10:
                    self.unit_consts.add(Fraction(f))
        for m in CONST_WORD_RE.finditer(self.question):
            n = ORDINALS.get(m.group(1).lower()) or MULTIPLES[m.group(1).lower()]
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
                d = ORDINALS.get(m.group(1).lower(), 1) if m else 1
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
            spans = [(e0 + m.start(), e0 + m.end()) for m in NUM_RE.finditer(st.expression)]
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
        nums = list(NUM_RE.finditer(text))
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
                stated = num_value(m.group("res"))
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
                    if derive(v, kind) == x:
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
                raise Refreeze(f"ambiguous input: {show(x)} can come from several question numbers",
                                {self.vars[r[1]].value for r in cands})
            self.ties.append((cands[0][1], cands[0][2], steps[0][1]))
            self.vars[cands[0][1]].used = True
            return steps[0]
        if steps:
            return steps[0]
        if direct:
            ins = direct
        if len({r[1] for r in ins}) > 1:
            raise Refreeze(f"ambiguous input: {show(x)} can come from several question numbers",
                            {self.vars[r[1]].value for r in ins})
        if ins:
            role = ins[0]
            var = self.vars[role[1]]
            if x in self.qconst and not var.frozen:
                var.frozen = f"{show(x)} is also a constant of the question"
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
                    raise Refreeze(f"ambiguous input: {show(x)} in step {k + 1} may be worked out from "
                                    f"{', '.join(show(v) for v in sorted(near))}", near)
            return ("const", x)
        # a number the question states in other units or as cents ("1.25 hours" used as 75 minutes)
        fb = [(i, kind) for i, var in enumerate(self.vars) if not var.frozen for kind in var.fallback
              if derive(var.value, kind) == x]
        if len({i for i, _ in fb}) == 1:
            self.vars[fb[0][0]].used = True
            return ("var", fb[0][0], fb[0][1])
        if x in self.unit_consts:
            return ("const", x)
        raise NotRewritable(f"unexplained number: {show(x)} in step {k + 1}")

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
            self.final_style = style_of(m.group(0))
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
                raise Refreeze(f"ambiguous input: {show(derive(self.vars[i].value, kind))} is both a number "
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
                raise Refreeze(f"ambiguous input: {show(derive(self.vars[i].value, kind))} is both stated "
                                f"in the question and computed from it in step {j + 1}",
                                {self.vars[n].value for n in self._deps(j, {})})
        self.tie_checks = [t for t in self.tie_checks if not self._identity(*t)]
        for i, (kind, j) in self.defined.items():
            if not any(not self.vars[n].frozen for n in self._deps(j, {})):
                raise Refreeze(f"ambiguous input: {show(derive(self.vars[i].value, kind))} is both stated in "
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
        self.compares = bool(COMPARISON.search(ANNOTATION_RE.sub(" ", self.solution))) or any(
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
        restated = {tok.value for tok in number_tokens(self.solution[: fin if fin >= 0 else None])
                    if tok.value in unused and not tok.context and not any(s <= tok.start < e for s, e in inside)}
        live = [v.value for v in self.vars if not v.frozen]
        others = sorted({t.value for t in self.qtoks})
        for u in sorted(restated):
            if (u >= 10 or u.denominator != 1) and _combines(u, live, [x for x in others if x != u]):
                raise NotRewritable(f"input used outside the chain: {show(u)} is stated in the question and the "
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
                        raise Refreeze(f"unused result: step {u + 1} ({show(uv)}) is used outside the annotations, "
                                        f"maybe as {show(x)} in step {k + 1}", keep)

    def _identity(self, i: int, kind: str, j: int) -> bool:
        """Whether input i (derived by `kind`) equals the result of step j whatever values are drawn."""
        rng = random.Random(0)
        live = [n for n, v in enumerate(self.vars) if not v.frozen and n not in self.defined]
        for _ in range(3):
            drawn = {n: Fraction(rng.randint(2, 10**6), rng.choice((1, 1, 10, 100))) for n in live}
            try:
                values, results = recompute(self, drawn, check=False)
            except (SearchFailure, ValueError, ZeroDivisionError):
                return False
            if derive(values[i], kind) != results[j]:
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
        toks = [t for t in number_tokens(sol) if t.start not in covered]
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

    def _prose_role(self, tok: NumberToken) -> tuple[Role, ...]:
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


def show(x: Fraction) -> str:
    return format_number(x) or str(x)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


MAX_ITEM_CHARS = 4000
"""Longest question, and longest solution, the numeric rewriter reads (GSM8K's longest are under 1,300): its
pattern matching grows faster than linearly on long runs of terms, so a longer text is not rewritable."""
_LONG_DIGITS = re.compile(r"(?<!\d)\d{%d,}" % (MAX_DIGITS + 1))


def check_size(sample: Sample) -> None:
    """NotRewritable when the item is outside the bounds the rewriter's analysis is made for."""
    for part, text in (("question", sample.question), ("solution", sample.solution or "")):
        m = _LONG_DIGITS.search(text)
        if m:
            raise NotRewritable(f"number too large: {len(m.group())} digits in the {part} (limit {MAX_DIGITS})")
        if len(text) > MAX_ITEM_CHARS:
            raise NotRewritable(f"item too long: the {part} has {len(text)} characters (limit {MAX_ITEM_CHARS})")



class SearchFailure(Exception):
    """This item (or this draw of values) cannot be rewritten; the message is the reason."""


class Refreeze(NotRewritable):
    """An ambiguity that keeping `values` unchanged resolves: every reading then gives the same number."""

    def __init__(self, reason: str, values: set[Fraction]):
        super().__init__(reason)
        self.values = values


def inverse_of(x: Fraction, kind: str) -> Fraction:
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


def valid_input(var: Var, x: Fraction) -> bool:
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


def evaluate_step(st, var_value, step_value):
    """A step's value from its literals' roles: a question variable (through its derivation), an earlier step's
    result, or a constant."""
    lits = []
    for r in st.roles:
        if r[0] == "var":
            lits.append(derive(var_value(r[1]), r[2]))
        elif r[0] == "step":
            lits.append(step_value(r[1]))
        else:
            lits.append(r[1])
    try:
        return st.value(lits)
    except ExpressionError as exc:
        raise SearchFailure(str(exc)) from None


def check_result(k: int, x: Fraction, old: Fraction) -> None:
    """SearchFailure(category) when the new result of step k is not of the kind the original had."""
    if old.denominator == 1 and x.denominator != 1:
        raise SearchFailure(f"non-integer intermediate: step {k + 1}")
    if (x > 0) != (old > 0) or (x < 0) != (old < 0):
        raise SearchFailure(f"sign change: step {k + 1}")
    if old.denominator != 1:
        dp = _decimal_places(x)
        if dp is None or dp > max(2, _decimal_places(old) or 0):
            raise SearchFailure(f"non-integer intermediate: step {k + 1} is not a short decimal")
    if abs(x) > max(10 * abs(old), 20) or (abs(old) >= 20 and abs(x) < abs(old) / 10):
        raise SearchFailure(f"implausible size: step {k + 1}")


def recompute(plan: Plan, drawn: dict[int, Fraction], check: bool = True,
               ties: bool = True) -> tuple[dict[int, Fraction], list[Fraction]]:
    """New inputs (drawn ones plus those tied to results) and new stated results of every step;
    SearchFailure(category) when a result changes kind (unless `check` is false)."""
    values = dict(drawn)
    results: list[Fraction | None] = [None] * len(plan.steps)

    def var_value(i: int) -> Fraction:
        if i not in values:
            kind, j = plan.defined[i]
            x = inverse_of(step_value(j), kind)
            if check and not valid_input(plan.vars[i], x):
                raise SearchFailure(f"tied input out of range: input {show(plan.vars[i].value)}")
            values[i] = x
        return values[i]

    def step_value(k: int) -> Fraction:
        done = results[k]
        if done is not None:
            return done
        st = plan.steps[k]
        x = evaluate_step(st, var_value, step_value)
        if check:
            check_result(k, x, st.stated)
        results[k] = x
        return x

    for k in range(len(plan.steps)):
        step_value(k)
    for i in plan.defined:
        var_value(i)
    for i, kind, j in plan.tie_checks if ties else ():
        if derive(values[i], kind) != results[j]:
            raise SearchFailure("tie broken")
    return values, results  # type: ignore[return-value]


