"""GSM8K calculator annotations: parse `<<expr=result>>` chains and re-execute them exactly.

A GSM8K worked solution interleaves prose with calculator annotations (`16 - 3 - 4 = <<16-3-4=9>>9`) and ends
with `#### N`. `check_chain` re-executes every annotation with exact rational arithmetic and checks the final
answer; the numeric rewriter uses it on its own output and the verifier on LLM-written math rewrites.

Expressions are evaluated by walking a whitelisted `ast` tree (numbers, + - * / // % **, unary signs,
parentheses): never `eval`. The text is an item's (or an LLM's), so the arithmetic is bounded: expressions of at
most `MAX_EXPRESSION_CHARS` characters nested at most `MAX_DEPTH` deep, numbers and every intermediate value of at
most `MAX_DIGITS` digits (numerator and denominator), exponents of at most `MAX_EXPONENT`. Whatever the text, an
evaluation returns a value or raises `ExpressionError` (a ValueError) saying what broke the bound; since no
operand ever exceeds the bounds, it never hangs, exhausts memory or raises anything else (the tests fuzz this).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Callable, Sequence

from itd.core import gsm8k_final_answer
from itd.core.numbers import MAX_DIGITS as NUMBER_MAX_DIGITS

__all__ = [
    "ExpressionError",
    "Step",
    "ChainCheck",
    "Expression",
    "parse_chain",
    "compile_expression",
    "evaluate",
    "parse_number",
    "check_chain",
    "number_value",
    "MAX_EXPONENT",
    "MAX_DIGITS",
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
]

MAX_EXPONENT = 64
"""Largest exponent `**` accepts (absolute value); larger ones raise ExpressionError instead of hanging."""
MAX_DIGITS = NUMBER_MAX_DIGITS
"""Most digits a number of the text, and the numerator or denominator of any intermediate value, may have (the
bound of `itd.core.numbers`, the reader of numbers in text)."""
MAX_DEPTH = 100
"""Deepest nesting of operations in an expression (GSM8K's deepest annotation has 10)."""
MAX_EXPRESSION_CHARS = 1000
"""Longest expression evaluated (GSM8K's longest annotation has 30 characters)."""

_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))  # a value with more bits has more than MAX_DIGITS digits


class ExpressionError(ValueError):
    """Text arithmetic that cannot or may not be evaluated: not an arithmetic expression, division by zero, or a
    bound broken (a number or result over `MAX_DIGITS` digits, an exponent over `MAX_EXPONENT`, nesting deeper
    than `MAX_DEPTH`, an expression longer than `MAX_EXPRESSION_CHARS`). The message says which."""

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
# numbers start at a number boundary and are matched possessively: linear time on long digit runs
_PERCENT = re.compile(r"(?<![\d.])((?:\d++(?:\.\d*+)?|\.\d++))\s*%(?!\s*[\d(.])")


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
        raise ExpressionError(f"names are not allowed in an expression: {expr!r}")
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
        raise ExpressionError(f"non-integer exponent {_brief(b)}")
    if abs(b) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {_brief(b)} too large (limit {MAX_EXPONENT})")
    bits = max(a.numerator.bit_length(), a.denominator.bit_length())
    if bits * abs(b.numerator) > _MAX_BITS:
        raise ExpressionError(f"number too large: the power has more than {MAX_DIGITS} digits")
    if a == 0 and b < 0:
        raise ExpressionError("division by zero")
    return a ** int(b)


def _brief(v: Fraction) -> str:
    """A value for a message: in full when short, else its size."""
    text = str(v)
    return text if len(text) <= 40 else f"of {len(str(abs(v.numerator)))} digits"


def _bounded(v: Fraction) -> Fraction:
    if max(v.numerator.bit_length(), v.denominator.bit_length()) > _MAX_BITS:
        raise ExpressionError(f"number too large: a result has more than {MAX_DIGITS} digits")
    return v


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
        """Evaluate exactly, optionally with `literals` in place of the written numbers; ExpressionError on
        division by zero or a value over the bounds (see the module docstring)."""
        vals = self.literals if literals is None else literals
        if len(vals) != len(self.literals):
            raise ValueError(f"expected {len(self.literals)} literals, got {len(vals)}")
        return _eval(self._tree, [_bounded(Fraction(v)) for v in vals])

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
    # recursion is bounded by MAX_DEPTH (checked by compile_expression)
    if isinstance(node, ast.BinOp):
        a = _eval(node.left, vals)
        b = _eval(node.right, vals)
        if isinstance(node.op, ast.Pow):
            return _power(a, b)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ExpressionError("division by zero")
        return _bounded(_BINOPS[type(node.op)](a, b))
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, vals)
        return -v if isinstance(node.op, ast.USub) else v
    return vals[node.index]  # type: ignore[attr-defined]  # a literal slot, see compile_expression


