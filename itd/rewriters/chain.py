"""GSM8K calculator annotations: parse `<<expr=result>>` chains and re-execute them exactly.

A GSM8K worked solution interleaves prose with calculator annotations (`16 - 3 - 4 = <<16-3-4=9>>9`) and ends
with `#### N`. `check_chain` re-executes every annotation with exact rational arithmetic and checks the final
answer; the numeric rewriter uses it on its own output and the verifier on LLM-written math rewrites.

Expressions are evaluated by walking a whitelisted `ast` tree (numbers, + - * / // % **, unary signs,
parentheses): never `eval`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Callable, Sequence

from itd.data import gsm8k_final_answer

__all__ = [
    "Step",
    "ChainCheck",
    "Expression",
    "parse_chain",
    "compile_expression",
    "evaluate",
    "parse_number",
    "check_chain",
    "MAX_EXPONENT",
]

MAX_EXPONENT = 64
"""Largest exponent `**` accepts (absolute value); larger ones raise ValueError instead of hanging."""

_MAX_BITS = 4096  # bound on numerator/denominator size of any intermediate value

_ANNOTATION = re.compile(r"<<([^<>]*)>>")


@dataclass(frozen=True, slots=True)
class Step:
    """One calculator annotation: `expression` and `result` as written, `span` = (start, end) of the whole
    `<<expression=result>>` in the solution. `result` is None when the annotation has no `=`."""

    expression: str
    result: str | None
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """Outcome of `check_chain`: `reason` says what failed in words (None when ok); `final` is the `#### N`
    answer with commas removed (None when absent); `steps` counts the annotations."""

    ok: bool
    reason: str | None
    final: str | None
    steps: int


def parse_chain(solution: str) -> list[Step]:
    """Every `<<expression=result>>` annotation of `solution`, in order (split at the last `=`)."""
    steps = []
    for m in _ANNOTATION.finditer(solution):
        body = m.group(1)
        if "=" in body:
            expr, result = body.rsplit("=", 1)
        else:
            expr, result = body, None
        steps.append(Step(expr, result, m.span()))
    return steps


# ---------------------------------------------------------------------------------------------------------------------
# expressions

_MULTIPLY = re.compile(r"(?<=[\d).])\s*[x×X✕*]\s*(?=[\d(.$])")
_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_PERCENT = re.compile(r"((?:\d+\.?\d*|\.\d+))\s*%(?!\s*[\d(.])")


def _normalize(expr: str) -> str:
    """GSM8K/LLM quirks to plain Python arithmetic: commas in numbers, `x`/`×` for multiply, `÷`, unicode
    minus, `$`, leading zeros, a trailing `.` or `%` (percent: divided by 100)."""
    s = re.sub(r"[\s\u00a0\u2009\u202f]+", " ", expr).strip()
    s = s.replace("−", "-").replace("–", "-").replace("÷", "/").replace("$", "").replace("·", "*")
    s = _COMMA.sub("", s)
    s = _MULTIPLY.sub("*", s)
    s = _PERCENT.sub(r"(\1/100)", s)
    s = _LEADING_ZEROS.sub("", s)
    if s.endswith("."):
        s = s[:-1].rstrip()
    if re.search(r"[A-Za-z_]", s):
        raise ValueError(f"names are not allowed in an expression: {expr!r}")
    return s


_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}


def _power(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        raise ValueError(f"non-integer exponent {b}")
    if abs(b) > MAX_EXPONENT:
        raise ValueError(f"exponent {b} too large (limit {MAX_EXPONENT})")
    bits = max(a.numerator.bit_length(), a.denominator.bit_length())
    if bits * abs(b.numerator) > _MAX_BITS:
        raise ValueError("power too large")
    if a == 0 and b < 0:
        raise ValueError("division by zero")
    return a ** int(b)


class Expression:
    """A compiled arithmetic expression: `literals` are its numbers in textual order (exact `Fraction`s),
    `literal_text` their text as written; `value(literals)` re-evaluates with other literal values."""

    __slots__ = ("text", "literals", "literal_text", "_tree")

    def __init__(self, text: str, literals: list[Fraction], literal_text: list[str], tree: ast.expression):
        self.text = text
        self.literals = literals
        self.literal_text = literal_text
        self._tree = tree

    def value(self, literals: Sequence[Fraction] | None = None) -> Fraction:
        """Evaluate exactly, optionally with `literals` in place of the written numbers; ValueError on
        division by zero or an oversized power."""
        vals = self.literals if literals is None else literals
        if len(vals) != len(self.literals):
            raise ValueError(f"expected {len(self.literals)} literals, got {len(vals)}")
        try:
            return _eval(self._tree, vals)
        except RecursionError as exc:
            raise ValueError("expression nested too deeply") from exc

    def operations(self, literals: Sequence[Fraction] | None = None) -> list[tuple[str, Fraction, Fraction, Fraction]]:
        """Every binary operation, operands before the operation that uses them, as (operator, left, right,
        value) with the operator written as in Python (`+ - * / // % **`); ValueError as for `value`."""
        vals = self.literals if literals is None else literals
        if len(vals) != len(self.literals):
            raise ValueError(f"expected {len(self.literals)} literals, got {len(vals)}")
        out: list[tuple[str, Fraction, Fraction, Fraction]] = []

        def walk(node: ast.AST) -> Fraction:
            if isinstance(node, ast.BinOp):
                left, right = walk(node.left), walk(node.right)
                value = _eval(node, vals)
                out.append((_SYMBOLS[type(node.op)], left, right, value))
                return value
            if isinstance(node, ast.UnaryOp):
                walk(node.operand)
            return _eval(node, vals)

        try:
            walk(self._tree)
        except RecursionError as exc:
            raise ValueError("expression nested too deeply") from exc
        return out


_SYMBOLS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
                             ast.Mod: "%", ast.Pow: "**"}


def _eval(node: ast.AST, vals: Sequence[Fraction]) -> Fraction:
    if isinstance(node, ast.BinOp):
        a = _eval(node.left, vals)
        b = _eval(node.right, vals)
        if isinstance(node.op, ast.Pow):
            return _power(a, b)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ValueError("division by zero")
        out = _BINOPS[type(node.op)](a, b)
        if max(out.numerator.bit_length(), out.denominator.bit_length()) > _MAX_BITS:
            raise ValueError("number too large")
        return out
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, vals)
        return -v if isinstance(node.op, ast.USub) else v
    return vals[node.index]  # type: ignore[attr-defined]  # a literal slot, see compile_expression


def _check_tree(node: ast.AST, expr: str) -> None:
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (*_BINOPS, ast.Pow)):
            raise ValueError(f"operator {type(node.op).__name__} not allowed in {expr!r}")
        _check_tree(node.left, expr)
        _check_tree(node.right, expr)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise ValueError(f"operator {type(node.op).__name__} not allowed in {expr!r}")
        _check_tree(node.operand, expr)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"constant {node.value!r} not allowed in {expr!r}")
    else:
        raise ValueError(f"{type(node).__name__} not allowed in an expression: {expr!r}")


class _Slot(ast.AST):
    _fields = ()

    def __init__(self, index: int):
        super().__init__()
        self.index = index


def _to_slots(node: ast.AST, src: str, lits: list[Fraction], texts: list[str]) -> ast.AST:
    if isinstance(node, ast.BinOp):
        node.left = _to_slots(node.left, src, lits, texts)  # type: ignore[assignment]
        node.right = _to_slots(node.right, src, lits, texts)  # type: ignore[assignment]
        return node
    if isinstance(node, ast.UnaryOp):
        node.operand = _to_slots(node.operand, src, lits, texts)  # type: ignore[assignment]
        return node
    text = ast.get_source_segment(src, node) or ""
    try:
        lits.append(Fraction(text))
    except ValueError as exc:
        raise ValueError(f"bad number {text!r}") from exc
    texts.append(text)
    return _Slot(len(lits) - 1)


def compile_expression(expr: str) -> Expression:
    """Parse `expr` into an `Expression`; ValueError for anything but numbers, + - * / // % ** (integer
    exponents up to `MAX_EXPONENT`), unary signs and parentheses."""
    if len(expr) > 1000:
        raise ValueError("expression too long")
    src = _normalize(expr)
    if not src:
        raise ValueError("empty expression")
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expr!r}") from exc
    lits: list[Fraction] = []
    texts: list[str] = []
    try:
        _check_tree(tree, expr)
        slotted = _to_slots(tree, src, lits, texts)
    except RecursionError as exc:
        raise ValueError("expression nested too deeply") from exc
    return Expression(expr, lits, texts, slotted)  # type: ignore[arg-type]


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression such as `"16-3-4"`, `"80,000*1.5"`, `"9 x 2"`, `"40%*200"`;
    ValueError on anything outside the whitelist (names, calls, attributes, huge powers, division by zero)."""
    return compile_expression(expr).value()


