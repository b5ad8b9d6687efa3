"""End-to-end latency of `itd check` (the pre-commit hook) against a persistent index.

Builds an index (`itd.corpus.index.build_index`) over a GSM8K+MMLU-sized corpus: GSM8K train + test and every MMLU
dev/test item as one JSONL document each. Then times the CLI as a subprocess, wall clock including interpreter
start-up, best of `--reps`:

  * `itd check leaked_gsm8k.jsonl --index IDX`: 1,000 GSM8K test items (all in the corpus);
  * `itd check leaked_mmlu.csv --index IDX`: 1,000 MMLU test items (all in the corpus);
  * `itd check clean.jsonl --index IDX`: 1,000 generated GSM8K-style problems (`itd.pipeline.demo.generate_problems`);
  * baselines in the same run: `python -c pass` (interpreter start-up) and `python -c "import itd.cli.commands"`.

    python benchmarks/bench_check.py
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_S = 2.0


def itd_command() -> list[str]:
    exe = Path(sys.executable).parent / "itd"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("itd")
    return [found] if found else [sys.executable, "-m", "itd.cli.commands"]


def time_cmd(cmd: list[str], reps: int) -> tuple[float, list[float], subprocess.CompletedProcess]:
    times, proc = [], None
    for _ in range(reps):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
    return min(times), times, proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--items", type=int, default=1000, help="Items per checked file.")
    ap.add_argument("--reps", type=int, default=5, help="Repetitions of each command (best kept).")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP", help="Also cProfile one index build; show TOP functions.")
    args = ap.parse_args(argv)

    from itd.corpus.index import build_index
    from itd.pipeline.demo import generate_problems

    gsm_train = C.gsm8k_records(args.data, "train")
    gsm_test = C.gsm8k_records(args.data, "test")
    mmlu = C.mmlu_rows(args.data, "dev") + C.mmlu_rows(args.data, "test")
    mmlu_test = C.mmlu_rows(args.data, "test")
    with C.workdir(args.workdir, "itd-bench-check-") as wd:
        corpus = wd / "gsm8k_mmlu_corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as f:
            for r in gsm_train + gsm_test:
                f.write(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n")
            for r in mmlu:
                f.write(json.dumps({"text": C.mmlu_text(r)}) + "\n")
        idx = wd / "index"
        t = time.perf_counter()
        meta = build_index([corpus], idx)
        build_s = time.perf_counter() - t
        idx_bytes = sum(p.stat().st_size for p in idx.iterdir() if p.is_file())
        # in-run reference for the build time: an exact scan of the same corpus (same reading, tokenising, hashing)
        from itd.core import load_benchmark
        from itd.corpus.scan import ScanConfig, scan

        bench = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")
        scan_s = C.best_of(lambda: scan(bench, [corpus], ScanConfig(detectors=("ngram",))), 1)[0]
        # and np.unique against a sort-based unique on an array of the size build_index deduplicates at once
        import numpy as np

        arr = np.random.default_rng(0).integers(0, 2**63, 1_600_000, dtype=np.uint64)
        uniq_s = C.best_of(lambda: np.unique(arr), 3)[0]

        def sort_unique(a):
            s = np.sort(a)
            return s[np.concatenate(([True], s[1:] != s[:-1]))]

        sort_s = C.best_of(lambda: sort_unique(arr), 3)[0]

        leaked = wd / "leaked_gsm8k.jsonl"
        leaked.write_text("".join(json.dumps(r) + "\n" for r in gsm_test[: args.items]), encoding="utf-8")
        leaked_mmlu = wd / "leaked_mmlu.csv"
        step = max(1, len(mmlu_test) // args.items)  # spread over subjects
        with open(leaked_mmlu, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
            for r in mmlu_test[::step][: args.items]:
                w.writerow([r["question"], r["choice0"], r["choice1"], r["choice2"], r["choice3"], r["answer"]])
        clean = wd / "clean.jsonl"
        clean.write_text("".join(json.dumps(r) + "\n" for r in generate_problems(args.items, seed=12345)), encoding="utf-8")

        itd = itd_command()
        cmds = [
            ("`python -c pass` (baseline: interpreter start-up)", [sys.executable, "-c", "pass"], None),
            ('`python -c "import itd.cli.commands"`', [sys.executable, "-c", "import itd.cli.commands"], None),
            (f"`itd check` {args.items} leaked GSM8K items", itd + ["check", str(leaked), "--index", str(idx), "--json"], 1),
            (f"`itd check` {args.items} leaked MMLU items", itd + ["check", str(leaked_mmlu), "--index", str(idx), "--json"], 1),
            (f"`itd check` {args.items} clean items", itd + ["check", str(clean), "--index", str(idx), "--json"], 0),
        ]
        results = []
        for label, cmd, _ in cmds:
            results.append(time_cmd(cmd, args.reps))
        base = results[0][0]
        rows, notes = [], []
        for (label, cmd, want_rc), (best, times, proc) in zip(cmds, results):
            flagged = "-"
            if want_rc is not None:
                try:
                    flagged = str(len(json.loads(proc.stdout)["contaminated"]))
                except (ValueError, KeyError):
                    flagged = "?"
                if proc.returncode != want_rc:
                    notes.append(f"{label}: exit code {proc.returncode}, expected {want_rc}; stderr: {proc.stderr.strip()[:300]}")
            verdict = "-" if want_rc is None else ("met" if best < GOAL_S else "MISSED")
            rows.append((label, best, best / base, flagged, f"{proc.returncode}", verdict, ", ".join(f"{t:.2f}" for t in times)))

        C.header("`itd check` end-to-end latency (subprocess, wall clock incl. Python start-up)")
        print(
            f"index: {meta['documents']:,} documents ({meta['bytes'] / 1e6:.1f} MB JSONL: GSM8K train+test, MMLU dev+test), "
            f"built in {build_s:.1f} s, {idx_bytes / 1e6:.1f} MB on disk; n-grams: "
            + ", ".join(f"{k} {v:,}" for k, v in meta["ngrams"].items())
            + f"; timed as `itd check FILE --index IDX --json` via {Path(itd[-1]).name!r}\n"
        )
        print(
            f"index build: {build_s:.2f} s = {build_s / scan_s:.1f}x an exact `itd` scan of the same corpus ({scan_s:.2f} s, "
            f"GSM8K test benchmark). np.unique of 1.6 M uint64 (numpy {np.__version__}): {uniq_s * 1e3:.0f} ms vs "
            f"{sort_s * 1e3:.0f} ms for np.sort + neighbour mask ({uniq_s / sort_s:.0f}x)\n"
        )
        print(C.table(["command", f"best of {args.reps} s", "x `python -c pass`", "items flagged", "exit", f"< {GOAL_S:g} s", "all runs s"], rows))
        print()
        for n in notes:
            print("note: " + n)
        if args.profile:
            print()
            print("cProfile of one index build (own time per function):\n")
            print(C.profile_table(lambda: build_index([corpus], wd / "index-profiled"), args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
