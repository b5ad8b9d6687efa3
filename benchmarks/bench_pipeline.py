"""Decontamination end to end on a contamination-lab pair: how much of the contaminated twin's score was memory,
and how much of that `itd` removes.

Runs `itd.demo.run_demo` (lab twins, Min-K%++ detection calibrated on held-out items, the deterministic rewriter
of the benchmark's kind, corpus assurance against the lab's training corpus, evaluation of both twins) and prints
the accuracy table and the headline figures with their 95% bootstrap CIs, as RESULTS.md records them.

    python benchmarks/bench_pipeline.py --benchmark arithmetic --preset small
    python benchmarks/bench_pipeline.py --benchmark mmlu --preset small --items 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _fig(f: dict | None, pct: bool = True) -> str:
    if not f or f.get("value") is None:
        return "n/a" + (f" ({f['reason']})" if f and f.get("reason") else "")
    show = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    lo, hi = f["ci"]
    return f"{show(f['value'])} [{show(lo)}, {show(hi)}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.data_arg(ap)
    ap.add_argument("--benchmark", default="arithmetic", choices=("arithmetic", "gsm8k", "mmlu"))
    ap.add_argument("--preset", default=None, help="Lab preset (default: demo for arithmetic, tiny otherwise).")
    ap.add_argument("--items", type=int, default=200, help="Benchmark items in the experiment.")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from itd.demo import DemoConfig, run_demo

    data = None if args.benchmark == "arithmetic" else str(Path(args.data) / args.benchmark)
    config = DemoConfig(benchmark=args.benchmark, data=data, preset=args.preset, items=args.items, seed=args.seed,
                        device=args.device)
    C.header(f"Decontamination on lab twins: {args.benchmark}, preset {args.preset or 'default'}, {args.items} items")
    with C.workdir(args.workdir, "itd-bench-pipeline-") as wd:
        t0 = time.perf_counter()
        result = run_demo(wd, config, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        seconds = time.perf_counter() - t0
    s = result.summary
    ev = s["evaluation"]
    det = s.get("detection", {})
    truth = (det.get("truth") or {}).get("methods", {}).get("minkpp", {})
    print(f"- {s['benchmark']['items']} items, {s['flagged']} flagged (FDR {det.get('fdr')}), Min-K%++ AUROC leaked vs "
          f"unseen {truth.get('auroc', float('nan')):.3f}; rewrites {s['rewrite']['counts']}; wall {seconds:.0f} s")
    subsets = ("original", "decontaminated", "flagged_before", "flagged_after", "unflagged")
    rows = [[role] + [_fig(ev["accuracy"][role].get(k)) for k in subsets] for role in ev["accuracy"]]
    print(C.table(["twin", *subsets], rows))
    print(C.table(["figure", "value [95% CI]"], [
        [k, _fig(ev.get(k), pct=k not in ("fidelity", "resistance"))]
        for k in ("inflation", "true_inflation", "residual_inflation", "inflation_removed", "fidelity", "resistance")
    ]))
    by_truth = ev.get("by_truth", {})
    if by_truth:  # where the memory is: leaked vs unseen items, before and after rewriting
        cols = [(w, g) for w in ("original", "decontaminated") for g in ("leaked", "unseen")]
        print(C.table(["twin", *(f"{w} {g} (n={by_truth['model'][w][g]['n']})" for w, g in cols)], [
            [role] + [f"{100 * sets[w][g]['accuracy']:.1f}%" if sets[w][g]["accuracy"] is not None else "n/a" for w, g in cols]
            for role, sets in by_truth.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
