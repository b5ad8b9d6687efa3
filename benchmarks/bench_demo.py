"""`itd demo` over several seeds, against the lab issue's goals (RESULTS §9).

    python benchmarks/bench_demo.py --seeds 0 1 2 --workdir runs/demo-seeds

Each seed is a separate `itd demo --seed S` (a fresh lab: base and twins trained for that seed unless a cached
base matches), timed (wall and CPU of the whole command). A finished seed's directory is reused by `itd demo`
itself (it resumes), so the script can be run again to re-read the table. Prints one markdown row per seed:
true inflation, the twins' gap on unseen items, leaked and unseen items flagged, share of the inflation removed
by ITD (flagged items rewritten), fidelity over its ceiling and the clean twin's accuracy change on the rewritten
set, each with its 95% CI, then whether each goal is met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GOALS = {
    "true inflation >= 15 pts, CI above 0": lambda g: g["true_inflation"]["value"] >= 0.15 and g["true_inflation"]["ci"][0] > 0,
    "unseen gap within +-3 pts": lambda g: abs(g["unseen_gap"]["value"]) <= 0.03,
    "leaked flagged >= 80%": lambda g: g["flags"]["recall"]["value"] >= 0.8,
    "unseen flagged <= 5%": lambda g: g["flags"]["false_flag_rate"]["value"] <= 0.05,
    "removed >= 80%, CI half-width <= 15 pts": lambda g: (g["arms"]["itd"]["inflation_removed"]["value"] >= 0.8
                                                      and _half(g["arms"]["itd"]["inflation_removed"]) <= 0.15),
    "clean twin rewritten vs original within 3 pts (every item)": lambda g: abs(g["arms"]["all"]["difficulty"]["value"]) <= 0.03,
    "fidelity >= 0.9 of its ceiling (every item)": lambda g: g["arms"]["all"]["fidelity_ratio"]["value"] >= 0.9,
}


def _half(estimate: dict) -> float:
    lo, hi = estimate["ci"]
    return (hi - lo) / 2


def _fig(estimate: dict, scale: float = 100, digits: int = 0) -> str:
    lo, hi = estimate["ci"]
    return f"{scale * estimate['value']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def run_seed(seed: int, workdir: Path) -> tuple[dict, float, float]:
    """Run `itd demo --seed seed` into `workdir/seed-S`; its ground truth, wall seconds and CPU seconds."""
    out = workdir / f"seed-{seed}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "itd", "demo", "--seed", str(seed), "--out", str(out), "--json"],
                   check=True, stdout=subprocess.DEVNULL, env=os.environ.copy())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    summary = json.loads((out / "run" / "summary.json").read_text("utf-8"))
    return summary["evaluation"]["ground_truth"], wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo-seeds"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| seed | wall / CPU | true inflation | unseen gap | leaked flagged | unseen flagged | removed (ITD) "
          "| fidelity / ceiling (every item) | clean twin: rewritten - original (every item) | goals met |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        g, wall, cpu = run_seed(seed, args.workdir)
        flags = g["flags"]
        met = [name for name, ok in GOALS.items() if ok(g)]
        print(f"| {seed} | {wall / 60:.1f} / {cpu / 60:.1f} min | {_fig(g['true_inflation'])} | {_fig(g['unseen_gap'], digits=1)} "
              f"| {flags['leaked_flagged']}/{flags['leaked']} | {flags['unseen_flagged']}/{flags['unseen']} "
              f"| {_fig(g['arms']['itd']['inflation_removed'])} | {_fig(g['arms']['all']['fidelity_ratio'], 1, 2)} "
              f"| {_fig(g['arms']['all']['difficulty'], digits=1)} | {len(met)}/{len(GOALS)}"
              + ("" if len(met) == len(GOALS) else f" (not: {'; '.join(n for n in GOALS if n not in met)})") + " |",
              flush=True)


if __name__ == "__main__":
    main()