def parse_number(text: str) -> Fraction:
    """A stated number (`"18"`, `"18.0"`, `"1,000"`, `"$2.50"`, `"3/4"`, `"20%"` -> 1/5) as a Fraction;
    ValueError when it is not one."""
    s = text.strip().rstrip(".").strip()
    if not s:
        raise ValueError("empty number")
    return evaluate(s)


# ---------------------------------------------------------------------------------------------------------------------
# checking a chain


def _decimals(text: str) -> int:
    m = re.search(r"\.(\d+)\s*$", text.strip().rstrip("%"))
    return len(m.group(1)) if m else 0


def _matches(value: Fraction, stated: Fraction, stated_text: str) -> bool:
    """Exact for integers; a stated result with d decimals matches when `value` rounds (half up) or
    truncates to it at d decimals (GSM8K's own rounding)."""
    if value == stated:
        return True
    d = _decimals(stated_text)
    if d == 0:
        return False
    q = Decimal(1).scaleb(-d)
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    target = Decimal(stated.numerator) / Decimal(stated.denominator)
    return exact.quantize(q, ROUND_HALF_UP) == target or exact.quantize(q, ROUND_DOWN) == target


def _show(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    d = Decimal(v.numerator) / Decimal(v.denominator)
    return format(d.normalize(), "f") if len(str(d)) <= 12 else f"{float(v):.6g}"


def check_chain(solution: str, expected_answer: str | None = None) -> ChainCheck:
    """Re-execute every annotation of `solution` and check its `#### N` final answer.

    ok when there is at least one annotation, each expression evaluates to its stated result (exactly, or
    at the stated number of decimals), the final answer parses as a number, and equals `expected_answer`
    numerically when one is given (`"18"` == `"18.0"`, commas ignored). The reason names the first failure.
    """
    steps = parse_chain(solution)
    final = gsm8k_final_answer(solution)

    def fail(reason: str) -> ChainCheck:
        return ChainCheck(False, reason, final, len(steps))

    if not steps:
        return fail("no annotations")
    for i, st in enumerate(steps, 1):
        if st.result is None:
            return fail(f"step {i}: annotation <<{st.expression}>> has no '='")
        try:
            value = evaluate(st.expression)
        except ValueError as exc:
            return fail(f"step {i}: cannot evaluate {st.expression!r}: {exc}")
        try:
            stated = parse_number(st.result)
        except ValueError:
            return fail(f"step {i}: stated result {st.result!r} is not a number")
        if not _matches(value, stated, st.result):
            return fail(f"step {i}: {st.expression.strip()} evaluates to {_show(value)}, annotation says {st.result.strip()}")
    if final is None:
        return fail("no final answer (#### N)")
    try:
        final_value = parse_number(final)
    except ValueError:
        return fail(f"final answer {final!r} is not a number")
    if expected_answer is not None:
        try:
            expected_value = parse_number(str(expected_answer).replace(",", ""))
        except ValueError:
            return fail(f"expected answer {expected_answer!r} is not a number")
        if final_value != expected_value:
            return fail(f"final answer {final} differs from expected {expected_answer}")
    return ChainCheck(True, None, final, len(steps))
