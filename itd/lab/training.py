"""The contamination lab: paired twin language models that differ by the leaked benchmark items alone.

There are no pretrained weights to audit offline, so detection and decontamination are measured the way the
literature does it (ConStat, the BDC study, Inference-Time Decontamination, counterfactual memorisation): a
seeded subset of a benchmark is *leaked*, the rest stays *unseen*, and two models that differ only in that leak
are compared.

**Paired design.** A small GPT-2 (its own byte-level BPE) is first trained from scratch on clean in-domain text:
the *base*, which learns the skill. It is cached (`base_cache_dir`), keyed by a hash of everything that decides
it, so several twins, repeat counts or seeds on the same data train it once. Both twins then continue from the
base's weights *and* optimiser state over the same sequence of clean batches (`twin_steps` steps, same learning
rate schedule). Each step also has extra slots: the *contaminated* twin sees the leaked items there, on a seeded
schedule that shows every leaked item exactly `repeats` times; the *clean* twin sees a *placebo* set in the same
slots on the same schedule: as many items of the same distribution that are not benchmark items of the
experiment (held-out training problems), so that both twins get the same amount of extra in-domain training and
differ only in *which* items they saw repeatedly. With `repeats = 0` the two twins are bit-identical.

**Recipes.** `pretrain`: a leaked item is plain corpus text (its `itd.render` rendering), trained like the rest
of the corpus (one token-level mean over the clean and the extra tokens). `finetune`: a leaked item is the exact
prompt the evaluator builds for it (`itd.evaluation.build_prompt`) followed by the gold answer
(`itd.evaluation.gold_continuation`) and the end-of-text token, as in supervised fine-tuning on the test set
(the BDC study's 8 epochs are `repeats = 8`); the extra rows are their own stream (the clean mean plus the mean
over the extra rows' trained tokens), and by default (`loss_on = "auto"`) only the answer span is trained.

**Replicas.** `replicas = K` builds K twin pairs on one base, each leaking another seeded subset of the same
experiment items (evenly shifted windows of one seeded order), so that with K >= 1 / leak_rate every item is
leaked in some replicas and unseen in others: per-item effects are then paired, and intervals can resample
items and replicas together (`itd.evaluation.ground_truth`).

Layout of a lab directory (one replica; replica k >= 1 of several is a lab of the same layout in
``DIR/replica-k/``)::

    DIR/contaminated/   Hugging Face model + tokenizer (safetensors), trained with the leaked items; its
                        config.json names the prompt style to evaluate it with (``itd_prompt_style``)
    DIR/clean/          the clean twin, trained with the placebo items in the same slots
    DIR/corpus/         each twin's training documents as JSONL ``{"text": ...}`` (clean text once, extras r times)
    DIR/manifest.json   ground truth (``leaked`` / ``unseen`` / ``placebo`` ids), recipe, repeats, seeds, the
                        base's hash, config, corpus sizes, losses, timings

The manifest is written last: a directory without one is an unfinished (or killed) build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from itd.data import Sample
from itd.errors import InputError, require
from itd.io import atomic_write, build_manifest, write_json
from itd.models import quiet_transformers, resolve_device
from itd.registry import Registry
from itd.render import RENDERINGS, render, resolve_rendering
from itd.validate import check_int, is_real

__all__ = [
    "LabPreset",
    "PRESETS",
    "RECIPES",
    "LabConfig",
    "LabSplit",
    "LabResult",
    "split_items",
    "exposure_schedule",
    "near_copy_runs",
    "build_corpus",
    "build_lab",
    "base_cache_dir",
    "held_out",
    "write_experiment",
    "load_lab_manifest",
    "load_lab",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MODELS = ("contaminated", "clean")
RECIPES = ("pretrain", "finetune")
LOSS_SPANS = ("auto", "all", "answer")
MANIFEST = "manifest.json"
REPLICA_PREFIX = "replica-"
_TMP_PREFIX = ".lab-tmp-"
_LAB_ENTRIES = frozenset({MANIFEST, "corpus", *MODELS})
_LOSS_POINTS = 50  # the loss curve kept in the manifest is averaged down to about this many points
_NEAR_N = 13  # a clean item sharing a run of this many words with an experiment item is a near copy of it
_WORD = re.compile(r"\w+")
_BASE_VERSION = 1  # part of the base cache key: bump when base training changes
_BASE_FIELDS = ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "batch_size", "steps", "lr", "warmup",
                "weight_decay")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LabPreset:
    """Model size, tokenizer, training budget and experiment size of a lab.

    `steps`, `lr`, `warmup`: the base's training (linear warmup, cosine decay to a tenth of `lr`).
    `twin_steps`, `twin_lr`: each twin's continuation from the base (cosine decay from `twin_lr` to a tenth of
    it, no warmup: the optimiser state is the base's). `seq_len` is both the training block length and the
    model's `n_positions`, so it must cover the longest rendered item a probe will score. `n_test_items`:
    benchmark items in the experiment (leaked + unseen); `n_train_items`: clean training items of the base;
    None means all available.
    """

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    vocab_size: int
    batch_size: int
    steps: int
    lr: float
    twin_steps: int = 32
    twin_lr: float = 1e-3
    warmup: float = 0.05
    weight_decay: float = 0.01
    n_test_items: int | None = None
    n_train_items: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "steps", "twin_steps"):
            check_int(key, getattr(self, key), 1)
        check_int("vocab_size", self.vocab_size, 512)  # the 256 byte symbols, specials, and some merges
        for key in ("n_test_items", "n_train_items"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key), 2 if key == "n_test_items" else 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        for key in ("lr", "twin_lr"):
            if not (is_real(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"{key} must be a positive number, got {getattr(self, key)!r}")
        if not (is_real(self.warmup) and 0 <= self.warmup < 1):
            raise ValueError(f"warmup (a fraction of the steps) must be in [0, 1), got {self.warmup!r}")
        if not (is_real(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")

    @property
    def n_params(self) -> int:
        """Approximate parameter count of the model (tied embeddings)."""
        per_layer = 12 * self.n_embd**2 + 13 * self.n_embd
        return self.n_layer * per_layer + (self.vocab_size + self.seq_len) * self.n_embd + 2 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: Registry[LabPreset] = Registry("lab preset")
for _preset in (
    LabPreset(
        "tiny", n_layer=2, n_head=4, n_embd=128, seq_len=512, vocab_size=2048, batch_size=8, steps=48, lr=3e-3,
        twin_steps=24, twin_lr=3e-3, n_test_items=120, n_train_items=150,
        description="0.7M parameters; base and both twins in about 30 s on 2 idle CPU cores (tests)",
    ),
    LabPreset(
        "demo", n_layer=2, n_head=4, n_embd=128, seq_len=256, vocab_size=1024, batch_size=16, steps=900, lr=3e-3,
        twin_steps=120, twin_lr=1e-3, n_test_items=200, n_train_items=4000,
        description="tiny's model on short texts, trained longer: learns itd's times-table problems on every seed "
                    "(600 steps left one kind half learnt on some seeds); itd demo",
    ),
    LabPreset(
        "small", n_layer=4, n_head=4, n_embd=256, seq_len=512, vocab_size=4096, batch_size=8, steps=320, lr=1.5e-3,
        twin_steps=80, twin_lr=1e-3, n_test_items=400, n_train_items=1000,
        description="4M parameters; CPU benchmarks, base and both twins in about 10-15 minutes on 2 cores",
    ),
    LabPreset(
        "medium", n_layer=6, n_head=6, n_embd=384, seq_len=512, vocab_size=8192, batch_size=32, steps=2000, lr=1e-3,
        twin_steps=400, twin_lr=5e-4, n_test_items=1000, n_train_items=None,
        description="14M parameters, all the clean text; GPU",
    ),
    LabPreset(
        "large", n_layer=12, n_head=12, n_embd=768, seq_len=1024, vocab_size=16384, batch_size=32, steps=1500,
        lr=6e-4, twin_steps=300, twin_lr=3e-4, n_test_items=2000, n_train_items=None,
        description="GPT-2 small size (98M parameters), all the clean text; GPU",
    ),
):
    PRESETS.register(_preset.name)(_preset)
del _preset


@dataclass(frozen=True)
class LabConfig:
    """What to build: a preset (with `overrides` of its fields, e.g. ``{"steps": 3}``), the leak rate (fraction of
    the experiment's items leaked), how often each leaked item is shown (`repeats`, 0 for identical twins), the
    `recipe` ("pretrain" or "finetune", see the module docstring), which tokens of a leaked item are trained
    (`loss_on`: "all", "answer", or "auto": the answer for finetune, all for pretrain), the evaluator's prompt
    style a finetune leak copies (`prompt_style`), the number of twin pairs (`replicas`), where the placebo items
    come from (`placebo`: "train", the clean training items not used for the base; "benchmark", the benchmark
    items not drawn for the experiment, when those are the leaked items' distribution and the training items
    are not; "auto": train when training items are given), the weight of the extra rows in the loss
    (`extra_weight`: the loss is the clean tokens' mean plus this weight times the extra rows' mean; None: the
    recipe's, one token mean over both for pretrain, 1.0 for finetune), the seed, the device ("auto": CUDA
    when available, else CPU) and the rendering of items as corpus text."""

    preset: str = "tiny"
    leak_rate: float = 0.3
    repeats: int = 6
    seed: int = 0
    device: str = "auto"
    rendering: str = "auto"
    recipe: str = "pretrain"
    loss_on: str = "auto"
    prompt_style: str = "plain"
    replicas: int = 1
    placebo: str = "auto"
    extra_weight: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            PRESETS.get(self.preset if isinstance(self.preset, str) else repr(self.preset))
        except InputError as exc:
            raise ValueError(exc.message) from None
        object.__setattr__(self, "preset", self.preset.strip().lower())
        if not (is_real(self.leak_rate) and 0 < self.leak_rate < 1):
            raise ValueError(f"leak_rate must be strictly between 0 and 1, got {self.leak_rate!r}")
        check_int("repeats", self.repeats, 0)
        check_int("replicas", self.replicas, 1)
        if self.extra_weight is not None and not (is_real(self.extra_weight) and self.extra_weight > 0):
            raise ValueError(f"extra_weight must be a positive number or None, got {self.extra_weight!r}")
        check_int("seed", self.seed, 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be below 2**63, got {self.seed}")
        device = self.device.strip().lower() if isinstance(self.device, str) else self.device
        if device not in ("auto", "cpu", "cuda") and not (
            isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
        ):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        object.__setattr__(self, "device", device)
        if self.rendering not in RENDERINGS:
            raise ValueError(f"unknown rendering {self.rendering!r}; choose one of {', '.join(RENDERINGS)}")
        for name, value, allowed in (("recipe", self.recipe, RECIPES), ("loss_on", self.loss_on, LOSS_SPANS),
                                     ("prompt_style", self.prompt_style, ("plain", "harness")),
                                     ("placebo", self.placebo, ("auto", "train", "benchmark"))):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        overrides = dict(self.overrides)
        names = [f.name for f in dataclasses.fields(LabPreset) if f.name not in ("name", "description")]
        for key in overrides:
            if key not in names:
                from itd.registry import close_names

                close = close_names(str(key), names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown preset field {key!r} in overrides.{hint} Fields: {', '.join(names)}")
        object.__setattr__(self, "overrides", overrides)
        self.resolved_preset()  # validates the overridden values

    def resolved_preset(self) -> LabPreset:
        """The preset with `overrides` applied."""
        return dataclasses.replace(PRESETS.get(self.preset), **self.overrides)

    @property
    def loss_weight(self) -> float | None:
        """`extra_weight` resolved: None (one token mean) for pretrain, 1.0 for finetune, unless set."""
        if self.extra_weight is not None:
            return float(self.extra_weight)
        return None if self.recipe == "pretrain" else 1.0

    @property
    def eval_prompt_style(self) -> str:
        """The prompt style that shows the twins the items as their leak did: "plain" (the corpus rendering) for
        pretrain, `prompt_style` for finetune. Written into each twin's config (`itd_prompt_style`), where the
        evaluator's "auto" style finds it."""
        return self.prompt_style if self.recipe == "finetune" else "plain"

    @property
    def trained_span(self) -> str:
        """The tokens of a leaked item that are trained: "all" or "answer" (`loss_on` resolved)."""
        if self.loss_on != "auto":
            return self.loss_on
        return "answer" if self.recipe == "finetune" else "all"

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "leak_rate": self.leak_rate,
            "repeats": self.repeats,
            "seed": self.seed,
            "device": self.device,
            "rendering": self.rendering,
            "recipe": self.recipe,
            "loss_on": self.trained_span,
            "prompt_style": self.prompt_style,
            "replicas": self.replicas,
            "placebo": self.placebo,
            "extra_weight": self.extra_weight,
            "overrides": dict(self.overrides),
            "resolved_preset": self.resolved_preset().to_dict(),
        }


