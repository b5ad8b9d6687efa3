"""The `reference` probe's two scores against ground truth, on the labs `bench_lab.py` scored: the log-likelihood
difference of the evaluated and the reference model (nll_ref - nll, the default) and Carlini et al.'s NLL ratio
(-nll / nll_ref, `--reference-score ratio`).

Both come from one run's dump: its `loss` (-nll) and `reference` columns give nll_ref per item, for the benchmark
items and for the reference items (the summary's `reference_scores`), whichever of the two scores the run used (its
manifest's `options`; a run without the entry predates the choice and used the ratio). The lab's twins and their
base share a tokenizer, so the two per-token means are in one unit and the derivation is exact. Per lab and r:
AUROC of leaked against unseen items under the contaminated twin, TPR at 1% and 5% FPR, and the top-k set test
(`stats.sparse_set_test`) on both twins against the reference items.

    python benchmarks/bench_reference_score.py runs/probe-grid [--permutations 999]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCORES = ("ratio", "difference")


def reference_nll(loss: np.ndarray, reference: np.ndarray, score: str) -> np.ndarray:
    """nll_ref from a dump's `loss` (-nll) and `reference` columns, as the run computed `reference` (`score`)."""
    nll = -loss
    return nll + reference if score == "difference" else nll / -reference


def both_scores(loss: np.ndarray, nll_ref: np.ndarray) -> dict[str, np.ndarray]:
    """The two `reference` scores from -nll and nll_ref."""
    return {"ratio": loss / nll_ref, "difference": nll_ref + loss}


def run_score(manifest_path: Path) -> str:
    """Which `reference` score the run whose dump manifest is `manifest_path` computed."""
    options = json.loads(manifest_path.read_text(encoding="utf-8"))["config"]["detect"].get("options") or {}
    return options.get("reference", {}).get("score", "ratio")


def twin_scores(dump_path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A twin's dump, and both scores of its benchmark items and of its reference items."""
    d = C.load_lab_dump(dump_path)
    if not {"loss", "reference"} <= set(d["probes"]):
        raise C.DumpError(f"{dump_path}: the run scored no 'loss' and 'reference' probes")
    score = run_score(Path(f"{dump_path}.manifest.json"))
    col = {m: d["scores"][:, d["probes"].index(m)] for m in ("loss", "reference")}
    ref = {m: np.asarray(d["summary"]["reference_scores"][m], dtype=float) for m in ("loss", "reference")}
    bench = both_scores(col["loss"], reference_nll(col["loss"], col["reference"], score))
    reference = both_scores(ref["loss"], reference_nll(ref["loss"], ref["reference"], score))
    return d, bench, reference


def lab_rows(contaminated: Path, permutations: int) -> tuple[tuple, list]:
    """The lab's cell key and one row per score: AUROC [CI], TPR@1%, TPR@5%, top-k p (clean twin's)."""
    from itd.core import stats

    key, seed, leaked, unseen = C.lab_cell(contaminated.parent / contaminated.name.removesuffix("_contaminated.jsonl"))
    d, bench, ref = twin_scores(contaminated)
    _, clean_bench, clean_ref = twin_scores(contaminated.with_name(contaminated.name.replace("_contaminated", "_clean")))
    pos = np.array([i in leaked for i in d["ids"]])
    neg = np.array([i in unseen for i in d["ids"]])
    rows = []
    for score in SCORES:
        s = bench[score]
        ok = np.isfinite(s)
        a, b = s[pos & ok], s[neg & ok]
        lo, hi = stats.bootstrap_auroc_ci(a, b)
        topk = [stats.sparse_set_test(x[np.isfinite(x)], r[np.isfinite(r)], n_permutations=permutations).p_value
                for x, r in ((s, ref[score]), (clean_bench[score], clean_ref[score]))]
        rows.append((score, f"{stats.auroc(a, b):.3f} [{lo:.2f}, {hi:.2f}]", stats.tpr_at_fpr(a, b, 0.01),
                     stats.tpr_at_fpr(a, b, 0.05), f"{topk[0]:.1e} ({topk[1]:.2f})"))
    return (*key, seed, contaminated.parent.name), rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="directories holding bench_lab.py work directories")
    ap.add_argument("--permutations", type=int, default=999, help="permutations of each top-k set test")
    args = ap.parse_args()
    labs = []
    for dump in C.twin_dumps(args.dirs):
        try:
            labs.append(lab_rows(dump, args.permutations))
        except C.DumpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not labs:
        print(f"no bench_lab.py dumps with the 'reference' probe under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    C.header("The reference probe: log-likelihood difference vs NLL ratio, against ground truth")
    rows, wins = [], {}
    for (benchmark, recipe, leak, r, seed, lab), (ratio, diff) in sorted(labs):
        rows += [(f"{benchmark} {recipe} {leak:.0%} r={r} s{seed} ({lab})", *ratio), ("", *diff)]
        tally = wins.setdefault((recipe, r), [0, 0, 0])
        tally[0] += diff[2] > ratio[2]
        tally[1] += diff[2] == ratio[2]
        tally[2] += 1
    print(C.table(("lab", "score", "AUROC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "top-k set p (clean twin)"), rows))
    print("\nTPR@1%FPR of the difference against the ratio, per recipe and r (labs higher / equal / all):\n")
    print(C.table(("recipe", "r", "higher", "equal", "labs"), [(rc, r, *t) for (rc, r), t in sorted(wins.items())]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
