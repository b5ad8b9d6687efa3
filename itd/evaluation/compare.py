"""Evaluation runner: score a model on a benchmark (original or decontaminated) the way the field does, and
compare the two with bootstrap confidence intervals.

    result = evaluate(samples, "lab/contaminated", EvalConfig(num_fewshot=5, fewshot="gsm8k/train.jsonl"))
    after = evaluate(rewritten_samples, "lab/contaminated", ...)
    report = compare(result, after, flagged_ids, clean_original=..., clean_decontaminated=...)

**Backends.** `HFBackend`: a local or Hub Hugging Face causal LM (`itd.models.load_model`): batched greedy
generation with left padding for GSM8K; for MCQ the log-likelihood of each option letter after the prompt, as
lm-evaluation-harness scores MMLU (context "...\\nAnswer:", continuations " A" ... " D", argmax of the summed
log-probabilities). `OpenAIBackend`: any OpenAI-compatible endpoint over the chat or the completions API, through
`itd.llm.LLMClient` (concurrency, SDK retries, on-disk reply cache, the key never written anywhere); its MCQ
answers are generated and the letter parsed.

**Prompts** (`EvalConfig.prompt_style`):

- ``harness``: lm-evaluation-harness 0.4's stock templates. GSM8K: ``Question: {question}\\nAnswer:``, shots
  ``Question: ...\\nAnswer: {full solution, calculator annotations included}`` joined by ``\\n\\n``; generation
  stops at ``Question:``, ``</s>``, ``<|im_end|>``, ``\\n\\n`` and the model's EOS. MMLU: the header "The following
  are multiple choice questions (with answers) about {subject}.\\n\\n", then shots and the item as
  ``{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:`` (shots followed by `` {letter}\\n\\n``).
  Two deliberate differences: lm-eval's gsm8k task draws its shots at random (seed 1234) from the train split,
  here the first n of the few-shot set are used (lm-eval's ``first_n`` sampler, which its MMLU uses); and
  ``\\n\\n`` (the few-shot delimiter) is also a GSM8K stop sequence (gsm8k v3 of lm-eval stops at the other three
  only).
- ``plain``: exactly how the contamination lab renders training text (`itd.render`): GSM8K the question, "\\n",
  then the solution with annotations stripped (the prompt ends after that "\\n"); MCQ the ``options`` rendering
  then ``\\nAnswer:`` and continuations " A" ... Shots are full renderings joined by ``\\n\\n``; generation stops at
  the EOS token and ``\\n\\n``.
- ``auto``: the style the model declares in its own config (``"itd_prompt_style"`` in ``config.json``, which the
  contamination lab writes into both twins: ``plain`` for a pretraining leak, the leak's style for a fine-tuning
  one), else ``harness``. It travels with the model directory, so a copied or moved model is evaluated alike.
  `EvalResult.prompt_style` records the resolved style.

**Generation length.** A generation budget is one number per model, lm-eval's rule: `EvalConfig.max_new_tokens`,
capped at half the context window of a short-context model (`generation_budget`), with prompts left-truncated to
the context minus that budget. `EvalResult.max_gen_toks` records it; `itd.export.export_lm_eval` writes it as the
task's ``max_gen_toks``, so ``lm_eval`` generates exactly what itd did.

Few-shot items come from `EvalConfig.fewshot` (a path read with `load_benchmark`, or samples): the first
`num_fewshot` of them, same-subject items first for MCQ (MMLU's dev items per subject, as lm-eval does), never
the evaluated item itself (same id, or same question and choices).

**Scoring.** GSM8K as lm-eval's gsm8k task: *strict-match* takes the first ``#### (\\-?[0-9\\.\\,]+)``, and
*flexible-extract* the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; both are compared with the gold final answer
after lm-eval's normalisation (commas, ``$`` and one trailing period removed, lowercased). lm-eval reports the two
side by side and names no single headline; `EvalConfig.metric` picks the one that decides `correct` (default
``flexible``, the one that does not depend on the model copying the ``####`` format, so a zero-shot or chat model
is not scored as wrong for its layout), and both are always kept per item and in `EvalResult.accuracy_by_metric`.
MCQ: the letter with the largest log-likelihood, or the letter parsed from the generated text (`parse_letter`).
An answer that cannot be parsed (or an endpoint error) is wrong and listed in `EvalResult.unparsed`; no item is
ever dropped.

**Resumability.** Requests are cut into fixed chunks of `EvalConfig.chunk_size` items in request order (the
boundaries never depend on what is already done). A chunk's key is `itd.io.content_key` of the backend's
`fingerprint()`, the request kind and the chunk's requests (prompts and generation parameters); with a `store`
(an `itd.io.Journal`) finished chunks are read back and every computed chunk is recorded as soon as it is done,
so a killed run resumes where it stopped and produces the same outputs.

**Comparison.** `compare` gives accuracy with percentile-bootstrap 95% intervals (items resampled) on the
original and decontaminated sets, the flagged items before and after rewriting and the unflagged rest, for the
evaluated model and (when given) a clean reference; the inflation (original minus decontaminated accuracy), and
with a clean model the true and residual inflation, the share of inflation removed, and BDC-style fidelity and
resistance of the rewritten items. Differences use a paired bootstrap (the same resampled items on both sides).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import itertools
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from itd.data import Sample, load_benchmark
from itd.errors import InputError, require
from itd.io import Journal, content_key
from itd.models import TOKENIZER_FILES, token_batches
from itd.render import LETTERS, render
from itd.validate import is_int

__all__ = [
    "PROMPT_STYLES",
    "METRICS",
    "MCQ_MODES",
    "HARNESS_GSM8K_STOP",
    "PLAIN_STOP",
    "EvalConfig",
    "GenRequest",
    "LLRequest",
    "GenOutput",
    "Backend",
    "HFBackend",
    "OpenAIBackend",
    "ItemResult",
    "EvalResult",
    "Estimate",
    "Comparison",
    "TwinOutcome",
    "GroundTruth",
    "evaluate",
    "accuracy_by_group",
    "compare",
    "ground_truth",
    "resolve_prompt_style",
    "stop_sequences",
    "generation_budget",
    "MODEL_STYLE_KEY",
    "fewshot_examples",
    "build_prompt",
    "gold_continuation",
    "extract_strict",
    "extract_flexible",
    "normalize_answer",
    "parse_letter",
]

PROMPT_STYLES = ("auto", "harness", "plain")
METRICS = ("flexible", "strict")
MCQ_MODES = ("auto", "loglikelihood", "generate")
HARNESS_GSM8K_STOP = ("Question:", "</s>", "<|im_end|>", "\n\n")
"""lm-eval gsm8k's `until` plus the few-shot delimiter (see the module docstring)."""
PLAIN_STOP = ("\n\n",)
"""Stop sequences of the plain style (the EOS token ends generation as well)."""
MODEL_STYLE_KEY = "itd_prompt_style"
"""The key of a model's ``config.json`` that names the prompt style "auto" resolves to for it."""

Progress = Callable[[int, int], None]  # (items done, items in all)

_KEY_VERSION = 2  # 2: one generation budget per model, prompts truncated to fit it (lm-eval's rule)
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k "strict-match"
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval gsm8k "flexible-extract"
_IGNORE = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))  # lm-eval's regexes_to_ignore
_ANSWER_LETTER = re.compile(r"(?i:\banswer\b(?:\s+is)?)\s*[:\-]?\s*[\(\[]?\s*([A-Z])(?![A-Za-z0-9'])")
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])|\(([a-z])\)")
_ARTICLE_A = re.compile(r"\s+(?!is\b)[a-z]")  # "A cat" is an article, "A is right" a letter
_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


