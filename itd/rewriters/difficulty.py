"""What makes a calculator step hard, read from its numbers, and whether a rewrite kept it.

A GSM8K step such as `16-3-4` is a sequence of binary operations (`16-3 = 13`, then `13-4 = 9`). Rewriting its
numbers keeps the difficulty when every operation keeps, compared with the original:

- `digits`: the number of integer digits of both operands and of the result (0 for a magnitude below 1);
- `decimals`: the number of decimal places of both operands and of the result (where the original's terminate);
- `carries`: for `+` and `-`, the number of carries or borrows when the operation is done column by column;
- `carry presence`: for `+` and `-`, whether there is any carry or borrow;
- `exact division`: a division whose result is an integer stays one.

`CONSTRAINTS` lists them in the order in which the numeric rewriter gives them up when it finds no values that
hold them all (the last ones first); `broken` says which a rewritten step breaks.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

__all__ = ["CONSTRAINTS", "Operation", "decimal_places", "int_digits", "carries", "broken"]

CONSTRAINTS: tuple[str, ...] = ("digits", "exact division", "carry presence", "decimals", "carries")
"""The difficulty constraints, most important first."""

Operation = tuple[str, Fraction, Fraction, Fraction]
"""(operator, left, right, value), as `itd.rewriters.chain.Expression.operations` gives them."""


def decimal_places(x: Fraction) -> int | None:
    """Decimal places of `x` written out exactly (0 for an integer); None beyond 6 (1/3, 2/7)."""
    d = x.denominator
    twos = (d & -d).bit_length() - 1
    d >>= twos
    fives = 0
    while d % 5 == 0:
        d //= 5
        fives += 1
    places = max(twos, fives)
    return places if d == 1 and places <= 6 else None


def int_digits(x: Fraction) -> int:
    """Digits of the integer part of |x|: 0 below 1, 1 for 1..9, 2 for 10..99, and so on."""
    n = abs(x.numerator) // x.denominator
    return len(str(n)) if n else 0


def carries(op: str, a: Fraction, b: Fraction) -> int | None:
    """Carries of `a + b` or borrows of `a - b`, done column by column on the decimal digits (adding numbers of
    opposite signs is the subtraction of the smaller magnitude from the larger); None for another operator or a
    number that is not a terminating decimal."""
    if op not in ("+", "-"):
        return None
    da, db = decimal_places(a), decimal_places(b)
    if da is None or db is None:
        return None
    scale = 10 ** max(da, db)
    x, y = int(a * scale), int(b * scale) * (1 if op == "+" else -1)
    big, small = max(abs(x), abs(y)), min(abs(x), abs(y))
    count = carry = 0
    if (x >= 0) == (y >= 0) or 0 in (x, y):
        while big or small or carry:
            carry = int(big % 10 + small % 10 + carry >= 10)
            count += carry
            big, small = big // 10, small // 10
    else:
        while big or small:
            carry = int(big % 10 - small % 10 - carry < 0)
            count += carry
            big, small = big // 10, small // 10
    return count


def _shape_broken(old: Fraction, new: Fraction, out: set[str]) -> None:
    if int_digits(old) != int_digits(new):
        out.add("digits")
    d = decimal_places(old)
    if d is not None and decimal_places(new) != d:
        out.add("decimals")


def broken(old_ops: Sequence[Operation], new_ops: Sequence[Operation], old_value: Fraction,
           new_value: Fraction) -> set[str]:
    """The constraints of `CONSTRAINTS` that a rewritten step breaks: its operations (in the same order as the
    original's) and its value (the step's result, which may differ from the last operation's, as in a
    percentage of a percentage)."""
    out: set[str] = set()
    if len(old_ops) != len(new_ops):
        return set(CONSTRAINTS)
    for (op, a, b, v), (op2, a2, b2, v2) in zip(old_ops, new_ops):
        if op != op2:
            return set(CONSTRAINTS)
        for x, y in ((a, a2), (b, b2), (v, v2)):
            _shape_broken(x, y, out)
        if op in ("+", "-"):
            c, c2 = carries(op, a, b), carries(op, a2, b2)
            if c != c2:
                out.add("carries")
                if c is None or c2 is None or (c > 0) != (c2 > 0):
                    out.add("carry presence")
        elif op == "/" and v.denominator == 1 and v2.denominator != 1:
            out.add("exact division")
    _shape_broken(old_value, new_value, out)
    return out
