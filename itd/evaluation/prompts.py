"""Prompts: the prompt styles ("harness", "plain", "auto"), their stop sequences, the generation budget, the
few-shot examples and the prompt text of an item (see the package docstring)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.core.render import LETTERS, render
from itd.evaluation.config import PROMPT_STYLES, EvalConfig, check_choice
from itd.evaluation.scoring import gold_letter, gold_number

__all__ = [
    "HARNESS_GSM8K_STOP",
    "PLAIN_STOP",
    "MODEL_STYLE_KEY",
    "resolve_prompt_style",
    "declared_style",
    "stop_sequences",
    "generation_budget",
    "fewshot_examples",
    "fewshot_pool",
    "build_prompt",
    "gold_continuation",
]

HARNESS_GSM8K_STOP = ("Question:", "</s>", "<|im_end|>", "\n\n")
"""lm-eval gsm8k's `until` plus the few-shot delimiter (see the package docstring)."""
PLAIN_STOP = ("\n\n",)
"""Stop sequences of the plain style (the EOS token ends generation as well)."""
MODEL_STYLE_KEY = "itd_prompt_style"
"""The key of a model's ``config.json`` that names the prompt style "auto" resolves to for it."""


def resolve_prompt_style(style: str, model: Any = None) -> str:
    """The concrete style: "auto" is the style `model` declares (`MODEL_STYLE_KEY` in its config: a `Backend`'s
    `prompt_style`, a loaded model's config, or a local model directory's ``config.json``), else "harness".
    Where the model directory lives plays no part."""
    check_choice("prompt_style", style, PROMPT_STYLES)
    if style != "auto":
        return style
    declared = declared_style(model)
    return declared if declared in ("harness", "plain") else "harness"


def declared_style(model: Any) -> str | None:
    """The prompt style `model` declares (`MODEL_STYLE_KEY`), or None: a local model directory's ``config.json``,
    a `Backend`'s (or any object's) `prompt_style`, or a loaded model's config."""
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        config = Path(model).expanduser() / "config.json"
        if not config.is_file():
            return None
        try:
            import json

            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the model config: {exc}", config) from None
        return data.get(MODEL_STYLE_KEY) if isinstance(data, dict) else None
    if hasattr(model, "prompt_style"):  # every Backend has one
        return getattr(model, "prompt_style", None)
    config = getattr(getattr(model, "model", None), "config", None)  # an itd.probes.models.LoadedModel
    return getattr(config, MODEL_STYLE_KEY, None)


def stop_sequences(style: str) -> tuple[str, ...]:
    """The stop sequences of generation in a concrete prompt style."""
    if style not in ("harness", "plain"):
        raise InputError(f"stop_sequences needs a concrete style, 'harness' or 'plain', got {style!r}")
    return PLAIN_STOP if style == "plain" else HARNESS_GSM8K_STOP


def generation_budget(max_new_tokens: int, context_length: int | None) -> int:
    """The tokens generated at most per item: `max_new_tokens`, capped at half of a short context window (so
    that a prompt keeps the other half); None: no window known (an endpoint)."""
    if context_length is None:
        return max_new_tokens
    return max(1, min(max_new_tokens, context_length // 2))


def _same_item(a: Sample, b: Sample) -> bool:
    return a.id == b.id or (a.question.strip() == b.question.strip() and a.choices == b.choices)


def fewshot_examples(sample: Sample, pool: Sequence[Sample], n: int) -> list[Sample]:
    """The shots of `sample`: the first `n` items of `pool` of its kind (MCQ or not), same-subject items first
    for MCQ, never the item itself. InputError when the pool has fewer than `n`."""
    if n <= 0:
        return []
    order: Iterable[Sample] = pool
    if sample.is_mcq and sample.subject is not None:
        order = itertools.chain((s for s in pool if s.subject == sample.subject),
                                (s for s in pool if s.subject != sample.subject))
    suitable = (s for s in order if s.is_mcq == sample.is_mcq and not _same_item(s, sample))
    shots = list(itertools.islice(suitable, n))  # lazily: a large pool is read only as far as needed
    if len(shots) < n:
        raise InputError(f"{n} few-shot items asked for, but only {len(shots)} suitable ones for item {sample.id!r}")
    return shots


def fewshot_pool(config: EvalConfig) -> list[Sample]:
    """The few-shot examples `config` asks for (none when `num_fewshot` is 0)."""
    if config.num_fewshot == 0 or config.fewshot is None:
        return []
    if isinstance(config.fewshot, tuple):
        return list(config.fewshot)
    return load_benchmark(config.fewshot)


def _mcq_body(sample: Sample, style: str) -> str:
    if style == "plain":
        return render(sample, "options") + "\nAnswer:"
    lines = [sample.question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(sample.choices or ())]
    return "\n".join(lines) + "\nAnswer:"


def _math_body(sample: Sample, style: str) -> str:
    if style == "plain":
        return sample.question.strip() + "\n"
    return f"Question: {sample.question}\nAnswer:"


def _math_shot(shot: Sample, style: str) -> str:
    if style == "plain":
        return render(shot, "question+answer")
    solution = shot.solution if shot.solution else f"#### {shot.answer}"
    return f"{_math_body(shot, style)} {solution}"


def build_prompt(sample: Sample, style: str = "harness", shots: Sequence[Sample] = ()) -> str:
    """The prompt (the context before the answer) of `sample` with `shots` in front, in a concrete style
    ("harness" or "plain"; see the package docstring)."""
    if style not in ("harness", "plain"):
        raise InputError(f"build_prompt needs a concrete style, 'harness' or 'plain', got {style!r}")
    if sample.is_mcq:
        parts = [f"{_mcq_body(s, style)} {gold_letter(s)}\n\n" for s in shots]
        header = ""
        if style == "harness" and sample.subject:
            subject = sample.subject.replace("_", " ")
            header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        return header + "".join(parts) + _mcq_body(sample, style)
    parts = [_math_shot(s, style) + "\n\n" for s in shots]
    return "".join(parts) + _math_body(sample, style)


def gold_continuation(sample: Sample, style: str = "harness") -> str:
    """The text that follows `build_prompt(sample, style)` when the item is shown answered, as a few-shot
    example shows it: the worked solution (or "#### N") for math, " <letter>" for MCQ. What a model must
    produce after the prompt to be scored right; the contamination lab's fine-tuning leak trains on it."""
    if style not in ("harness", "plain"):
        raise InputError(f"gold_continuation needs a concrete style, 'harness' or 'plain', got {style!r}")
    if sample.is_mcq:
        return f" {gold_letter(sample)}"
    gold_number(sample)
    body, shot = _math_body(sample, style), _math_shot(sample, style)
    if not shot.startswith(body) or len(shot) == len(body):
        raise InputError(f"item {sample.id!r} has no answer text to follow its prompt")
    return shot[len(body):]