# ---------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    `num_fewshot`: shots per prompt. `fewshot`: where the shots come from: a benchmark path (read with
    `load_benchmark`) or a sequence of samples; required when `num_fewshot` > 0. `prompt_style`: "auto",
    "harness" or "plain" (module docstring). `metric`: the GSM8K extraction that decides `correct`, "flexible"
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
        _choose("prompt_style", self.prompt_style, PROMPT_STYLES)
        _choose("metric", self.metric, METRICS)
        _choose("mcq_mode", self.mcq_mode, MCQ_MODES)
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


def _choose(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def normalize_answer(text: str) -> str:
    """lm-eval gsm8k's normalisation before exact match: commas, "$", everything up to the last "#### " and one
    trailing period removed; lowercased."""
    for rx in _IGNORE:
        text = rx.sub("", text)
    return text.lower()


def extract_strict(text: str | None) -> str | None:
    """lm-eval's strict-match: the number after the first "#### " (`#### (\\-?[0-9\\.\\,]+)`), or None."""
    m = _STRICT.search(text or "")
    return m.group(1).strip() if m else None


def extract_flexible(text: str | None) -> str | None:
    """lm-eval's flexible-extract: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, or None."""
    matches = _FLEXIBLE.findall(text or "")
    if not matches:
        return None
    found = [g for g in matches[-1] if g]
    return found[0].strip() if found else None


def parse_letter(text: str | None, n_choices: int = 4) -> str | None:
    """The option letter a generated answer names, or None.

    First the letter after "answer"/"answer is"/"Answer:" (optionally in brackets); else the first standalone
    capital letter among the first `n_choices` (not part of a word; an "A" followed by a lowercase word is an
    article), or a lowercase one in parentheses ("(b)").
    """
    if not text:
        return None
    valid = LETTERS[:n_choices]
    for m in _ANSWER_LETTER.finditer(text):
        if m.group(1) in valid:
            return m.group(1)
    for m in _STANDALONE_LETTER.finditer(text):
        letter = m.group(1) or m.group(2).upper()
        if letter not in valid:
            continue
        if m.group(1) == "A" and _ARTICLE_A.match(text, m.end()):
            continue
        return letter
    return None


def _gold_number(sample: Sample) -> str:
    if sample.answer is None or str(sample.answer).strip() == "":
        raise InputError(f"item {sample.id!r} has no gold answer")
    return normalize_answer(str(sample.answer).strip())


def _gold_letter(sample: Sample) -> str:
    if not is_int(sample.answer) or not 0 <= sample.answer < len(sample.choices or ()):
        raise InputError(f"multiple-choice item {sample.id!r} needs a choice index as its answer, got {sample.answer!r}")
    if len(sample.choices or ()) > len(LETTERS):
        raise InputError(f"item {sample.id!r} has more choices than letters")
    return LETTERS[sample.answer]


def _sample_key(sample: Sample) -> str:
    """What a rewrite changes: question, choices and answer."""
    return content_key(sample.question, list(sample.choices) if sample.choices is not None else None, sample.answer)


# ---------------------------------------------------------------------------------------------------------------------
# Prompts


def resolve_prompt_style(style: str, model: Any = None) -> str:
    """The concrete style: "auto" is the style `model` declares (`MODEL_STYLE_KEY` in its config: a `Backend`'s
    `prompt_style`, a loaded model's config, or a local model directory's ``config.json``), else "harness".
    Where the model directory lives plays no part."""
    _choose("prompt_style", style, PROMPT_STYLES)
    if style != "auto":
        return style
    declared = _declared_style(model)
    return declared if declared in ("harness", "plain") else "harness"


def _declared_style(model: Any) -> str | None:
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
    if isinstance(model, Backend) or hasattr(model, "prompt_style"):
        return getattr(model, "prompt_style", None)
    config = getattr(getattr(model, "model", None), "config", None)  # an itd.models.LoadedModel
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
    ("harness" or "plain"; see the module docstring)."""
    if style not in ("harness", "plain"):
        raise InputError(f"build_prompt needs a concrete style, 'harness' or 'plain', got {style!r}")
    if sample.is_mcq:
        parts = [f"{_mcq_body(s, style)} {_gold_letter(s)}\n\n" for s in shots]
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
        return f" {_gold_letter(sample)}"
    _gold_number(sample)
    body, shot = _math_body(sample, style), _math_shot(sample, style)
    if not shot.startswith(body) or len(shot) == len(body):
        raise InputError(f"item {sample.id!r} has no answer text to follow its prompt")
    return shot[len(body):]


# ---------------------------------------------------------------------------------------------------------------------
# Requests and backends


@dataclass(frozen=True, slots=True)
class GenRequest:
    """Generate from `prompt` greedily, at most `max_new_tokens`, cut before the first of `stop`."""

    prompt: str
    stop: tuple[str, ...]
    max_new_tokens: int
    seed: int = 0

    def key(self) -> dict[str, Any]:
        """What decides the output, as JSON data (part of the chunk key)."""
        return {"prompt": self.prompt, "stop": list(self.stop), "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass(frozen=True, slots=True)
class LLRequest:
    """Score each continuation's summed log-probability after `context`."""

    context: str
    continuations: tuple[str, ...]

    def key(self) -> dict[str, Any]:
        """What decides the output, as JSON data (part of the chunk key)."""
        return {"context": self.context, "continuations": list(self.continuations)}


@dataclass(slots=True)
class GenOutput:
    """A generated text (cut at the stop sequences), or the error that left none (endpoint failures)."""

    text: str | None
    error: str | None = None


def _truncate(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop sequence (lm-eval's `until`)."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


class Backend(abc.ABC):
    """A model to evaluate. Subclasses set `name`, `model_path` (a local model directory, or None) and
    `supports_loglikelihood`, and implement `fingerprint` and `generate` (and `loglikelihood` if supported)."""

    name: str = "backend"
    model_path: str | None = None
    supports_loglikelihood: bool = False

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON data that identifies the model's weights and everything else that decides its outputs (never a
        secret); part of every chunk key."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """One output per request, in order; texts are cut before the first stop sequence."""

    def loglikelihood(self, requests: Sequence[LLRequest]) -> list[list[float]]:
        """Per request, the summed log-probability of each continuation after the context."""
        raise InputError(f"the backend {self.name!r} cannot score log-likelihoods; use mcq_mode='generate'")

    prompt_style: str | None = None
    """The prompt style the model declares for "auto" (`resolve_prompt_style`); None: the default."""
    context_length: int | None = None
    """The model's context window in tokens, when known (it caps the generation budget)."""


class HFBackend(Backend):
    """A Hugging Face causal LM (`itd.models.LoadedModel`, or a hub name / local directory to load).

    Texts are tokenised with the tokenizer's own special tokens (its BOS, or the lab tokenizer's leading EOS),
    as lm-eval does. Generation: left padding, greedy, at most `generation_budget` tokens, prompts left-truncated
    to the rest of the context window (lm-eval's rule), stop sequences checked during generation (a stopping criterion) and
    applied to the decoded text, which ends at the first EOS token; the model's own generation settings other
    than the sampling ones (e.g. a repetition penalty) apply, as under lm-eval. Log-likelihood: lm-eval's
    context/continuation split (trailing spaces of the context move to the continuation; the pair is encoded
    whole and split after the context's tokens), inputs left-truncated to the context window, identical inputs
    (one-token continuations of one context) run once.
    """

    supports_loglikelihood = True

    def __init__(self, model: Any, *, batch_size: int | str = "auto", **load_kwargs: Any):
        from itd.models import LoadedModel, load_model

        if not isinstance(model, LoadedModel):
            model = load_model(model, **load_kwargs)
        elif load_kwargs:
            raise InputError("load options are only for a model given by name or path")
        if batch_size != "auto" and (not is_int(batch_size) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
        self.lm = model
        self.batch_size = batch_size
        self.name = model.name
        self.model_path = _loaded_from(model)
        self.prompt_style = _declared_style(model)
        self.context_length = model.context_length
        self._fingerprint: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"HFBackend({self.name!r}, device={self.lm.device!r}, dtype={self.lm.dtype!r})"

    # -- identity

    def fingerprint(self) -> dict[str, Any]:
        """The SHA-256 of the safetensors weights, config and tokenizer files of a local model directory; for a
        Hub model its name and resolved commit; for a model only in memory, a hash of its parameters. Plus the
        dtype. (A local directory's path is not in it, so a moved model keeps its finished chunks.)"""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return dict(self._fingerprint)

    def _compute_fingerprint(self) -> dict[str, Any]:

        lm = self.lm
        fp: dict[str, Any] = {"backend": "hf", "dtype": lm.dtype}
        path = Path(self.model_path) if self.model_path else None
        weights = sorted(path.glob("*.safetensors")) if path else []
        if path and weights:
            fp["weights"] = {w.name: _file_sha256(w) for w in weights}
            extra = [path / "config.json", *(path / f for f in TOKENIZER_FILES)]
            fp["files"] = {f.name: _file_sha256(f) for f in extra if f.is_file()}
            return fp
        commit = getattr(lm.model.config, "_commit_hash", None)
        if commit:
            fp.update(name=lm.name, revision=commit)
            return fp
        fp.update(name=lm.name, parameters=_parameters_sha256(lm.model), tokenizer=_tokenizer_sha256(lm.tokenizer))
        return fp

    # -- tokenisation

    def _encode(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text, verbose=False)["input_ids"])

    def _eos_ids(self) -> set[int]:
        ids = set()
        tok_eos = self.lm.tokenizer.eos_token_id
        if tok_eos is not None:
            ids.add(int(tok_eos))
        gen_eos = getattr(getattr(self.lm.model, "generation_config", None), "eos_token_id", None)
        for e in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
            if is_int(e):
                ids.add(int(e))
        return ids

    # -- generation

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """Greedy generations, in request order (batched longest first)."""
        torch = require("torch", "probes", "Evaluating a Hugging Face model")
        transformers = require("transformers", "probes", "Evaluating a Hugging Face model")
        ctx = self.lm.context_length
        items = []
        for i, r in enumerate(requests):
            # lm-eval's rule: the whole budget is generated for, the prompt keeps its last context - budget tokens
            new = generation_budget(r.max_new_tokens, ctx)
            ids = self._encode(r.prompt)[-(ctx - new):]
            items.append((i, ids, new, r.stop))
        items.sort(key=lambda t: (-t[2], -len(t[1]), t[0]))
        out: list[GenOutput | None] = [None] * len(requests)
        run = lambda b: self._generate_batch(torch, transformers, b)  # noqa: E731
        for batch, texts in token_batches(torch, self.lm, items, lambda t: len(t[1]) + t[2], run, self.batch_size):
            for (i, *_), text in zip(batch, texts):
                out[i] = GenOutput(text)
        return out  # type: ignore[return-value]

    def _generate_batch(self, torch: Any, transformers: Any, batch: list[tuple]) -> list[str]:
        lm, tok = self.lm, self.lm.tokenizer
        eos_ids = self._eos_ids()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
        width = max(len(ids) for _, ids, _, _ in batch)
        new = max(n for _, _, n, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, ids, _, _) in enumerate(batch):
            if ids:
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[r, width - len(ids) :] = 1
        stops = [s for _, _, _, s in batch]
        gen_config = transformers.GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids) if eos_ids else None,
            # neutral sampling settings, so a model's own (e.g. temperature 0.6) neither apply nor warn
            temperature=1.0,
            top_p=1.0,
            top_k=50,
        )
        criteria = transformers.StoppingCriteriaList([_stop_criterion(torch, transformers, tok, width, stops)])
        was_training = lm.model.training
        lm.model.eval()
        try:
            with torch.inference_mode():
                output = lm.model.generate(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    generation_config=gen_config,
                    stopping_criteria=criteria,
                )
        finally:
            lm.model.train(was_training)
        texts = []
        for r, (_, _, n, stop) in enumerate(batch):
            gen = output[r, width : width + n].tolist()
            for j, t in enumerate(gen):
                if t in eos_ids:
                    gen = gen[:j]
                    break
            texts.append(_truncate(tok.decode(gen, skip_special_tokens=True), stop))
        return texts

    # -- log-likelihood

    def loglikelihood(self, requests: Sequence[LLRequest]) -> list[list[float]]:
        """Summed log-probabilities of each continuation, lm-eval style (see the class docstring)."""
        torch = require("torch", "probes", "Evaluating a Hugging Face model")
        ctx_len = self.lm.context_length
        rows: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}  # input -> (req, cont, pos, target)
        for q, req in enumerate(requests):
            context = req.context.rstrip()
            spaces = req.context[len(context) :]
            ctx_enc = self._encode(context)
            for c, cont in enumerate(req.continuations):
                continuation = spaces + cont
                whole = self._encode(context + continuation)
                cont_enc = whole[len(ctx_enc) :]
                if not cont_enc:
                    raise InputError(f"the continuation {cont!r} encodes to no tokens after its context")
                seq = (ctx_enc + cont_enc)[-(ctx_len + 1) :]
                inp = tuple(seq[:-1])
                if not inp:
                    raise InputError("a log-likelihood request needs a context that encodes to at least one token")
                m, k = len(inp), len(cont_enc)
                queries = rows.setdefault(inp, [])
                queries += [(q, c, m - k + j, seq[m - k + j + 1]) for j in range(k)]
        out = [[0.0] * len(r.continuations) for r in requests]
        items = sorted(rows.items(), key=lambda kv: -len(kv[0]))
        for batch, values in token_batches(torch, self.lm, items, lambda kv: len(kv[0]), lambda b: self._score_batch(torch, b),
                                             self.batch_size):
            for (_, queries), lps in zip(batch, values):
                for (q, c, _, _), lp in zip(queries, lps):
                    out[q][c] += lp
        return out

    def _score_batch(self, torch: Any, batch: list[tuple[tuple[int, ...], list[tuple[int, int, int, int]]]]
                     ) -> list[list[float]]:
        """One forward pass over right-padded inputs; per input, the log-probability of each queried target."""
        lm = self.lm
        width = max(len(inp) for inp, _ in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        flat, targets = [], []
        for r, (inp, queries) in enumerate(batch):
            ids[r, : len(inp)] = inp
            mask[r, : len(inp)] = 1
            flat += [r * width + pos for _, _, pos, _ in queries]
            targets += [t for _, _, _, t in queries]
        was_training = lm.model.training
        lm.model.eval()
        try:
            with torch.inference_mode():
                logits = lm.model(
                    input_ids=torch.from_numpy(ids).to(lm.device),
                    attention_mask=torch.from_numpy(mask).to(lm.device),
                    use_cache=False,
                ).logits
                logits = logits.reshape(-1, logits.shape[-1])
                index = torch.tensor(flat, dtype=torch.long, device=logits.device)
                z = logits.index_select(0, index).float()
                tgt = torch.tensor(targets, dtype=torch.long, device=logits.device)
                lp = torch.log_softmax(z, dim=-1).gather(1, tgt[:, None]).squeeze(1).cpu().numpy()
        finally:
            lm.model.train(was_training)
        values, offset = [], 0
        for _, queries in batch:
            values.append([float(x) for x in lp[offset : offset + len(queries)]])
            offset += len(queries)
        return values


def _loaded_from(lm: Any) -> str | None:
    """The local directory the model's weights were loaded from, or None (a Hub model, or one only in memory:
    its name must be a directory the model's config says it came from)."""
    path = Path(lm.name).expanduser()
    origin = getattr(lm.model.config, "_name_or_path", None)
    if not path.is_dir() or not origin:
        return None
    try:
        same = Path(origin).expanduser().resolve() == path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return str(path) if same else None


def _stop_criterion(torch: Any, transformers: Any, tok: Any, start: int, stops: list[tuple[str, ...]]) -> Any:
    """A stopping criterion that ends each row once its generated text holds one of its stop sequences."""
    tail = max((len(s) for row in stops for s in row), default=0) + 8

    class StopOnSequences(transformers.StoppingCriteria):
        def __init__(self) -> None:
            self.done = [not row for row in stops]  # a row without stop sequences never stops here
            self.flags = [False] * len(stops)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            gen = input_ids[:, start:]
            for r, row in enumerate(stops):
                if self.done[r]:
                    continue
                text = tok.decode(gen[r, -tail:].tolist(), skip_special_tokens=True)
                if any(s in text for s in row):
                    self.done[r] = self.flags[r] = True
            return torch.tensor(self.flags, dtype=torch.bool, device=input_ids.device)

    return StopOnSequences()


def _file_sha256(path: Path) -> str:
    from itd.io import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = sha256_file(path)
    return _WEIGHT_HASHES[key]


def _parameters_sha256(model: Any) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), for a model that exists only in memory."""
    torch = require("torch", "probes", "Evaluating a Hugging Face model")
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_sha256(tok: Any) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = repr(sorted(tok.get_vocab().items()))
    specials = repr(sorted((k, str(v)) for k, v in tok.special_tokens_map.items()))
    return hashlib.sha256((blob + specials).encode("utf-8")).hexdigest()


class OpenAIBackend(Backend):
    """An OpenAI-compatible endpoint through `itd.llm.LLMClient` (its cache, concurrency and SDK retries), over
    `config.api` ("chat": the prompt is one user message; "completions": the raw prompt). Use temperature 0 for
    greedy answers (`OpenAIBackend.create` does). Stop sequences are sent (up to 4) and applied to the reply.
    `api`, when given, replaces `config.api`; `client` is an `LLMClient` to reuse (made from `config` if None)."""

    def __init__(self, config: Any, *, api: str | None = None, client: Any = None):
        from itd.llm import LLMClient, LLMConfig

        if not isinstance(config, LLMConfig):
            raise InputError(f"OpenAIBackend needs an itd.llm.LLMConfig, got {type(config).__name__}")
        if api is not None and api != config.api:
            config = dataclasses.replace(config, api=api)
        if client is not None and client.config != config:
            raise InputError("the LLM client given was made with another config than the backend's")
        self.config = config
        self.client = client if client is not None else LLMClient(config, purpose="Evaluating over an LLM endpoint")
        self.name = config.model

    @classmethod
    def create(cls, model: str, *, base_url: str | None = None, api: str = "chat", **kwargs: Any) -> OpenAIBackend:
        """A backend with an evaluation-friendly config: temperature 0 and no response format unless given."""
        from itd.llm import LLMConfig

        kwargs.setdefault("temperature", 0.0)
        kwargs.setdefault("response_format", "none")
        return cls(LLMConfig(model=model, base_url=base_url, api=api, **kwargs))

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.config.model!r}, api={self.config.api!r})"

    def fingerprint(self) -> dict[str, Any]:
        """Model name, API and sampling settings; never the endpoint URL nor the key."""
        cfg = self.config
        return {"backend": "openai", "model": cfg.model, "api": cfg.api, "temperature": cfg.temperature}

    def generate(self, requests: Sequence[GenRequest]) -> list[GenOutput]:
        """One reply per request through the client; endpoint failures (an HTTP error after retries, a timeout)
        are outputs with `error` set; a lost endpoint raises `itd.errors.EndpointError` (the run stops)."""
        from itd.llm import TextRequest

        texts = [TextRequest(r.prompt, stop=tuple(r.stop[:4]), seed=r.seed, max_tokens=r.max_new_tokens) for r in requests]
        out = []
        for r, reply in zip(requests, self.client.complete_text(texts)):
            if reply.text is None:
                out.append(GenOutput(None, reply.error or "no reply"))
            else:
                out.append(GenOutput(_truncate(reply.text, r.stop)))
        return out


def _as_backend(model: Any, config: EvalConfig) -> Backend:
    from itd.models import LoadedModel

    if isinstance(model, Backend):
        return model
    if isinstance(model, LoadedModel) or isinstance(model, (str, os.PathLike)):
        return HFBackend(model if isinstance(model, LoadedModel) else os.fspath(model), batch_size=config.batch_size)
    if all(callable(getattr(model, m, None)) for m in ("fingerprint", "generate")):
        return model  # duck-typed backend
    raise InputError(f"cannot evaluate {type(model).__name__}: give a Backend, a LoadedModel or a model path/name")


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(slots=True)
class ItemResult:
    """One item's outcome.

    `gold`: the normalised final answer (GSM8K) or the correct letter (MCQ). `prediction`: the generated text,
    or the chosen letter under log-likelihood scoring. `extracted`: GSM8K ``{"strict", "flexible"}``, MCQ
    ``{"letter"}`` (None: nothing found). `scores`: correctness under each GSM8K extraction (MCQ: ``{"letter"}``).
    `correct`: by the config's metric (MCQ: the letter). `parsed`: an answer was found for that metric; an
    unparsed item is wrong. `loglikelihoods`: per letter, under log-likelihood scoring. `error`: why a backend
    gave no output. `sample_key`: hash of the item's question, choices and answer (tells rewritten items apart).
    """

    id: str
    kind: str  # "math" or "mcq"
    gold: str
    correct: bool
    parsed: bool
    prediction: str | None = None
    extracted: dict[str, str | None] = field(default_factory=dict)
    scores: dict[str, bool] = field(default_factory=dict)
    loglikelihoods: list[float] | None = None
    error: str | None = None
    sample_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ItemResult:
        """The inverse of `to_dict`."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(slots=True)
