"""Does the `numeric` rewriter keep GSM8K items as hard as they were? Original vs rewritten, on GSM8K test.

Every item of `gsm8k/test.jsonl` (1,200) goes through `NumericRewriter(seed=--seed)` twice in the same run:
with `keep_difficulty=True` (the default: digit counts, carries, exact divisions, decimal places and magnitudes
kept, see `itd.rewriters.difficulty`) and with `keep_difficulty=False` (the earlier draw, up to twice the old
value, as the baseline). For the items each one rewrites, the original and the rewritten chain are read the same
way: the original steps from `NumericRewriter.plan` (annotations and the prose equations the rewriter annotates),
the rewritten ones from the new solution's annotations. Reported, original vs rewritten:

  * distributions, with two-sample tests (scipy): digit counts of operands, of step results and of final answers
    (chi-square on the contingency table), step counts (chi-square), carries and borrows per `+`/`-` operation
    (chi-square), log10 magnitudes of the changed question numbers and of the step results (Mann-Whitney U and
    two-sample KS); a large p-value says no difference is detectable, a small one that the sets differ;
  * paired preservation, operation by operation: same digit count (operands, results), same carry/borrow count
    and presence, divisions exact where the original's are, same decimal places; items keeping them all; the
    median and mean log10(new/old) of the changed question numbers (0: no drift up or down);
  * how far each item's search had to relax (`info["difficulty"]`), coverage, and time per 1,000 items;
  * coverage of the default for the seeds in `--seeds` (stability).

With `--calibrate T ...` it reports instead, on the first `--calibrate-items` items of GSM8K *train*, the mean
log10(new/old) of the changed question numbers for each downward tilt T of the draw window (`numeric.search.TILT`, in
octaves), which is how the default tilt was chosen (the one nearest 0), without looking at test.

    python benchmarks/bench_rewrite_difficulty.py
    python benchmarks/bench_rewrite_difficulty.py --seed 1 --seeds
    python benchmarks/bench_rewrite_difficulty.py --calibrate 0 0.1 0.2 0.3 0.4
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def rewrite_all(rewriter, samples) -> tuple[list, float]:
    from itd.rewriters.base import NotRewritable

    done, t = [], time.perf_counter()
    for s in samples:
        try:
            done.append((s, rewriter.propose(s)))
        except NotRewritable:
            continue
    return done, time.perf_counter() - t


def chains(rewriter, original, cand) -> tuple[list, list] | None:
    """(original steps, rewritten steps), each a list of (operations, result); None when they do not align."""
    from itd.rewriters.chain import compile_expression, parse_chain

    plan = rewriter.plan(original)
    old = [(st.expr.operations(), st.value(list(st.expr.literals))) for st in plan.steps]
    new = []
    for step in parse_chain(cand.sample.solution):
        expr = compile_expression(step.expression)
        new.append((expr.operations(), expr.value()))
    return (old, new) if len(old) == len(new) else None


def features(pairs) -> dict:
    """Per-operation and per-step features of the original and the rewritten chains, and paired agreement."""
    from itd.rewriters.difficulty import carries, decimal_places, int_digits

    f = {k: ([], []) for k in ("operand digits", "result digits", "final digits", "steps", "carries",
                               "log10 result", "log10 input")}
    same = Counter()
    total = Counter()
    items_all = 0
    ratios = []
    skipped = 0
    for original, cand, (old, new) in pairs:
        f["steps"][0].append(len(old))
        f["steps"][1].append(len(new))
        f["final digits"][0].append(int_digits(Fraction(str(original.answer).replace(",", ""))))
        f["final digits"][1].append(int_digits(Fraction(str(cand.expected_answer))))
        kept_all = True
        for (ops0, v0), (ops1, v1) in zip(old, new):
            for side, v in ((0, v0), (1, v1)):
                f["result digits"][side].append(int_digits(v))
                if v:
                    f["log10 result"][side].append(math.log10(abs(v)))
            total["result digits"] += 1
            ok = int_digits(v0) == int_digits(v1)
            same["result digits"] += ok
            kept_all &= ok
            if len(ops0) != len(ops1):
                skipped += 1
                continue
            for (op, a0, b0, r0), (_, a1, b1, r1) in zip(ops0, ops1):
                for side, (a, b) in ((0, (a0, b0)), (1, (a1, b1))):
                    f["operand digits"][side].extend((int_digits(a), int_digits(b)))
                for x0, x1 in ((a0, a1), (b0, b1)):
                    total["operand digits"] += 1
                    ok = int_digits(x0) == int_digits(x1)
                    same["operand digits"] += ok
                    kept_all &= ok
                total["operation result digits"] += 1
                ok = int_digits(r0) == int_digits(r1)
                same["operation result digits"] += ok
                kept_all &= ok
                for x0, x1 in ((a0, a1), (b0, b1), (r0, r1)):
                    if decimal_places(x0) is not None:
                        total["decimal places"] += 1
                        ok = decimal_places(x0) == decimal_places(x1)
                        same["decimal places"] += ok
                        kept_all &= ok
                if op in ("+", "-"):
                    c0, c1 = carries(op, a0, b0), carries(op, a1, b1)
                    f["carries"][0].append(c0)
                    f["carries"][1].append(c1)
                    total["carry count"] += 1
                    total["carry presence"] += 1
                    same["carry count"] += c0 == c1
                    ok = c0 is not None and c1 is not None and (c0 > 0) == (c1 > 0)
                    same["carry presence"] += ok
                    kept_all &= c0 == c1
                elif op == "/" and r0.denominator == 1:
                    total["exact division"] += 1
                    ok = r1.denominator == 1
                    same["exact division"] += ok
                    kept_all &= ok
        items_all += kept_all
        for old_text, new_text in cand.info["values"].items():
            a, b = Fraction(old_text.replace(",", "")), Fraction(new_text.replace(",", ""))
            if a > 0 and b > 0:
                f["log10 input"][0].append(math.log10(a))
                f["log10 input"][1].append(math.log10(b))
                ratios.append(math.log10(b / a))
    return {"features": f, "same": same, "total": total, "items_all": items_all, "ratios": ratios,
            "skipped": skipped}


def chi2(a: list, b: list, cap: int) -> tuple[float, float, str]:
    """Chi-square test of two samples of small integers (values >= cap pooled; None as -1)."""
    from scipy.stats import chi2_contingency

    def bins(xs):
        return Counter(-1 if x is None else min(x, cap) for x in xs)

    ca, cb = bins(a), bins(b)
    keys = sorted(set(ca) | set(cb))
    if len(keys) < 2 or ca == cb:
        return 0.0, 1.0, ", ".join(f"{k}: {ca[k]}/{cb[k]}" for k in keys)
    stat, p, _, _ = chi2_contingency([[ca[k] for k in keys], [cb[k] for k in keys]])
    label = {-1: "n/a", cap: f"{cap}+"}
    return float(stat), float(p), ", ".join(f"{label.get(k, k)}: {ca[k]}/{cb[k]}" for k in keys)


def continuous(a: list, b: list) -> tuple[float, float, float, float]:
    from scipy.stats import ks_2samp, mannwhitneyu

    return (float(mannwhitneyu(a, b).pvalue), float(ks_2samp(a, b).pvalue),
            sum(a) / len(a), sum(b) / len(b))


def report(name: str, rw, done: list) -> dict:
    pairs = []
    for original, cand in done:
        c = chains(rw, original, cand)
        if c is not None:
            pairs.append((original, cand, c))
    r = features(pairs)
    f = r["features"]
    print(f"\n### {name}: {len(done)} items rewritten, {len(pairs)} compared step by step"
          f" ({r['skipped']} steps with a different operation count skipped)\n")
    rows = []
    for key, cap in (("operand digits", 6), ("result digits", 6), ("final digits", 6), ("steps", 8),
                     ("carries", 3)):
        stat, p, counts = chi2(*f[key], cap)
        rows.append((key, "chi-square", f"{stat:.1f}", f"{p:.3g}", counts))
    print("Distributions, original vs rewritten (counts as original/rewritten):\n")
    print(C.table(["feature", "test", "statistic", "p-value", "counts"], rows))
    rows = []
    for key in ("log10 input", "log10 result"):
        p_mw, p_ks, m0, m1 = continuous(*f[key])
        rows.append((key, len(f[key][0]), f"{m0:.3f}", f"{m1:.3f}", f"{p_mw:.3g}", f"{p_ks:.3g}"))
    print("\nMagnitudes (log10 of the absolute value):\n")
    print(C.table(["values", "n", "mean original", "mean rewritten", "Mann-Whitney p", "KS p"], rows))
    ratios = sorted(r["ratios"])
    med = ratios[len(ratios) // 2] if ratios else float("nan")
    mean = sum(ratios) / len(ratios) if ratios else float("nan")
    print(f"\nchanged question numbers: median log10(new/old) {med:+.3f}, mean {mean:+.3f} "
          f"(x{10 ** mean:.2f} geometric mean); new > old for {sum(x > 0 for x in ratios)} of {len(ratios)}\n")
    print("Paired, operation by operation (the rewrite keeps it / operations where it applies):\n")
    print(C.table(["kept", "share", "of"], [
        (k, f"{r['same'][k] / max(1, r['total'][k]):.1%}", r["total"][k])
        for k in ("operand digits", "operation result digits", "result digits", "carry count", "carry presence",
                  "exact division", "decimal places")]))
    print(f"\nitems keeping every one of them: {r['items_all']} of {len(pairs)} "
          f"({r['items_all'] / max(1, len(pairs)):.1%})")
    return r


def calibrate(data: Path, tilts: list[float], items: int, seed: int) -> None:
    from itd.core import load_benchmark
    from itd.rewriters.numeric import NumericRewriter
    from itd.rewriters.numeric import search as numeric_search

    samples = load_benchmark(data / "gsm8k" / "train.jsonl")[:items]
    C.header(f"`numeric` rewriter: tilt of the draw window on the first {len(samples)} GSM8K train items")
    rows = []
    default = numeric_search.TILT
    try:
        for a in tilts:
            numeric_search.TILT = a
            done, secs = rewrite_all(NumericRewriter(seed=seed), samples)
            r = [math.log10(Fraction(new.replace(",", "")) / Fraction(old.replace(",", "")))
                 for _, cand in done for old, new in cand.info["values"].items()]
            mean = sum(r) / len(r)
            se = (sum((x - mean) ** 2 for x in r) / (len(r) - 1)) ** 0.5 / len(r) ** 0.5
            full = sum(not cand.info["difficulty"]["relaxed"] for _, cand in done)
            rows.append((a, len(done), full, len(r), f"{mean:+.4f}", f"{se:.4f}",
                         f"{sum(x > 0 for x in r) / len(r):.1%}"))
    finally:
        numeric_search.TILT = default
    print(C.table(["tilt", "items rewritten", "all constraints held", "numbers changed", "mean log10(new/old)",
                   "s.e.", "grew"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="Also report the default's coverage for these seeds (default with no value: 1 2 3).")
    ap.add_argument("--calibrate", nargs="+", type=float, default=None,
                    help="Only report the drift on GSM8K train for these tilts of the draw window.")
    ap.add_argument("--calibrate-items", type=int, default=2000, help="Train items used by --calibrate.")
    args = ap.parse_args(argv)
    if args.calibrate:
        calibrate(Path(args.data), args.calibrate, args.calibrate_items, args.seed)
        return 0
    seeds = [1, 2, 3] if args.seeds == [] else (args.seeds or [])

    from itd.core import load_benchmark
    from itd.rewriters.difficulty import CONSTRAINTS
    from itd.rewriters.numeric import NumericRewriter

    samples = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")
    n = len(samples)
    new_rw = NumericRewriter(seed=args.seed)
    old_rw = NumericRewriter(seed=args.seed, keep_difficulty=False)
    new_done, new_s = rewrite_all(new_rw, samples)
    old_done, old_s = rewrite_all(old_rw, samples)

    C.header("`numeric` rewriter: difficulty kept? GSM8K test, original vs rewritten")
    print(C.table(["draw", "items", "rewritten", "coverage", "s per 1,000 items"], [
        ("keep_difficulty=True (default)", n, len(new_done), f"{len(new_done) / n:.1%}", new_s / n * 1000),
        ("keep_difficulty=False (up to twice the old value)", n, len(old_done), f"{len(old_done) / n:.1%}",
         old_s / n * 1000),
    ]))
    levels = Counter()
    held = Counter()
    for _, cand in new_done:
        d = cand.info["difficulty"]
        levels[(d["draw"], len(d["relaxed"]))] += 1
        held.update(d["held"])
    print("\nHow far the default's search relaxed (constraints given up, from the last of "
          f"{', '.join(CONSTRAINTS)}):\n")
    print(C.table(["draw", "constraints given up", "items", "share"], [
        (draw, ", ".join(CONSTRAINTS[len(CONSTRAINTS) - k:]) or "none", c, f"{c / len(new_done):.1%}")
        for (draw, k), c in sorted(levels.items(), key=lambda kv: (kv[0][0] != "near", kv[0][1]))]))
    print("\nConstraints that hold on the emitted rewrite (`info['difficulty']['held']`):\n")
    print(C.table(["constraint", "items", "share"],
                  [(c, held[c], f"{held[c] / len(new_done):.1%}") for c in CONSTRAINTS]))

    report("keep_difficulty=True (default)", new_rw, new_done)
    report("keep_difficulty=False (baseline, up to twice the old value)", old_rw, old_done)

    if seeds:
        rows = []
        for seed in seeds:
            done, secs = rewrite_all(NumericRewriter(seed=seed), samples)
            full = sum(not c.info["difficulty"]["relaxed"] for _, c in done)
            rows.append((seed, len(done), f"{len(done) / n:.1%}", f"{full / len(done):.1%}", secs / n * 1000))
        print("\nCoverage of the default by seed:\n")
        print(C.table(["seed", "rewritten", "coverage", "all constraints held by the search", "s per 1,000"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
