"""How many reference items a set-level test needs to catch a small leak: power of the top-k test
(`itd.core.stats.sparse_set_test`), Mann-Whitney (`set_level_test`) and the verdict of deciding by one probe (their
Cauchy combination, as `detect` gives it) against the size of the clean reference set.

Simulated scores (normal, seeded): `--items` benchmark items, a share `--leaks` of them leaked and shifted by
`--shift` standard deviations, against `--references` reference items drawn like the unseen items. A shift of 2
gives the leaked items AUROC 0.92, TPR@1%FPR 0.37 and TPR@5%FPR 0.64, about what the `reference` probe reaches
on the lab's 5% leaks seen once (AUROC 0.91, TPR 0.47 / 0.71). Each cell is the share of draws with p <
`--alpha`; the rows without a leak are the tests' false alarms. The lab's 5% cells use 600 references.

With `--dump` (a `bench_lab.py` per-twin detection, `<benchmark>_r<r>_contaminated.jsonl`): the same tests of one
probe (`--probe`, no strata) on that lab's twins, against random subsets of its references of each size (`--draws`
subsets; all of them once), so a reference set's size is measured on real scores with the twins held fixed.

    python benchmarks/bench_set_power.py --draws 40
    python benchmarks/bench_set_power.py --draws 10 --references 600,1200 --dump W/mmlu_r1_contaminated.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def set_pvalues(bench: np.ndarray, ref: np.ndarray, permutations: int, seed: int) -> tuple[float, float, float]:
    """Mann-Whitney, top-k and their Cauchy combination (the set verdict of deciding by one probe)."""
    from itd.core import stats

    mw = stats.set_level_test(bench, ref, n_boot=10, seed=seed).p_value  # its AUROC interval is not used here
    top = stats.sparse_set_test(bench, ref, n_permutations=permutations, seed=seed).p_value
    return mw, top, float(stats.cauchy_combination(np.array([mw, top])))


def subsampled(dump: Path, probe: str, sizes: list[int], draws: int, alpha: float, permutations: int,
               seed: int) -> None:
    """The probe's set tests on both twins of a lab dump, against random subsets of its reference scores."""
    print(f"Lab dump {dump}, probe `{probe}`: median set verdict over the subsets and the share with p < {alpha}\n")
    print("| twin | references | subsets | median verdict | share p < alpha | share p > 0.1 |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(seed)
    for twin in ("contaminated", "clean"):
        path = dump.with_name(dump.name.replace("_contaminated", f"_{twin}"))
        d = C.load_lab_dump(path)
        if probe not in d["probes"]:
            raise C.DumpError(f"{path}: no probe {probe!r} (it has {', '.join(d['probes'])})")
        bench = d["scores"][:, d["probes"].index(probe)]
        try:
            ref = np.array(d["summary"]["reference_scores"][probe], dtype=float)
        except (KeyError, TypeError, ValueError):
            raise C.DumpError(f"{path}: its manifest has no reference scores of {probe!r}") from None
        bench, ref = bench[np.isfinite(bench)], ref[np.isfinite(ref)]
        for m in [*(x for x in sizes if x < ref.size), ref.size]:
            subsets = draws if m < ref.size else 1
            verdicts = np.array([set_pvalues(bench, ref if m == ref.size else rng.choice(ref, m, replace=False),
                                             permutations, int(rng.integers(1 << 30)))[2] for _ in range(subsets)])
            print(f"| {twin} | {m} | {subsets} | {np.median(verdicts):.1e} | {(verdicts < alpha).mean():.2f} | "
                  f"{(verdicts > 0.1).mean():.2f} |", flush=True)
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=40, help="simulated draws per cell")
    ap.add_argument("--items", type=int, default=400, help="benchmark items")
    ap.add_argument("--references", default="300,600,1200,2400", help="reference set sizes, comma-separated")
    ap.add_argument("--leaks", default="0,0.05,0.1", help="leaked shares of the benchmark, comma-separated")
    ap.add_argument("--shift", type=float, default=2.0, help="the leaked items' shift, in standard deviations")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--permutations", type=int, default=999, help="the top-k test's permutations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", type=Path, help="a bench_lab.py <benchmark>_r<r>_contaminated.jsonl: subsample its references")
    ap.add_argument("--probe", default="reference", help="the probe whose set tests --dump measures")
    args = ap.parse_args()
    sizes = [int(x) for x in args.references.split(",")]
    leaks = [float(x) for x in args.leaks.split(",")]
    if args.draws < 1 or args.items < 1 or min(sizes) < 1 or not all(0 <= x < 1 for x in leaks):
        ap.error("--draws, --items and --references must be positive, --leaks in [0, 1)")
    C.header("Set-level power against the reference set's size")
    if args.dump:
        try:
            subsampled(args.dump, args.probe, sizes, args.draws, args.alpha, args.permutations, args.seed)
        except C.DumpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    rng = np.random.default_rng(args.seed)
    print(f"{args.items} benchmark items, leaked items shifted by {args.shift} sd, {args.draws} draws per cell, "
          f"share of draws with p < {args.alpha} (top-k: {args.permutations} permutations)\n")
    print("| leaked | references | Mann-Whitney | top-k | verdict (both, Cauchy) |\n|---|---|---|---|---|")
    for leak in leaks:
        leaked = round(leak * args.items)
        for m in sizes:
            hits = np.zeros(3)
            for _ in range(args.draws):
                bench = rng.normal(size=args.items)
                bench[:leaked] += args.shift
                ref = rng.normal(size=m)
                hits += np.array(set_pvalues(bench, ref, args.permutations, int(rng.integers(1 << 30)))) < args.alpha
            cells = " | ".join(f"{h / args.draws:.2f}" for h in hits)
            print(f"| {leaked} ({leak:.0%}) | {m} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
