"""Detector accuracy against ground truth: contamination-lab twins at several leak repeat counts.

For each benchmark (GSM8K test, with GSM8K train as the clean text; MMLU test, with the other MMLU test items as
the clean text) and each repeat count r, `itd.lab.build_lab` trains the contaminated and the clean twin, and
`itd.probes.detection.detect` scores the lab's items (leaked + unseen) under each twin with every probe in one pass. The
table gives, per probe, the AUROC of leaked vs unseen items (with a 95% bootstrap interval) and the TPR at 1% and
5% FPR under the contaminated twin, and the AUROC under the clean twin (should be near 0.5: the twins differ only
by the leaked items). The set-level test uses a clean reference set of `--reference` benchmark items outside
the experiment that neither twin saw, not even as a near copy (`itd.lab.held_out`), scored the same way
(`--reserve-reference`: drawn with the experiment and kept from every corpus, as the unseen items are);
ReCaLL's non-member prefix is made of 4 of those reference items (they then leave the calibration set), DC-PDD's
token frequencies come from the clean corpus both twins trained on, and the `combined` row is the Cauchy
combination of every probe's conformal p-value (scored as -log10 p), which also makes the FDR flags. Each twin's
detection (every item's scores and p-values, the reference scores and the set tests in the manifest beside it)
is written to `<benchmark>_r<r>_<twin>.jsonl` in the work directory.

    python benchmarks/bench_lab.py --preset small --repeats 1,3,6
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_AUROC, GOAL_TPR5 = 0.95, 0.8
METHODS = ("loss", "zlib", "mink", "minkpp", "gapk", "answer_acc", "dcpdd", "recall")


def run_cell(name, benchmark, train, r, args, wd):
    from itd.core.io import build_manifest
    from itd.lab import LabConfig, build_lab, held_out
    from itd.probes.detection import DetectConfig, detect
    from itd.probes.models import load_model

    overrides = {"steps": args.steps} if args.steps else {}
    config = LabConfig(preset=args.preset, leak_rate=args.leak_rate, repeats=r, seed=args.seed, device=args.device,
                       recipe=args.recipe, overrides=overrides,
                       reference_items=args.reference if args.reserve_reference else 0)
    t0 = time.perf_counter()
    lab = reused(wd / f"{name}_r{r}", config) if args.reuse else None
    lab = lab or build_lab(benchmark, train, wd / f"{name}_r{r}", config, C.stage_log(f"{name} r={r} build: "))
    train_s = time.perf_counter() - t0
    in_lab = set(lab.leaked) | set(lab.unseen)
    items = [s for s in benchmark if s.id in in_lab]
    pool = held_out(lab, benchmark)  # reserved, or seen by neither twin, not even as a near copy
    reference = random.Random(args.seed).sample(pool, min(args.reference, len(pool))) if args.reference else None
    truth = {"leaked": list(lab.leaked), "unseen": list(lab.unseen)}
    options = None
    if "dcpdd" in args.methods:  # the token frequencies of the clean corpus both twins trained on
        from itd.probes.methods import corpus_frequency_table

        table = wd / f"{name}_r{r}_freq.npz"
        tokenizer = load_model(lab.clean, device="cpu").tokenizer
        corpus_frequency_table(tokenizer, [lab.out / "corpus" / "clean.jsonl"]).save(table)
        options = {"dcpdd": {"table": str(table)}}
    decision = "combined" if reference else "minkpp"
    det = DetectConfig(methods=args.methods, decision=decision, batch_size=args.batch_size, options=options)
    base = load_model(base_model_dir(lab), device=args.device) if args.base_reference else None
    reports = {
        twin: detect(items, load_model(getattr(lab, twin), device=args.device), reference, det, truth=truth,
                     reference_model=base, progress=C.stage_log(f"{name} r={r} {twin}: "))
        for twin in ("contaminated", "clean")
    }
    for twin, report in reports.items():  # every item's scores and p-values, to study a combination offline
        manifest = build_manifest(command="bench_lab", config={"detect": det.to_dict(), "lab": config.to_dict()},
                                  inputs=[lab.manifest], models=[str(getattr(lab, twin))])
        report.write_jsonl(wd / f"{name}_r{r}_{twin}.jsonl", manifest)
    return lab, train_s, reports


def reused(path: Path, config):
    """The finished lab in `path` when it was built with `config` (its manifest says so), else None."""
    from itd.core.errors import InputError
    from itd.lab.result import lab_result, load_lab_manifest

    try:
        manifest = load_lab_manifest(path)
    except InputError:
        return None
    if manifest.get("config") != config.to_dict():
        return None
    print(f"- reusing the lab in {path.name} (built with the same settings)")
    return lab_result(path, manifest)


def base_model_dir(lab) -> str:
    """The lab's base model: both twins were trained from it, and it saw no benchmark item (the `reference` probe's
    model with `--base-reference`: a model's earlier checkpoint, or the base model of a fine-tune)."""
    from itd.lab.result import load_lab_manifest

    return load_lab_manifest(lab.out)["base"]["cache"]


