"""Exact-scan throughput: plain-Python 13-gram baseline vs. `itd` (ngram detector) on 1 and 2 worker processes.

Builds a ~`--mb` MB JSONL corpus (GSM8K train + MMLU dev/test texts + `itd.pipeline.demo.filler_text` filler, with planted
leaks of GSM8K test items), then times, round-robin, best of `--reps`:

  (a) baseline: read JSONL, json.loads, lowercase, regex `\\w+` tokens, 13-gram tuples looked up in a Python set
      of the benchmark's 13-grams (one pass, n = 13 only);
  (b) `itd.corpus.scan.scan(..., ScanConfig(detectors=("ngram",), workers=1))` (raw + number-normalised passes,
      evidence verification, detector fit included);
  (c) the same with workers=2 and `shard_bytes` small enough for >= 8 shards (process-pool start-up included).

Every speed is reported as MB/s (1 MB = 10^6 bytes of the corpus file) and as a ratio to numbers of the same run.

    python benchmarks/bench_scan.py --mb 100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_MB_S = 40.0
GOAL_SPEEDUP = 1.7


def baseline_grams(records: list[dict[str, str]], n: int) -> set[tuple[str, ...]]:
    tok = re.compile(r"\w+")
    grams: set[tuple[str, ...]] = set()
    for r in records:
        toks = tok.findall((r["question"] + "\n" + r["answer"]).lower())
        grams.update(zip(*(toks[i:] for i in range(n))))
    return grams


def baseline_scan(corpus: Path, grams: set[tuple[str, ...]], n: int) -> int:
    """Plain Python: the number of corpus 13-grams found in the benchmark set."""
    tok = re.compile(r"\w+")
    hits = 0
    with open(corpus, "rb") as f:
        for line in f:
            toks = tok.findall(json.loads(line)["text"].lower())
            for g in zip(*(toks[i:] for i in range(n))):
                if g in grams:
                    hits += 1
    return hits


_BURN = "s = 0\nfor i in range({n}): s += i\n"


def calibrate(loops: int = 15_000_000) -> float:
    """Speed-up of 2 concurrent CPU-bound processes over 1 on this machine right now (ideal: 2.0)."""
    cmd = [sys.executable, "-c", _BURN.format(n=loops)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    one = time.perf_counter() - t
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd) for _ in range(2)]
    for p in procs:
        p.wait()
    two = time.perf_counter() - t
    return 2 * one / two


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (pool workers), user + system."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--mb", type=float, default=100.0, help="Corpus size in MB (10^6 bytes).")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions of each measurement (best is kept).")
    ap.add_argument("--per-variant", type=int, default=5, help="Planted leaks per itd.pipeline.demo variant.")
    ap.add_argument("--shards", type=int, default=8, help="Minimum number of shards for the 2-worker run.")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP", help="Also cProfile one workers=1 scan; show TOP functions.")
    args = ap.parse_args(argv)

    from itd.core import load_benchmark
    from itd.corpus.scan import ScanConfig, scan

    rng = random.Random(args.seed)
    bench_path = Path(args.data) / "gsm8k" / "test.jsonl"
    samples = load_benchmark(bench_path)
    records = C.gsm8k_records(args.data, "test")
    with C.workdir(args.workdir, "itd-bench-scan-") as wd:
        corpus = wd / f"corpus_{args.mb:g}mb.jsonl"
        t0 = time.perf_counter()
        planted, truth = C.planted_gsm8k_leaks(args.data, rng, args.per_variant)
        info = C.write_corpus(corpus, int(args.mb * 1e6), C.real_texts(args.data), rng, planted)
        gen_s = time.perf_counter() - t0
        size = corpus.stat().st_size
        mb = size / 1e6
        shard_bytes = max(1 << 16, size // args.shards)
        C.warm_page_cache(corpus)  # so no contender pays for the disk

        grams = baseline_grams(records, 13)
        runs = {
            "baseline": lambda: baseline_scan(corpus, grams, 13),
            "w1": lambda: scan(samples, [corpus], ScanConfig(detectors=("ngram",), workers=1)),
            "w2": lambda: scan(samples, [corpus], ScanConfig(detectors=("ngram",), workers=2, shard_bytes=shard_bytes)),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        results: dict[str, object] = {}
        calib: list[float] = []
        loads: list[float] = []
        for _ in range(args.reps):  # round-robin, so load spikes on the shared machine hit every contender
            loads.append(os.getloadavg()[0])
            calib.append(calibrate())
            for name, fn in runs.items():
                c, t = cpu_seconds(), time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(cpu_seconds() - c)
        best = {k: min(v) for k, v in times.items()}
        best_cpu = {k: min(v) for k, v in cpu.items()}
        speed = {k: mb / v for k, v in best.items()}

        r1, r2 = results["w1"], results["w2"]
        labels1 = [r.label for r in r1.results]
        labels2 = [r.label for r in r2.results]
        flagged = sum(lab != "clean" for lab in labels1)
        planted_found = sum(labels1[j] != "clean" for j in truth)

        C.header(f"Exact scan throughput ({mb:.1f} MB corpus, GSM8K test benchmark: {len(samples)} items)")
        print(
            f"corpus: {info['documents']:,} documents, {size:,} bytes, {len(planted)} planted leaks "
            f"(generated in {gen_s:.1f} s); 2-worker run: shard_bytes={shard_bytes:,} -> {r2.stats['shards']} shards\n"
        )
        names = {
            "baseline": "(a) plain-Python baseline (json + lower + `\\w+` + 13-gram tuple set)",
            "w1": "(b) itd exact scan, workers=1",
            "w2": "(c) itd exact scan, workers=2",
        }
        rows = [
            (
                names[k],
                best[k],
                speed[k],
                speed[k] / speed["baseline"],
                "-" if k == "baseline" else f"{speed[k] / speed['w1']:.2f}",
                best_cpu[k],
                mb / best_cpu[k],
            )
            for k in runs
        ]
        print(C.table(["run", "best wall s", "MB/s (wall)", "x baseline", "x workers=1", "CPU s", "MB per CPU-s"], rows))
        print()
        print("all repetitions, wall s: " + "; ".join(f"{k}: " + ", ".join(f"{t:.2f}" for t in v) for k, v in times.items()))
        print()
        print(
            "machine calibration in the same run (2 concurrent pure-Python CPU loops vs 1, ideal 2.00x): "
            + ", ".join(f"{c:.2f}x" for c in calib)
            + f"; 1-min load average before each round: {', '.join(f'{x:.2f}' for x in loads)}"
        )
        print()
        print(
            f"checks: baseline 13-gram hits {results['baseline']:,}; itd flagged {flagged} items "
            f"({planted_found}/{len(truth)} planted); workers=1 and workers=2 labels identical: {labels1 == labels2}"
        )
        print()
        ok1 = speed["w1"] >= GOAL_MB_S
        ok2 = speed["w2"] / speed["w1"] >= GOAL_SPEEDUP
        print(
            f"goals: >= {GOAL_MB_S:g} MB/s per core: {'met' if ok1 else 'MISSED'} ({speed['w1']:.1f} MB/s); "
            f">= {GOAL_SPEEDUP}x on 2 processes: {'met' if ok2 else 'MISSED'} ({speed['w2'] / speed['w1']:.2f}x; "
            f"the machine itself gave {max(calib):.2f}x to two CPU-bound loops); "
            f"CPU overhead of the pool (CPU s workers=2 / workers=1): {best_cpu['w2'] / best_cpu['w1']:.2f}x"
        )
        if args.profile:
            print()
            print("cProfile of one workers=1 scan (own time per function):\n")
            print(C.profile_table(runs["w1"], args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
