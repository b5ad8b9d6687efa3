"""The contamination lab: twin language models trained with and without leaked benchmark items.

There are no pretrained weights to audit offline, so probes are measured the way the literature does it
(ConStat, the BDC study, Inference-Time Decontamination): split a seeded subset of a benchmark into *leaked* and
*unseen* items, train a small GPT-2 from scratch on clean in-domain text plus the leaked items repeated `repeats`
times, and train its *clean twin* on the same text without them (same seed, tokenizer, initial weights and number
of steps). A detector should score the leaked items of the contaminated twin higher than the unseen ones, and
should not tell them apart under the clean twin.

Layout of a lab directory::

    DIR/contaminated/   Hugging Face model + tokenizer (safetensors), trained with the leaked items
    DIR/clean/          the clean twin, same tokenizer
    DIR/corpus/         the two training corpora as JSONL ``{"text": ...}``, one document per line
    DIR/manifest.json   ground truth (``leaked`` / ``unseen`` sample ids), config, corpus sizes, losses, timings

The manifest is written last: a directory without one is an unfinished (or killed) build.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from itd.registry import Registry
from itd.render import RENDERINGS, render, resolve_rendering

__all__ = [
    "LabPreset",
    "PRESETS",
    "LabConfig",
    "LabSplit",
    "LabResult",
    "split_items",
    "build_corpus",
    "build_lab",
    "held_out",
    "write_experiment",
    "load_lab_manifest",
    "load_lab",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MODELS = ("contaminated", "clean")
MANIFEST = "manifest.json"
_TMP_PREFIX = ".lab-tmp-"
_LAB_ENTRIES = frozenset({MANIFEST, "corpus", *MODELS})
_LOSS_POINTS = 50  # the loss curve kept in the manifest is averaged down to about this many points
_NEAR_N = 13  # a clean item sharing a run of this many words with an experiment item is a near copy of it
_WORD = re.compile(r"\w+")

Progress = Callable[[str, int, int], None]


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class LabPreset:
    """Model size, tokenizer, training budget and experiment size of a lab.

    `seq_len` is both the training block length and the model's `n_positions`, so it must cover the longest
    rendered item a probe will score. `n_test_items`: benchmark items in the experiment (leaked + unseen);
    `n_train_items`: clean training items; None means all available.
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
    warmup: float = 0.05
    weight_decay: float = 0.01
    n_test_items: int | None = None
    n_train_items: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "steps"):
            _check_int(key, getattr(self, key), 1)
        _check_int("vocab_size", self.vocab_size, 512)  # the 256 byte symbols, specials, and some merges
        for key in ("n_test_items", "n_train_items"):
            if getattr(self, key) is not None:
                _check_int(key, getattr(self, key), 2 if key == "n_test_items" else 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not (_is_real(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (_is_real(self.warmup) and 0 <= self.warmup < 1):
            raise ValueError(f"warmup (a fraction of the steps) must be in [0, 1), got {self.warmup!r}")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0):
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
        n_test_items=120, n_train_items=150,
        description="0.7M parameters; both twins in about 25 s on 2 idle CPU cores, 2 min on a busy one (tests, demo)",
    ),
    LabPreset(
        "demo", n_layer=2, n_head=4, n_embd=128, seq_len=256, vocab_size=1024, batch_size=16, steps=600, lr=3e-3,
        n_test_items=200, n_train_items=4000,
        description="tiny's model on short texts, trained 12x longer: learns itd's arithmetic problems (itd demo)",
    ),
    LabPreset(
        "small", n_layer=4, n_head=4, n_embd=256, seq_len=512, vocab_size=4096, batch_size=8, steps=320, lr=1.5e-3,
        n_test_items=400, n_train_items=1000,
        description="4M parameters; CPU benchmarks, both twins in about 10-15 minutes on 2 cores",
    ),
    LabPreset(
        "medium", n_layer=6, n_head=6, n_embd=384, seq_len=512, vocab_size=8192, batch_size=32, steps=2000, lr=1e-3,
        n_test_items=1000, n_train_items=None,
        description="14M parameters, all the clean text; GPU",
    ),
    LabPreset(
        "large", n_layer=12, n_head=12, n_embd=768, seq_len=1024, vocab_size=16384, batch_size=32, steps=1500,
        lr=6e-4, n_test_items=2000, n_train_items=None,
        description="GPT-2 small size (98M parameters), all the clean text; GPU",
    ),
):
    PRESETS.register(_preset.name)(_preset)