def _check_tree(node: ast.AST, expr: str, depth: int = 1) -> None:
    if depth > MAX_DEPTH:
        raise ExpressionError(f"expression nested too deeply (limit {MAX_DEPTH} levels)")
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (*_BINOPS, ast.Pow)):
            raise ExpressionError(f"operator {type(node.op).__name__} not allowed in {expr!r}")
        _check_tree(node.left, expr, depth + 1)
        _check_tree(node.right, expr, depth + 1)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise ExpressionError(f"operator {type(node.op).__name__} not allowed in {expr!r}")
        _check_tree(node.operand, expr, depth + 1)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"constant {node.value!r} not allowed in {expr!r}")
    else:
        raise ExpressionError(f"{type(node).__name__} not allowed in an expression: {expr!r}")


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
    lits.append(number_value(text))
    texts.append(text)
    return _Slot(len(lits) - 1)


def compile_expression(expr: str) -> Expression:
    """Parse `expr` into an `Expression`; ExpressionError for anything but numbers, + - * / // % ** (integer
    exponents up to `MAX_EXPONENT`), unary signs and parentheses, or an expression over the bounds."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression too long ({len(expr)} characters, limit {MAX_EXPRESSION_CHARS})")
    src = _normalize(expr)
    if not src:
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError):  # ValueError: a null byte
        raise ExpressionError(f"not an arithmetic expression: {expr!r}") from None
    except (RecursionError, MemoryError):  # the parser's own nesting limit
        raise ExpressionError(f"expression nested too deeply (limit {MAX_DEPTH} levels)") from None
    lits: list[Fraction] = []
    texts: list[str] = []
    _check_tree(tree, expr)
    slotted = _to_slots(tree, src, lits, texts)
    return Expression(expr, lits, texts, slotted)  # type: ignore[arg-type]


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression such as `"16-3-4"`, `"80,000*1.5"`, `"9 x 2"`, `"40%*200"`;
    ExpressionError on anything outside the whitelist (names, calls, attributes, division by zero) or the bounds."""
    return compile_expression(expr).value()


def parse_number(text: str) -> Fraction:
    """A stated number (`"18"`, `"18.0"`, `"1,000"`, `"$2.50"`, `"3/4"`, `"20%"` -> 1/5) as a Fraction;
    ExpressionError when it is not one."""
    s = text.strip().rstrip(".").strip()
    if not s:
        raise ExpressionError("empty number")
    return evaluate(s)


_NUMERAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def number_value(text: str) -> Fraction:
    """A plain decimal numeral (`"18"`, `"2.50"`, `".5"`; thousands separators `,`, space and no-break space
    are dropped) as an exact Fraction; ExpressionError when it is not one or has more than `MAX_DIGITS` digits.
    Every number read from item text goes through here or `evaluate`, so none is over the bound."""
    s = re.sub(r"[,\s\xa0]", "", text)
    digits = sum(c.isdigit() for c in s)
    if digits > MAX_DIGITS:
        raise ExpressionError(f"number too large: {digits} digits (limit {MAX_DIGITS})")
    if not _NUMERAL.fullmatch(s) or not s.isascii():
        raise ExpressionError(f"bad number {text[:40]!r}")
    return Fraction(s)


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
    # exact integer arithmetic (Decimal's 28-digit context cannot round a 40-digit value): |v| * 10**d, rounded
    # half away from zero, or truncated, then compared with the stated value
    scaled = abs(value) * 10**d
    sign = -1 if value < 0 else 1
    down = math.floor(scaled)
    half_up = math.floor(scaled + Fraction(1, 2))
    return any(Fraction(sign * n, 10**d) == stated for n in (half_up, down))


def _show(v: Fraction) -> str:
    if v.denominator == 1:
        return _brief(v)
    d = Decimal(v.numerator) / Decimal(v.denominator)
    return format(d.normalize(), "f") if len(str(d)) <= 12 else f"{d:.6g}"


def _clip(text: str, n: int = 80) -> str:
    """Item text quoted in a reason, cut to `n` characters (a reason is one line of a log, not a copy)."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


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
            return fail(f"step {i}: cannot evaluate {_clip(st.expression)!r}: {exc}")
        try:
            stated = parse_number(st.result)
        except ValueError:
            return fail(f"step {i}: stated result {_clip(st.result)!r} is not a number")
        if not _matches(value, stated, st.result):
            return fail(f"step {i}: {_clip(st.expression.strip())} evaluates to {_show(value)}, annotation says "
                        f"{_clip(st.result.strip())}")
    if final is None:
        return fail("no final answer (#### N)")
    try:
        final_value = parse_number(final)
    except ValueError:
        return fail(f"final answer {_clip(final)!r} is not a number")
    if expected_answer is not None:
        try:
            expected_value = parse_number(str(expected_answer).replace(",", ""))
        except ValueError:
            return fail(f"expected answer {_clip(str(expected_answer))!r} is not a number")
        if final_value != expected_value:
            return fail(f"final answer {_clip(final)} differs from expected {_clip(str(expected_answer))}")
    return ChainCheck(True, None, final, len(steps))
