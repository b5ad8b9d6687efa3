"""Type checks of configuration values, shared by every config dataclass (a bool is never a number here)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_int", "is_number", "is_real", "check_int"]


def is_int(value: Any) -> bool:
    """Whether `value` is an int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether `value` is a finite int or float (not a bool)."""
    return is_number(value) and math.isfinite(value)


def check_int(name: str, value: Any, minimum: int) -> None:
    """ValueError unless `value` is an int of at least `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