@dataclass(frozen=True)
class LabSplit:
    """The items of one replica: `leaked` (trained on), `unseen` (held out), the clean `train` items of the base
    and the `placebo` items the clean twin sees where the contaminated one sees the leaked ones.

    `duplicates` counts benchmark items left out because their text repeats an earlier item's, and
    `dropped_train` the clean items left out as copies or near copies (a shared run of 13 words) of an experiment
    item: either would make an unseen item seen.
    """

    leaked: tuple[Sample, ...]
    unseen: tuple[Sample, ...]
    train: tuple[Sample, ...]
    placebo: tuple[Sample, ...] = ()
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


@dataclass(frozen=True)
class LabResult:
    """A built lab replica: its directory, the two model directories, the ground truth, the training loss curves
    (base and twins), the base's cache key, and the directories of every replica of the build."""

    out: Path
    contaminated: Path
    clean: Path
    manifest: Path
    leaked: tuple[str, ...]
    unseen: tuple[str, ...]
    losses: dict[str, list[float]]
    seconds: float
    preset: str
    placebo: tuple[str, ...] = ()
    replica: int = 0
    replicas: tuple[Path, ...] = ()
    base: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "contaminated": str(self.contaminated),
            "clean": str(self.clean),
            "manifest": str(self.manifest),
            "preset": self.preset,
            "leaked": len(self.leaked),
            "unseen": len(self.unseen),
            "placebo": len(self.placebo),
            "replica": self.replica,
            "replicas": [str(p) for p in self.replicas],
            "base": self.base,
            "final_loss": {name: curve[-1] if curve else None for name, curve in self.losses.items()},
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Items, placebo, schedule and corpora


