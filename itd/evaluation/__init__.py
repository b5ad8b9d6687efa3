"""Evaluation: score a model on a benchmark (original or decontaminated) the way the field does, and
compare the two with bootstrap confidence intervals.

    result = evaluate(samples, "lab/contaminated", EvalConfig(num_fewshot=5, fewshot="gsm8k/train.jsonl"))
    after = evaluate(rewritten_samples, "lab/contaminated", ...)
    report = compare(result, after, flagged_ids, clean_original=..., clean_decontaminated=...)

**Modules** (imports flow one way, down this list):

- `config`: `EvalConfig` and its validation; the prompt styles, metrics and MCQ modes it offers.
- `scoring`: answer extraction (`normalize_answer`, `extract_strict`, `extract_flexible`, `parse_letter`), the
  gold answers, and the result records `ItemResult` and `EvalResult`.
- `prompts`: prompt styles (`resolve_prompt_style`), stop sequences, the generation budget, few-shot selection
  (`fewshot_examples`, `fewshot_pool`), `build_prompt` and `gold_continuation`.
- `backends`: the requests (`GenRequest`, `LLRequest`, `GenOutput`), the `Backend` interface, `HFBackend`,
  `OpenAIBackend`, each built from its config through the `BACKENDS` registry (`BACKENDS.create("hf",
  HFBackendConfig(...))`, `BACKENDS.create("openai", LLMConfig(...))`), and how a model is fingerprinted.
- `runner`: `evaluate`: requests planned, run in resumable chunks, every output scored.
- `compare`: `Estimate` and the bootstrap, `compare` (`Comparison`), `accuracy_by_group`, and the lab twins'
  `ground_truth` (`TwinOutcome`, `GroundTruth`).

**Backends.** `HFBackend`: a local or Hub Hugging Face causal LM (`itd.probes.models.load_model`): batched greedy
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
- ``plain``: exactly how the contamination lab renders training text (`itd.core.render`): GSM8K the question, "\\n",
  then the solution with annotations stripped (the prompt ends after that "\\n"); MCQ the ``options`` rendering
  then ``\\nAnswer:`` and continuations " A" ... Shots are full renderings joined by ``\\n\\n``; generation stops at
  the EOS token and ``\\n\\n``.
- ``auto``: the style the model declares in its own config (``"itd_prompt_style"`` in ``config.json``, which the
  contamination lab writes into both twins: ``plain`` for a pretraining leak, the leak's style for a fine-tuning
  one), else ``harness``. It travels with the model directory, so a copied or moved model is evaluated alike.
  `EvalResult.prompt_style` records the resolved style.

**Generation length.** A generation budget is one number per model, lm-eval's rule: `EvalConfig.max_new_tokens`,
capped at half the context window of a short-context model (`generation_budget`), with prompts left-truncated to
the context minus that budget. `EvalResult.max_gen_toks` records it; `itd.pipeline.export.export_lm_eval` writes it as the
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
boundaries never depend on what is already done). A chunk's key is `itd.core.io.content_key` of the backend's
`fingerprint()`, the request kind and the chunk's requests (prompts and generation parameters); with a `store`
(an `itd.core.io.Journal`) finished chunks are read back and every computed chunk is recorded as soon as it is done,
so a killed run resumes where it stopped and produces the same outputs.

**Comparison.** `compare` gives accuracy with percentile-bootstrap 95% intervals (items resampled) on the
original and decontaminated sets, the flagged items before and after rewriting and the unflagged rest, for the
evaluated model and (when given) a clean reference; the inflation (original minus decontaminated accuracy), and
with a clean model the true and residual inflation, the share of inflation removed, and BDC-style fidelity and
resistance of the rewritten items. Differences use a paired bootstrap (the same resampled items on both sides).
"""

from itd.evaluation.backends import (
    BACKENDS,
    Backend,
    GenOutput,
    GenRequest,
    HFBackend,
    HFBackendConfig,
    LLRequest,
    OpenAIBackend,
)
from itd.evaluation.compare import (
    Comparison,
    Estimate,
    GroundTruth,
    TwinOutcome,
    accuracy_by_group,
    compare,
    ground_truth,
)
from itd.evaluation.config import MCQ_MODES, METRICS, PROMPT_STYLES, EvalConfig
from itd.evaluation.prompts import (
    HARNESS_GSM8K_STOP,
    MODEL_STYLE_KEY,
    PLAIN_STOP,
    build_prompt,
    fewshot_examples,
    fewshot_pool,
    generation_budget,
    gold_continuation,
    resolve_prompt_style,
    stop_sequences,
)
from itd.evaluation.runner import evaluate
from itd.evaluation.scoring import (
    EvalResult,
    ItemResult,
    extract_flexible,
    extract_strict,
    normalize_answer,
    parse_letter,
)

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
    "HFBackendConfig",
    "BACKENDS",
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
    "fewshot_pool",
]
