"""The detection grid's tables: every lab cell `bench_lab.py` scored, replicas gathered, one table per benchmark and
leak recipe (the detection issue's form).

Reads the per-twin detections `bench_lab.py` writes to its work directories (`<benchmark>_r<r>_<twin>.jsonl`
with a manifest beside each, the lab beside them) under the given directories, recursively. A cell is (benchmark,
recipe, leak rate, r); its replicas are the labs of other seeds. Per probe and for the combination: AUROC of
leaked against unseen items under the contaminated twin (mean over replicas, with the lowest replica's 95%
bootstrap interval bound and the highest's), TPR at 1% and 5% FPR, the clean twin's AUROC (on a multiple-choice
benchmark also each answer probe "within letter": ranked by its p-values, which are calibrated within gold
letters, as the flags and the combination use it); the FDR flags at 5%
(recall, false flags, flags on the clean twin); and the set-level p-values per replica: the probe's Mann-Whitney
and top-k tests and the set verdict of deciding by it (their Cauchy combination, as `detect` gives it; the
combined verdict for the combination) on both twins, marked where it meets the issue's goal (contaminated
p < 0.01, clean p > 0.1). A first table gives the issue's three goals per cell: the best per-item TPR@5%FPR, the
combined set verdict ("c" where the run's set tests had the negative control, `controlled_set_tests`), and the
combination's AUROC against the best single probe's interval. The per-item combination is
recomputed from the dumped p-values (and the negative control's, where the run has them) as this checkout's
`detect` does it (`stats.cross_fit_cauchy`, one share per kind of evidence where no probe's tail shows a leak);
the set-level p-values are the run's.

    python benchmarks/grid_summary.py runs/probe-grid
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

COMBINED = "combined"


def replica(contaminated: Path) -> tuple[tuple, dict]:
    """The figures of one lab: per probe (and combined) the separation on both twins, flags, set-level p."""
    from itd.core import stats
    from itd.probes.detection import evidence_weights

    key, seed, leaked, unseen = C.lab_cell(contaminated.parent / contaminated.name.removesuffix("_contaminated.jsonl"))
    twins = {"contaminated": C.load_lab_dump(contaminated),
             "clean": C.load_lab_dump(contaminated.with_name(contaminated.name.replace("_contaminated", "_clean")))}
    out = {"seed": seed, "lab": contaminated.parent.name, "probes": {}, "set": {}}
    for twin, d in twins.items():
        is_leaked = np.array([i in leaked for i in d["ids"]])
        is_unseen = np.array([i in unseen for i in d["ids"]])
        combined = stats.cross_fit_cauchy(d["p"], control=d["control"], prior=evidence_weights(d["probes"]))[0]
        columns = C.probe_columns(d)
        columns[COMBINED] = -np.log10(np.clip(combined, 1e-300, 1.0))
        for m, s in columns.items():
            ok = np.isfinite(s)
            a, b = s[is_leaked & ok], s[is_unseen & ok]
            if not a.size or not b.size:
                continue
            fig = out["probes"].setdefault(m, {})
            if twin == "contaminated":
                fig["auroc"] = stats.auroc(a, b)
                fig["ci"] = stats.bootstrap_auroc_ci(a, b)
                fig["tpr1"], fig["tpr5"] = stats.tpr_at_fpr(a, b, 0.01), stats.tpr_at_fpr(a, b, 0.05)
            else:
                fig["clean_auroc"] = stats.auroc(a, b)
        flags, _ = stats.benjamini_hochberg(combined, 0.05)
        out["flags_" + twin] = (int((flags & is_leaked).sum()), int(is_leaked.sum()), int((flags & ~is_leaked).sum()))
        summary = d["summary"]
        for m in d["probes"]:
            if m in summary.get("set_tests", {}):
                out["set"].setdefault(m, {})[twin] = (summary["set_tests"][m]["p_value"],
                                                      summary["sparse_set_tests"][m]["p_value"])
        if summary.get("combined_set_test"):
            out["set"].setdefault(COMBINED, {})[twin] = (summary["combined_set_test"]["p_value"],)
        out["controlled"] = bool(summary.get("controlled_set_tests"))  # a run whose set verdicts had the control
    return key, out


def cell_table(replicas: list[dict]) -> str:
    from itd.core.stats import cauchy_combination

    probes = list(dict.fromkeys(m for rep in replicas for m in rep["probes"]))
    rows = []
    for m in probes:
        figs = [rep["probes"][m] for rep in replicas if "auroc" in rep["probes"].get(m, {})]
        if not figs:
            continue
        mean = lambda k: float(np.mean([f[k] for f in figs if k in f]))  # noqa: E731
        sets = []
        for rep in replicas:
            p = rep["set"].get(m, {})
            con, cln = p.get("contaminated"), p.get("clean")
            if con and cln:
                # the set verdict when deciding by this probe: the Cauchy combination of its tests (as `detect`'s)
                verdict, clean = (float(cauchy_combination(list(v))) for v in (con, cln))
                met = "**" if verdict < 0.01 and clean > 0.1 else ""
                tests = f"{' / '.join(f'{v:.1e}' for v in con)} -> " if len(con) > 1 else ""
                sets.append(f"{tests}{met}{verdict:.1e} ({clean:.2f}){met}")
        rows.append((f"`{m}`", f"{mean('auroc'):.3f} [{min(f['ci'][0] for f in figs):.2f}, "
                     f"{max(f['ci'][1] for f in figs):.2f}]", f"{mean('tpr1'):.2f}", f"{mean('tpr5'):.2f}",
                     f"{mean('clean_auroc'):.3f}", "; ".join(sets) or "-"))
    table = C.table(("probe", "AUROC, mean [lowest CI bound, highest]", "TPR@1%FPR", "TPR@5%FPR", "clean-twin AUROC",
                     "set p per replica: MW / top-k -> verdict (clean twin's verdict); ** goal met"), rows)
    flags = "; ".join(f"s{rep['seed']}: {rep['flags_contaminated'][0]}/{rep['flags_contaminated'][1]} leaked + "
                      f"{rep['flags_contaminated'][2]} others, clean twin {sum(rep['flags_clean'][::2])}"
                      for rep in replicas)
    return table + f"\n\nFDR flags at 5% on the combined p (recomputed): {flags}\n"


def goals(replicas: list[dict]) -> tuple[str, str, str]:
    """The issue's three goals for one cell, a value per replica: the best per-item TPR@5%FPR (probe or
    combination, goal >= 0.5 at r = 1), the combined set verdict with the clean twin's (goal < 0.01 and > 0.1 at a
    5% leak, r = 1), and the combination's AUROC against the best single probe's 95% interval (goal: not below)."""
    tpr, verdict, versus = [], [], []
    for rep in replicas:
        probes = {m: f for m, f in rep["probes"].items() if "auroc" in f}
        m = max(probes, key=lambda m: probes[m]["tpr5"])
        tpr.append(f"{probes[m]['tpr5']:.2f} `{m}`")
        sets = rep["set"].get(COMBINED, {})
        if "contaminated" in sets and "clean" in sets:
            con, cln = sets["contaminated"][0], sets["clean"][0]
            met = "**" if con < 0.01 and cln > 0.1 else ""
            verdict.append(f"{met}{con:.1e} ({cln:.2f}){met}{' c' if rep['controlled'] else ''}")
        single = {m: f for m, f in probes.items() if m != COMBINED}
        if COMBINED in probes and single:
            best = max(single, key=lambda m: single[m]["auroc"])
            below = probes[COMBINED]["auroc"] < single[best]["ci"][0]
            versus.append(f"{probes[COMBINED]['auroc']:.3f} vs {single[best]['auroc']:.3f} [{single[best]['ci'][0]:.2f}, "
                          f"{single[best]['ci'][1]:.2f}]{' **below**' if below else ''}")
    return "; ".join(tpr), "; ".join(verdict) or "-", "; ".join(versus) or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="directories holding bench_lab.py work directories")
    args = ap.parse_args()
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for dump in C.twin_dumps(args.dirs):
        try:
            key, rep = replica(dump)
        except C.DumpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cells[key].append(rep)
    if not cells:
        print(f"no bench_lab.py dumps (<benchmark>_r<r>_contaminated.jsonl) under {', '.join(map(str, args.dirs))}",
              file=sys.stderr)
        return 2
    C.header("The detection grid: every probe and the combination against ground truth, replicas gathered")
    rows = []
    for key in sorted(cells):
        benchmark, recipe, leak, r = key
        reps = sorted(cells[key], key=lambda rep: rep["seed"])
        rows.append((f"{benchmark}, {recipe}, {leak:.0%}, r = {r}", len(reps), *goals(reps)))
    print("### The issue's goals, cell by cell (a value per replica, seeds in order)\n")
    print(C.table(("cell", "replicas", "best TPR@5%FPR (goal at r = 1: >= 0.5)",
                   "combined set verdict (clean twin); ** goal met; c: controlled", "combined AUROC vs the best probe's [95% CI]"),
                  rows))
    print()
    for key in sorted(cells):
        benchmark, recipe, leak, r = key
        reps = sorted(cells[key], key=lambda rep: rep["seed"])
        labs = ", ".join(f"s{rep['seed']} ({rep['lab']})" for rep in reps)
        print(f"### {benchmark}, {recipe} leak, {leak:.0%}, r = {r}: {len(reps)} replica(s): {labs}\n")
        print(cell_table(reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
