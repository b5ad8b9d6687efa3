"""Fuzzy-pass throughput: `itd` minhash detector vs. a naive datasketch sliding-window loop.

Builds a ~`--mb` MB JSONL corpus (GSM8K train + MMLU texts + filler, with planted leaks of GSM8K test items);
the benchmark is GSM8K test. Measured in one run:

  * itd: `scan(samples, corpus, ScanConfig(detectors=("minhash",), workers=1))` on the whole corpus and on the
    subset below (detector fit, LSH build and rapidfuzz verification included);
  * naive baseline, on the first `--subset-mb` MB of the same corpus (written as its own file): for each document,
    lowercase + regex `\\w+` tokens, word 3-gram shingles (bytes); for each of itd's window sizes (the geometric
    size buckets of the items, `MinHashDetector._sizes`) windows of that many tokens at stride 1/8 of the size
    (itd's window plan); one `datasketch.MinHash(num_perm=64)` per window, `update()` per shingle, then
    `lsh.query` against a `MinHashLSH(threshold=0.5, num_perm=64)` of the items (question, and question +
    answer, as itd indexes them). Candidates are not verified (that only flatters the baseline). The LSH build
    is timed separately, not counted;
  * a tuned datasketch variant of the same loop (permutations shared across windows, `update_batch`), for
    reference.

    python benchmarks/bench_fuzzy.py --mb 8 --subset-mb 0.5
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_RATIO = 10.0
SHINGLE = 3
NUM_PERM = 64


def shingles(text: str, tok=re.compile(r"\w+")) -> list[bytes]:
    toks = tok.findall(text.lower())
    return [" ".join(toks[i : i + SHINGLE]).encode() for i in range(max(0, len(toks) - SHINGLE + 1))]


def windows(n_sh: int, sizes) -> list[tuple[int, int]]:
    """itd's window plan for a document of `n_sh` shingles: per size, stride size/8, last window clipped."""
    out = []
    if n_sh <= 0:
        return out
    for size in sizes:
        w = max(1, int(size) - SHINGLE + 1)
        stride = max(1, w // 8)
        count = max(1, -(-(n_sh - w + 1) // stride))
        out += [(k * stride, min(k * stride + w, n_sh)) for k in range(count)]
    return out


def build_lsh(records, datasketch, make):
    lsh = datasketch.MinHashLSH(threshold=0.5, num_perm=NUM_PERM)
    for i, r in enumerate(records):
        q = r["question"]
        for j, text in enumerate((q, q + "\n" + r["answer"])):
            sh = shingles(text)
            if len(sh) < 8:  # itd skips items of < 10 tokens
                continue
            lsh.insert(2 * i + j, make(sh))
    return lsh


def naive_loop(corpus: Path, sizes, lsh, datasketch) -> tuple[int, int]:
    """The naive loop; returns (windows, candidate pairs)."""
    n_win = n_cand = 0
    with open(corpus, "rb") as f:
        for line in f:
            sh = shingles(json.loads(line)["text"])
            for lo, hi in windows(len(sh), sizes):
                m = datasketch.MinHash(num_perm=NUM_PERM)
                for s in sh[lo:hi]:
                    m.update(s)
                n_cand += len(lsh.query(m))
                n_win += 1
    return n_win, n_cand


def tuned_loop(corpus: Path, sizes, lsh, datasketch, perms) -> tuple[int, int]:
    n_win = n_cand = 0
    with open(corpus, "rb") as f:
        for line in f:
            sh = shingles(json.loads(line)["text"])
            for lo, hi in windows(len(sh), sizes):
                m = datasketch.MinHash(num_perm=NUM_PERM, permutations=perms[0], scheme=perms[1])
                m.update_batch(sh[lo:hi])
                n_cand += len(lsh.query(m))
                n_win += 1
    return n_win, n_cand


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--mb", type=float, default=8.0, help="Corpus size in MB for the itd run.")
    ap.add_argument("--subset-mb", type=float, default=0.5, help="Size of the corpus prefix the naive baseline scans.")
    ap.add_argument("--reps", type=int, default=2, help="Repetitions of the itd runs (best kept); baselines run once.")
    ap.add_argument("--no-tuned", action="store_true", help="Skip the tuned datasketch variant.")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP", help="Also cProfile one itd scan of the corpus; show TOP functions.")
    args = ap.parse_args(argv)

    import datasketch

    from itd.core import load_benchmark
    from itd.corpus.scan import ScanConfig, scan
    from itd.detectors.minhash import MinHashDetector

    rng = random.Random(args.seed)
    samples = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")
    records = C.gsm8k_records(args.data, "test")
    sizes = MinHashDetector().fit(samples)._sizes  # the window sizes itd uses for this benchmark
    with C.workdir(args.workdir, "itd-bench-fuzzy-") as wd:
        corpus = wd / f"fuzzy_{args.mb:g}mb.jsonl"
        planted, truth = C.planted_gsm8k_leaks(args.data, rng, 3)
        C.write_corpus(corpus, int(args.mb * 1e6), C.real_texts(args.data), rng, planted)
        subset = wd / f"fuzzy_{args.mb:g}mb_first_{args.subset_mb:g}mb.jsonl"
        with open(corpus, "rb") as src, open(subset, "wb") as dst:
            n = 0
            for line in src:
                if n >= args.subset_mb * 1e6:
                    break
                dst.write(line)
                n += len(line)
        mb, sub_mb = corpus.stat().st_size / 1e6, subset.stat().st_size / 1e6

        cfg = ScanConfig(detectors=("minhash",), workers=1)
        full = min(C.best_of(lambda: scan(samples, [corpus], cfg), args.reps)[1])
        sub_best = C.best_of(lambda: scan(samples, [subset], cfg), args.reps)[0]
        report = scan(samples, [corpus], cfg)
        fuzzy_found = sum(report.results[j].label != "clean" for j in truth)

        t = time.perf_counter()
        lsh = build_lsh(records, datasketch, lambda sh: _naive_minhash(datasketch, sh))
        lsh_s = time.perf_counter() - t
        naive_s, _, (n_win, n_cand) = C.best_of(lambda: naive_loop(subset, sizes, lsh, datasketch), 1)
        rows = [
            ("itd minhash scan, full corpus", f"{mb:.2f}", full, mb / full, (mb / full) / (sub_mb / naive_s)),
            ("itd minhash scan, subset", f"{sub_mb:.2f}", sub_best, sub_mb / sub_best, (sub_mb / sub_best) / (sub_mb / naive_s)),
            ("naive datasketch loop (baseline), subset", f"{sub_mb:.2f}", naive_s, sub_mb / naive_s, 1.0),
        ]
        if not args.no_tuned:
            proto = datasketch.MinHash(num_perm=NUM_PERM)
            perms = (proto.permutations, proto.scheme)
            tuned_s, _, _ = C.best_of(lambda: tuned_loop(subset, sizes, lsh, datasketch, perms), 1)
            rows.append(("tuned datasketch loop (shared permutations, update_batch), subset", f"{sub_mb:.2f}", tuned_s, sub_mb / tuned_s, naive_s / tuned_s))

        C.header(f"Fuzzy (MinHash-LSH) throughput, GSM8K test benchmark ({len(samples)} items)")
        print(
            f"window sizes (tokens): {', '.join(str(int(s)) for s in sizes)} ({len(sizes)} sizes, stride size/8); "
            f"baseline: {n_win:,} windows, {n_cand:,} LSH candidates on the subset; its LSH build took {lsh_s:.1f} s "
            f"(not counted); itd found {fuzzy_found}/{len(truth)} planted leaks with minhash alone\n"
        )
        print(C.table(["run", "MB", "best s", "MB/s", "x naive baseline"], rows))
        print()
        ratio = (mb / full) / (sub_mb / naive_s)
        print(f"goal: >= {GOAL_RATIO:g}x the naive loop: {'met' if ratio >= GOAL_RATIO else 'MISSED'} ({ratio:,.0f}x on the full corpus)")
        if args.profile:
            print()
            print("cProfile of one itd minhash scan of the full corpus (own time per function):\n")
            print(C.profile_table(lambda: scan(samples, [corpus], cfg), args.profile))
    return 0


def _naive_minhash(datasketch, sh: list[bytes]):
    m = datasketch.MinHash(num_perm=NUM_PERM)
    for s in sh:
        m.update(s)
    return m


if __name__ == "__main__":
    sys.exit(main())