class EvalResult:
    """The outcome of `evaluate`: one `ItemResult` per sample, in input order, and how it was produced:
    `prompt_style` (resolved), `max_gen_toks` (the generation budget) and `stop` (generation's stop sequences)
    are what an lm-eval task needs to reproduce it (`itd.export.export_lm_eval`)."""

    items: list[ItemResult]
    model: dict[str, Any]
    config: dict[str, Any]
    prompt_style: str
    mcq_mode: str
    metric: str
    stats: dict[str, int] = field(default_factory=dict)
    max_gen_toks: int | None = None
    stop: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.items)

    @property
    def accuracy(self) -> float:
        """Share of items correct (unparsed and failed items count as wrong); NaN for no items."""
        return sum(it.correct for it in self.items) / self.n if self.items else math.nan

    @property
    def accuracy_by_metric(self) -> dict[str, float]:
        """Accuracy under every score the items have ("strict", "flexible" for GSM8K; "letter" for MCQ)."""
        names = dict.fromkeys(name for it in self.items for name in it.scores)
        return {name: sum(bool(it.scores.get(name)) for it in self.items) / self.n for name in names}

    @property
    def unparsed(self) -> list[str]:
        """Ids of the items with no parseable answer (counted as wrong), in order."""
        return [it.id for it in self.items if not it.parsed]

    @property
    def errors(self) -> dict[str, str]:
        """Id -> error of the items the backend gave no output for."""
        return {it.id: it.error for it in self.items if it.error}

    def by_id(self) -> dict[str, ItemResult]:
        """Id -> item result."""
        return {it.id: it for it in self.items}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary and every item."""
        return {
            "model": self.model,
            "config": self.config,
            "prompt_style": self.prompt_style,
            "mcq_mode": self.mcq_mode,
            "metric": self.metric,
            "max_gen_toks": self.max_gen_toks,
            "stop": list(self.stop),
            "n": self.n,
            "accuracy": self.accuracy if self.items else None,
            "accuracy_by_metric": self.accuracy_by_metric,
            "unparsed": self.unparsed,
            "stats": dict(self.stats),
            "items": [it.to_dict() for it in self.items],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """The inverse of `to_dict` (derived figures are recomputed)."""
        return cls(
            items=[ItemResult.from_dict(x) for x in d["items"]],
            model=dict(d.get("model", {})),
            config=dict(d.get("config", {})),
            prompt_style=d.get("prompt_style", ""),
            mcq_mode=d.get("mcq_mode", ""),
            metric=d.get("metric", ""),
            stats=dict(d.get("stats", {})),
            max_gen_toks=d.get("max_gen_toks"),
            stop=list(d.get("stop") or ()),
        )


def _score_math(sample: Sample, gold: str, out: GenOutput, metric: str) -> ItemResult:
    strict = extract_strict(out.text)
    flexible = extract_flexible(out.text)
    scores = {
        "strict": strict is not None and normalize_answer(strict) == gold,
        "flexible": flexible is not None and normalize_answer(flexible) == gold,
    }
    chosen = strict if metric == "strict" else flexible
    return ItemResult(
        id=sample.id, kind="math", gold=gold, correct=scores[metric], parsed=chosen is not None,
        prediction=out.text, extracted={"strict": strict, "flexible": flexible}, scores=scores, error=out.error,
        sample_key=_sample_key(sample),
    )


def _score_mcq_text(sample: Sample, gold: str, out: GenOutput) -> ItemResult:
    letter = parse_letter(out.text, len(sample.choices or ()))
    return ItemResult(
        id=sample.id, kind="mcq", gold=gold, correct=letter == gold, parsed=letter is not None,
        prediction=out.text, extracted={"letter": letter}, scores={"letter": letter == gold}, error=out.error,
        sample_key=_sample_key(sample),
    )


def _score_mcq_ll(sample: Sample, gold: str, lls: list[float]) -> ItemResult:
    arr = np.asarray(lls, dtype=np.float64)
    ok = arr.size > 0 and not np.isnan(arr).any()
    letter = LETTERS[int(np.argmax(arr))] if ok else None
    return ItemResult(
        id=sample.id, kind="mcq", gold=gold, correct=letter == gold, parsed=ok, prediction=letter,
        extracted={"letter": letter}, scores={"letter": letter == gold}, loglikelihoods=[float(x) for x in lls],
        sample_key=_sample_key(sample),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The runner


def fewshot_pool(config: EvalConfig) -> list[Sample]:
    """The few-shot examples `config` asks for (none when `num_fewshot` is 0)."""
    if config.num_fewshot == 0 or config.fewshot is None:
        return []
    if isinstance(config.fewshot, tuple):
        return list(config.fewshot)
    return load_benchmark(config.fewshot)


def _plan(sample: Sample, pool: list[Sample], style: str, config: EvalConfig, mcq_mode: str,
          budget: int) -> GenRequest | LLRequest:
    shots = fewshot_examples(sample, pool, config.num_fewshot)
    prompt = build_prompt(sample, style, shots)
    if sample.is_mcq and mcq_mode == "loglikelihood":
        return LLRequest(prompt, tuple(" " + LETTERS[i] for i in range(len(sample.choices or ()))))
    return GenRequest(prompt, stop_sequences(style), budget, config.seed)


def evaluate(
    samples: Iterable[Sample],
    model: Any,
    config: EvalConfig | None = None,
    *,
    store: Journal | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate `model` (a `Backend`, an `itd.models.LoadedModel`, or a model name/path to load) on `samples`.

    Requests go in fixed chunks of `config.chunk_size` items in request order (generation requests first, then
    log-likelihood ones); with a `store` every finished chunk is recorded and read back on the next run, so a
    resumed run repeats no finished chunk and gives identical results. A chunk with a failed endpoint call is not
    recorded (a re-run tries it again). `progress(done, total)` counts items.
    """
    config = config or EvalConfig()
    samples = list(samples)
    if not samples:
        raise InputError("no items to evaluate")
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise InputError(f"duplicate item id {s.id!r}; results are keyed by id")
        seen.add(s.id)
    backend = _as_backend(model, config)
    style = resolve_prompt_style(config.prompt_style, backend)
    budget = generation_budget(config.max_new_tokens, getattr(backend, "context_length", None))
    mcq_mode = config.mcq_mode
    can_ll = bool(getattr(backend, "supports_loglikelihood", False))
    if mcq_mode == "auto":
        mcq_mode = "loglikelihood" if can_ll else "generate"
    if mcq_mode == "loglikelihood" and not can_ll and any(s.is_mcq for s in samples):
        name = getattr(backend, "name", backend)
        raise InputError(f"the backend {name!r} cannot score log-likelihoods; use mcq_mode='generate'")
    golds = [_gold_letter(s) if s.is_mcq else _gold_number(s) for s in samples]
    pool = fewshot_pool(config)
    plans = [_plan(s, pool, style, config, mcq_mode, budget) for s in samples]
    fingerprint = backend.fingerprint()
    outputs: list[Any] = [None] * len(samples)
    stats = {"chunks": 0, "chunks_from_store": 0, "chunks_computed": 0, "chunks_not_stored": 0}
    total, done = len(samples), 0
    for kind in ("generate", "loglikelihood"):
        idx = [i for i, p in enumerate(plans) if isinstance(p, GenRequest) == (kind == "generate")]
        for start in range(0, len(idx), config.chunk_size):
            part = idx[start : start + config.chunk_size]
            reqs = [plans[i] for i in part]
            key = content_key("itd-eval", _KEY_VERSION, fingerprint, kind, [r.key() for r in reqs])
            stats["chunks"] += 1
            got = _from_store(store, key, kind, len(part))
            if got is not None:
                stats["chunks_from_store"] += 1
            else:
                got = backend.generate(reqs) if kind == "generate" else backend.loglikelihood(reqs)
                if len(got) != len(reqs):
                    raise RuntimeError(f"the backend returned {len(got)} outputs for {len(reqs)} requests")
                stats["chunks_computed"] += 1
                failed = kind == "generate" and any(o.text is None for o in got)
                if store is not None and not failed:
                    value = [o.text for o in got] if kind == "generate" else [list(map(float, o)) for o in got]
                    store.put_many({key: {"kind": kind, "outputs": value}})
                elif failed:
                    stats["chunks_not_stored"] += 1
            for i, out in zip(part, got):
                outputs[i] = out
            done += len(part)
            if progress is not None:
                progress(done, total)
    items = []
    for s, gold, plan, out in zip(samples, golds, plans, outputs):
        if isinstance(plan, LLRequest):
            items.append(_score_mcq_ll(s, gold, out))
        elif s.is_mcq:
            items.append(_score_mcq_text(s, gold, out))
        else:
            items.append(_score_math(s, gold, out, config.metric))
    return EvalResult(
        items=items,
        model={"name": getattr(backend, "name", type(backend).__name__), "fingerprint": fingerprint},
        config=config.to_dict(),
        prompt_style=style,
        mcq_mode=mcq_mode,
        metric=config.metric,
        stats=stats,
        max_gen_toks=budget,
        stop=list(stop_sequences(style)),
    )


