"""Reading a candidate text for the semantic detector: item-sized windows of a long document, record layout
stripped before embedding, and the answer key or final answer a text states."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from itd.core import Sample
from itd.core.numbers import with_digits
from itd.core.text import fold_for_alignment
from itd.detectors.base import label_text

__all__ = ["FINAL_ANSWER", "LETTERS", "auto_window", "folded", "stated_key", "strip_layout", "windows"]

_MIN_WINDOW, _MAX_WINDOW = 32, 160  # words; MiniLM reads 256 word pieces (~190 words)

_WORD_SPAN = re.compile(r"\S+")


def windows(text: str, size: int) -> list[tuple[int, int]]:
    """Character spans of item-sized windows of `text`: the whole text when it has at most `size` words, else
    windows of `size` words with a stride of half that, the last one ending at the last word."""
    if size < 1:
        raise ValueError("window size must be >= 1")
    spans = [(m.start(), m.end()) for m in _WORD_SPAN.finditer(text)]
    n = len(spans)
    if n == 0:
        return []
    if n <= size:
        return [(spans[0][0], spans[-1][1])]
    stride = max(1, size // 2)
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return [(spans[s][0], spans[s + size - 1][1]) for s in starts]


def auto_window(samples: Sequence[Sample]) -> int:
    """Window size in words for `samples`: the 90th percentile of their question+answer word counts, between 32
    and 160 words (the default model reads 256 word pieces, about 190 words)."""
    counts = [len((s.prompt_text() + " " + label_text(s)).split()) for s in samples]
    if not counts:
        return _MIN_WINDOW
    return int(min(_MAX_WINDOW, max(_MIN_WINDOW, math.ceil(float(np.percentile(counts, 90))))))


LETTERS = "ABCDEFGHIJ"
_KEY = re.compile(r"\b(?:the\s+)?(?:correct\s+|right\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:=-]\s*|\banswer\s+is\s+",
                  re.IGNORECASE)
_LETTER = re.compile(r"\(([A-Ja-j])\)|([A-J])(?=$|[\s.,;:)])|([a-j])(?=$|[.)])")
FINAL_ANSWER = re.compile(r"(?:####|\banswer(?:\s+is)?\s*[:=]?)\s*\$?\s*(\d[\d,]*(?:\.\d+)?|[A-Za-z]+(?:[ -][A-Za-z]+){0,5})",
                    re.IGNORECASE)  # a final answer: "#### 18", "The answer is eighteen"
_OPTION_LINE = re.compile(r"^[ \t]*\(?([A-Ja-j])[.):][ \t]+(\S.*?)[ \t]*$", re.MULTILINE)
_ARTICLE = re.compile(r"^(?:the|an|a) ")
_LAYOUT = re.compile(
    r"(?im)^[ \t]*(?:#+[ \t]*)?"
    r"(?:(?:instruction|input|response|output|question|answer|problem|user|assistant|human|system|q|a)[ \t]*:[ \t]*)?"
    r"(?:\(?[A-J][.)][ \t]+)?"
)


def strip_layout(text: str) -> str:
    """`text` without the layout of instruction-tuning records and lettered options, which carries no meaning
    but moves short texts' embeddings: markdown header marks, role labels ("### Instruction:", "Answer:", "Q:")
    and option letters ("B. ", "(c) ") at line starts. Both sides are embedded this way."""
    out = _LAYOUT.sub("", text)
    return out if out.strip() else text


def folded(text: str) -> str:
    """`text` folded for comparison (`itd.core.text.fold_for_alignment`: case, accents, punctuation, spacing)."""
    return fold_for_alignment(text)[0]


def _match_choice(text: str, choices: Sequence[str], min_score: float = 85.0) -> int | None:
    """The index of the choice `text` states (the same text, its start matches a choice, or it is similar enough,
    numbers compared as digits), else None."""
    from rapidfuzz import fuzz

    raw = " ".join(text.split()).rstrip(".")
    t = _ARTICLE.sub("", folded(with_digits(text)))
    if not t and not raw:
        return None
    best, best_score = None, min_score
    for i, c in enumerate(choices):
        if raw and raw == " ".join(c.split()).rstrip("."):
            score = 200.0  # the very option (symbols and all: "~(M v S)" folds like "M v S")
        else:
            fc = _ARTICLE.sub("", folded(with_digits(c)))
            if not fc or not t:
                continue
            if t == fc or (t.startswith(fc) and t[len(fc) : len(fc) + 1] == " "):
                score = 100.0 + len(fc) / 1000  # the longest choice that starts the text wins
            else:
                score = fuzz.ratio(t[: len(fc) + 8], fc)
        if score > best_score or (score == best_score and best is None):
            best, best_score = i, score
    return best


def stated_key(sample: Sample, text: str) -> int | None:
    """The option index of `sample` that `text` states as its answer ("Answer: C", "The correct answer is
    <option text>"), or None. A letter is read through `text`'s own lettered option lines, so a copy with the
    options reordered maps to the right option; without option lines the letters are the item's own order. The
    last statement that resolves wins (a training sample states its answer at the end)."""
    if not sample.is_mcq or not sample.choices:
        return None
    choices = sample.choices
    letter_to_choice: dict[str, int] = {}
    for m in _OPTION_LINE.finditer(text):  # a reworded option maps to the item's option it is closest to
        idx = _match_choice(m.group(2), choices, min_score=50.0)
        if idx is not None:
            letter_to_choice.setdefault(m.group(1).upper(), idx)
    if letter_to_choice and all(LETTERS.index(k) == v for k, v in letter_to_choice.items()):
        letter_to_choice = {}  # the options are in the item's own order: letters map by position
    found = None
    for m in _KEY.finditer(text):
        rest = text[m.end() : m.end() + 400].split("\n", 1)[0].strip()
        idx = _match_choice(rest, choices) if len(rest) > 2 else None  # the option's text
        letter = _LETTER.match(rest)
        if idx is None and letter is not None:  # else its letter
            key = next(g for g in letter.groups() if g).upper()
            if letter_to_choice:
                idx = letter_to_choice.get(key)
            elif LETTERS.index(key) < len(choices):
                idx = LETTERS.index(key)
        if idx is not None:
            found = idx
    return found
