"""The per-item combination's weights (`itd.core.stats.cross_fit_cauchy`) against the best single probe.

Two parts. **Simulation** (`--draws N`, seeded): 400 items against 600 reference items, ten correlated probes of
normal scores (common factor 0.6), leaked items shifted by each probe's own amount, in scenarios shaped like the
lab's cells (a 5% pretraining leak a reference model sees strongly, one seen by two probes, a weaker one, a 30%
fine-tuning leak the answer probes see, a 10% leak). The rule is chosen here, where draws are many and the truth
is known, and draws without a leak give the combination's calibration. **Labs** (`DUMPS`, held out from that
choice): the per-twin detections that `bench_lab.py` writes to its work directory (`<benchmark>_r<r>_<twin>.jsonl`,
the lab beside them), recombined from their per-probe p-values: the per-item combined p depends on nothing else
(the set-level combination does not use these weights).

For each rule: the combined AUROC (-log10 p of leaked against unseen items) minus the best probe's, and how often
it falls below the best probe's 95% bootstrap interval (the issue's goal: never below by more than the CI); on
the labs also TPR@5%FPR, the FDR flags at 5% (Benjamini-Hochberg on the combined p, as `detect` flags) and the
clean twin's share of combined p <= 0.05 (about 0.05 if calibrated) and flags. The simulation has no negative
control (the shipped rule is then the same as without it); a lab dump has one where `detect` ran it (a
reference model given).

    python benchmarks/bench_combination.py --draws 60
    python benchmarks/bench_combination.py --draws 0 W/gsm8k_r1_contaminated.jsonl ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCENARIOS = {  # name: (leaked of 400, per-probe shifts of the leaked items' scores, in standard deviations)
    "5% leak, one strong probe (reference model)": (20, (2.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0, 0, 0, 0)),
    "5% leak, two strong probes": (20, (2.6, 2.1, 0.5, 0.4, 0.3, 0.3, 0.3, 0, 0, 0)),
    "5% leak, one moderate probe": (20, (2.0, 0.3, 0.3, 0.3, 0, 0, 0, 0, 0, 0)),
    "5% leak, nothing strong": (20, (1.3, 0.4, 0.4, 0.4, 0, 0, 0, 0, 0, 0)),
    "10% leak, one strong probe": (40, (1.6, 0.3, 0.3, 0.3, 0, 0, 0, 0, 0, 0)),
    "30% leak, answer probes (fine-tuning)": (120, (0.8, 0.6, 0.2, 0.2, 0, 0, 0, 0, 0, 0)),
}


def rules():
    """name -> function of an items x probes p-value matrix and its negative control (or None) giving the combined
    p-values."""
    from itd.core import stats

    return {
        "all other items, tails 1-10%, z above 1.645, control (shipped)":
            lambda p, c: stats.cross_fit_cauchy(p, control=c)[0],
        "the same without the control": lambda p, c: stats.cross_fit_cauchy(p)[0],
        "other half, tails 1-10%, z above 1.645": lambda p, c: stats.cross_fit_cauchy(p, folds=2)[0],
        "other half, 5% tail, z (before)": lambda p, c: stats.cross_fit_cauchy(p, folds=2, tails=(0.05,),
                                                                                threshold=0.0)[0],
        "equal weights": lambda p, c: stats.cauchy_combination(p),
    }


def separation(leaked, unseen, n_boot=2000):
    from itd.core import stats

    low, high = stats.bootstrap_auroc_ci(leaked, unseen, n_boot=n_boot)
    return stats.auroc(leaked, unseen), low, high, stats.tpr_at_fpr(leaked, unseen, 0.05)


def log_p(p):
    return -np.log10(np.clip(p, 1e-300, 1.0))


def simulate(draws: int, seed: int) -> None:
    from itd.core.stats import auroc, conformal_pvalues

    combine = rules()
    print(f"### Simulation: {draws} draws per scenario, seed {seed}\n")
    print("| scenario | best probe AUROC | " + " | ".join(combine) + " |")
    print("|---|---|" + "---|" * len(combine))
    rng = np.random.default_rng(seed)
    n, m = 400, 600
    for name, (leaked, shifts) in SCENARIOS.items():
        shifts = np.asarray(shifts, dtype=float)
        truth = np.arange(n) < leaked
        best, delta, below = [], {r: [] for r in combine}, {r: 0 for r in combine}
        for _ in range(draws):
            x = np.sqrt(0.6) * rng.normal(size=(n + m, 1)) + np.sqrt(0.4) * rng.normal(size=(n + m, shifts.size))
            x[:leaked] += shifts
            p = np.column_stack([conformal_pvalues(x[:n, j], x[n:, j]) for j in range(shifts.size)])
            j = int(np.argmax([auroc(x[:n, j][truth], x[:n, j][~truth]) for j in range(shifts.size)]))
            top, low, _, _ = separation(x[:n, j][truth], x[:n, j][~truth], n_boot=500)
            best.append(top)
            for r, fn in combine.items():
                c = log_p(fn(p, None))
                a = auroc(c[truth], c[~truth])
                delta[r].append(a - top)
                below[r] += a < low
        cells = [f"{np.mean(delta[r]):+.3f}, below CI {below[r] / draws:.0%}" for r in combine]
        print(f"| {name} | {np.mean(best):.3f} | " + " | ".join(cells) + " |")
    print("\n(cells: mean AUROC minus the best probe's; share of draws below the best probe's 95% interval)\n")
    calibration = {r: [] for r in combine}
    for _ in range(draws):  # no leak: the items and the reference exchangeable, the reference shared by all items
        x = np.sqrt(0.6) * rng.normal(size=(n + m, 1)) + np.sqrt(0.4) * rng.normal(size=(n + m, 10))
        p = np.column_stack([conformal_pvalues(x[:n, j], x[n:, j]) for j in range(10)])
        for r, fn in combine.items():
            c = fn(p, None)
            calibration[r].append(((c <= 0.05).mean(), (c <= 0.01).mean()))
    print(f"No leak ({draws} draws, ten probes as above): share of items with combined p <= 0.05 and <= 0.01 "
          "(a calibrated combination: 0.05 and 0.01)\n")
    print("| rule | p <= 0.05 | p <= 0.01 |\n|---|---|---|")
    for r, rates in calibration.items():
        a = np.array(rates)
        print(f"| {r} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.4f} |")
    print()


def lab_dump(path: Path):
    """(probe columns, p-value matrix, its negative control or None, leaked mask, unseen mask, the columns' scores)
    of one twin's dump (`_common.probe_columns`: the answer probes also within letter); truth from its lab."""
    d = C.load_lab_dump(path)
    _, _, leaked, unseen = C.lab_cell(path.parent / path.name.rsplit("_", 1)[0])
    columns = C.probe_columns(d)
    return (list(columns), d["p"], d["control"], np.array([i in leaked for i in d["ids"]]),
            np.array([i in unseen for i in d["ids"]]), np.column_stack(list(columns.values())))


def labs(dumps: list[Path]) -> None:
    from itd.core import stats

    combine = rules()
    print("### Labs: contaminated twins' dumps recombined\n")
    print("| lab | best probe AUROC [95% CI] (TPR@5%) | " + " | ".join(combine) + " |")
    print("|---|---|" + "---|" * len(combine))
    fails = {r: 0 for r in combine}
    for path in dumps:
        probes, p, control, leaked, unseen, scores = lab_dump(path)
        clean_path = path.with_name(path.name.replace("_contaminated", "_clean"))
        twin = C.load_lab_dump(clean_path) if clean_path.exists() and clean_path != path else None
        ok = np.isfinite(scores)
        j = max(range(len(probes)),
                key=lambda j: stats.auroc(scores[leaked & ok[:, j], j], scores[unseen & ok[:, j], j]))
        ok = ok[:, j]
        top, low, high, tpr = separation(scores[leaked & ok, j], scores[unseen & ok, j])
        cells = []
        for r, fn in combine.items():
            combined = fn(p, control)
            c = log_p(combined)
            a, lo, hi, t5 = separation(c[leaked], c[unseen])
            fails[r] += a < low
            flags, _ = stats.benjamini_hochberg(combined, 0.05)
            clean = ""
            if twin is not None:
                cp = fn(twin["p"], twin["control"])
                clean = f"; clean: {np.mean(cp <= 0.05):.3f}, {stats.benjamini_hochberg(cp, 0.05)[0].sum()} flags"
            cells.append(f"{a:.3f} [{lo:.2f}, {hi:.2f}] ({t5:.2f}){' below' if a < low else ''}; "
                         f"flags {(flags & leaked).sum()}/{leaked.sum()} + {(flags & ~leaked).sum()}{clean}")
        name = f"{path.parent.name}/{path.stem.replace('_contaminated', '')}"
        print(f"| {name} | {top:.3f} [{low:.2f}, {high:.2f}] `{probes[j]}` ({tpr:.2f}) | " + " | ".join(cells) + " |")
    print("\nbelow the best probe's interval: " + ", ".join(f"{r} {fails[r]}/{len(dumps)}" for r in combine))
    print("(cells: combined AUROC [95% CI] (TPR@5%FPR), 'below' the best probe's interval; FDR flags at 5% on the "
          "combined p, leaked found / leaked + others flagged; clean: the clean twin's share of combined p <= 0.05 "
          "and its flags)\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dumps", nargs="*", type=Path, help="bench_lab.py's <benchmark>_r<r>_contaminated.jsonl files")
    ap.add_argument("--draws", type=int, default=60, help="simulated draws per scenario (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    C.header("The per-item combination's weights against the best probe")
    if args.draws:
        simulate(args.draws, args.seed)
    if args.dumps:
        try:
            labs(args.dumps)
        except C.DumpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
