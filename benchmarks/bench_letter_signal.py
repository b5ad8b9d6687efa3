"""What one fine-tuning exposure of a multiple-choice answer leaves in a model: the four letters' log-probabilities
after the evaluator's prompt, on an MMLU fine-tuning lab (`bench_lab.py --recipe finetune --reserve-reference`).

For every leaked, unseen and reference item of the lab, the log-probability of " A" .. " D" after the prompt the
leak trained on, under the contaminated twin, the clean twin and the base model. Each score below is calibrated
as `detect` calibrates the answer probes (conformal p-values against the reference items with the same gold
letter) and measured on leaked against unseen items: within-letter AUROC with its bootstrap interval, TPR at 1%
and 5% FPR, and the same AUROC under the clean twin (about 0.5 when the score sees no chance difference):

* `gold`: the gold letter's log-probability (what `answer_logp` is for a one-token answer);
* `gold - others`: minus the mean of the other three letters';
* `gold given others`: the residual of `gold` on the other three letters (least squares fitted on the reference
  items of the same letter; leave-one-out for the reference items themselves);
* `gold - base`: minus the base model's (what `answer_reference` is);
* `gold, mean over orders`: `gold` averaged over every order of the three other choices, the gold choice kept
  at its letter (`--orders`, 6 passes);
* `gold - clean twin` (an oracle no user has): minus the clean twin's own `gold`.

`shift` is how far the leaked items' `gold` sits above the unseen items', in standard deviations of the unseen
items within their letter (a one-sided test at 5% false positives finds about half of the leaked items at 1.64).

    python benchmarks/bench_letter_signal.py W/mmlu_r1 [W2/mmlu_r1 ...]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LETTERS = "ABCD"


def letter_logprobs(model_dir: str, prompts: list[list[str]]) -> np.ndarray:
    """log p(" A" .. " D" | prompt) of each item's prompts (items x prompts x 4), the prompt after an EOS as the
    lab trained it."""
    import torch

    from itd.core.errors import InputError
    from itd.probes.models import load_model

    print(f"scoring {len(prompts)} items x {len(prompts[0])} prompts under {model_dir}", file=sys.stderr, flush=True)
    lm = load_model(model_dir, device="cpu")
    tok, model = lm.tokenizer, lm.model
    ids = [tok(f" {letter}", add_special_tokens=False)["input_ids"] for letter in LETTERS]
    if any(len(i) != 1 for i in ids):
        raise InputError("the answer letters are not single tokens of this model", path=model_dir)
    letters = [i[0] for i in ids]
    out = np.zeros((len(prompts), len(prompts[0]), 4))
    with torch.no_grad():
        for i, group in enumerate(prompts):
            seqs = [([tok.eos_token_id] + tok(p, add_special_tokens=False)["input_ids"])[-lm.context_length:]
                    for p in group]
            width = max(map(len, seqs))
            batch = torch.tensor([s + [tok.eos_token_id] * (width - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
            logits = model(batch, attention_mask=mask).logits[torch.arange(len(seqs)), [len(s) - 1 for s in seqs]]
            out[i] = torch.log_softmax(logits.float(), -1)[:, letters].numpy()
    return out


def residual_on(y: np.ndarray, x: np.ndarray, gold: np.ndarray, is_ref: np.ndarray) -> np.ndarray:
    """y minus its least-squares fit on x within each gold letter, fitted on the reference items (their own
    residuals leave-one-out, so they stay exchangeable with the others')."""
    out = np.empty(len(y))
    for letter in np.unique(gold):
        m = gold == letter
        r = m & is_ref
        design = np.c_[np.ones(m.sum()), x[m]]
        ref_design = np.c_[np.ones(r.sum()), x[r]]
        beta, *_ = np.linalg.lstsq(ref_design, y[r], rcond=None)
        res = y[m] - design @ beta
        leverage = np.einsum("ij,jk,ik->i", ref_design, np.linalg.pinv(ref_design.T @ ref_design), ref_design)
        res[is_ref[m]] /= 1 - leverage
        out[m] = res
    return out


def shift(score: np.ndarray, gold: np.ndarray, group: np.ndarray) -> float:
    """Mean of the leaked items' score over the unseen items', in the unseen items' SD within their letter."""
    z = np.full(len(score), np.nan)
    for letter in np.unique(gold):
        m = gold == letter
        base = score[m & (group == 0)]
        if base.size > 2:
            z[m] = (score[m] - base.mean()) / base.std(ddof=1)
    return float(np.nanmean(z[group == 1]))


def lab_rows(lab_dir: Path, benchmark: list, reference_size: int, orders: int) -> list[tuple]:
    from itd.core import stats
    from itd.core.errors import InputError
    from itd.core.render import render
    from itd.lab.result import held_out, lab_result, load_lab_manifest

    manifest = load_lab_manifest(lab_dir)
    if manifest["recipe"] != "finetune":
        raise InputError(f"a {manifest['recipe']} lab; this reads fine-tuning labs", path=str(lab_dir))
    lab = lab_result(lab_dir, manifest)
    by_id = {s.id: s for s in benchmark}
    if not set(lab.leaked) <= by_id.keys():
        raise InputError("not a lab of MMLU test items", path=str(lab_dir))
    pool = held_out(lab, benchmark)
    reference = random.Random(manifest["seed"]).sample(pool, min(reference_size, len(pool)))  # as bench_lab.py
    items = [by_id[i] for i in lab.leaked] + [by_id[i] for i in lab.unseen] + reference
    group = np.array([1] * len(lab.leaked) + [0] * len(lab.unseen) + [2] * len(reference))
    gold = np.array([s.answer for s in items])
    is_ref = group == 2

    def prompts(s, n: int) -> list[str]:  # the evaluator's plain prompt, other choices reordered, gold kept
        others = [i for i in range(4) if i != s.answer]
        found = []
        for perm in itertools.islice(itertools.permutations(others), n):
            order = list(perm)
            order.insert(s.answer, s.answer)
            found.append(render(s, "options", order) + "\nAnswer:")
        return found

    shown = [prompts(s, orders) for s in items]
    lp = {name: letter_logprobs(str(path), shown if name != "base" else [p[:1] for p in shown])
          for name, path in (("contaminated", lab.contaminated), ("clean", lab.clean),
                             ("base", manifest["base"]["cache"]))}
    idx = np.arange(len(items))

    def variants(twin: str) -> dict[str, np.ndarray]:
        first = lp[twin][:, 0]
        g = first[idx, gold]
        others = np.stack([first[idx, (gold + k) % 4] for k in (1, 2, 3)], 1)
        return {
            "gold": g,
            "gold - others": g - others.mean(1),
            "gold given others": residual_on(g, others, gold, is_ref),
            "gold - base": g - lp["base"][:, 0][idx, gold],
            "gold, mean over orders": lp[twin][idx, :, gold].mean(1),
            "gold - clean twin": g - lp["clean"][:, 0][idx, gold],
        }

    scored = {twin: variants(twin) for twin in ("contaminated", "clean")}
    rows = []
    for name, score in scored["contaminated"].items():
        figures = {}
        for twin in ("contaminated", "clean"):
            s = scored[twin][name]
            p = stats.stratified_conformal_pvalues(s[~is_ref], s[is_ref], gold[~is_ref].tolist(), gold[is_ref].tolist())
            z = -np.log10(p)
            a, b = z[group[~is_ref] == 1], z[group[~is_ref] == 0]
            figures[twin] = (stats.auroc(a, b), stats.bootstrap_auroc_ci(a, b), stats.tpr_at_fpr(a, b, 0.01),
                             stats.tpr_at_fpr(a, b, 0.05))
        con, cln = figures["contaminated"], figures["clean"]
        rows.append((f"{lab_dir.parent.name}/{lab_dir.name}", f"`{name}`", f"{shift(score, gold, group):.2f}",
                     f"{con[0]:.3f} [{con[1][0]:.2f}, {con[1][1]:.2f}]", f"{con[2]:.2f}", f"{con[3]:.2f}",
                     f"{cln[0]:.3f}"))
    print(f"- {lab_dir.parent.name}/{lab_dir.name}: {len(lab.leaked)} leaked, {len(lab.unseen)} unseen, "
          f"{len(reference)} reference items; r = {manifest['repeats']}, seed {manifest['seed']}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labs", nargs="+", type=Path, help="MMLU fine-tuning lab directories (bench_lab.py's <w>/mmlu_r1)")
    ap.add_argument("--data", default=C.DEFAULT_DATA, help="Real data directory (mmlu/). Default: ../shared/data")
    ap.add_argument("--reference", type=int, default=600, help="reference items, drawn as bench_lab.py draws them")
    ap.add_argument("--orders", type=int, default=6, help="orders of the other choices to average over (1-6)")
    args = ap.parse_args()
    if not 1 <= args.orders <= 6:
        ap.error("--orders must be 1-6")
    from itd.core import load_benchmark
    from itd.core.errors import InputError

    C.header("What one fine-tuning exposure of an MCQ answer leaves: the letters' log-probabilities")
    try:
        benchmark = load_benchmark(Path(args.data) / "mmlu" / "test")
        for lab in args.labs:  # a table per lab as it is done: a long run stopped halfway keeps what it measured
            rows = lab_rows(lab, benchmark, args.reference, args.orders)
            print()
            print(C.table(("lab", "score", "shift (SD)", "AUROC within letter [95% CI]", "TPR@1%FPR", "TPR@5%FPR",
                           "clean-twin AUROC"), rows), flush=True)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
