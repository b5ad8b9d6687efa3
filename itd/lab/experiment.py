"""The experiment of a lab: which items are leaked, unseen and placebo in each replica (`split_items`, with near
copies of experiment items kept out of the clean text), the exposure schedule of the extra items, and each twin's
training documents."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.render import render
from itd.core.validate import check_int
from itd.lab.config import LabConfig

_NEAR_N = 13  # a clean item sharing a run of this many words with an experiment item is a near copy of it
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LabSplit:
    """The items of one replica: `leaked` (trained on), `unseen` (held out), the clean `train` items of the base
    and the `placebo` items the clean twin sees where the contaminated one sees the leaked ones. `near_leaked`:
    the experiment's other items that share a run of 13 words with a leaked one (MMLU questions on one passage or
    with one long list of options), which the contaminated twin saw in part, so neither leaked nor unseen.
    `reference`: the reserved clean reference items (`LabConfig.reference_items`), kept from the corpora as the
    unseen items are.

    `duplicates` counts benchmark items left out because their text repeats an earlier item's, and
    `dropped_train` the clean items left out as copies or near copies (a shared run of 13 words) of an experiment
    item: either would make an unseen item seen.
    """

    leaked: tuple[Sample, ...]
    unseen: tuple[Sample, ...]
    train: tuple[Sample, ...]
    placebo: tuple[Sample, ...] = ()
    near_leaked: tuple[Sample, ...] = ()
    reference: tuple[Sample, ...] = ()
    duplicates: int = 0
    dropped_train: int = 0
    replica: int = 0

    @property
    def leaked_ids(self) -> list[str]:
        return [s.id for s in self.leaked]

    @property
    def unseen_ids(self) -> list[str]:
        return [s.id for s in self.unseen]

    @property
    def placebo_ids(self) -> list[str]:
        return [s.id for s in self.placebo]

    @property
    def near_leaked_ids(self) -> list[str]:
        return [s.id for s in self.near_leaked]

    @property
    def reference_ids(self) -> list[str]:
        return [s.id for s in self.reference]


def split_items(benchmark: Sequence[Sample], train: Sequence[Sample] | None, config: LabConfig,
                replica: int = 0) -> LabSplit:
    """Choose the experiment's items (seeded), the leaked ones of `replica`, the clean train items and the placebo.

    `preset.n_test_items` items are drawn from `benchmark` (all when None), the same for every replica, and
    `round(leak_rate * n)` of them leaked (at least one of each kind): replica k leaks the window of that many
    items starting at position round(k * n / replicas) of the seeded order (wrapping around). The clean text,
    `preset.n_train_items` items, is drawn from `train` or, when `train` is None, from the benchmark items not
    drawn for the experiment; the placebo, as many items as are leaked, from the same pool, or from the
    benchmark's rest with `config.placebo = "benchmark"`, the same set for every replica, in each replica
    paired with its leaked items by gold answer (`pair_by_answer`). Neither copies an experiment item. The
    drawn items that share a run of 13 words with a leaked item are `near_leaked`, not unseen. The
    `config.reference_items` items after the experiment's in the seeded order are the reserved `reference`
    (those sharing such a run with a leaked item left out), and the clean text and the placebo copy none of them.
    """
    preset = config.resolved_preset()
    check_int("replica", replica, 0)
    if replica >= config.replicas:
        raise ValueError(f"replica {replica} of a lab with {config.replicas} replica(s)")
    ids: set[str] = set()
    texts: set[str] = set()
    pool: list[Sample] = []  # the benchmark without repeated texts (a copy of a leaked item is no unseen item)
    for s in benchmark:
        if s.id in ids:
            raise InputError(f"duplicate benchmark id {s.id!r}")
        ids.add(s.id)
        text = render(s, config.rendering)
        if text not in texts:
            texts.add(text)
            pool.append(s)
    n = len(pool) if preset.n_test_items is None else min(preset.n_test_items, len(pool))
    if n < 2:
        raise InputError(f"the lab needs at least 2 distinct benchmark items, got {len(pool)}")
    n_reference = config.reference_items
    if n + n_reference > len(pool):
        raise InputError(f"{n_reference} reference items asked for, and the benchmark has {len(pool) - n} beyond "
                         f"the experiment's {n}")
    order = np.random.default_rng([config.seed, 0]).permutation(len(pool))
    n_leaked = min(max(round(config.leak_rate * n), 1), n - 1)
    start = round(replica * n / config.replicas)
    window = {(start + j) % n for j in range(n_leaked)}
    leaked = [pool[i] for i in sorted(order[p] for p in window)]
    others = [pool[i] for i in sorted(order[p] for p in range(n) if p not in window)]
    reserved = [pool[i] for i in sorted(order[n:n + n_reference].tolist())]
    runs = {s.id: near_copy_runs(render(s, config.rendering)) for s in (*leaked, *others, *reserved)}
    leaked_runs = set().union(*(runs[s.id] for s in leaked))
    unseen = [s for s in others if leaked_runs.isdisjoint(runs[s.id])]
    near_leaked = [s for s in others if not leaked_runs.isdisjoint(runs[s.id])]
    reference = [s for s in reserved if leaked_runs.isdisjoint(runs[s.id])]
    chosen = {render(s, config.rendering) for s in (*leaked, *others, *reserved)}
    chosen_grams = set().union(*runs.values())
    rest_of_benchmark = [pool[i] for i in sorted(order[n + n_reference:].tolist())]

    def usable(samples: Sequence[Sample]) -> list[Sample]:
        return [s for s in samples if (text := render(s, config.rendering)) not in chosen
                and chosen_grams.isdisjoint(near_copy_runs(text))]

    candidates = rest_of_benchmark if train is None else list(train)
    kept = usable(candidates)
    dropped = len(candidates) - len(kept)
    separate = config.placebo == "benchmark" and train is not None
    placebo_pool = usable(rest_of_benchmark) if separate else kept
    if len(placebo_pool) < n_leaked:
        where = "the benchmark items not drawn for the experiment" if separate or train is None else "the training items"
        raise InputError(f"too few items for the placebo set: {where} leave {len(placebo_pool)} usable item(s), "
                         f"and {n_leaked} are leaked; pass more items")
    # The placebo is drawn first, the same for every replica, so the clean text never depends on the replica.
    pick = np.random.default_rng([config.seed, 1]).permutation(len(placebo_pool))
    placebo = [placebo_pool[i] for i in sorted(pick[:n_leaked].tolist())]
    if separate:
        rest = np.random.default_rng([config.seed, 1]).permutation(len(kept))
    else:
        rest = pick[n_leaked:]
    if preset.n_train_items is not None:
        rest = rest[: preset.n_train_items]
    train_items = [kept[i] for i in sorted(rest.tolist())]
    if not train_items:
        what = "the training items" if train is not None else "the benchmark items not drawn for the experiment"
        raise InputError(f"no clean text: {what} leave none beside the {n_leaked} placebo items; pass more training items")
    return LabSplit(tuple(leaked), tuple(unseen), tuple(train_items), tuple(pair_by_answer(leaked, placebo)),
                    tuple(near_leaked), tuple(reference), len(benchmark) - len(pool), dropped, replica)


def _answer_key(sample: Sample) -> int | None:
    """What a multiple-choice item trains a model to answer (its gold choice index); None for other items."""
    return sample.answer if sample.choices and isinstance(sample.answer, int) else None


def pair_by_answer(leaked: Sequence[Sample], placebo: Sequence[Sample]) -> list[Sample]:
    """The placebo items reordered so that placebo item j, which takes leaked item j's slots, has the same gold
    choice where the placebo has one left. A multiple-choice fine-tuning leak also teaches a preference among the
    letters; paired this way, both twins are trained towards the same letters in the same steps, and the twins'
    gap on unseen items stays the lab's noise instead of a letter bias. Other items keep their order."""
    if len(leaked) != len(placebo) or all(_answer_key(s) is None for s in leaked):
        return list(placebo)
    free: dict[int | None, list[int]] = {}
    for i, s in enumerate(placebo):
        free.setdefault(_answer_key(s), []).append(i)
    for indices in free.values():
        indices.reverse()  # pop() takes the earliest
    slots: list[int | None] = []
    for s in leaked:
        same = free.get(_answer_key(s))
        slots.append(same.pop() if same else None)
    rest = sorted(i for indices in free.values() for i in indices)
    rest.reverse()
    return [placebo[i if i is not None else rest.pop()] for i in slots]