del _preset


@dataclass(frozen=True)
class LabConfig:
    """What to build: a preset (with `overrides` of its fields, e.g. ``{"steps": 3}``), the leak rate (fraction of
    the experiment's items leaked), how often each leaked item is repeated in the corpus, the seed, the device
    ("auto": CUDA when available, else CPU) and the rendering of items as training text."""

    preset: str = "tiny"
    leak_rate: float = 0.3
    repeats: int = 6
    seed: int = 0
    device: str = "auto"
    rendering: str = "auto"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            PRESETS.get(self.preset if isinstance(self.preset, str) else repr(self.preset))
        except InputError as exc:
            raise ValueError(exc.message) from None
        object.__setattr__(self, "preset", self.preset.strip().lower())
        if not (_is_real(self.leak_rate) and 0 < self.leak_rate < 1):
            raise ValueError(f"leak_rate must be strictly between 0 and 1, got {self.leak_rate!r}")
        _check_int("repeats", self.repeats, 1)
        _check_int("seed", self.seed, 0)
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "leak_rate": self.leak_rate,
            "repeats": self.repeats,
            "seed": self.seed,
            "device": self.device,
            "rendering": self.rendering,
            "overrides": dict(self.overrides),
            "resolved_preset": self.resolved_preset().to_dict(),
        }


@dataclass(frozen=True)
class LabSplit:
    """The items of an experiment: `leaked` (trained on), `unseen` (held out), and the clean `train` items.

    `duplicates` counts benchmark items left out because their text repeats an earlier item's, and
    `dropped_train` the clean items left out as copies or near copies (a shared run of 13 words) of an experiment
    item: either would make an unseen item seen.
    """

    leaked: tuple[Sample, ...]
    unseen: tuple[Sample, ...]
    train: tuple[Sample, ...]
    duplicates: int = 0
    dropped_train: int = 0

    @property
    def leaked_ids(self) -> list[str]:
        return [s.id for s in self.leaked]

    @property
    def unseen_ids(self) -> list[str]:
        return [s.id for s in self.unseen]


@dataclass(frozen=True)
class LabResult:
    """A built lab: its directory, the two model directories, the ground truth and the training loss curves."""

    out: Path
    contaminated: Path
    clean: Path
    manifest: Path
    leaked: tuple[str, ...]
    unseen: tuple[str, ...]
    losses: dict[str, list[float]]
    seconds: float
    preset: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "contaminated": str(self.contaminated),
            "clean": str(self.clean),
            "manifest": str(self.manifest),
            "preset": self.preset,
            "leaked": len(self.leaked),
            "unseen": len(self.unseen),
            "final_loss": {name: curve[-1] if curve else None for name, curve in self.losses.items()},
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------------------------------------------------------------
# Items and corpora