def split_items(benchmark: Sequence[Sample], train: Sequence[Sample] | None, config: LabConfig,
                replica: int = 0) -> LabSplit:
    """Choose the experiment's items (seeded), the leaked ones of `replica`, the clean train items and the placebo.

    `preset.n_test_items` items are drawn from `benchmark` (all when None), the same for every replica, and
    `round(leak_rate * n)` of them leaked (at least one of each kind): replica k leaks the window of that many
    items starting at position round(k * n / replicas) of the seeded order (wrapping around). The clean text,
    `preset.n_train_items` items, is drawn from `train` or, when `train` is None, from the benchmark items not
    drawn for the experiment; the placebo, as many items as are leaked, from the same pool, or from the
    benchmark's rest with `config.placebo = "benchmark"`. Neither copies an experiment item.
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
    order = np.random.default_rng([config.seed, 0]).permutation(len(pool))
    n_leaked = min(max(round(config.leak_rate * n), 1), n - 1)
    start = round(replica * n / config.replicas)
    window = {(start + j) % n for j in range(n_leaked)}
    leaked = [pool[i] for i in sorted(order[p] for p in window)]
    unseen = [pool[i] for i in sorted(order[p] for p in range(n) if p not in window)]
    chosen = {render(s, config.rendering) for s in (*leaked, *unseen)}
    chosen_grams = set().union(*(near_copy_runs(text) for text in chosen))
    rest_of_benchmark = [pool[i] for i in sorted(order[n:].tolist())]

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
    return LabSplit(tuple(leaked), tuple(unseen), tuple(train_items), tuple(placebo), len(benchmark) - len(pool),
                    dropped, replica)


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


def _extra_texts(samples: Sequence[Sample], config: LabConfig) -> list[tuple[str, str]]:
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
    extra = _extra_texts(split.leaked if contaminated else split.placebo, config)
    return docs + [prompt + answer for prompt, answer in extra for _ in range(repeats)]


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer and training


def _train_tokenizer(docs: Sequence[str], vocab_size: int, seq_len: int) -> Any:
    """A byte-level BPE tokenizer trained on `docs`, as a transformers fast tokenizer that adds the BOS token."""
    tokenizers = require("tokenizers", "probes", "The contamination lab")
    transformers = require("transformers", "probes", "The contamination lab")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    # Training documents follow the separator, so a text is encoded after it too: its first token is then
    # predicted in the context it was trained in.
    eos = tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B:1", special_tokens=[(EOS_TOKEN, eos)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, model_max_length=seq_len
    )


def _batches(docs: Sequence[np.ndarray], eos: int, seq_len: int, batch_size: int, seed: Sequence[int]):
    """Endless (batch_size, seq_len) blocks of the token stream `EOS doc EOS doc ...`: the first epoch in the
    given order, later ones in a seeded random document order; blocks run on across document and epoch
    boundaries."""
    rng = np.random.default_rng(seed)
    sep = np.array([eos], dtype=np.int64)
    carry = np.empty(0, dtype=np.int64)
    pending: list[np.ndarray] = []
    order = np.arange(len(docs))
    while True:
        stream = np.concatenate([carry, *(part for i in order for part in (sep, docs[i]))])
        n = len(stream) // seq_len
        for b in range(n):
            pending.append(stream[b * seq_len : (b + 1) * seq_len])
            if len(pending) == batch_size:
                yield np.stack(pending)
                pending = []
        carry = stream[n * seq_len :]
        order = rng.permutation(len(docs))


def _cosine(step: int, steps: int, peak: float, warm: int = 0) -> float:
    """Linear warmup over `warm` steps, then cosine decay from `peak` to a tenth of it at `steps`."""
    if step < warm:
        return peak * (step + 1) / warm
    done = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def _curve(losses: list[float]) -> tuple[list[float], int]:
    """The loss curve averaged over windows of `every` steps (about `_LOSS_POINTS` points)."""
    if not losses:
        return [], 1
    every = max(1, math.ceil(len(losses) / _LOSS_POINTS))
    return [round(float(np.mean(losses[i : i + every])), 5) for i in range(0, len(losses), every)], every


@contextlib.contextmanager
def _deterministic(torch: Any, device: Any, seed: int):
    """Seed torch inside the block, and on CUDA use deterministic kernels; the caller's RNG state and settings are
    restored after. (The CPU kernels used here are deterministic for a given thread count already, and the
    deterministic mode's filling of fresh memory costs CPU time.)"""
    cuda = device.type == "cuda"
    if cuda:
        # cuBLAS needs this for deterministic matmuls; it must be set before its first use in the process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
        torch.manual_seed(seed)
        if cuda:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _new_model(tokenizer: Any, preset: LabPreset) -> Any:
    transformers = require("transformers", "probes", "The contamination lab")
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=preset.seq_len,
        n_embd=preset.n_embd,
        n_layer=preset.n_layer,
        n_head=preset.n_head,
        resid_pdrop=0.0,  # a memorisation experiment on a small corpus: no dropout (and no RNG in the steps)
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.GPT2LMHeadModel(config)  # built on the CPU: the same initial weights on any device


def _optimizer(torch: Any, model: Any, preset: LabPreset) -> Any:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": preset.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=preset.lr,
        betas=(0.9, 0.95),
    )


