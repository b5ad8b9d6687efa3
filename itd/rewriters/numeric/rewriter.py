"""The `numeric` rewriter: its config and the `Rewriter` that runs the analysis, the search and the rendering
of `itd.rewriters.numeric` on one item and checks the result (step 6)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from itd.core import Sample
from itd.core.validate import is_int
from itd.rewriters.base import REWRITERS, Candidate, NotRewritable, Rewriter
from itd.rewriters.chain import ExpressionError, check_chain, parse_chain
from itd.rewriters.difficulty import CONSTRAINTS
from itd.rewriters.numeric.plan import Plan, Refreeze, Role, check_size, show
from itd.rewriters.numeric.search import (
    LEVELS,
    WIDE,
    Rules,
    Search,
    apply_edits,
    difficulty_broken,
    new_value,
    token_edits,
)
from itd.rewriters.numeric.words import Style, format_number, number_tokens, style_of


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
    them all, the constraints are given up one at a time in a stated order (`LEVELS`), the last resort being
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

    def plan(self, sample: Sample) -> Plan:
        """The analysis of `sample` (inputs, steps, roles); NotRewritable when it cannot be rewritten. With
        `partial`, question numbers whose reading is ambiguous are kept and the analysis is repeated."""
        keep: dict[Fraction, str] = {}
        while True:
            try:
                plan = Plan(sample, keep)
            except Refreeze as exc:
                fresh = exc.values - set(keep)
                if not self.partial or not fresh:
                    raise NotRewritable(exc.reason) from None
                keep.update({v: exc.reason for v in fresh})
                continue
            if not self.partial:
                kept = [v for v in plan.vars if v.used and v.frozen and v.frozen != "one, zero or 100%"]
                if kept:
                    raise NotRewritable(f"ambiguous input: {show(kept[0].value)} must keep its value "
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
        check_size(sample)
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

    def _search(self, plan: Plan, rng: random.Random, seen: set, used: dict[int, set[Fraction]]
                ) -> tuple[dict[int, Fraction], list[Fraction], int, Rules]:
        """Values for one attempt and the rules they were searched under: the strictest rules of `LEVELS`
        (only the wide draw without `keep_difficulty`) under which values are found. Under each, a retry first
        looks for values that all differ from the earlier attempts' (a rewrite rejected as too close to
        something is not proposed again with small changes; half the inputs drawn anywhere in their digit
        range), then for any values not proposed before."""
        found, search, draws = None, None, 0
        blocked: set[str] = set()  # constraints that stopped a search: giving up others cannot help
        for rules in LEVELS if self.keep_difficulty else (WIDE,):
            if rules.near and len(rules.held) < len(CONSTRAINTS) and not blocked - rules.held:
                continue
            for avoid in ((used, {}) if used else ({},)):
                budget = max(1, int(self.max_tries * rules.share) // (2 if avoid else 1))
                # values that all differ from earlier attempts' may lie outside a small number's near window
                wider = dataclasses.replace(rules, spread=max(rules.spread, 0.5)) if avoid and rules.near else rules
                search = Search(plan, rng, budget, seen, avoid, wider)
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

    def _render(self, plan: Plan, values: dict[int, Fraction], results: list[Fraction], tries: int,
                rules: Rules) -> Candidate:
        q, sol = plan.question, plan.solution

        def new_of(role: Role) -> Fraction:
            return new_value(role, values, results)

        def fmt(x: Fraction, style: Style) -> str:
            s = format_number(x, style)
            if s is None:
                s = format_number(x, dataclasses.replace(style, word=False))
            if s is None:
                raise NotRewritable(f"unformattable number: {x}")
            return s

        prose_text = re.sub(r"<<[^<>]*>>", " ", sol)
        commas = any("," in t.text for t in plan.qtoks) or bool(re.search(r"\d,\d{3}(?!\d)", prose_text))

        def pfmt(x: Fraction, text: str, style: Style) -> str:
            """Prose and question numbers: thousands commas where the item writes them elsewhere."""
            if commas and not style.word and len(text.split(".")[0]) < 4:
                style = dataclasses.replace(style, commas=True)
            return fmt(x, style)

        # question
        qedits: list[tuple[int, int, str]] = []
        for i, new in values.items():
            for tok in plan.vars[i].toks:
                qedits += token_edits(q, tok.start, tok.end, pfmt(new, tok.text, tok.style))
        new_q = apply_edits(q, qedits)
        # solution
        sedits: list[tuple[int, int, str]] = []
        for k, st in enumerate(plan.steps):
            s0, e0 = st.expr_span
            sub = [(s - s0, e - s0, pfmt(new_of(role), sol[s:e], style_of(sol[s:e])) if st.prose_expr
                    else fmt(new_of(role), style_of(sol[s:e])))
                   for (s, e), role in zip(st.lit_spans, st.roles) if role[0] != "const"]
            new_expr = apply_edits(sol[s0:e0], sub)
            sedits.append((s0, e0, new_expr))
            res_style = style_of(st.result_text)
            assert st.result_span is not None
            if st.synthetic:
                plain = fmt(results[k], dataclasses.replace(res_style, commas=False))
                shown = pfmt(results[k], st.result_text, res_style)
                lits = [fmt(new_of(r), Style(decimals=style_of(sol[a:b]).decimals)) if r[0] != "const"
                        else re.sub(r"[,\s\xa0]", "", sol[a:b]) for (a, b), r in zip(st.lit_spans, st.roles)]
                annot = st.parts[0] + "".join(x + st.parts[i + 1] for i, x in enumerate(lits))
                if st.factor != 1:
                    annot = f"({annot})/100"
                sedits.append((*st.result_span, f"<<{annot}={plain}>>{shown}"))
            else:
                sedits.append((*st.result_span, fmt(results[k], res_style)))
            if st.mirror:
                sedits.append((*st.mirror, fmt(results[k], style_of(sol[st.mirror[0]:st.mirror[1]]))))
            if st.echo:
                s, e = st.echo
                sedits += token_edits(sol, s, e, pfmt(results[k], sol[s:e], style_of(sol[s:e])))
        for tok, roles in plan.prose:
            sedits += token_edits(sol, tok.start, tok.end, pfmt(new_of(roles[0]), tok.text, tok.style))
        final = results[plan.final_step]
        if plan.final_span:
            sedits.append((*plan.final_span, fmt(final, plan.final_style)))
        new_sol = apply_edits(sol, sedits)
        answer = format_number(final) or str(final)
        answer = answer.replace(",", "")
        self._verify(plan, values, new_q, new_sol, answer)
        cand = dataclasses.replace(plan.sample, question=new_q, solution=new_sol, answer=answer)
        info = {
            "values": {show(plan.vars[i].value): show(v) for i, v in values.items()},
            "tries": tries,
            "difficulty": {
                "held": [c for c in CONSTRAINTS if c not in difficulty_broken(plan, values, results)],
                "relaxed": [c for c in CONSTRAINTS if c not in rules.held],
                "draw": "near" if rules.near else "wide",
            },
        }
        frozen = {show(v.value): v.frozen for v in plan.vars
                  if v.frozen and v.frozen != "not used by the chain" and (v.used or v.value in plan.keep)}
        if frozen:
            info["kept"] = frozen
        annotated = sum(st.synthetic for st in plan.steps)
        if annotated:
            info["annotated"] = annotated
        return Candidate(cand, answer, info)

    def _verify(self, plan: Plan, values: dict[int, Fraction], new_q: str, new_sol: str, answer: str) -> None:
        chk = check_chain(new_sol, answer)
        if not chk.ok:
            raise NotRewritable(f"verification failed: {chk.reason}")
        if len(parse_chain(new_sol)) != len(plan.steps):
            raise NotRewritable("verification failed: step count changed")
        # the question: same tokens, inputs carry their new values, everything else unchanged
        old_toks, new_toks = plan.qtoks, number_tokens(new_q)
        if len(old_toks) != len(new_toks):
            raise NotRewritable("verification failed: the question's numbers could not be re-read")
        expect = {id(t): values[i] for i, v in enumerate(plan.vars) if i in values for t in v.toks}
        for o, n in zip(old_toks, new_toks):
            if id(o) in expect:
                if n.value != expect[id(o)] or n.value == o.value:
                    raise NotRewritable(f"verification failed: question number {o.text!r} became {n.text!r}")
            elif n.value != o.value:
                raise NotRewritable(f"verification failed: question number {o.text!r} changed to {n.text!r}")