def _from_store(store: Journal | None, key: str, kind: str, n: int) -> list[Any] | None:
    """A finished chunk's outputs from the store, or None when absent or not a well-formed record of it."""
    if store is None:
        return None
    rec = store.get(key)
    if not isinstance(rec, dict) or rec.get("kind") != kind:
        return None
    values = rec.get("outputs")
    if not isinstance(values, list) or len(values) != n:
        return None
    if kind == "generate":
        if not all(isinstance(v, str) for v in values):
            return None
        return [GenOutput(v) for v in values]
    if not all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in values):
        return None
    return [[float(x) for x in v] for v in values]


# ---------------------------------------------------------------------------------------------------------------------
# Comparison


@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure with its percentile-bootstrap interval: `value` (None when undefined, with `reason`), the 95%
    interval [`low`, `high`], `n` items it is computed on and `n_boot` bootstrap replicates behind the interval
    (fewer than asked when some replicates leave the figure undefined)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    n_boot: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "ci": [self.low, self.high], "n": self.n, "n_boot": self.n_boot}
        if self.reason is not None:
            d["reason"] = self.reason
        return d


def _undefined(n: int, reason: str) -> Estimate:
    return Estimate(None, None, None, n, 0, reason)


def _bootstrap(name: str, columns: list[np.ndarray], stat: Callable[[np.ndarray], np.ndarray], n_boot: int,
               seed: int, what: str, *, masks: list[np.ndarray] | None = None, items: np.ndarray | None = None,
               replicas: np.ndarray | None = None) -> Estimate:
    """`stat` of the column means (last axis: the columns) with `itd.stats.bootstrap_means`: paired (every
    replicate weighs the same items in all columns), items (and replicas, when given) resampled, seeded by
    `seed` and `name`. `masks` restricts each column's mean to some cells. Replicates where `stat` is not
    finite are left out."""
    from itd.stats import bootstrap_means

    x = np.stack(columns).astype(np.float64) if columns else np.empty((0, 0))
    m = np.stack(masks) if masks is not None else np.isfinite(x)
    n = int((m & np.isfinite(x)).any(axis=0).sum()) if x.size else 0
    if n == 0:
        return _undefined(0, f"no items: {what}")
    if items is not None:
        n = len(np.unique(np.asarray(items)[(m & np.isfinite(x)).any(axis=0)]))
    ci = bootstrap_means(x, stat, masks=m, items=items, replicas=replicas, n_boot=n_boot,
                         seed=[seed, zlib.crc32(name.encode("utf-8"))])
    if not math.isfinite(ci.value):
        return _undefined(n, f"undefined on these items: {what}")
    if ci.low is None:
        return Estimate(ci.value, None, None, n, 0, "no bootstrap replicate defines an interval")
    return Estimate(ci.value, ci.low, ci.high, n, ci.n_boot)