def split_items(benchmark: Sequence[Sample], train: Sequence[Sample] | None, config: LabConfig) -> LabSplit:
    """Choose the experiment's items (seeded) and split them into leaked and unseen; pick the clean train items.

    `preset.n_test_items` items are drawn from `benchmark` (all when None) and `round(leak_rate * n)` of them
    leaked (at least one of each kind). The clean text is `preset.n_train_items` items drawn from `train`, or,
    when `train` is None, from the benchmark items not drawn for the experiment.
    """
    preset = config.resolved_preset()
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
    leaked = [pool[i] for i in sorted(order[:n_leaked].tolist())]
    unseen = [pool[i] for i in sorted(order[n_leaked:n].tolist())]
    chosen = {render(s, config.rendering) for s in (*leaked, *unseen)}
    chosen_grams = set().union(*(_word_ngrams(text) for text in chosen))
    candidates = [pool[i] for i in sorted(order[n:].tolist())] if train is None else list(train)
    kept = []
    for s in candidates:
        text = render(s, config.rendering)
        if text not in chosen and chosen_grams.isdisjoint(_word_ngrams(text)):
            kept.append(s)
    if not kept:
        what = "the training items" if train is not None else "the benchmark items not drawn for the experiment"
        raise InputError(f"no clean training text: {what} are none; pass training items or a larger benchmark")
    dropped = len(candidates) - len(kept)
    if preset.n_train_items is not None and len(kept) > preset.n_train_items:
        pick = np.random.default_rng([config.seed, 1]).permutation(len(kept))[: preset.n_train_items]
        kept = [kept[i] for i in sorted(pick.tolist())]
    return LabSplit(tuple(leaked), tuple(unseen), tuple(kept), len(benchmark) - len(pool), dropped)


def _word_ngrams(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + _NEAR_N]) for i in range(len(words) - _NEAR_N + 1)}


def build_corpus(split: LabSplit, *, contaminated: bool, repeats: int, seed: int, rendering: str = "auto") -> list[str]:
    """The training documents in training order: the rendered clean items, plus (contaminated) each leaked item
    `repeats` times, shuffled in (seeded)."""
    _check_int("repeats", repeats, 1)
    docs = [render(s, rendering) for s in split.train]
    if contaminated:
        docs += [render(s, rendering) for s in split.leaked for _ in range(repeats)]
    order = np.random.default_rng([seed, 2]).permutation(len(docs))
    return [docs[i] for i in order]


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


def _resolve_device(torch: Any, name: str) -> Any:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested, but CUDA is not available")
    return torch.device(name)


def _batches(docs: Sequence[np.ndarray], eos: int, seq_len: int, batch_size: int, seed: int):
    """Endless (batch_size, seq_len) blocks of the token stream `EOS doc EOS doc ...`: the first epoch in corpus
    order, later ones in a seeded random document order; blocks run on across document and epoch boundaries."""
    rng = np.random.default_rng([seed, 3])
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


def _lr_at(step: int, preset: LabPreset) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    warm = round(preset.warmup * preset.steps)
    if step < warm:
        return preset.lr * (step + 1) / warm
    done = (step - warm) / max(1, preset.steps - warm)
    return preset.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def _curve(losses: list[float]) -> tuple[list[float], int]:
    """The loss curve averaged over windows of `every` steps (about `_LOSS_POINTS` points)."""
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