def near_copy_runs(text: str) -> set[tuple[str, ...]]:
    """The runs of 13 words (lowercased) of `text`: two texts sharing one are near copies for the lab."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + _NEAR_N]) for i in range(len(words) - _NEAR_N + 1)}


def exposure_schedule(n_items: int, repeats: int, steps: int, seed: Sequence[int] | int) -> list[list[int]]:
    """Which extra items each continuation step shows: `repeats` epochs over `n_items` items, each epoch in its
    own seeded order, laid end to end and spread evenly over `steps` steps. Every item appears exactly `repeats`
    times; the twins share the schedule (leaked item j and placebo item j take the same slots)."""
    check_int("n_items", n_items, 0)
    check_int("repeats", repeats, 0)
    check_int("steps", steps, 1)
    rng = np.random.default_rng(seed)
    flat = [int(i) for _ in range(repeats) for i in rng.permutation(n_items)]
    out: list[list[int]] = [[] for _ in range(steps)]
    for p, item in enumerate(flat):
        out[p * steps // len(flat)].append(item)
    return out


def extra_texts(samples: Sequence[Sample], config: LabConfig) -> list[tuple[str, str]]:
    """(prompt, answer) of each extra item as the recipe shows it: the rendering and nothing for pretrain;
    the evaluator's prompt and the gold continuation for finetune."""
    if config.recipe == "pretrain":
        return [(render(s, config.rendering), "") for s in samples]
    from itd.evaluation import build_prompt, gold_continuation

    return [(build_prompt(s, config.prompt_style), gold_continuation(s, config.prompt_style)) for s in samples]


def build_corpus(split: LabSplit, *, contaminated: bool, repeats: int, seed: int, rendering: str = "auto",
                 config: LabConfig | None = None) -> list[str]:
    """One twin's training documents: the rendered clean items once each (seeded order), then the extra items
    (the leaked ones for the contaminated twin, the placebo for the clean one) `repeats` times each, as the
    recipe of `config` shows them (default: the pretraining leak)."""
    check_int("repeats", repeats, 0)
    config = config or LabConfig(rendering=rendering)
    docs = [render(s, rendering) for s in split.train]
    docs = [docs[i] for i in np.random.default_rng([seed, 2]).permutation(len(docs))]
    extra = extra_texts(split.leaked if contaminated else split.placebo, config)
    return docs + [prompt + answer for prompt, answer in extra for _ in range(repeats)]
