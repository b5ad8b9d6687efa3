"""The evaluation's configuration: `EvalConfig`, its validation, and the choices it offers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.validate import is_int

__all__ = ["PROMPT_STYLES", "METRICS", "MCQ_MODES", "EvalConfig", "check_choice"]

PROMPT_STYLES = ("auto", "harness", "plain")
METRICS = ("flexible", "strict")
MCQ_MODES = ("auto", "loglikelihood", "generate")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    `num_fewshot`: shots per prompt. `fewshot`: where the shots come from: a benchmark path (read with
    `load_benchmark`) or a sequence of samples; required when `num_fewshot` > 0. `prompt_style`: "auto",
    "harness" or "plain" (package docstring). `metric`: the GSM8K extraction that decides `correct`, "flexible"
    or "strict". `mcq_mode`: "loglikelihood", "generate" or "auto" (log-likelihood where the backend can, i.e.
    Hugging Face models; generation for endpoints). `max_new_tokens`: generation budget. `batch_size`: rows per
    forward pass of a Hugging Face model, or "auto" (a token budget on CPU; on CUDA large, halved on
    out-of-memory). `seed`: the sampling seed sent to endpoints (greedy local decoding needs none).
    `chunk_size`: items per resumable chunk.
    """

    num_fewshot: int = 0
    fewshot: str | os.PathLike[str] | tuple[Sample, ...] | None = None
    prompt_style: str = "auto"
    metric: str = "flexible"
    mcq_mode: str = "auto"
    max_new_tokens: int = 256
    batch_size: int | str = "auto"
    seed: int = 0
    chunk_size: int = 32

    def __post_init__(self) -> None:
        if not is_int(self.num_fewshot) or self.num_fewshot < 0:
            raise InputError(f"num_fewshot must be an integer >= 0, got {self.num_fewshot!r}")
        fewshot = self.fewshot
        if fewshot is not None and not isinstance(fewshot, (str, os.PathLike)):
            if not isinstance(fewshot, Iterable) or isinstance(fewshot, Mapping):
                raise InputError(f"fewshot must be a benchmark path or a sequence of samples, got {fewshot!r:.100}")
            fewshot = tuple(fewshot)
            if not all(isinstance(s, Sample) for s in fewshot):
                raise InputError("fewshot must be a benchmark path or a sequence of Sample objects")
            object.__setattr__(self, "fewshot", fewshot)
        elif isinstance(fewshot, os.PathLike):
            object.__setattr__(self, "fewshot", os.fspath(fewshot))
        if self.num_fewshot > 0 and not self.fewshot:
            raise InputError(
                f"num_fewshot={self.num_fewshot} needs few-shot items: set fewshot to a benchmark path "
                "(e.g. the GSM8K train split or the MMLU dev directory) or to a list of samples"
            )
        check_choice("prompt_style", self.prompt_style, PROMPT_STYLES)
        check_choice("metric", self.metric, METRICS)
        check_choice("mcq_mode", self.mcq_mode, MCQ_MODES)
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.batch_size != "auto" and (not is_int(self.batch_size) or self.batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if not is_int(self.seed):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if not is_int(self.chunk_size) or self.chunk_size < 1:
            raise InputError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config for a manifest (few-shot samples given in memory appear as their ids)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.fewshot, tuple):
            d["fewshot"] = {"samples": [s.id for s in self.fewshot]}
        return d


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """InputError unless `value` is one of `allowed` (the error names the setting `name` and the choices)."""
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
