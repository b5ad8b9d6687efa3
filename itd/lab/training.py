"""Training the lab's models: the byte-level BPE tokenizer, the GPT-2, its optimiser, the clean batches and the
extra rows, the training steps, the base (trained once, cached by a hash of everything that decides it) and the
twins continued from it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itd.core.errors import quiet_transformers, require
from itd.core.io import write_json
from itd.core.progress import StageProgress
from itd.lab.config import LabConfig, LabPreset

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TMP_PREFIX = ".lab-tmp-"  # temporary directories of a build (in the base cache and the lab directory)
_LOSS_POINTS = 50  # the loss curve kept in the manifest is averaged down to about this many points
_BASE_VERSION = 1  # part of the base cache key: bump when base training changes
_BASE_FIELDS = ("n_layer", "n_head", "n_embd", "seq_len", "vocab_size", "batch_size", "steps", "lr", "warmup",
                "weight_decay")



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
               lr_at: Callable[[int], float], weight: float | None, progress: StageProgress | None, stage: str) -> list[float]:
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



def portable_tokenizer_class(path: Path) -> None:
    """Name the generic fast tokenizer class, which transformers 4 and 5 both load (5 saves its own class name)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json(path, config)


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
                progress: StageProgress | None) -> dict[str, Any]:
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
    portable_tokenizer_class(target / "tokenizer_config.json")
    torch.save(optimizer.state_dict(), target / "optimizer.pt")
    corpus_tokens = sum(len(d) + 1 for d in encoded)
    record = _record(losses, preset.steps, preset.steps * preset.batch_size * preset.seq_len, corpus_tokens, start)
    record["corpus_tokens"] = corpus_tokens
    return record


def cached_base(docs: Sequence[str], preset: LabPreset, seed: int, device: Any, cache: Path,
          progress: StageProgress | None) -> tuple[Path, str, dict[str, Any], bool]:
    """The cached base for these inputs, trained first if absent: (its directory, key, record, trained now)."""
    key = _base_key(docs, preset, seed, device)
    target = cache / key
    if (target / "base.json").is_file():
        return target, key, json.loads((target / "base.json").read_text(encoding="utf-8")), False
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{TMP_PREFIX}{key[:16]}-{os.getpid()}-{os.urandom(4).hex()}"
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


def train_twin(base: Path, preset: LabPreset, config: LabConfig, device: Any, docs: Sequence[str],
                texts: Sequence[tuple[str, str]], schedule: list[list[int]], progress: StageProgress | None,
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