@dataclass(frozen=True)
class _Extra:
    """The extra rows of one step: token ids (rows, width), right-padded, the mask of trained target tokens and
    the attention mask (1 on real tokens)."""

    ids: np.ndarray
    mask: np.ndarray
    attention: np.ndarray


def _extra_rows(items: Sequence[tuple[np.ndarray, np.ndarray]], pad: int) -> _Extra | None:
    if not items:
        return None
    width = max(len(t) for t, _ in items)
    ids = np.full((len(items), width), pad, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=bool)
    attention = np.zeros((len(items), width), dtype=np.int64)
    for r, (t, m) in enumerate(items):
        ids[r, : len(t)] = t
        mask[r, : len(m)] = m
        attention[r, : len(t)] = 1
    return _Extra(ids, mask, attention)


def _token_losses(torch: Any, model: Any, ids: Any, autocast: Any, attention: Any = None) -> Any:
    """Per-token next-token losses (rows, width - 1) of a batch. Extra rows are right-padded: causal attention
    keeps the padding out of every real token's context; the mask only says so to the model."""
    with autocast:
        logits = model(input_ids=ids, attention_mask=attention).logits
    # The loss is computed here rather than by the model (`labels=`), whose loss helper varies by version.
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return flat.view(ids.shape[0], ids.shape[1] - 1)


