"""The lab's settings: the presets (model size, tokenizer, training budget, experiment size) and `LabConfig`, what
to build, both validated when made."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from itd.core.errors import InputError
from itd.core.registry import Registry
from itd.core.render import check_rendering
from itd.core.validate import check_int, is_real

RECIPES = ("pretrain", "finetune")
LOSS_SPANS = ("auto", "all", "answer")


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
    when available, else CPU), the rendering of items as corpus text, and `reference_items`: benchmark items
    drawn with the experiment's and kept from every corpus as the unseen ones are, a clean reference set
    exchangeable with the unseen items by construction (0: none; `itd.lab.held_out` then filters the rest of the
    benchmark, which leaves out more of the items that share text with others, as MMLU's passages do)."""

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
    reference_items: int = 0

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
        check_int("reference_items", self.reference_items, 0)
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
        check_rendering(self.rendering)
        for name, value, allowed in (("recipe", self.recipe, RECIPES), ("loss_on", self.loss_on, LOSS_SPANS),
                                     ("prompt_style", self.prompt_style, ("plain", "harness")),
                                     ("placebo", self.placebo, ("auto", "train", "benchmark"))):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        overrides = dict(self.overrides)
        names = [f.name for f in dataclasses.fields(LabPreset) if f.name not in ("name", "description")]
        for key in overrides:
            if key not in names:
                from itd.core.registry import close_names

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
            # only when asked for, so the labs built before it keep their config (and cached demo labs their key)
            **({"reference_items": self.reference_items} if self.reference_items else {}),
        }
