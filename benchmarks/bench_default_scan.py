"""Default scan (ngram + minhash) vs exact-only scan (ngram), and optionally the same two on another itd tree.

Builds a ~`--mb` MB JSONL corpus the way `bench_scan.py` does (GSM8K train + MMLU texts + filler, planted GSM8K
test leaks); the benchmark is GSM8K test. Every contender runs `itd.scan(..., workers=1)` in a fresh
subprocess (so `--other PATH`, an older checkout's root, is timed with its own code in the same run), round-robin
over `--reps` repetitions; each reports its scan's wall and CPU seconds (detector fit included, interpreter start
not), its peak RSS and its labels. Speeds are MB (10^6 bytes of the corpus file) per CPU-second, i.e. per core.

    python benchmarks/bench_default_scan.py --mb 50 --reps 3 --other ../itd-before
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_MB_S = 20.0

_CHILD = r"""
import json, resource, sys, time
import itd  # the top-level API: the same names in trees before and after the packages by stage
bench, corpus, detectors = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(","))
samples = itd.load_benchmark(bench)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
report = itd.scan(samples, [corpus], itd.ScanConfig(detectors=detectors, workers=1))
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mib": r1.ru_maxrss / 1024,
                  "labels": [x.label for x in report.results]}))
"""


def run(tree: Path, bench: Path, corpus: Path, detectors: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(bench), str(corpus), detectors], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--mb", type=float, default=50.0, help="Corpus size in MB (10^6 bytes).")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions of each contender (round-robin).")
    ap.add_argument("--per-variant", type=int, default=5, help="Planted leaks per itd.pipeline.demo variant.")
    ap.add_argument("--other", default=None, help="Root of another itd checkout to time the same way (e.g. before).")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    bench = Path(args.data).resolve() / "gsm8k" / "test.jsonl"
    trees = {"this": C.ROOT} | ({"other": Path(args.other).resolve()} if args.other else {})
    contenders = [(t, d) for t in trees for d in ("ngram", "ngram,minhash")]
    with C.workdir(args.workdir, "itd-bench-default-") as wd:
        corpus = (wd / f"corpus_{args.mb:g}mb.jsonl").resolve()
        planted, truth = C.planted_gsm8k_leaks(args.data, rng, args.per_variant)
        info = C.write_corpus(corpus, int(args.mb * 1e6), C.real_texts(args.data), rng, planted)
        mb = corpus.stat().st_size / 1e6
        C.warm_page_cache(corpus)
        results: dict[tuple[str, str], list[dict]] = {c: [] for c in contenders}
        loads = []
        for _ in range(args.reps):
            loads.append(os.getloadavg()[0])
            for tree, det in contenders:
                results[(tree, det)].append(run(trees[tree], bench, corpus, det))

    C.header(f"Default scan vs exact scan ({mb:.1f} MB corpus, GSM8K test benchmark)")
    print(f"corpus: {info['documents']:,} documents, {len(planted)} planted leaks; trees: "
          + ", ".join(f"{k} = {C.code_version() if k == 'this' else v.name}" for k, v in trees.items()) + "\n")
    rate = {c: [mb / r["cpu"] for r in rs] for c, rs in results.items()}
    base = max(rate[("this", "ngram")])
    rows = []
    for c in contenders:
        rows.append((f"{c[0]}: {c[1]}", max(rate[c]), statistics.median(rate[c]), min(r["wall"] for r in results[c]),
                     max(r["rss_mib"] for r in results[c]), max(rate[c]) / base))
    print(C.table(["contender", "best MB per CPU-s", "median MB per CPU-s", "best wall s", "peak RSS MiB",
                   "x this exact scan"], rows))
    print()
    print("all repetitions, MB per CPU-s: " + "; ".join(f"{c[0]} {c[1]}: " + ", ".join(f"{x:.2f}" for x in v)
                                                  for c, v in rate.items()))
    print(f"1-min load average before each round: {', '.join(f'{x:.2f}' for x in loads)} (on {os.cpu_count()} cores)")
    labels = {c: rs[-1]["labels"] for c, rs in results.items()}
    flagged = {c: sum(x != "clean" for x in v) for c, v in labels.items()}
    planted_found = sum(labels[("this", "ngram,minhash")][j] != "clean" for j in truth)
    print(f"\nitems flagged: " + "; ".join(f"{c[0]} {c[1]}: {n}" for c, n in flagged.items())
          + f"; planted found by this default scan: {planted_found}/{len(truth)}")
    if "other" in trees:
        print("default-scan labels identical to the other tree's: "
              f"{labels[('this', 'ngram,minhash')] == labels[('other', 'ngram,minhash')]}")
        speedup = max(rate[("this", "ngram,minhash")]) / max(rate[("other", "ngram,minhash")])
        print(f"default scan, this tree / other tree: {speedup:.2f}x")
    best = max(rate[("this", "ngram,minhash")])
    print(f"goal >= {GOAL_MB_S:g} MB/s per core for the default scan: {'met' if best >= GOAL_MB_S else 'MISSED'} "
          f"({best:.2f}; the exact scan here: {base:.2f}, default / exact = {best / base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
