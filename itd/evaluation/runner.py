"""The runner: `evaluate` plans one request per item, runs them in resumable chunks (finished chunks recorded in
and read back from an `itd.core.io.Journal`) and scores every output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.io import Journal, content_key
from itd.core.progress import Progress
from itd.core.render import LETTERS
from itd.evaluation.backends import GenOutput, GenRequest, LLRequest, as_backend
from itd.evaluation.config import EvalConfig
from itd.evaluation.prompts import (
    build_prompt,
    fewshot_examples,
    fewshot_pool,
    generation_budget,
    resolve_prompt_style,
    stop_sequences,
)
from itd.evaluation.scoring import (
    EvalResult,
    ItemResult,
    extract_flexible,
    extract_strict,
    gold_letter,
    gold_number,
    normalize_answer,
    parse_letter,
    sample_key,
)

__all__ = ["evaluate", "Progress"]


_KEY_VERSION = 2  # 2: one generation budget per model, prompts truncated to fit it (lm-eval's rule)


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
    """Evaluate `model` (a `Backend`, an `itd.probes.models.LoadedModel`, or a model name/path to load) on `samples`.

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
    backend = as_backend(model, config)
    style = resolve_prompt_style(config.prompt_style, backend)
    budget = generation_budget(config.max_new_tokens, getattr(backend, "context_length", None))
    mcq_mode = config.mcq_mode
    can_ll = bool(getattr(backend, "supports_loglikelihood", False))
    if mcq_mode == "auto":
        mcq_mode = "loglikelihood" if can_ll else "generate"
    if mcq_mode == "loglikelihood" and not can_ll and any(s.is_mcq for s in samples):
        name = getattr(backend, "name", backend)
        raise InputError(f"the backend {name!r} cannot score log-likelihoods; use mcq_mode='generate'")
    golds = [gold_letter(s) if s.is_mcq else gold_number(s) for s in samples]
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
# Scoring the outputs


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
        sample_key=sample_key(sample),
    )


def _score_mcq_text(sample: Sample, gold: str, out: GenOutput) -> ItemResult:
    letter = parse_letter(out.text, len(sample.choices or ()))
    return ItemResult(
        id=sample.id, kind="mcq", gold=gold, correct=letter == gold, parsed=letter is not None,
        prediction=out.text, extracted={"letter": letter}, scores={"letter": letter == gold}, error=out.error,
        sample_key=sample_key(sample),
    )


def _score_mcq_ll(sample: Sample, gold: str, lls: list[float]) -> ItemResult:
    arr = np.asarray(lls, dtype=np.float64)
    ok = arr.size > 0 and not np.isnan(arr).any()
    letter = LETTERS[int(np.argmax(arr))] if ok else None
    return ItemResult(
        id=sample.id, kind="mcq", gold=gold, correct=letter == gold, parsed=ok, prediction=letter,
        extracted={"letter": letter}, scores={"letter": letter == gold}, loglikelihoods=[float(x) for x in lls],
        sample_key=sample_key(sample),
    )