@dataclass(slots=True)
class Comparison:
    """What `compare` finds; every figure is an `Estimate` (value, 95% CI, n).

    `accuracy[role][subset]`: role "model" (and "clean" when a clean model's results were given); subsets
    "original", "decontaminated" (whole sets), "flagged_before" / "flagged_after" (the flagged items in the
    original / decontaminated set), "unflagged" (the other items of the decontaminated set, kept as they were).
    `inflation`: model accuracy original minus decontaminated, on the items in both. `true_inflation`: model
    minus clean on the original set; `residual_inflation`: model minus clean on the decontaminated set;
    `inflation_removed`: 1 - residual / true (on items all four results share; undefined when the true
    inflation is not positive). `fidelity`: share of rewritten items on which the clean model is right (or
    wrong) both before and after rewriting; `resistance`: share of rewritten items on which the model and the
    clean model agree in correctness after rewriting. `counts`: items, flagged, rewritten and unmatched ids.
    """

    accuracy: dict[str, dict[str, Estimate]]
    inflation: Estimate
    true_inflation: Estimate
    residual_inflation: Estimate
    inflation_removed: Estimate
    fidelity: Estimate
    resistance: Estimate
    counts: dict[str, int]
    n_boot: int
    seed: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "accuracy": {role: {k: e.to_dict() for k, e in subsets.items()} for role, subsets in self.accuracy.items()},
            "inflation": self.inflation.to_dict(),
            "true_inflation": self.true_inflation.to_dict(),
            "residual_inflation": self.residual_inflation.to_dict(),
            "inflation_removed": self.inflation_removed.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "resistance": self.resistance.to_dict(),
            "counts": dict(self.counts),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence,
                          "method": "percentile, items resampled; differences paired"},
        }