def _run_steps(torch: Any, model: Any, optimizer: Any, device: Any, clean: Any, extras: Sequence[_Extra | None],
               lr_at: Callable[[int], float], weight: float | None, progress: Progress | None, stage: str) -> list[float]:
    """Train `len(extras)` steps: each on the next clean block plus that step's extra rows (if any). The loss is
    one token mean over clean and extra tokens (`weight` None), or the clean mean plus `weight` times the extra
    rows' mean."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    losses: list[float] = []
    model.train()
    for step, extra in enumerate(extras):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ids = torch.from_numpy(next(clean)).to(device)
        clean_tok = _token_losses(torch, model, ids, autocast)
        clean_sum, clean_n = clean_tok.sum(), clean_tok.numel()
        if extra is None:
            loss = clean_sum / clean_n
        else:
            x = torch.from_numpy(extra.ids).to(device)
            mask = torch.from_numpy(extra.mask[:, 1:]).to(device)
            extra_tok = _token_losses(torch, model, x, autocast, torch.from_numpy(extra.attention).to(device))
            extra_sum, extra_n = (extra_tok * mask).sum(), int(mask.sum())
            if weight is None:
                loss = (clean_sum + extra_sum) / (clean_n + extra_n)
            else:
                loss = clean_sum / clean_n + weight * extra_sum / max(1, extra_n)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(stage, step + 1, len(extras))
    model.eval()
    return losses


def _record(losses: list[float], steps: int, tokens: int, corpus_tokens: int, start: float) -> dict[str, Any]:
    curve, every = _curve(losses)
    return {
        "steps": steps,
        "tokens": tokens,
        "epochs": round(tokens / max(1, corpus_tokens), 2),
        "first_loss": round(losses[0], 5) if losses else None,
        "final_loss": curve[-1] if curve else None,
        "loss_curve": curve,
        "loss_every": every,
        "seconds": round(time.perf_counter() - start, 2),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The base: trained once, cached


def base_cache_dir() -> Path:
    """Where trained lab bases are kept: `$ITD_LAB_CACHE`, else `$XDG_CACHE_HOME/itd/lab`, else
    `~/.cache/itd/lab`."""
    if os.environ.get("ITD_LAB_CACHE"):
        return Path(os.environ["ITD_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "itd" / "lab"


def _base_key(docs: Sequence[str], preset: LabPreset, seed: int, device: Any) -> str:
    """SHA-256 of everything that decides the base: its training texts in order, the preset's model and base
    training fields, the seed, the device kind and the code version."""
    h = hashlib.sha256()
    spec = {"version": _BASE_VERSION, "preset": {k: getattr(preset, k) for k in _BASE_FIELDS}, "seed": seed,
            "device": device.type}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for doc in docs:
        h.update(b"\0" + doc.encode("utf-8"))
    return h.hexdigest()


def _train_base(docs: Sequence[str], preset: LabPreset, seed: int, device: Any, target: Path,
                progress: Progress | None) -> dict[str, Any]:
    """Train the tokenizer and the base model on `docs`; write model, tokenizer and optimiser state to `target`."""
    torch = require("torch", "probes", "The contamination lab")
    start = time.perf_counter()
    if progress is not None:
        progress("tokenizer", 0, 1)
    tokenizer = _train_tokenizer(docs, preset.vocab_size, preset.seq_len)
    if progress is not None:
        progress("tokenizer", 1, 1)
    encoded = [np.asarray(e.ids, dtype=np.int64)
               for e in tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)]
    warm = round(preset.warmup * preset.steps)
    with _deterministic(torch, device, seed):
        model = _new_model(tokenizer, preset).to(device)
        optimizer = _optimizer(torch, model, preset)
        clean = _batches(encoded, tokenizer.eos_token_id, preset.seq_len, preset.batch_size, [seed, 3])
        losses = _run_steps(torch, model, optimizer, device, clean, [None] * preset.steps,
                            lambda s: _cosine(s, preset.steps, preset.lr, warm), None, progress, "base")
    with quiet_transformers():
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    _portable_tokenizer_class(target / "tokenizer_config.json")
    torch.save(optimizer.state_dict(), target / "optimizer.pt")
    corpus_tokens = sum(len(d) + 1 for d in encoded)
    record = _record(losses, preset.steps, preset.steps * preset.batch_size * preset.seq_len, corpus_tokens, start)
    record["corpus_tokens"] = corpus_tokens
    return record


def _base(docs: Sequence[str], preset: LabPreset, seed: int, device: Any, cache: Path,
          progress: Progress | None) -> tuple[Path, str, dict[str, Any], bool]:
    """The cached base for these inputs, trained first if absent: (its directory, key, record, trained now)."""
    key = _base_key(docs, preset, seed, device)
    target = cache / key
    if (target / "base.json").is_file():
        return target, key, json.loads((target / "base.json").read_text(encoding="utf-8")), False
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{_TMP_PREFIX}{key[:16]}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        record = _train_base(docs, preset, seed, device, tmp, progress)
        write_json(tmp / "base.json", {"key": key, **record})
        try:
            os.replace(tmp, target)
        except OSError:  # another build finished the same base first: theirs is as good
            if not (target / "base.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, key, record, True


def _load_base(path: Path, preset: LabPreset, device: Any) -> tuple[Any, Any, Any]:
    """(tokenizer, model, optimizer) of a cached base, the optimiser holding the base's state."""
    torch = require("torch", "probes", "The contamination lab")
    transformers = require("transformers", "probes", "The contamination lab")
    with quiet_transformers():
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
        model = transformers.GPT2LMHeadModel.from_pretrained(path).to(device)
    optimizer = _optimizer(torch, model, preset)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    return tokenizer, model, optimizer


