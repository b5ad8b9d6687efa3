"""Speed of the batched probe scorer (`itd.probes.models.score_texts`) against a per-sample, one-method-per-pass loop.

Items: the first `--items` GSM8K test items rendered with `itd.core.render.render(sample, "auto")` (question + worked
solution). Model: a randomly initialised GPT-2 built here (`--preset tiny`: ~4M parameters, 8,192-token byte-level
BPE trained on GSM8K train; `--preset gpt2`: the GPT-2 small shape, 124M parameters and 50,257 logits, with the
same tokenizer), saved to the work dir and loaded with `itd.probes.models.load_model`; or `--model DIR`.

Contenders, on the same model and items, timed round-robin, best of `--reps`:

  * baseline: the way the published reference code scores, one item at a time and one forward pass per method:
    `loss` and `zlib` each from `model(ids, labels=ids).loss`; `mink` and `minkpp` each from a full forward and
    a log-softmax (and softmax, mu, sigma for Min-K%++) of that item's logits;
  * itd: `score_texts(model, texts, ScoreConfig(methods=("loss", "zlib", "mink", "minkpp")))`, all four methods
    from one forward pass per batch;
  * itd, newer probes: the four above plus Gap-K%, answer accuracy and DC-PDD (still one pass; DC-PDD's
    token-frequency table built from GSM8K train, not timed), and the same plus ReCaLL (one more pass, behind a
    prefix of two GSM8K train items): their cost relative to the four-probe scorer;
  * forward only: the exact batches itd ran (recorded during a warm-up) replayed through `model(...)` with no
    reduction at all, i.e. the cost of the model alone. itd's tokens/s as a share of it shows the scorer's
    overhead (goal on GPU: >= 70%).

Both score the same tokens (BOS, or EOS, in front of each item). The largest difference between the two sets
of scores is printed as a check.

    python benchmarks/bench_probes.py
    python benchmarks/bench_probes.py --device cuda --preset gpt2 --items 1000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = ("loss", "zlib", "mink", "minkpp")
NEWER = ("gapk", "answer_acc", "dcpdd")
PRESETS = {
    "tiny": {"n_layer": 6, "n_embd": 192, "n_head": 6, "n_positions": 512, "vocab_size": 8192},
    "gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
}


def build_model(out: Path, preset: str, data: str, seed: int) -> Path:
    """A random-init GPT-2 of `preset` shape with a byte-level BPE (8,192 tokens) trained on GSM8K train."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [r["question"] + "\n" + r["answer"] for r in C.gsm8k_records(data, "train")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    shape = PRESETS[preset]
    config = transformers.GPT2Config(**shape, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(seed)
    path = out / f"random-gpt2-{preset}"
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def baseline(lm, texts: list[str], k: float) -> list[dict[str, float]]:
    """Per item, per method: one forward pass of that item, one score (the published reference code's way)."""
    import torch
    import torch.nn.functional as F

    model, dev = lm.model, lm.device
    out = []
    with torch.no_grad():
        for text in texts:
            ids = [lm.prefix_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids[: lm.context_length]], device=dev)
            scores = {}
            scores["loss"] = -model(x, labels=x).loss.item()
            loss = model(x, labels=x).loss.item()
            scores["zlib"] = -loss / len(zlib.compress(text.encode("utf-8")))
            for method in ("mink", "minkpp"):
                logits = model(x).logits[0, :-1].float()
                log_probs = F.log_softmax(logits, dim=-1)
                token_lp = log_probs.gather(-1, x[0, 1:, None]).squeeze(-1)
                if method == "minkpp":
                    probs = F.softmax(logits, dim=-1)
                    mu = (probs * log_probs).sum(-1)
                    sigma = ((probs * log_probs**2).sum(-1) - mu**2).sqrt()
                    token_lp = (token_lp - mu) / sigma
                m = max(1, int(token_lp.numel() * k))
                scores[method] = torch.sort(token_lp.cpu())[0][:m].mean().item()
            out.append(scores)
    return out