def _train_model(
    docs: Sequence[np.ndarray],
    tokenizer: Any,
    preset: LabPreset,
    seed: int,
    device: Any,
    progress: Progress | None,
    stage: str,
) -> tuple[Any, dict[str, Any]]:
    """Train a GPT-2 from scratch on the documents (token ids) for `preset.steps` steps; (model, training record)."""
    torch = require("torch", "probes", "The contamination lab")
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
    start = time.perf_counter()
    losses: list[float] = []
    with _deterministic(torch, device, seed):
        model = transformers.GPT2LMHeadModel(config)  # built on the CPU: the same initial weights on any device
        model.to(device)
        model.train()
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": preset.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=preset.lr,
            betas=(0.9, 0.95),
        )
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        batches = _batches(docs, tokenizer.eos_token_id, preset.seq_len, preset.batch_size, seed)
        for step in range(preset.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, preset)
            ids = torch.from_numpy(next(batches)).to(device)
            with autocast:
                logits = model(input_ids=ids).logits
            # The loss is computed here rather than by the model (`labels=`), whose loss helper varies by version.
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress is not None:
                progress(stage, step + 1, preset.steps)
    model.eval()
    curve, every = _curve(losses)
    tokens = preset.steps * preset.batch_size * preset.seq_len
    corpus_tokens = sum(len(d) + 1 for d in docs)
    record = {
        "steps": preset.steps,
        "tokens": tokens,
        "epochs": round(tokens / corpus_tokens, 2),
        "first_loss": round(losses[0], 5),
        "final_loss": curve[-1],
        "loss_curve": curve,
        "loss_every": every,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return model, record


# ---------------------------------------------------------------------------------------------------------------------
# Output directory


def _prepare_out(out: Path) -> None:
    """Make `out` ready for a build: new, empty, or an earlier lab (whose manifest goes first, so that an
    interrupted rebuild never looks complete). Refuses a directory holding anything else."""
    if out.exists() and not out.is_dir():
        raise InputError("the lab output must be a directory, but this is a file", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = list(out.iterdir())
    except OSError as exc:
        raise InputError(f"cannot create the lab directory: {exc.strerror or exc}", out) from None
    foreign = sorted(p.name for p in entries if p.name not in _LAB_ENTRIES and not p.name.startswith(_TMP_PREFIX))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"the directory is not empty and not a lab (it holds {shown}); choose another --out", out)
    (out / MANIFEST).unlink(missing_ok=True)
    for p in entries:
        if p.name.startswith(_TMP_PREFIX):  # left behind by a killed build
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


@contextlib.contextmanager
def _quiet_transformers(transformers: Any):
    """No transformers progress bars inside the block (the library does not print; the CLI draws its own)."""
    logging = transformers.utils.logging
    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _portable_tokenizer_class(path: Path) -> None:
    """Name the generic fast tokenizer class, which transformers 4 and 5 both load (5 saves its own class name)."""
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json(path, config)


def _write_corpus(docs: Sequence[str], path: Path) -> None:
    import json

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
) -> LabResult:
    """Build a contamination lab in directory `out`: split, corpora, tokenizer, both twins, manifest.

    `train` is the clean in-domain text (e.g. the GSM8K train split; MMLU dev plus other subjects); when None, the
    benchmark items not drawn for the experiment serve as it. `progress(stage, done, total)` is called as the
    stages ("tokenizer", then the training steps of "contaminated" and "clean") advance. `out` must be new, empty or an earlier lab.
    """
    torch = require("torch", "probes", "The contamination lab")
    transformers = require("transformers", "probes", "The contamination lab")
    tokenizers = require("tokenizers", "probes", "The contamination lab")
    start = time.perf_counter()
    out = Path(out)
    preset = config.resolved_preset()
    device = _resolve_device(torch, config.device)
    split = split_items(benchmark, train, config)
    _prepare_out(out)

    corpora = {
        name: build_corpus(split, contaminated=name == "contaminated", repeats=config.repeats, seed=config.seed,
                           rendering=config.rendering)
        for name in MODELS
    }
    if progress is not None:
        progress("tokenizer", 0, 1)
    tokenizer = _train_tokenizer(corpora["clean"], preset.vocab_size, preset.seq_len)
    if progress is not None:
        progress("tokenizer", 1, 1)

    def save_corpora(tmp: Path) -> None:
        for name in MODELS:
            _write_corpus(corpora[name], tmp / f"{name}.jsonl")

    _install_dir(out, "corpus", save_corpora)

    records: dict[str, dict[str, Any]] = {}
    n_tokens: dict[str, int] = {}
    for name in MODELS:
        encoded = tokenizer.backend_tokenizer.encode_batch(corpora[name], add_special_tokens=False)
        docs = [np.asarray(e.ids, dtype=np.int64) for e in encoded]
        n_tokens[name] = sum(len(d) + 1 for d in docs)
        model, records[name] = _train_model(docs, tokenizer, preset, config.seed, device, progress, name)
        n_params = sum(p.numel() for p in model.parameters())

        def save(tmp: Path, model: Any = model) -> None:
            with _quiet_transformers(transformers):
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            _portable_tokenizer_class(tmp / "tokenizer_config.json")

        _install_dir(out, name, save)
        del model

    chosen = (*split.leaked, *split.unseen)
    manifest = build_manifest(
        command="lab",
        config=config.to_dict(),
        inputs=_input_files([*chosen, *split.train]),
        models=list(MODELS),
    )
    seconds = time.perf_counter() - start
    manifest.update(
        {
            "kind": "itd-lab",
            "preset": preset.name,
            "seed": config.seed,
            "leak_rate": config.leak_rate,
            "repeats": config.repeats,
            "rendering": {
                "mode": config.rendering,
                "resolved": sorted({resolve_rendering(s, config.rendering) for s in (*chosen, *split.train)}),
                "separator": EOS_TOKEN,
            },
            "leaked": split.leaked_ids,
            "unseen": split.unseen_ids,
            "corpus": {
                "train_items": len(split.train),
                "leaked_items": len(split.leaked),
                "unseen_items": len(split.unseen),
                "benchmark_duplicates_skipped": split.duplicates,
                "train_items_dropped_as_experiment_items": split.dropped_train,
                "documents": {name: len(corpora[name]) for name in MODELS},
                "tokens": n_tokens,
                "files": {name: f"corpus/{name}.jsonl" for name in MODELS},
            },
            "tokenizer": {
                "type": "byte-level BPE",
                "trained_on": "clean corpus",
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
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
            "wall_seconds": round(seconds, 2),
        }
    )
    write_json(out / MANIFEST, manifest)
    return LabResult(
        out=out,
        contaminated=out / "contaminated",
        clean=out / "clean",
        manifest=out / MANIFEST,
        leaked=tuple(split.leaked_ids),
        unseen=tuple(split.unseen_ids),
        losses={name: records[name]["loss_curve"] for name in MODELS},
        seconds=seconds,
        preset=preset.name,
    )


def load_lab_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the lab in directory `path`; InputError when it is missing, unfinished or not a lab's."""
    import json

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
    """A finished lab directory as a `LabResult` (from its manifest)."""
    path = Path(path)
    manifest = load_lab_manifest(path)
    training = manifest.get("training", {})
    return LabResult(
        out=path,
        contaminated=path / "contaminated",
        clean=path / "clean",
        manifest=path / MANIFEST,
        leaked=tuple(manifest["leaked"]),
        unseen=tuple(manifest["unseen"]),
        losses={name: list(training.get(name, {}).get("loss_curve", [])) for name in MODELS},
        seconds=float(manifest.get("wall_seconds", 0.0)),
        preset=str(manifest.get("preset", "")),
    )


def held_out(lab: LabResult, benchmark: Sequence[Sample]) -> list[Sample]:
    """The items of `benchmark` that neither twin saw: not in the experiment, and whose rendered text is not in
    the clean training corpus. A valid clean reference set for calibrating the probes on the lab's models."""
    import json

    manifest = load_lab_manifest(lab.out)
    rendering = manifest.get("config", {}).get("rendering", "auto")
    with open(lab.out / "corpus" / "clean.jsonl", encoding="utf-8") as f:
        trained = {json.loads(line)["text"] for line in f}
    chosen = set(lab.leaked) | set(lab.unseen)
    return [s for s in benchmark if s.id not in chosen and render(s, rendering) not in trained]


def write_experiment(lab: LabResult, benchmark: Sequence[Sample], out: str | os.PathLike, *,
                     reference: int = 0) -> dict[str, Path]:
    """Write the lab's experiment items (leaked + unseen) as a benchmark in their source layout, `reference`
    held-out items (`held_out`) as a clean reference set, and `truth.json` with the leaked and unseen ids as
    the written files number them. Returns the paths under the keys "benchmark", "reference" and "truth"."""
    from itd.data import load_benchmark, write_benchmark
    from itd.io import write_json

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
