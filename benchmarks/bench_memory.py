"""Peak memory of an exact scan (ngram detector, workers=1) for two corpus sizes, each in a fresh subprocess.

Each child process loads GSM8K test, runs `itd.scan.scan` over one corpus and reports its own
`resource.getrusage(RUSAGE_SELF).ru_maxrss` (peak resident set size). A first child scans a one-document corpus:
that is the baseline (interpreter + numpy + itd + fitted detector), so the table shows what the corpus itself adds.
Peak RSS should not grow with the corpus: the corpus is streamed in batches of `batch_chars` characters.

    python benchmarks/bench_memory.py --sizes 50 200
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(benchmark: str, corpus: str, workers: int) -> int:
    from itd.data import load_benchmark
    from itd.scan import ScanConfig, scan

    samples = load_benchmark(benchmark)
    t = time.perf_counter()
    report = scan(samples, [corpus], ScanConfig(detectors=("ngram",), workers=workers))
    seconds = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "maxrss_kb": usage.ru_maxrss,  # Linux: kilobytes
                "children_maxrss_kb": children.ru_maxrss,
                "seconds": seconds,
                "bytes": report.stats["bytes"],
                "documents": report.stats["documents"],
                "flagged": len(report.contaminated),
            }
        )
    )
    return 0


def run_child(benchmark: Path, corpus: Path, workers: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(corpus), "--benchmark", str(benchmark), "--workers", str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--sizes", type=float, nargs="+", default=[50.0, 200.0], help="Corpus sizes in MB.")
    ap.add_argument("--workers", type=int, default=1, help="Scan workers (peak of the largest process is reported).")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--benchmark", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.benchmark, args.child, args.workers)

    rng = random.Random(args.seed)
    benchmark = Path(args.data) / "gsm8k" / "test.jsonl"
    real = C.real_texts(args.data)
    planted, _ = C.planted_gsm8k_leaks(args.data, rng, 5)
    rows = []
    with C.workdir(args.workdir, "itd-bench-memory-") as wd:
        tiny = wd / "tiny.jsonl"
        tiny.write_text(json.dumps({"text": "nothing to see here"}) + "\n", encoding="utf-8")
        base = run_child(benchmark, tiny, args.workers)
        base_mb = max(base["maxrss_kb"], base["children_maxrss_kb"]) / 1024
        rows.append(("1 document (baseline: interpreter + itd + fitted detector)", f"{base['bytes'] / 1e6:.6f}", base_mb, 0.0, "-"))
        peaks = []
        for size in args.sizes:
            corpus = wd / f"memory_{size:g}mb.jsonl"
            C.write_corpus(corpus, int(size * 1e6), real, rng, planted)
            r = run_child(benchmark, corpus, args.workers)
            corpus.unlink()
            peak = max(r["maxrss_kb"], r["children_maxrss_kb"]) / 1024
            peaks.append(peak)
            rows.append((f"{size:g} MB corpus", f"{r['bytes'] / 1e6:.1f}", peak, peak - base_mb, f"{r['bytes'] / 1e6 / r['seconds']:.1f}"))

    C.header(f"Peak RSS of an exact scan (workers={args.workers}), fresh subprocess per corpus")
    print(C.table(["corpus", "corpus MB", "peak RSS MiB", "above baseline MiB", "scan MB/s"], rows))
    print()
    if len(peaks) >= 2:
        growth = peaks[-1] / peaks[0]
        ratio = args.sizes[-1] / args.sizes[0]
        print(
            f"corpus grew {ratio:g}x, peak RSS grew {growth:.2f}x "
            f"({'flat: memory does not grow with the corpus' if growth < 1.15 else 'GROWS with the corpus'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
