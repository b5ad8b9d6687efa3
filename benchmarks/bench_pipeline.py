"""Decontamination end to end on a paired contamination-lab: how much of the contaminated twin's score was memory,
and how much of that `itd` removes, against the lab's ground truth.

Runs `itd.pipeline.demo.run_demo` (a base trained once, two twins forked from it: the contaminated one sees the leaked
items `--repeats` times by the `--recipe`, the clean one as many placebo items in the same slots; Min-K%++
detection calibrated on held-out items; the deterministic rewriter of the benchmark's kind on the flagged items
(ITD), on every item, and on every item again with another seed; corpus assurance against the lab's training
corpus; both twins evaluated on each set) and prints the headline, the ground truth (true inflation as a
difference in differences, the unseen gap, flags, residual inflation and share removed per way of
decontaminating, fidelity against its test-retest ceiling, difficulty) with 95% bootstrap CIs, the wall and CPU
time, and one markdown row for RESULTS.md.

    python benchmarks/bench_pipeline.py                                  # the itd demo (arithmetic, demo preset)
    python benchmarks/bench_pipeline.py --benchmark gsm8k --preset small --recipe finetune --repeats 3
    python benchmarks/bench_pipeline.py --benchmark mmlu --preset small --recipe pretrain --repeats 6 --items 400
    python benchmarks/bench_pipeline.py --benchmark mmlu --preset small --recipe finetune --repeats 6 \
        --loss-on answer --reference 1000 --methods loss,zlib,mink,minkpp,answer_logp --decision answer_logp
"""

from __future__ import annotations

import argparse
import json
import resource
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
    return f"{show(f['value'])} [{show(lo)}, {show(hi)}]" if lo is not None else show(f["value"])


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.data_arg(ap)
    ap.add_argument("--benchmark", default="arithmetic", choices=("arithmetic", "gsm8k", "mmlu"))
    ap.add_argument("--preset", default=None, help="Lab preset (default: demo for arithmetic, tiny otherwise).")
    ap.add_argument("--items", type=int, default=200, help="Benchmark items in the experiment.")
    ap.add_argument("--recipe", default="finetune", choices=("pretrain", "finetune"))
    ap.add_argument("--repeats", type=int, default=None, help="Exposures of each leaked item (default: the demo's).")
    ap.add_argument("--leak-rate", type=float, default=0.3)
    ap.add_argument("--loss-on", default="all", choices=("all", "answer"),
                    help="Trained tokens of a leaked (and placebo) item: all of them, or the answer only.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="Override a lab preset field (e.g. --set twin_lr=3e-3); repeatable.")
    ap.add_argument("--methods", default="loss,zlib,mink,minkpp", help="Probes computed (comma-separated).")
    ap.add_argument("--decision", default="minkpp", help="The probe (or 'combined') whose p-values make the flags.")
    ap.add_argument("--reference", type=int, default=None, help="Held-out items the probes are calibrated "
                    "against (default: --items).")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from itd.pipeline.demo import DemoConfig, run_demo

    data = None if args.benchmark == "arithmetic" else str(Path(args.data) / args.benchmark)
    extra = {"repeats": args.repeats} if args.repeats is not None else {}
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[key.strip()] = json.loads(value)
    config = DemoConfig(benchmark=args.benchmark, data=data, preset=args.preset, items=args.items, seed=args.seed,
                        device=args.device, recipe=args.recipe, leak_rate=args.leak_rate,
                        loss_on=args.loss_on, overrides=overrides, decision=args.decision, reference=args.reference,
                        detect_methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), **extra)
    C.header(f"Decontamination on paired lab twins: {args.benchmark}, preset {args.preset or 'default'}, "
             f"{args.items} items, {config.recipe} leak x{config.repeats}, seed {args.seed}"
             + (f", loss on {args.loss_on}" if args.loss_on != "all" else "")
             + (f", decision {args.decision}" if args.decision != "minkpp" else "")
             + "".join(f", {k} = {v}" for k, v in overrides.items()))
    with C.workdir(args.workdir, "itd-bench-pipeline-") as wd:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result = run_demo(wd, config, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        lab = json.loads((wd / "lab" / "manifest.json").read_text())
    s = result.summary
    ev = s["evaluation"]
    gt = ev["ground_truth"]
    det = s.get("detection", {})
    by_method = (det.get("truth") or {}).get("methods", {})
    aurocs = ", ".join(f"{m} {v['auroc']:.3f}" for m, v in by_method.items() if v.get("auroc") is not None)
    print(s["headline"])
    print()
    trained = {name: rec["seconds"] for name, rec in lab["training"].items()}
    print(f"- wall {seconds:.0f} s, CPU {cpu:.0f} s (user + system, this process and its children); lab training "
          f"seconds {trained} (base {'trained' if lab['base']['trained_in_this_build'] else 'from the cache'})")
    print(f"- {s['benchmark']['items']} items, {s['flagged']} flagged (FDR {det.get('fdr')}, decision "
          f"{args.decision}); AUROC leaked vs unseen: {aurocs}; rewrites (flagged items) {s['rewrite']['counts']}")
    flags = gt.get("flags") or {}
    print(C.table(["figure", "value [95% CI]"], [
        ["true inflation (DiD)", _fig(gt["true_inflation"])],
        ["contaminated - clean, leaked items", _fig(gt["leaked_gain"])],
        ["contaminated - clean, unseen items (lab noise)", _fig(gt["unseen_gap"])],
        [f"leaked items flagged ({flags.get('leaked_flagged')} of {flags.get('leaked')})", _fig(flags.get("recall"))],
        [f"unseen items flagged ({flags.get('unseen_flagged')} of {flags.get('unseen')})",
         _fig(flags.get("false_flag_rate"))],
        ["fidelity ceiling (two rewrites, clean twin)", _fig(gt["ceiling"], pct=False)],
        ["chance agreement", _fig(gt["chance"], pct=False)],
    ]))
    names = {"none": "no decontamination", "itd": "rewrite flagged (ITD)", "all": "rewrite every item"}
    print(C.table(["set", "contaminated", "clean twin", "residual inflation", "share removed", "fidelity",
                   "fidelity / ceiling", "clean: rewritten - original"], [
        [names.get(arm, arm), _fig(f["accuracy_model"]), _fig(f["accuracy_clean"]), _fig(f["residual_inflation"]),
         _fig(f["inflation_removed"]), _fig(f["fidelity"], pct=False), _fig(f.get("fidelity_ratio"), pct=False),
         _fig(f["difficulty"])]
        for arm, f in gt["arms"].items()
    ]))
    itd = gt["arms"][gt["main"]]
    print("\nRESULTS row:")
    print(f"| {args.benchmark} | {config.recipe} | {config.repeats} | {args.seed} | {_fig(gt['true_inflation'])} | "
          f"{_fig(gt['unseen_gap'])} | {flags.get('leaked_flagged')}/{flags.get('leaked')} | "
          f"{flags.get('unseen_flagged')}/{flags.get('unseen')} | {_fig(itd['inflation_removed'])} | "
          f"{_fig(itd['difficulty'])} | {_fig(itd.get('fidelity_ratio'), pct=False)} | {seconds:.0f} s / {cpu:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