def record_batches(lm) -> tuple[list, object]:
    """Record the inputs of every forward pass of `lm.model` (a forward pre-hook); (inputs, hook handle)."""
    seen: list = []

    def hook(module, args, kwargs):
        seen.append({"input_ids": kwargs["input_ids"].clone(), "attention_mask": kwargs["attention_mask"].clone()})

    return seen, lm.model.register_forward_pre_hook(hook, with_kwargs=True)


def forward_only(lm, batches: list) -> None:
    import torch

    with torch.inference_mode():
        for b in batches:
            lm.model(**b, use_cache=False).logits


def sync(lm) -> None:
    import torch

    if lm.device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--items", type=int, default=200, help="GSM8K test items scored.")
    ap.add_argument("--model", default=None, help="Model directory or hub name (default: build a random GPT-2).")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="Shape of the built model.")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto.")
    ap.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32.")
    ap.add_argument("--batch-size", default="auto", help="itd batch size: 'auto' or rows per batch.")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    ap.add_argument("--k", type=float, default=0.2, help="Min-K%% / Min-K%%++ fraction.")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions of the itd and forward-only runs (best kept).")
    ap.add_argument("--baseline-reps", type=int, default=1, help="Rounds that include the slow baseline.")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from itd.core import load_benchmark
    from itd.core.render import render
    from itd.probes.models import ScoreConfig, load_model, score_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    samples = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")[: args.items]
    texts = [render(s, "auto") for s in samples]
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    cfg = ScoreConfig(methods=METHODS, k=args.k, batch_size=batch_size)
    with C.workdir(args.workdir, "itd-bench-probes-") as wd:
        t = time.perf_counter()
        source = args.model or build_model(wd, args.preset, args.data, args.seed)
        build_s = time.perf_counter() - t
        lm = load_model(source, device=args.device, dtype=args.dtype)
        n_params = sum(p.numel() for p in lm.model.parameters())

        # warm-up, recording the batches itd runs (and checking no item needs a sliding window)
        seen, handle = record_batches(lm)
        ours = score_texts(lm, texts, cfg)
        handle.remove()
        tokens = sum(s.n_tokens for s in ours)
        longest = max(s.n_tokens for s in ours) + 1
        assert longest <= lm.context_length, "an item is longer than the context; the baseline would truncate it"
        from itd.probes.detection import scored_text
        from itd.probes.methods import build_frequency_table

        table = wd / "freq.npz"
        build_frequency_table(lm.tokenizer, [r["question"] + "\n" + r["answer"] for r in C.gsm8k_records(args.data, "train")]).save(table)
        answered = [scored_text(s, "auto") for s in samples]
        prefix = "".join(r["question"] + "\n\n" for r in C.gsm8k_records(args.data, "train")[:2])
        newer = ScoreConfig(methods=METHODS + NEWER, k=args.k, batch_size=batch_size, options={"dcpdd": {"table": str(table)}})
        with_recall = ScoreConfig(methods=METHODS + NEWER + ("recall",), k=args.k, batch_size=batch_size,
                                  options={"dcpdd": {"table": str(table)}, "recall": {"prefix": prefix}})
        # the reference-model probes read a second model's pass over the same texts (here a second copy of this one:
        # the cost is that of its size)
        reference_lm = load_model(source, device=args.device, dtype=args.dtype)
        with_reference = ScoreConfig(methods=METHODS + NEWER + ("reference", "answer_reference"), k=args.k,
                                     batch_size=batch_size, options={"dcpdd": {"table": str(table)}})
        score_texts(lm, answered[:8], with_recall)  # warm-up (and the table's first load)
        score_texts(lm, answered[:8], with_reference, reference=reference_lm)
        ref = baseline(lm, texts[:5], args.k)  # warm-up
        forward_only(lm, seen[:1])

        times: dict[str, list[float]] = {"baseline": [], "itd": [], "newer": [], "recall": [], "reference": [],
                                         "forward": []}
        loads = []
        for rep in range(max(args.reps, args.baseline_reps)):  # round-robin: load spikes hit every contender
            loads.append(_load())
            for name, fn in (
                ("baseline", lambda: baseline(lm, texts, args.k)),
                ("itd", lambda: score_texts(lm, texts, cfg)),
                ("newer", lambda: score_texts(lm, answered, newer)),
                ("recall", lambda: score_texts(lm, answered, with_recall)),
                ("reference", lambda: score_texts(lm, answered, with_reference, reference=reference_lm)),
                ("forward", lambda: forward_only(lm, seen)),
            ):
                if rep >= (args.baseline_reps if name == "baseline" else args.reps):
                    continue
                sync(lm)
                t = time.perf_counter()
                result = fn()
                sync(lm)
                times[name].append(time.perf_counter() - t)
                if name == "baseline":
                    ref = result
        diff = {m: max(abs(r[m] - o.scores[m]) for r, o in zip(ref, ours)) for m in METHODS}

    best = {k: min(v) for k, v in times.items()}
    base_items_s = len(texts) / best["baseline"]
    itd_items_s = len(texts) / best["itd"]
    C.header("Batched probe scorer vs a per-sample, one-method-per-pass loop (`bench_probes.py`)")
    print(
        f"model: {'built ' + args.preset + ' random-init GPT-2' if not args.model else args.model}, "
        f"{n_params / 1e6:.1f}M parameters, vocabulary {lm.model.get_output_embeddings().weight.shape[0]:,}, "
        f"context {lm.context_length}; device {lm.device}, dtype {lm.dtype}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads  "
    )
    print(
        f"items: {len(texts)} GSM8K test items rendered `auto`, {tokens:,} scored tokens "
        f"(mean {tokens / len(texts):.0f}, longest {longest}); itd: {len(seen)} forward passes, "
        f"batch_size={args.batch_size}; baseline: {len(texts) * len(METHODS):,} forward passes  "
    )
    print(f"methods: {', '.join(METHODS)}, k = {args.k}; best of {args.reps} rounds "
          f"(baseline: {args.baseline_reps}); "
          f"1-min load average before each round: {', '.join(f'{x:.2f}' for x in loads)}  ")
    if not args.model:
        print(f"model build (tokenizer training + init + save): {build_s:.1f} s, not timed below  ")
    print()
    contenders = (
        ("baseline: per item, one forward per method", "baseline", 1.0),
        ("itd `score_texts`, all methods, one pass", "itd", itd_items_s / base_items_s),
        ("itd, + gapk, answer_acc, dcpdd (one pass)", "newer", len(texts) / best["newer"] / base_items_s),
        ("itd, + those and recall (two passes)", "recall", len(texts) / best["recall"] / base_items_s),
        ("itd, + gapk, answer_acc, dcpdd, reference, answer_reference (a reference model's pass too)", "reference",
         len(texts) / best["reference"] / base_items_s),
        ("forward only, itd's batches, no reductions", "forward", "–"),
    )
    rows = [(label, best[k], len(texts) / best[k], tokens / best[k], ratio) for label, k, ratio in contenders]
    print(C.table(["contender", "best s", "items/s", "tokens/s", "speed-up vs baseline"], rows))
    print()
    print(f"itd vs baseline: **{itd_items_s / base_items_s:.1f}x** (goal >= 10x on CPU). "
          f"itd tokens/s as a share of forward-only: **{best['forward'] / best['itd']:.0%}** (goal on GPU >= 70%).  ")
    print(f"newer probes' cost: items/s **{best['itd'] / best['newer']:.0%}** of the four-probe scorer's with gapk, "
          f"answer_acc and dcpdd added (one pass); **{best['itd'] / best['recall']:.0%}** with recall too; "
          f"**{best['itd'] / best['reference']:.0%}** with the reference-model probes instead.  ")
    print("all timings (s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in times.items()) + "  ")
    print("largest |baseline - itd| score difference: " + ", ".join(f"{m} {d:.2g}" for m, d in diff.items()))
    bad = [m for m, d in diff.items() if not np.isfinite(d) or d > (1e-3 if lm.dtype == "float32" else 0.1)]
    return 1 if bad else 0


def _load() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return math.nan


if __name__ == "__main__":
    raise SystemExit(main())