def set_p(report, probe: str) -> str:
    """The set-level p-values of `probe` (Mann-Whitney / top-k), or the combined one for "combined"."""
    if probe == "combined":
        return f"{report.combined_set['p_value']:.1e}" if report.combined_set else "-"
    mw, top = report.set_tests.get(probe), report.sparse_tests.get(probe)
    return f"{mw.p_value:.1e} / {top.p_value:.1e}" if mw and top else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.data_arg(ap)
    ap.add_argument("--preset", default="small", help="Lab preset (tiny, small, medium, large).")
    ap.add_argument("--repeats", default="1,3,6", help="Comma-separated repeat counts r.")
    ap.add_argument("--benchmarks", default="gsm8k,mmlu", help="Comma-separated: gsm8k, mmlu.")
    ap.add_argument("--leak-rate", type=float, default=0.3)
    ap.add_argument("--recipe", default="pretrain", choices=("pretrain", "finetune"),
                    help="How the leak enters: the pretraining stream, or fine-tuning rows with the loss on the "
                         "answer.")
    ap.add_argument("--steps", type=int, default=0, help="Override the preset's training steps.")
    ap.add_argument("--reference", type=int, default=600, help="Clean reference items for the set-level test (0: none).")
    ap.add_argument("--reuse", action="store_true",
                    help="Detect again on labs already in --workdir that were built with the same settings.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--methods", default=None, help="Comma-separated probes (recall needs --reference). Default: "
                    f"{','.join(METHODS)}, and answer_logp for a fine-tuning leak (it trains the answer only).")
    ap.add_argument("--reserve-reference", action="store_true",
                    help="Draw the --reference items with the experiment's and keep them from every corpus "
                         "(LabConfig.reference_items): exchangeable with the unseen items by construction.")
    ap.add_argument("--base-reference", action="store_true",
                    help="Add the reference-model probes ('reference', the NLL ratio to a reference model, and "
                         "'answer_reference', the answer's log-likelihood ratio) with the lab's base model, the "
                         "checkpoint both twins were trained from, as the reference.")
    args = ap.parse_args()
    if args.methods:
        args.methods = tuple(args.methods.split(","))
    else:  # a fine-tuning leak trains the answer only: the answer probe sees it
        args.methods = METHODS + (("answer_logp",) if args.recipe == "finetune" else ())
    if args.base_reference:
        args.methods += tuple(m for m in ("reference", "answer_reference") if m not in args.methods)
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)

    from itd.core import load_benchmark

    data = Path(args.data)
    sets = {
        "gsm8k": lambda: (load_benchmark(data / "gsm8k" / "test.jsonl"), load_benchmark(data / "gsm8k" / "train.jsonl")),
        "mmlu": lambda: (load_benchmark(data / "mmlu" / "test"), None),
    }
    C.header(f"Probe accuracy on contamination-lab twins (preset {args.preset}, {args.recipe} leak)")
    rows, verdicts = [], []
    with C.workdir(args.workdir, "itd-bench-lab-") as wd:
        for name in args.benchmarks.split(","):
            benchmark, train = sets[name]()
            for r in (int(x) for x in args.repeats.split(",")):
                lab, train_s, reports = run_cell(name, benchmark, train, r, args, wd)
                con, cln = reports["contaminated"], reports["clean"]
                if con.combined_set:
                    probes = ", ".join(con.combined_set["probes"])
                    print(f"- {name} r={r}: combined set-level p (Cauchy over {probes}; one share per kind of evidence): "
                          f"contaminated {con.combined_set['p_value']:.1e} (drivers: "
                          f"{', '.join(con.combined_set['drivers']) or 'none'}), clean {cln.combined_set['p_value']:.2f}; "
                          f"FDR flags on the combined p: contaminated {len(con.flagged)} "
                          f"(recall {con.truth.get('flags', {}).get('recall')}), clean {len(cln.flagged)}")
                print(f"- {name} r={r}: {len(lab.leaked)} leaked / {len(lab.unseen)} unseen items "
                      f"({len(lab.near_leaked)} sharing a 13-word run with a leaked item left out), {con.reference_size} reference items; "
                      f"both twins trained in {train_s:.0f} s; set-level p (minkpp) contaminated {con.set_tests['minkpp'].p_value:.1e}, "
                      f"clean {cln.set_tests['minkpp'].p_value:.2f}; FDR flags ({con.config.decision}) contaminated {len(con.flagged)} "
                      f"(precision {con.truth.get('flags', {}).get('precision')}), clean {len(cln.flagged)}"
                      if con.set_tests else f"- {name} r={r}: twins trained in {train_s:.0f} s")
                for m in (*args.methods, "combined"):
                    if m not in con.truth["methods"]:
                        continue
                    figures = [(m, con.truth["methods"][m], cln.truth["methods"][m])]
                    if m in con.truth.get("within_letter", {}):  # ranked by its p-values, calibrated within letters
                        figures.append((f"{m} (within letter)", con.truth["within_letter"][m],
                                        cln.truth["within_letter"][m]))
                    for label, t, c in figures:
                        rows.append((name, r, label, f"{t['auroc']:.3f} [{t['auroc_ci'][0]:.2f}, {t['auroc_ci'][1]:.2f}]",
                                     t["tpr_at_1pct_fpr"], t["tpr_at_5pct_fpr"], f"{c['auroc']:.3f}",
                                     set_p(con, m), set_p(cln, m)))
                best = con.truth["methods"]["minkpp"]
                verdicts.append((name, r, best["auroc"] >= GOAL_AUROC and best["tpr_at_5pct_fpr"] >= GOAL_TPR5))
    print()
    print(C.table(("benchmark", "r", "probe", "AUROC [95% CI]", "TPR@1%FPR", "TPR@5%FPR", "clean-twin AUROC",
                   "set p MW / top-k, contaminated", "set p MW / top-k, clean"), rows))
    print()
    for name, r, ok in verdicts:
        if r == 6:
            print(f"goal at r=6 ({name}): Min-K%++ AUROC >= {GOAL_AUROC} and TPR@5%FPR >= {GOAL_TPR5}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