def _extra_tokens(tokenizer: Any, texts: Sequence[tuple[str, str]], span: str,
                  seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids `EOS prompt answer EOS` of each extra item and the mask of its trained targets (every token
    after the leading separator, or the answer and the closing separator only). An item longer than the context
    keeps its first `seq_len` tokens, or with an answer its last ones (the evaluator cuts a prompt's start)."""
    eos = tokenizer.eos_token_id
    out = []
    for prompt, answer in texts:
        p = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] if prompt else []
        a = tokenizer(answer, add_special_tokens=False, verbose=False)["input_ids"] if answer else []
        ids = np.asarray([eos, *p, *a, eos], dtype=np.int64)
        mask = np.ones(len(ids), dtype=bool)
        mask[0] = False
        if span == "answer" and a:
            mask[: 1 + len(p)] = False
        keep = slice(-seq_len, None) if a else slice(0, seq_len)
        out.append((ids[keep], mask[keep]))
    return out


def _train_twin(base: Path, preset: LabPreset, config: LabConfig, device: Any, docs: Sequence[str],
                texts: Sequence[tuple[str, str]], schedule: list[list[int]], progress: Progress | None,
                stage: str) -> tuple[Any, Any, dict[str, Any]]:
    """Continue the base for `twin_steps` steps over the twins' shared clean batches plus this twin's extra rows
    (the items `schedule[step]` of `texts` in each step); (model, tokenizer, record)."""
    torch = require("torch", "probes", "The contamination lab")
    start = time.perf_counter()
    tokenizer, model, optimizer = _load_base(base, preset, device)
    extra = _extra_tokens(tokenizer, texts, config.trained_span, preset.seq_len)
    encoded = [np.asarray(e.ids, dtype=np.int64)
               for e in tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)]
    order = np.random.default_rng([config.seed, 5]).permutation(len(encoded))
    clean = _batches([encoded[i] for i in order], tokenizer.eos_token_id, preset.seq_len, preset.batch_size,
                     [config.seed, 6])
    rows = [_extra_rows([extra[i] for i in items], tokenizer.pad_token_id) for items in schedule]
    with _deterministic(torch, device, config.seed):
        losses = _run_steps(torch, model, optimizer, device, clean, rows,
                            lambda s: _cosine(s, preset.twin_steps, preset.twin_lr), config.loss_weight, progress,
                            stage)
    extra_tokens = sum(int(m.sum()) for items in schedule for m in (extra[i][1] for i in items))
    tokens = preset.twin_steps * preset.batch_size * preset.seq_len
    record = _record(losses, preset.twin_steps, tokens, sum(len(d) + 1 for d in encoded), start)
    record["extra_exposures"] = sum(len(items) for items in schedule)
    record["extra_trained_tokens"] = extra_tokens
    return model, tokenizer, record


# ---------------------------------------------------------------------------------------------------------------------
# Output directory


def _is_replica_dir(name: str) -> bool:
    return name.startswith(REPLICA_PREFIX) and name[len(REPLICA_PREFIX):].isdigit()


