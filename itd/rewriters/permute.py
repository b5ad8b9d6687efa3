"""Multiple-choice option permutation: the same options in a new order, the key remapped (no LLM).

A model that memorised "the answer is C" is caught out by the move; one that memorised the answer text is not,
which is why this rewriter is best combined with a paraphrase. `mmlu_cf=True` adds the MMLU-CF rule of replacing
one option with "None of the other choices"; that changes difficulty (published scores drop by about 12 points
from option replacement alone), so it is off by default and marked in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import re
from typing import Any, ClassVar

from itd.core import Sample
from itd.core.validate import is_int
from itd.rewriters.base import REWRITERS, Candidate, NotRewritable, Rewriter

__all__ = ["PermuteRewriter", "PermuteConfig", "NONE_OF_THE_OTHERS", "positional_option", "item_rng"]

NONE_OF_THE_OTHERS = "None of the other choices"

# "All of the above" keeps its place; the rest may move around it.
_RELATIVE = re.compile(
    r"\b(?:all|none|both|neither|any)\s+of\s+the\s+(?:above|below|following|preceding|previous|others?|these|those)\b",
    re.IGNORECASE,
)
# "A and B", "(a), (c) only": the whole option is a list of letters, which a shuffle would point elsewhere.
_LETTER = r"(?:[A-H]|\([a-hA-H]\))"
_LETTERS = re.compile(
    rf"^\s*(?:(?i:both|only|either|neither)\s+)?{_LETTER}(?:\s*(?:,|&|(?i:and|or|nor))\s*{_LETTER})+\s*(?i:only)?\s*\.?\s*$"
)


def positional_option(text: str) -> str | None:
    """How an option depends on the others' positions: "relative" ("All of the above"), "letters" ("A and B"),
    or None."""
    if _LETTERS.match(text):
        return "letters"
    return "relative" if _RELATIVE.search(text) else None


def item_rng(*parts: Any) -> random.Random:
    """A `random.Random` seeded from a stable hash of `parts` (never Python's salted `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclasses.dataclass(frozen=True)
class PermuteConfig:
    """The `permute` rewriter's settings: `seed` of the orders, `mmlu_cf` (see `PermuteRewriter`)."""

    seed: int = 0
    mmlu_cf: bool = False

    def __post_init__(self) -> None:
        if not is_int(self.seed):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")


@REWRITERS.register("permute")
class PermuteRewriter(Rewriter):
    """Shuffle the options of a multiple-choice item so that the correct one moves.

    Options that refer to other options ("All of the above") stay in place; an item with one that names
    options by letter ("A and B") is not rewritable. Attempt `i` gives the `i`-th of a seeded list of orders, so
    a retry proposes a different order.
    """

    name: ClassVar[str] = "permute"
    kind: ClassVar[str] = "order"

    Config = PermuteConfig

    def __init__(self, seed: int = 0, mmlu_cf: bool = False):
        PermuteConfig(seed, mmlu_cf)  # validates
        self.seed = seed
        self.mmlu_cf = bool(mmlu_cf)
        self.changes_difficulty = self.mmlu_cf

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "seed": self.seed, "mmlu_cf": self.mmlu_cf}

    def propose(self, sample: Sample, attempt: int = 0) -> Candidate:
        choices = sample.choices
        if not choices or not isinstance(sample.answer, int):
            raise NotRewritable("not multiple choice: the item has no options with an index answer")
        if len(choices) < 2:
            raise NotRewritable("too few options: one option cannot be reordered")
        kinds = [positional_option(c) for c in choices]
        if "letters" in kinds:
            raise NotRewritable(f"positional option: {choices[kinds.index('letters')]!r} names other options by letter")
        fixed = [i for i, k in enumerate(kinds) if k]
        movable = [i for i in range(len(choices)) if i not in fixed]
        if sample.answer not in movable or len(movable) < 2:
            raise NotRewritable("positional key: the correct option refers to the others and cannot move")
        orders = self._orders(sample, movable)
        order = orders[attempt % len(orders)]
        new_choices = [choices[j] for j in order]
        key = order.index(sample.answer)
        info: dict[str, Any] = {"order": order, "fixed": fixed}
        if self.mmlu_cf:
            # Replace one option at random, the key included: then "None of the other choices" is correct.
            rng = item_rng(self.seed, sample.id, attempt, "mmlu-cf")
            slot = rng.choice([i for i, j in enumerate(order) if j in movable])
            info["replaced"] = {"position": slot, "text": new_choices[slot]}
            new_choices[slot] = NONE_OF_THE_OTHERS
        new = dataclasses.replace(sample, choices=tuple(new_choices), answer=key)
        return Candidate(new, key, info)

    def _orders(self, sample: Sample, movable: list[int]) -> list[list[int]]:
        """Orders of the options in which the key moves, most displaced first, in a seeded order."""
        n = len(sample.choices or ())
        rng = item_rng(self.seed, sample.id, "permute")
        perms = []
        for p in itertools.islice(itertools.permutations(movable), 5040):  # 7! keeps big items cheap
            order = list(range(n))
            for slot, j in zip(movable, p):
                order[slot] = j
            if order.index(sample.answer) != sample.answer:
                perms.append(order)
        rng.shuffle(perms)
        perms.sort(key=lambda o: -sum(i != j for i, j in enumerate(o)))  # stable: derangements first
        return perms
