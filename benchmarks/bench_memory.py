"""Peak memory of scans, each in a fresh subprocess that reports its own `resource.getrusage` peak RSS.

Three measurements:

1. `--sizes`: an exact scan (ngram, `--workers`) of generated corpora of growing size. A first child scans a
   one-document corpus: the baseline (interpreter + numpy + itd + fitted detector). Peak RSS must not grow with
   the corpus: it is streamed in batches of `batch_chars` characters.
2. `--long-doc-mb`: one corpus document of that many MB (one JSONL line), against the same text split into its
   documents, one per line (the baseline, measured in the same run), both with the default detectors (ngram,
   minhash). A long document is read in overlapping windows, so its peak RSS stays near the baseline's and its
   labels are the baseline's.
3. `--long-item-mb`: a benchmark holding one item of that many MB (GSM8K test + the long item), against the same
   text split into many items of ordinary length (the baseline), scanned with the default detectors over an
   ordinary corpus of `--item-corpus-mb` MB.

    python benchmarks/bench_memory.py --sizes 50 200 --long-doc-mb 200 --long-item-mb 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def child(benchmark: str, corpus: str, workers: int, detectors: str) -> int:
    from itd.core import load_benchmark
    from itd.corpus.scan import ScanConfig, scan

    t = time.perf_counter()
    samples = load_benchmark(benchmark)
    report = scan(samples, [corpus], ScanConfig(detectors=tuple(detectors.split(",")), workers=workers))
    seconds = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    labels = [r.label for r in report.results]
    print(
        json.dumps(
            {
                "maxrss_kb": usage.ru_maxrss,  # Linux: kilobytes
                "children_maxrss_kb": children.ru_maxrss,
                "seconds": seconds,
                "scan_seconds": report.stats["seconds"],
                "bytes": report.stats["bytes"],
                "documents": report.stats["documents"],
                "flagged": len(report.contaminated),
                "flagged_ids": sorted(r.sample.id for r in report.contaminated),
                "labels_sha": hashlib.sha256("\n".join(labels).encode()).hexdigest()[:12],
            }
        )
    )
    return 0


def run_child(benchmark: Path, corpus: Path, workers: int, detectors: str = "ngram") -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(corpus), "--benchmark", str(benchmark), "--workers", str(workers),
         "--detectors", detectors],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["peak_mib"] = max(r["maxrss_kb"], r["children_maxrss_kb"]) / 1024
    return r


def join_documents(lines: Path, out: Path) -> int:
    """Write every document of the JSONL corpus `lines` into `out` as one document (one JSONL line), documents
    separated by blank lines, streamed; returns the document's length in characters."""
    chars = 0
    with open(lines, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        dst.write('{"text": "')
        for i, line in enumerate(src):
            text = ("\n\n" if i else "") + json.loads(line)["text"]
            chars += len(text)
            dst.write(json.dumps(text)[1:-1])
        dst.write('"}\n')
    return chars


def long_item_benchmarks(data: str, wd: Path, mb: float, rng: random.Random) -> tuple[Path, Path, int]:
    """GSM8K test + one item whose question is `mb` MB of filler paragraphs, and the baseline: GSM8K test + the
    same paragraphs as items of 1-3 paragraphs each. Returns (long, baseline, items in the baseline)."""
    test = (Path(data) / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
    pool = C.filler_pool(rng, 3000)
    paragraphs, size = [], 0
    while size < mb * 1e6:
        paragraphs.append(rng.choice(pool) + f" (part {len(paragraphs)})")
        size += len(paragraphs[-1]) + 2
    long, base = wd / "bench_long_item.jsonl", wd / "bench_split_items.jsonl"
    with open(long, "w", encoding="utf-8") as f:
        f.write("\n".join(test) + "\n")
        f.write(json.dumps({"question": "\n\n".join(paragraphs), "answer": "It is the sum.\n#### 42"}) + "\n")
    items = 0
    with open(base, "w", encoding="utf-8") as f:
        f.write("\n".join(test) + "\n")
        i = 0
        while i < len(paragraphs):
            k = rng.randint(1, 3)
            f.write(json.dumps({"question": "\n\n".join(paragraphs[i : i + k]), "answer": "It is the sum.\n#### 42"}) + "\n")
            i += k
            items += 1
    return long, base, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--sizes", type=float, nargs="*", default=[50.0, 200.0], help="Corpus sizes in MB (exact scan).")
    ap.add_argument("--workers", type=int, default=1, help="Scan workers of --sizes (peak of the largest process).")
    ap.add_argument("--long-doc-mb", type=float, default=0.0, help="Size of the one-document corpus (0: skip).")
    ap.add_argument("--long-item-mb", type=float, default=0.0, help="Size of the long benchmark item (0: skip).")
    ap.add_argument("--item-corpus-mb", type=float, default=10.0, help="Corpus of the long-item measurement.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--benchmark", help=argparse.SUPPRESS)
    ap.add_argument("--detectors", default="ngram", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.benchmark, args.child, args.workers, args.detectors)

    rng = random.Random(args.seed)
    benchmark = Path(args.data) / "gsm8k" / "test.jsonl"
    real = C.real_texts(args.data)
    planted, _ = C.planted_gsm8k_leaks(args.data, rng, 5)
    C.header("Peak RSS of scans, fresh subprocess per scan")
    with C.workdir(args.workdir, "itd-bench-memory-") as wd:
        if args.sizes:
            rows = []
            tiny = wd / "tiny.jsonl"
            tiny.write_text(json.dumps({"text": "nothing to see here"}) + "\n", encoding="utf-8")
            base = run_child(benchmark, tiny, args.workers)
            rows.append(("1 document (baseline: interpreter + itd + fitted detector)", f"{base['bytes'] / 1e6:.6f}", base["peak_mib"], 0.0, "-"))
            peaks = []
            for size in args.sizes:
                corpus = wd / f"memory_{size:g}mb.jsonl"
                C.write_corpus(corpus, int(size * 1e6), real, rng, planted)
                r = run_child(benchmark, corpus, args.workers)
                corpus.unlink()
                peaks.append(r["peak_mib"])
                rows.append((f"{size:g} MB corpus", f"{r['bytes'] / 1e6:.1f}", r["peak_mib"], r["peak_mib"] - base["peak_mib"],
                             f"{r['bytes'] / 1e6 / r['scan_seconds']:.1f}"))
            print(f"### Exact scan (ngram, workers={args.workers}) as the corpus grows\n")
            print(C.table(["corpus", "corpus MB", "peak RSS MiB", "above baseline MiB", "scan MB/s"], rows))
            print()
            if len(peaks) >= 2:
                growth = peaks[-1] / peaks[0]
                ratio = args.sizes[-1] / args.sizes[0]
                print(f"corpus grew {ratio:g}x, peak RSS grew {growth:.2f}x "
                      f"({'flat: memory does not grow with the corpus' if growth < 1.15 else 'GROWS with the corpus'})\n")
        detectors = "ngram,minhash"
        if args.long_doc_mb:
            lines = wd / "long_doc_lines.jsonl"
            C.write_corpus(lines, int(args.long_doc_mb * 1e6), real, rng, planted)
            one = wd / "long_doc_one.jsonl"
            chars = join_documents(lines, one)
            split = run_child(benchmark, lines, 1, detectors)
            whole = run_child(benchmark, one, 1, detectors)
            lines.unlink()
            one.unlink()
            rows = [(f"the text as {split['documents']:,} documents, one per line (baseline)", split["bytes"] / 1e6, split["peak_mib"],
                     split["scan_seconds"], split["flagged"]),
                    (f"the same text as 1 document of {chars / 1e6:.1f} M characters", whole["bytes"] / 1e6, whole["peak_mib"],
                     whole["scan_seconds"], whole["flagged"])]
            print(f"### One long corpus document ({detectors}, workers=1)\n")
            print(C.table(["corpus", "MB", "peak RSS MiB", "scan s", "items flagged"], rows))
            same = split["labels_sha"] == whole["labels_sha"]
            print(f"\npeak RSS {whole['peak_mib'] / split['peak_mib']:.2f}x the baseline's; time {whole['scan_seconds'] / split['scan_seconds']:.2f}x; "
                  f"labels {'identical' if same else 'DIFFER'} (flagged only as one document: "
                  f"{sorted(set(whole['flagged_ids']) - set(split['flagged_ids']))}; only as lines: "
                  f"{sorted(set(split['flagged_ids']) - set(whole['flagged_ids']))})\n")
        if args.long_item_mb:
            long, base_bench, items = long_item_benchmarks(args.data, wd, args.long_item_mb, rng)
            corpus = wd / "item_corpus.jsonl"
            C.write_corpus(corpus, int(args.item_corpus_mb * 1e6), real, rng, planted)
            split = run_child(base_bench, corpus, 1, detectors)
            whole = run_child(long, corpus, 1, detectors)
            rows = [(f"GSM8K test + the text as {items:,} items (baseline)", split["peak_mib"], split["seconds"], split["flagged"]),
                    (f"GSM8K test + the text as 1 item of {args.long_item_mb:g} MB", whole["peak_mib"], whole["seconds"], whole["flagged"])]
            print(f"### One long benchmark item ({detectors}, workers=1, corpus {args.item_corpus_mb:g} MB)\n")
            print(C.table(["benchmark", "peak RSS MiB", "load + fit + scan s", "items flagged"], rows))
            print(f"\npeak RSS {whole['peak_mib'] / split['peak_mib']:.2f}x the baseline's\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