def _column(ids: list[str], result: EvalResult | None) -> np.ndarray:
    """Correctness (1.0/0.0) of `result` on each id, NaN where it has no such item (or no result)."""
    col = np.full(len(ids), np.nan)
    if result is not None:
        by_id = result.by_id()
        for j, i in enumerate(ids):
            it = by_id.get(i)
            if it is not None:
                col[j] = 1.0 if it.correct else 0.0
    return col


def _diff(m: np.ndarray) -> np.ndarray:
    return m[:, 0] - m[:, 1]


def _mean(m: np.ndarray) -> np.ndarray:
    return m[:, 0]


def _removed(m: np.ndarray) -> np.ndarray:
    true = m[:, 0] - m[:, 1]
    residual = m[:, 2] - m[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(true > 0, 1.0 - residual / np.where(true > 0, true, 1.0), np.nan)


def accuracy_by_group(
    original: EvalResult,
    decontaminated: EvalResult | None,
    groups: Mapping[str, Iterable[str]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A model's accuracy on each group of item ids (e.g. the corpus scan's labels, the model-side flagged and
    unflagged items), on the original set ("before") and on the decontaminated one ("after"), each an
    `Estimate` dict with its percentile-bootstrap interval and item count."""
    out: dict[str, dict[str, Any]] = {}
    for group, members in groups.items():
        ids = list(dict.fromkeys(members))
        row: dict[str, Any] = {}
        for which, result in (("before", original), ("after", decontaminated)):
            col = _column(ids, result)
            row[which] = _bootstrap(f"{group}/{which}", [col[np.isfinite(col)]], _mean, n_boot, seed,
                                    f"no {group} items in the {'original' if which == 'before' else 'decontaminated'} set").to_dict()
        out[group] = row
    return out


def compare(
    original: EvalResult,
    decontaminated: EvalResult,
    flagged: Iterable[str],
    *,
    clean_original: EvalResult | None = None,
    clean_decontaminated: EvalResult | None = None,
    rewritten: Iterable[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare a model's results on the original and the decontaminated benchmark (see `Comparison`).

    `flagged`: ids flagged as leaked. `clean_original` / `clean_decontaminated`: a clean twin's (or reference
    model's) results on the same two sets. `rewritten`: ids whose text changed (default: ids in both sets whose
    question, choices or answer differ). Intervals: percentile bootstrap over items, `n_boot` replicates, seeded.
    """
    if not is_int(n_boot) or n_boot < 1:
        raise InputError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not is_int(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    flagged = set(flagged)
    orig_ids = [it.id for it in original.items]
    decon_ids = [it.id for it in decontaminated.items]
    orig_set = set(orig_ids)
    ids = orig_ids + [i for i in decon_ids if i not in orig_set]
    if rewritten is None:
        before = {it.id: it.sample_key for it in original.items}
        rewritten = {it.id for it in decontaminated.items if it.id in before and before[it.id] != it.sample_key}
    rewritten = set(rewritten)
    m_o, m_d = _column(ids, original), _column(ids, decontaminated)
    c_o, c_d = _column(ids, clean_original), _column(ids, clean_decontaminated)
    is_flagged = np.array([i in flagged for i in ids], dtype=bool)
    is_rewritten = np.array([i in rewritten for i in ids], dtype=bool)
    have = np.isfinite

    def acc(name: str, col: np.ndarray, rows: np.ndarray, what: str) -> Estimate:
        return _bootstrap(name, [col[rows]], _mean, n_boot, seed, what)

    accuracy: dict[str, dict[str, Estimate]] = {}
    roles = [("model", m_o, m_d)]
    if clean_original is not None or clean_decontaminated is not None:
        roles.append(("clean", c_o, c_d))
    for role, o, d in roles:
        accuracy[role] = {
            "original": acc(f"{role}/original", o, have(o), "no original results"),
            "decontaminated": acc(f"{role}/decontaminated", d, have(d), "no decontaminated results"),
            "flagged_before": acc(f"{role}/flagged_before", o, have(o) & is_flagged, "no flagged items"),
            "flagged_after": acc(f"{role}/flagged_after", d, have(d) & is_flagged, "no flagged items"),
            "unflagged": acc(f"{role}/unflagged", d, have(d) & ~is_flagged, "no unflagged items"),
        }

    def paired(name: str, cols: list[np.ndarray], stat: Callable, what: str, extra: np.ndarray | None = None) -> Estimate:
        rows = np.logical_and.reduce([have(c) for c in cols])
        if extra is not None:
            rows &= extra
        return _bootstrap(name, [c[rows] for c in cols], stat, n_boot, seed, what)

    no_clean = "needs the clean model's results on both sets"
    inflation = paired("inflation", [m_o, m_d], _diff, "no item in both sets")
    if clean_original is not None:
        true_inflation = paired("true_inflation", [m_o, c_o], _diff, "no item shared with the clean results")
    else:
        true_inflation = _undefined(0, "needs the clean model's results on the original set")
    if clean_decontaminated is not None:
        residual = paired("residual_inflation", [m_d, c_d], _diff, "no item shared with the clean results")
        resistance = paired("resistance", [(m_d == c_d).astype(float)], _mean, "no rewritten item",
                            extra=is_rewritten & have(m_d) & have(c_d))
    else:
        residual = _undefined(0, "needs the clean model's results on the decontaminated set")
        resistance = _undefined(0, no_clean)
    if clean_original is not None and clean_decontaminated is not None:
        fidelity = paired("fidelity", [(c_o == c_d).astype(float)], _mean, "no rewritten item",
                          extra=is_rewritten & have(c_o) & have(c_d))
        rows = have(m_o) & have(c_o) & have(m_d) & have(c_d)
        n = int(rows.sum())
        true_point = float(m_o[rows].mean() - c_o[rows].mean()) if n else math.nan
        if n == 0:
            removed = _undefined(0, "no item has all four results")
        elif not true_point > 0:
            removed = _undefined(n, f"true inflation is {true_point:+.4f} (not positive): there is no inflation to remove")
        else:
            removed = _bootstrap("inflation_removed", [m_o[rows], c_o[rows], m_d[rows], c_d[rows]], _removed, n_boot,
                                 seed, "no item has all four results")
    else:
        fidelity = _undefined(0, no_clean)
        removed = _undefined(0, no_clean)
    counts = {
        "items": len(ids),
        "original": len(orig_ids),
        "decontaminated": len(decon_ids),
        "in_both": int((have(m_o) & have(m_d)).sum()),
        "flagged": int(is_flagged.sum()),
        "flagged_unknown": len(flagged - set(ids)),
        "rewritten": int(is_rewritten.sum()),
    }
    return Comparison(accuracy, inflation, true_inflation, residual, removed, fidelity, resistance, counts, n_boot, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth on contamination-lab twins


@dataclass(frozen=True)
class TwinOutcome:
    """One lab replica's evaluation. `leaked` / `unseen`: its ground truth. `results[role][set]`: the
    contaminated twin's (role "model") and the clean twin's (role "clean") results on the "original" set and on
    each decontaminated one (e.g. "itd": the flagged items rewritten, "all": every item rewritten, "retest":
    every item rewritten again with another seed). `rewritten[set]`: the ids whose text that set changed.
    `flagged`: the ids the detector flagged, when known."""

    leaked: Sequence[str]
    unseen: Sequence[str]
    results: Mapping[str, Mapping[str, EvalResult]]
    rewritten: Mapping[str, Iterable[str]] = field(default_factory=dict)
    flagged: Iterable[str] | None = None


@dataclass
class GroundTruth:
    """What `ground_truth` measures; every figure an `Estimate` (value, 95% CI over items and replicas, n items).

    `true_inflation`: the contaminated twin's accuracy gain over the clean twin on the leaked items minus the
    same gain on the unseen ones (difference in differences); `leaked_gain` and `unseen_gap` are its two
    terms (the unseen gap is the lab's noise: the twins should agree there). `arms[set]` per decontaminated set
    (and "none", the original set): `residual_inflation` (the same DiD on it), `inflation_removed` (1 -
    residual / true), accuracy of both twins on it, and on the items it rewrote: `fidelity` (the clean twin right
    or wrong alike before and after), `fidelity_ratio` (fidelity / ceiling) and `difficulty` (the clean twin's
    accuracy after minus before, paired). `ceiling`: the clean twin's agreement between two independent rewrites
    of the same items (test-retest), and `chance`: the agreement of two independent answer sheets with those
    accuracies. `accuracy[role][group]` on the original set (group "leaked", "unseen", "all"). `flags`: share of
    leaked and unseen items flagged. `per_item`: each item's gain when leaked and when unseen.
    """

    true_inflation: Estimate
    leaked_gain: Estimate
    unseen_gap: Estimate
    accuracy: dict[str, dict[str, Estimate]]
    arms: dict[str, dict[str, Estimate]]
    ceiling: Estimate
    chance: Estimate
    flags: dict[str, Any] | None
    per_item: list[dict[str, Any]]
    counts: dict[str, int]
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "true_inflation": self.true_inflation.to_dict(),
            "leaked_gain": self.leaked_gain.to_dict(),
            "unseen_gap": self.unseen_gap.to_dict(),
            "accuracy": {role: {g: e.to_dict() for g, e in groups.items()} for role, groups in self.accuracy.items()},
            "arms": {arm: {k: e.to_dict() for k, e in figs.items()} for arm, figs in self.arms.items()},
            "ceiling": self.ceiling.to_dict(),
            "chance": self.chance.to_dict(),
            "flags": self.flags,
            "per_item": self.per_item,
            "counts": dict(self.counts),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "confidence": 0.95,
                          "method": "percentile; items and replicas resampled (crossed); differences paired"},
        }


def _did(m: np.ndarray) -> np.ndarray:
    return m[:, 0] - m[:, 1]


def _ratio(m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m[:, 1] > 0, m[:, 0] / np.where(m[:, 1] > 0, m[:, 1], 1.0), np.nan)


def _chance(m: np.ndarray) -> np.ndarray:
    return m[:, 0] * m[:, 1] + (1 - m[:, 0]) * (1 - m[:, 1])


def ground_truth(outcomes: Sequence[TwinOutcome], *, retest: str | None = "retest", reference: str | None = None,
                 n_boot: int = 2000, seed: int = 0) -> GroundTruth:
    """The ground truth of lab replicas (see `GroundTruth`): true inflation as a difference in differences, the
    residual on every decontaminated set and the share removed, fidelity against its test-retest ceiling and
    chance, difficulty preservation, all with bootstrap CIs over items and replicas (`itd.stats.bootstrap_means`).

    The arms are the sets of the first outcome's contaminated twin; `retest` names the second independent rewrite
    (used for the ceiling only) and `reference` the rewrite it is compared with (default "all" when there is
    one, else the first decontaminated set). Cells are (replica, item) pairs with both twins' original results.
    """
    if not outcomes:
        raise InputError("ground truth needs at least one lab replica's results")
    if not is_int(n_boot) or n_boot < 1:
        raise InputError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    first = outcomes[0].results
    if "original" not in first.get("model", {}):
        raise InputError("ground truth needs the contaminated twin's results on the original set")
    arms = [s for s in first["model"] if s not in ("original", retest)]
    sets = list(dict.fromkeys([*first["model"], *first.get("clean", {})]))
    reference = reference or ("all" if "all" in arms else (arms[0] if arms else None))
    ids: list[str] = []
    rep: list[int] = []
    leaked_l: list[bool] = []
    flagged_l: list[bool] = []
    cols: dict[tuple[str, str], list[np.ndarray]] = {}
    rewritten: dict[str, list[np.ndarray]] = {}
    for r, out in enumerate(outcomes):
        truth = {i: True for i in out.leaked} | {i: False for i in out.unseen}
        for role in ("model", "clean"):
            if "original" not in out.results.get(role, {}):
                raise InputError(f"replica {r}: no {'contaminated' if role == 'model' else 'clean'} twin results "
                                 "on the original set")
        have = {it.id for it in out.results["model"]["original"].items} & {
            it.id for it in out.results["clean"]["original"].items}
        cell_ids = [i for i in truth if i in have]
        ids += cell_ids
        rep += [r] * len(cell_ids)
        leaked_l += [truth[i] for i in cell_ids]
        flagged = set(out.flagged or ())
        flagged_l += [i in flagged for i in cell_ids]
        for role in ("model", "clean"):
            for s in (*sets,):
                cols.setdefault((role, s), []).append(_column(cell_ids, out.results.get(role, {}).get(s)))
        for s in sets:
            changed = set(out.rewritten.get(s, ()))
            rewritten.setdefault(s, []).append(np.array([i in changed for i in cell_ids], dtype=bool))
    if not ids:
        raise InputError("no leaked or unseen item has both twins' results")
    index = {i: k for k, i in enumerate(dict.fromkeys(ids))}
    items = np.array([index[i] for i in ids])
    replicas = np.array(rep)
    L = np.array(leaked_l, dtype=bool)
    U = ~L
    col = {key: np.concatenate(parts) for key, parts in cols.items()}
    rw = {s: np.concatenate(parts) for s, parts in rewritten.items()}
    have = np.isfinite

    def est(name: str, columns: list[np.ndarray], masks: list[np.ndarray], stat: Callable, what: str) -> Estimate:
        masks = [m & have(c) for c, m in zip(columns, masks)]
        return _bootstrap(name, columns, stat, n_boot, seed, what, masks=masks, items=items, replicas=replicas)

    def diff(role_set: str) -> np.ndarray:
        return col[("model", role_set)] - col[("clean", role_set)]

    d_o = diff("original")
    true = est("gt/true_inflation", [d_o, d_o], [L, U], _did, "needs leaked and unseen items")
    accuracy = {
        role: {group: est(f"gt/accuracy/{role}/{group}", [col[(role, "original")]], [mask], _mean, f"no {group} items")
               for group, mask in (("leaked", L), ("unseen", U), ("all", L | U))}
        for role in ("model", "clean")
    }
    arm_figs: dict[str, dict[str, Estimate]] = {}
    ceiling = chance = _undefined(0, "needs two independent rewrites of the same items (a retest set)")
    agree_rt = None
    if reference is not None and retest and ("clean", retest) in col and col[("clean", retest)].size:
        both = rw[reference] & rw.get(retest, np.zeros_like(L))
        agree_rt = (col[("clean", reference)] == col[("clean", retest)]).astype(float)
        agree_rt[~(have(col[("clean", reference)]) & have(col[("clean", retest)]))] = np.nan
        ceiling = est("gt/ceiling", [agree_rt], [both], _mean, "no item rewritten in both rewrites")
        chance = est("gt/chance", [col[("clean", reference)], col[("clean", retest)]], [both, both], _chance,
                     "no item rewritten in both rewrites")
    rewritten_cells: dict[str, int] = {}
    for arm in ["original", *arms]:
        d_s = diff(arm)
        both = have(d_o) & have(d_s)
        figs: dict[str, Estimate] = {
            "residual_inflation": est(f"gt/{arm}/residual", [d_s, d_s], [L, U], _did, "needs leaked and unseen items"),
        }
        if not (true.value is not None and true.value > 0):
            figs["inflation_removed"] = _undefined(true.n, "the true inflation is not positive: nothing to remove")
        else:
            figs["inflation_removed"] = est(f"gt/{arm}/removed", [d_o, d_o, d_s, d_s], [L & both, U & both] * 2,
                                            _removed, "needs leaked and unseen items")
        for role in ("model", "clean"):
            figs[f"accuracy_{role}"] = est(f"gt/{arm}/acc/{role}", [col[(role, arm)]], [L | U], _mean, "no results")
        k_o, k_s = col[("clean", "original")], col[("clean", arm)]
        agree = (k_o == k_s).astype(float)
        agree[~(have(k_o) & have(k_s))] = np.nan
        changed = rw[arm]
        figs["fidelity"] = est(f"gt/{arm}/fidelity", [agree], [changed], _mean, "no rewritten item")
        figs["difficulty"] = est(f"gt/{arm}/difficulty", [k_s, k_o], [changed, changed], _diff, "no rewritten item")
        if agree_rt is not None and arm != "original":
            figs["fidelity_ratio"] = est(f"gt/{arm}/fidelity_ratio", [agree, agree_rt],
                                         [changed, rw[reference] & rw.get(retest, changed)], _ratio,
                                         "no rewritten item, or no test-retest agreement")
        rewritten_cells[arm] = int(changed.sum())
        arm_figs["none" if arm == "original" else arm] = figs
    flags = None
    if any(out.flagged is not None for out in outcomes):
        f = np.array(flagged_l, dtype=bool)
        flags = {"leaked_flagged": int((f & L).sum()), "leaked": int(L.sum()),
                 "unseen_flagged": int((f & U).sum()), "unseen": int(U.sum()),
                 "recall": est("gt/flags/recall", [f.astype(float)], [L], _mean, "no leaked items").to_dict(),
                 "false_flag_rate": est("gt/flags/fpr", [f.astype(float)], [U], _mean, "no unseen items").to_dict()}
    per_item = []
    for i, k in index.items():
        rows = items == k
        entry: dict[str, Any] = {"id": i, "leaked_in": int((rows & L).sum()), "unseen_in": int((rows & U).sum())}
        for arm in ["original", *arms]:
            d = diff(arm)
            for group, mask in (("leaked", L), ("unseen", U)):
                sel = rows & mask & have(d)
                entry.setdefault("gain", {}).setdefault(arm, {})[group] = float(d[sel].mean()) if sel.any() else None
        per_item.append(entry)
    counts = {"replicas": len(outcomes), "items": len(index), "cells": int(items.size),
              "leaked_cells": int(L.sum()), "unseen_cells": int(U.sum()),
              **{f"rewritten_{'none' if a == 'original' else a}": n for a, n in rewritten_cells.items()}}
    leaked_gain = est("gt/leaked_gain", [d_o], [L], _mean, "no leaked items")
    unseen_gap = est("gt/unseen_gap", [d_o], [U], _mean, "no unseen items")
    return GroundTruth(true, leaked_gain, unseen_gap, accuracy, arm_figs, ceiling, chance, flags, per_item, counts,
                       n_boot, seed)