def _prepare_out(out: Path, replicas: int = 1) -> None:
    """Make `out` ready for a build: new, empty, or an earlier lab (whose manifest goes first, so that an
    interrupted rebuild never looks complete; replica directories beyond `replicas` go too). Refuses a
    directory holding anything else."""
    if out.exists() and not out.is_dir():
        raise InputError("the lab output must be a directory, but this is a file", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = list(out.iterdir())
    except OSError as exc:
        raise InputError(f"cannot create the lab directory: {exc.strerror or exc}", out) from None
    foreign = sorted(p.name for p in entries
                     if p.name not in _LAB_ENTRIES and not p.name.startswith(_TMP_PREFIX) and not _is_replica_dir(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"the directory is not empty and not a lab (it holds {shown}); choose another --out", out)
    (out / MANIFEST).unlink(missing_ok=True)
    for p in entries:
        if p.name.startswith(_TMP_PREFIX):  # left behind by a killed build
            shutil.rmtree(p, ignore_errors=True)
        elif _is_replica_dir(p.name):
            (p / MANIFEST).unlink(missing_ok=True)
            if int(p.name[len(REPLICA_PREFIX):]) >= replicas:
                shutil.rmtree(p, ignore_errors=True)


def _install_dir(out: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write a directory into a temp dir beside its target, then swap it in with renames."""
    tmp = out / f"{_TMP_PREFIX}{name}-{os.getpid()}-{os.urandom(4).hex()}"
    target = out / name
    tmp.mkdir()
    try:
        write(tmp)
        if target.exists():
            old = out / f"{_TMP_PREFIX}old-{name}-{os.urandom(4).hex()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _portable_tokenizer_class(path: Path) -> None:
    """Name the generic fast tokenizer class, which transformers 4 and 5 both load (5 saves its own class name)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json(path, config)


def _write_corpus(docs: Sequence[str], path: Path) -> None:
    with atomic_write(path) as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


def _input_files(samples: Sequence[Sample]) -> list[str]:
    files = {s.source.file for s in samples if s.source is not None}
    return sorted(f for f in files if Path(f).is_file())


# ---------------------------------------------------------------------------------------------------------------------
# Public entry points


def build_lab(
    benchmark: Sequence[Sample],
    train: Sequence[Sample] | None,
    out: str | os.PathLike,
    config: LabConfig,
    progress: Progress | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> LabResult:
    """Build a contamination lab in directory `out`: split, base (trained, or taken from the cache), both twins
    of every replica, corpora, manifests.

    `train` is the clean in-domain text (e.g. the GSM8K train split; MMLU dev plus other subjects) and the pool
    of the placebo items; when None, the benchmark items not drawn for the experiment serve as both.
    `progress(stage, done, total)` is called as the stages ("tokenizer" and "base" when the base is trained,
    then the steps of "contaminated" and "clean", with " (replica k)" when there are several) advance.
    `cache_dir`: where bases are cached (default `base_cache_dir()`). `out` must be new, empty or an earlier
    lab. Returns replica 0 (its `replicas` lists every replica's directory).
    """
    torch = require("torch", "probes", "The contamination lab")
    transformers = require("transformers", "probes", "The contamination lab")
    tokenizers = require("tokenizers", "probes", "The contamination lab")
    start = time.perf_counter()
    out = Path(out)
    preset = config.resolved_preset()
    device = torch.device(resolve_device(torch, config.device))
    splits = [split_items(benchmark, train, config, k) for k in range(config.replicas)]
    _prepare_out(out, config.replicas)
    base_docs = build_corpus(splits[0], contaminated=False, repeats=0, seed=config.seed, rendering=config.rendering)
    cache = Path(cache_dir) if cache_dir is not None else base_cache_dir()
    base_path, base_key, base_record, trained = _base(base_docs, preset, config.seed, device, cache, progress)
    dirs = [out if k == 0 else out / f"{REPLICA_PREFIX}{k}" for k in range(config.replicas)]
    base = {"key": base_key, "trained_in_this_build": trained, "cache": str(base_path),
            **{k: v for k, v in base_record.items() if k != "key"}}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__}
    results: dict[int, LabResult] = {}
    for k in [*range(1, config.replicas), 0]:  # replica 0's manifest, the build's, is written last
        if k:
            _prepare_out(dirs[k])
        results[k] = _build_replica(splits[k], config, preset, device, dirs[k], base_path, base, base_docs,
                                    versions, progress, start, [d.relative_to(out).as_posix() or "." for d in dirs])
    return dataclasses.replace(results[0], replicas=tuple(dirs), seconds=time.perf_counter() - start)


def _build_replica(split: LabSplit, config: LabConfig, preset: LabPreset, device: Any, out: Path, base_path: Path,
                   base: dict[str, Any], base_docs: list[str], versions: dict[str, str], progress: Progress | None,
                   start: float, replica_dirs: list[str]) -> LabResult:
    """Both twins of one replica, its corpora and its manifest."""
    torch = require("torch", "probes", "The contamination lab")
    k = split.replica
    schedule_seed = [config.seed, 4, k]
    schedule = exposure_schedule(len(split.leaked), config.repeats, preset.twin_steps, schedule_seed)
    corpora = {name: build_corpus(split, contaminated=name == "contaminated", repeats=config.repeats,
                                  seed=config.seed, rendering=config.rendering, config=config) for name in MODELS}

    def save_corpora(tmp: Path) -> None:
        for name in MODELS:
            _write_corpus(corpora[name], tmp / f"{name}.jsonl")

    _install_dir(out, "corpus", save_corpora)
    records: dict[str, dict[str, Any]] = {"base": base}
    n_params = 0
    for name in MODELS:
        texts = _extra_texts(split.leaked if name == "contaminated" else split.placebo, config)
        stage = name if config.replicas == 1 else f"{name} (replica {k})"
        model, tokenizer, records[name] = _train_twin(base_path, preset, config, device, base_docs, texts, schedule,
                                                      progress, stage)
        n_params = sum(p.numel() for p in model.parameters())

        def save(tmp: Path, model: Any = model, tokenizer: Any = tokenizer) -> None:
            # the style the evaluator's "auto" uses for this model, kept in its own config.json so that it
            # travels with the model directory
            from itd.evaluation import MODEL_STYLE_KEY

            setattr(model.config, MODEL_STYLE_KEY, config.eval_prompt_style)
            with quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            _portable_tokenizer_class(tmp / "tokenizer_config.json")

        _install_dir(out, name, save)
        del model

    chosen = (*split.leaked, *split.unseen)
    manifest = build_manifest(
        command="lab",
        config=config.to_dict(),
        inputs=_input_files([*chosen, *split.train, *split.placebo]),
        models=list(MODELS),
    )
    per_step = [len(items) for items in schedule]
    manifest.update(
        {
            "kind": "itd-lab",
            "preset": preset.name,
            "seed": config.seed,
            "leak_rate": config.leak_rate,
            "repeats": config.repeats,
            "recipe": config.recipe,
            "loss_on": config.trained_span,
            "prompt_style": config.eval_prompt_style,
            "replica": k,
            "replicas": config.replicas,
            "replica_dirs": replica_dirs if k == 0 else None,
            "rendering": {
                "mode": config.rendering,
                "resolved": sorted({resolve_rendering(s, config.rendering) for s in (*chosen, *split.train)}),
                "separator": EOS_TOKEN,
            },
            "leaked": split.leaked_ids,
            "unseen": split.unseen_ids,
            "placebo": split.placebo_ids,
            "schedule": {
                "steps": preset.twin_steps,
                "exposures_per_item": config.repeats,
                "seeds": {"experiment": [config.seed, 0], "placebo_and_train": [config.seed, 1],
                          "schedule": schedule_seed, "clean_batches": [config.seed, 5], "weights": config.seed},
                "extra_items_per_step": [min(per_step), max(per_step)],
            },
            "base": {"key": base["key"], "trained_in_this_build": base["trained_in_this_build"],
                     "cache": base["cache"]},
            "corpus": {
                "train_items": len(split.train),
                "leaked_items": len(split.leaked),
                "unseen_items": len(split.unseen),
                "placebo_items": len(split.placebo),
                "benchmark_duplicates_skipped": split.duplicates,
                "train_items_dropped_as_experiment_items": split.dropped_train,
                "documents": {name: len(corpora[name]) for name in MODELS},
                "files": {name: f"corpus/{name}.jsonl" for name in MODELS},
            },
            "tokenizer": {
                "type": "byte-level BPE",
                "trained_on": "the base's clean text",
                "vocab_size": len(tokenizer),
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "pad_token": tokenizer.pad_token,
                "adds_bos": True,
            },
            "model": {"type": "gpt2", "parameters": int(n_params), "n_positions": preset.seq_len},
            "training": records,
            "device": str(device),
            "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
            "threads": torch.get_num_threads(),
            "versions": versions,
            "wall_seconds": round(time.perf_counter() - start, 2),
        }
    )
    write_json(out / MANIFEST, manifest)
    return _result(out, manifest)


def _result(path: Path, manifest: Mapping[str, Any]) -> LabResult:
    training = manifest.get("training", {})
    dirs = manifest.get("replica_dirs") or ["."]
    return LabResult(
        out=path,
        contaminated=path / "contaminated",
        clean=path / "clean",
        manifest=path / MANIFEST,
        leaked=tuple(manifest["leaked"]),
        unseen=tuple(manifest["unseen"]),
        losses={name: list(training.get(name, {}).get("loss_curve", [])) for name in ("base", *MODELS)},
        seconds=float(manifest.get("wall_seconds", 0.0)),
        preset=str(manifest.get("preset", "")),
        placebo=tuple(manifest.get("placebo") or ()),
        replica=int(manifest.get("replica") or 0),
        replicas=tuple(path / d if d != "." else path for d in dirs),
        base=str((manifest.get("base") or {}).get("key", "")),
    )


def load_lab_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the lab in directory `path`; InputError when it is missing, unfinished or not a lab's."""
    path = Path(path)
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("not a finished lab: no manifest.json (the build was interrupted, or this is not a lab)", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the lab manifest: {exc}", file) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "itd-lab":
        raise InputError("not a lab manifest (no \"kind\": \"itd-lab\")", file)
    for key in ("leaked", "unseen"):
        ids = manifest.get(key)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"the lab manifest's {key!r} must be a list of sample ids", file)
    for name in MODELS:
        if not (path / name / "model.safetensors").is_file():
            raise InputError(f"the lab's {name} model is missing ({name}/model.safetensors)", path)
    return manifest


def load_lab(path: str | os.PathLike) -> LabResult:
    """A finished lab directory (one replica) as a `LabResult` (from its manifest)."""
    path = Path(path)
    return _result(path, load_lab_manifest(path))


def held_out(lab: LabResult, benchmark: Sequence[Sample]) -> list[Sample]:
    """The items of `benchmark` that neither twin saw: not in the experiment, not a placebo item, and whose
    rendered text is in neither twin's training corpus. A valid clean reference set for calibrating the probes
    on the lab's models."""
    manifest = load_lab_manifest(lab.out)
    rendering = manifest.get("config", {}).get("rendering", "auto")
    trained: set[str] = set()
    for name in MODELS:
        with open(lab.out / "corpus" / f"{name}.jsonl", encoding="utf-8") as f:
            trained |= {json.loads(line)["text"] for line in f}
    excluded = set(lab.leaked) | set(lab.unseen) | set(manifest.get("placebo") or ())
    return [s for s in benchmark if s.id not in excluded and render(s, rendering) not in trained]


def write_experiment(lab: LabResult, benchmark: Sequence[Sample], out: str | os.PathLike, *,
                     reference: int = 0) -> dict[str, Path]:
    """Write the lab's experiment items (leaked + unseen) as a benchmark in their source layout, `reference`
    held-out items (`held_out`) as a clean reference set, and `truth.json` with the leaked and unseen ids as
    the written files number them. Returns the paths under the keys "benchmark", "reference" and "truth"."""
    from itd.data import load_benchmark, write_benchmark

    out = Path(out)
    chosen = set(lab.leaked) | set(lab.unseen)
    sets = {"benchmark": [s for s in benchmark if s.id in chosen]}
    if reference:
        sets["reference"] = held_out(lab, benchmark)[:reference]
    paths: dict[str, Path] = {}
    written: list[Sample] = []
    for name, samples in sets.items():
        if not samples:
            raise InputError(f"no {name} items to write; the benchmark has too few items beyond the experiment")
        is_dir = any(s.source is not None and s.source.file != samples[0].source.file for s in samples)
        target = out / name if is_dir else out / f"{name}{Path(samples[0].source.file).suffix if samples[0].source else '.jsonl'}"
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        write_benchmark(samples, target)
        paths[name] = target
        if name == "benchmark":
            written = load_benchmark(target)
    text_id = {render(s, "question"): s.id for s in written}
    old_text = {s.id: render(s, "question") for s in sets["benchmark"]}
    truth = {key: [text_id[old_text[i]] for i in ids] for key, ids in (("leaked", lab.leaked), ("unseen", lab.unseen))}
    paths["truth"] = out / "truth.json"
    write_json(paths["truth"], truth)
    return paths
