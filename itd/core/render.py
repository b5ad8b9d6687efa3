"""How a benchmark item is turned into the text a language model scores or trains on.

One place decides this so that the contamination lab leaks items in exactly the form the probes score them, and
so every output can record which rendering it used.
"""

from __future__ import annotations

from collections.abc import Sequence

from itd.core import Sample, strip_calculator_annotations
from itd.core.registry import close_names

__all__ = ["RENDERINGS", "KEY_PREFIX", "check_rendering", "render", "resolve_rendering"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
KEY_PREFIX = "Answer:"  # before the key letter in the `options+answer` rendering

RENDERINGS = ("auto", "question", "question+answer", "options", "options+answer")
"""`question`: the question alone. `question+answer`: question, then the worked solution (GSM8K, calculator
annotations stripped) or the gold answer. `options`: the question with its choices as `A. ...` lines (MCQ).
`options+answer`: that, then `Answer: <letter>`. `auto`: `options+answer` for MCQ, `question+answer` otherwise."""


def check_rendering(mode: str) -> str:
    """`mode` if it names a rendering, else ValueError with the closest name and the list."""
    if mode not in RENDERINGS:
        close = close_names(str(mode), RENDERINGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown rendering {mode!r}.{hint} Known: {', '.join(RENDERINGS)}.")
    return mode


def resolve_rendering(sample: Sample, mode: str) -> str:
    """The concrete rendering `mode` means for `sample` (`auto` resolved; option modes need choices)."""
    check_rendering(mode)
    if mode == "auto":
        return "options+answer" if sample.is_mcq else "question+answer"
    if mode.startswith("options") and not sample.is_mcq:
        return "question+answer" if mode.endswith("answer") else "question"
    return mode


def _answer(sample: Sample) -> str:
    if sample.solution:
        return strip_calculator_annotations(sample.solution).strip()
    return "" if sample.answer is None else str(sample.answer)


def render(sample: Sample, mode: str = "auto", order: Sequence[int] | None = None) -> str:
    """The text of `sample` under rendering `mode`.

    `order` shows the choices in another order (a permutation of their indices); the answer letter follows the
    correct choice to its new place. Used by the option-permutation test.
    """
    mode = resolve_rendering(sample, mode)
    if mode == "question":
        return sample.question.strip()
    if mode == "question+answer":
        answer = _answer(sample) if not sample.is_mcq else _mcq_answer_text(sample)
        return f"{sample.question.strip()}\n{answer}" if answer else sample.question.strip()
    choices = sample.choices or ()
    order = list(range(len(choices))) if order is None else list(order)
    if sorted(order) != list(range(len(choices))):
        raise ValueError(f"order {order} is not a permutation of {len(choices)} choices")
    lines = [sample.question.strip()]
    lines += [f"{LETTERS[i]}. {choices[j].strip()}" for i, j in enumerate(order)]
    if mode == "options+answer" and isinstance(sample.answer, int):
        lines.append(f"{KEY_PREFIX} {LETTERS[order.index(sample.answer)]}")
    return "\n".join(lines)


def _mcq_answer_text(sample: Sample) -> str:
    if isinstance(sample.answer, int) and sample.choices:
        return sample.choices[sample.answer].strip()
    return _answer(sample)
