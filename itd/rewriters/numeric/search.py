"""Drawing new values for the numeric rewriter (step 4 of `itd.rewriters.numeric`): values near the old ones
that keep each operation's difficulty, the search over draws with the constraints given up one at a time
(`LEVELS`), and the text edits that write the new values in (step 5)."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from itd.rewriters.base import NotRewritable
from itd.rewriters.difficulty import CONSTRAINTS, broken, int_digits
from itd.rewriters.difficulty import decimal_places as _decimal_places
from itd.rewriters.numeric.plan import (
    Plan,
    Role,
    SearchFailure,
    Var,
    check_result,
    derive,
    evaluate_step,
    inverse_of,
    recompute,
    show,
    valid_input,
)


def _draw(var: Var, rng: random.Random, mode: int) -> Fraction:
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


def _is_year(var: Var) -> bool:
    v = var.value
    return v.denominator == 1 and 1900 <= v <= 2100 and not var.money and not var.toks[0].style.commas


TILT = 0.3
"""How far `_draw_near`'s window leans down, in octaves: new values are drawn log-uniformly between
old * 2**(-1 - TILT) and old * 2**(1 - TILT). Numbers at the bottom of their digit range (2, 10, 100) can only
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


def _draw_near(var: Var, rng: random.Random, mode: int, spread: bool = False) -> Fraction:
    """A new value for an input with the digit count and decimal places of the old one, log-uniform within
    about a factor 2 of it (leaning down by `TILT` so that a set's magnitudes do not drift up), anywhere in the
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
        new = value(round(k * 2 ** rng.uniform(-1 - TILT, 1 - TILT)))
        if new is not None:
            return new
    for _ in range(32):
        new = value(round(math.exp(rng.uniform(math.log(lo - 0.5), math.log(hi + 0.5)))))
        if new is not None:
            return new
    return v  # no other value of this shape: the search rejects it as unchanged


@dataclass(frozen=True, slots=True)
class Rules:
    """What one search for values holds: the difficulty constraints `held` (names of
    `itd.rewriters.difficulty.CONSTRAINTS`), and with `near` new inputs drawn by `_draw_near` (digit count
    kept, near the old value, no drift up) rather than by `_draw` (same order of magnitude, up to twice)."""

    held: frozenset[str]
    near: bool
    share: float = 1.0  # of `max_tries`, the draws this search may make
    spread: float = 0.0  # the chance that `_draw_near` draws from the whole digit range
    best_of: int = 0  # keep searching until this many values are found and take the one breaking the fewest

    def draw(self, var: Var, rng: random.Random, mode: int) -> Fraction:
        if not self.near:
            return _draw(var, rng, mode)
        return _draw_near(var, rng, mode, bool(self.spread) and rng.random() < self.spread)


WIDE = Rules(frozenset(), False)
LEVELS: tuple[Rules, ...] = (
    Rules(frozenset(CONSTRAINTS), True, 0.25),
    *(Rules(frozenset(CONSTRAINTS[:n]), True, 0.125) for n in range(len(CONSTRAINTS) - 1, 0, -1)),
    Rules(frozenset(), True, 0.25, 0.5, best_of=8),
    WIDE,
)
"""The searches tried in turn: every constraint, inputs drawn near the old values (a quarter of `max_tries`);
then giving the constraints up one at a time from the last of `CONSTRAINTS` (carry count, decimal places, carry
presence, exact divisions; an eighth of the draws each, and only where an earlier search was stopped by one of
the constraints given up); then none held, half the inputs drawn anywhere in their digit range, the best of 8
values kept (the fewest steps breaking each constraint, in the order of `CONSTRAINTS`; a quarter of the draws);
last the wide draw of `keep_difficulty=False` (all of `max_tries`)."""


def _original_ops(plan: Plan) -> list[tuple[list, Fraction]]:
    """The operations and exact result of every original step (computed once per plan)."""
    old = getattr(plan, "original_ops", None)
    if old is None:
        old = [(st.expr.operations(), st.value(list(st.expr.literals))) for st in plan.steps]
        plan.original_ops = old  # type: ignore[attr-defined]
    return old


def _step_broken(plan: Plan, k: int, values: dict[int, Fraction], results: list[Fraction | None],
                 x: Fraction) -> set[str]:
    """The difficulty constraints that step k breaks with the new values, given its new result `x`."""
    old = _original_ops(plan)
    st = plan.steps[k]
    lits = [new_value(r, values, results) for r in st.roles]  # type: ignore[arg-type]
    try:
        ops = st.expr.operations(lits)
    except ValueError:
        return set(CONSTRAINTS)
    return broken(old[k][0], ops, old[k][1], x)


def _input_broken(var: Var, x: Fraction) -> set[str]:
    """The shape constraints an input computed from a tied result breaks."""
    out = set()
    if int_digits(x) != int_digits(var.value):
        out.add("digits")
    if _decimal_places(x) != _decimal_places(var.value):
        out.add("decimals")
    return out


def _drift(plan: Plan, values: dict[int, Fraction]) -> float:
    """How far the new question numbers moved on the whole: the sum of log10(new / old)."""
    return sum(math.log10(abs(x / plan.vars[i].value)) for i, x in values.items() if x and plan.vars[i].value)


def _broken_count(plan: Plan, values: dict[int, Fraction], results: list[Fraction]) -> tuple[int, ...]:
    """For each constraint of `CONSTRAINTS`, the number of steps (and tied inputs) that break it."""
    counts = dict.fromkeys(CONSTRAINTS, 0)
    for k, x in enumerate(results):
        for c in _step_broken(plan, k, values, results, x):
            counts[c] += 1
    for i in plan.defined:
        for c in _input_broken(plan.vars[i], values[i]):
            counts[c] += 1
    return tuple(counts.values())


def difficulty_broken(plan: Plan, values: dict[int, Fraction], results: list[Fraction]) -> set[str]:
    """The difficulty constraints the new values break anywhere in the chain."""
    out: set[str] = set()
    for k, x in enumerate(results):
        out |= _step_broken(plan, k, values, results, x)  # type: ignore[arg-type]
    for i in plan.defined:
        out |= _input_broken(plan.vars[i], values[i])
    return out


def new_value(role: Role, values: dict[int, Fraction], results: list[Fraction]) -> Fraction:
    if role[0] == "var":
        return derive(values[role[1]], role[2])
    if role[0] == "step":
        return results[role[1]]
    return role[1]


def _prose_agrees(plan: Plan, values: dict[int, Fraction], results: list[Fraction]) -> bool:
    """A prose number with several readings is only rewritten when they all give the same new value."""
    for _, roles in plan.prose:
        if len(roles) > 1 and len({new_value(r, values, results) for r in roles}) > 1:
            return False
    return True


def _order_ok(plan: Plan, new: list[Fraction]) -> bool:
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


class Search:
    """Backtracking search for new input values: steps are computed in dependency order, each input is drawn
    when the first step that needs it is computed, and a step whose result changes kind is retried with new
    draws for its own inputs before going back to earlier ones. `budget` bounds the draws."""

    PER_STEP = 6

    def __init__(self, plan: Plan, rng: random.Random, budget: int, seen: set,
                 avoid: dict[int, set[Fraction]] | None = None, rules: Rules = WIDE):
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
        with contextlib.suppress(_Budget):  # out of draws: the best partial result found, if any
            while True:
                before = self.draws
                if self._dfs(0):
                    return dict(self.values), list(self.results)  # type: ignore[arg-type]
                if self.draws == before:
                    break  # nothing is drawn: no other values to try
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
            except SearchFailure as exc:
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
        x = evaluate_step(st, self.values.__getitem__, self.results.__getitem__)
        check_result(k, x, st.stated)
        if self.rules.held:
            if "digits" in self.rules.held and int_digits(x) != int_digits(_original_ops(plan)[k][1]):
                raise SearchFailure(f"digits: step {k + 1}")  # the quick check first: most draws fail it
            bad = _step_broken(plan, k, self.values, self.results, x) & self.rules.held
            if bad:
                raise SearchFailure(f"{next(c for c in CONSTRAINTS if c in bad)}: step {k + 1}")
        if k == plan.final_step and x == self.old_final:
            raise SearchFailure("same answer")
        if plan.compares:
            for m, y in enumerate(self.results):
                if y is not None:
                    o = plan.steps[m].stated
                    if o != st.stated and (o < st.stated) != (y < x):
                        raise SearchFailure("order change")
        self.results[k] = x
        for i in plan.defined_by.get(k, ()):
            kind = plan.defined[i][0]
            v = inverse_of(x, kind)
            if not valid_input(plan.vars[i], v) or not self._fresh(i, v) or (
                    _input_broken(plan.vars[i], v) & self.rules.held):
                for j in added:
                    del self.values[j]
                added.clear()
                self.results[k] = None
                raise SearchFailure(f"tied input out of range: input {show(plan.vars[i].value)}")
            self.values[i] = v
            added.append(i)

    def _finish(self) -> bool:
        plan = self.plan
        for i in plan.unreached:
            self.values[i] = self.rules.draw(plan.vars[i], self.rng, 0)
        values, results = self.values, self.results
        ok = True
        if any(derive(values[i], kind) != results[j] for i, kind, j in plan.tie_checks):
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
                    vals, res = recompute(plan, {**drawn, m: t}, check=False, ties=False)
                    return res[j] - derive(vals[i], kind)

                try:
                    g1, g2, g3 = gap(Fraction(1)), gap(Fraction(2)), gap(Fraction(3))
                    if g2 == g1 or g3 - g2 != g2 - g1:
                        continue  # not linear in this input
                    t = 1 - g1 / (g2 - g1)
                    if not valid_input(plan.vars[m], t) or gap(t) != 0:
                        continue
                except (SearchFailure, ValueError, ZeroDivisionError):
                    continue
                drawn[m] = t
                break
        try:
            values, results = recompute(plan, drawn)
        except SearchFailure:
            return None
        for k, x in enumerate(results):
            if k == plan.final_step and x == self.old_final:
                return None
        if not _order_ok(plan, results):
            return None
        if self.rules.held and difficulty_broken(plan, values, results) & self.rules.held:
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


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
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


def token_edits(text: str, start: int, end: int, new: str) -> list[tuple[int, int, str]]:
    edits = [(start, end, new)]
    art = _article_edit(text, start, new)
    if art:
        edits.append(art)
    return edits


