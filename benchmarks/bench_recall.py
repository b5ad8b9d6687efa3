"""Recall and false positives per planted leak variant, on real GSM8K / MMLU data.

Corpus (two JSONL files, so evidence tells where a match came from):
  * `gsm8k_train.jsonl`: every GSM8K train problem (question + worked solution) as one document;
  * `synthetic.jsonl`: `--filler` filler documents (`itd.pipeline.demo.filler_text`) plus the planted leaks:
    `--per-variant` GSM8K test items for each `itd.pipeline.demo.VARIANTS` kind, and `--per-variant` MMLU test items for
    verbatim / question_only / edited, in lm-evaluation-harness's layout: `itd.core.render.render(s, "options")`
    (question, then `A. ...` choice lines) and the key `Answer: <letter>`, planted with `itd.pipeline.demo.plant`.

Copies with markup (`MARKUP_VARIANTS`, for both benchmarks: the verbatim text re-wrapped to short lines, as HTML
with character references, as Markdown, or with its LaTeX re-spaced) are planted `--per-variant` times each, and
MMLU stems alone (no options, no key) `--per-variant` times for each stem-length bucket of `STEM_BUCKETS`
(tokens); a stem of at least 13 tokens is expected `input_contaminated`, a shorter one is not required either way.

Both benchmarks (GSM8K test, all MMLU test items) are scanned with `detectors=("ngram", "minhash")`. Per variant
the table gives planted, detected (label != clean), detected with `EXPECTED_LABEL[kind]`, located (evidence points
at the planted document), and which detector/pass fired. Un-planted items that are flagged are split by where the
evidence is (GSM8K train = genuine train/test near-duplicates, or the synthetic file = spurious) and by which
pass flagged them.

    python benchmarks/bench_recall.py --per-variant 20

SFT layouts (`sft_layouts`, also alone with `--only-sft`): `--sft-per-layout` GSM8K and MMLU test items planted
in fine-tuning records of each layout (Alpaca, OpenAI messages, ShareGPT), the question in the input side
(instruction / user / human turn) and the answer in the output side (output / assistant / gpt turn), among
GSM8K train problems and filler in the same layout. Before: what the reader could do without layouts (the
default `text` field refuses every such file; the best single field, the input side, sees the question only).
After: layouts detected per file. Recall with the expected label `input_and_label_contaminated`, and
un-planted items flagged, per layout.
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MMLU_VARIANTS = ("verbatim", "question_only", "edited")
STEM_BUCKETS = ((1, 8), (8, 13), (13, 25), (25, 10_000))  # [lo, hi) stem tokens
DISTINCTIVE_STEM = 13


def rewrapped(text: str, rng: random.Random) -> str:
    """Re-wrapped to short lines, as a text editor or an e-mail would."""
    return "\n".join(textwrap.fill(par, width=rng.randint(24, 40)) for par in text.split("\n"))


def as_html(text: str, rng: random.Random) -> str:
    """Each line a paragraph, special characters as character references, a few words in bold."""
    out = []
    for line in text.split("\n"):
        words = [html.escape(w) for w in line.split(" ")]
        if len(words) > 3:
            k = rng.randrange(len(words))
            words[k] = f"<strong>{words[k]}</strong>"
        out.append('<p class="q">' + " ".join(words) + "</p>")
    return "<html><body>\n" + "<br/>\n".join(out) + "\n</body></html>"


def as_markdown(text: str, rng: random.Random) -> str:
    """A Markdown post: a heading, the first line in bold, the others as list items, the key in bold."""
    lines = text.split("\n")
    body = [f"**{lines[0]}**"] + [("- " + ln if not ln.startswith("Answer:") else "**" + ln + "**") for ln in lines[1:]]
    return "## Practice question\n\n" + "\n".join(body) + "\n\n> Source: a study guide"


def latex_spacing(text: str, rng: random.Random) -> str:
    """LaTeX spacing changed: operators closed up, thin spaces and `\\left(`/`\\right)` added, `\\quad` between clauses."""
    text = re.sub(r" ?([+\-=*/<>]) ?", r"\1", text)
    text = re.sub(r"(\d)([a-zA-Z])", r"\1\\,\2", text)
    text = text.replace("(", "\\left(").replace(")", "\\right)").replace(", ", ",\\; ")
    return text.replace(". ", ".\\quad ")


MARKUP_VARIANTS = {"rewrapped": rewrapped, "html": as_html, "markdown": as_markdown, "latex_spacing": latex_spacing}


def passes_of(result) -> tuple[bool, bool, bool]:
    """(n-gram match "raw", n-gram match "numnorm", fuzzy) flags of one SampleResult.

    The ngram finding's `match` is "numnorm" when the number-normalised pass matched clearly better than the raw
    pass (same text, other numbers); the raw pass may still have some coverage then.
    """
    raw = numnorm = fuzzy = False
    for f in result.findings:
        if not (f.input_hit or f.label_hit):
            continue
        if f.detector == "ngram":
            raw = f.details.get("match") == "raw"
            numnorm = f.details.get("match") == "numnorm"
        elif f.detector == "minhash":
            fuzzy = True
    return raw, numnorm, fuzzy


def pass_name(raw: bool, numnorm: bool, fuzzy: bool) -> str:
    if raw:
        return "raw n-gram" + (" + fuzzy" if fuzzy else "")
    if numnorm:
        return "numnorm n-gram" + (" + fuzzy" if fuzzy else "")
    return "fuzzy only"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--per-variant", type=int, default=20, help="Items planted per variant (and per benchmark).")
    ap.add_argument("--filler", type=int, default=2000, help="Filler documents in the synthetic file.")
    ap.add_argument("--show", type=int, default=8, help="Un-planted flagged items to list with their evidence.")
    ap.add_argument("--sft-per-layout", type=int, default=20, help="Items per benchmark planted per SFT layout (0: skip).")
    ap.add_argument("--only-sft", action="store_true", help="Measure the SFT layouts only.")
    args = ap.parse_args(argv)
    if args.only_sft:
        return sft_layouts(args)

    from itd.core import load_benchmark
    from itd.core.render import render
    from itd.corpus.scan import ScanConfig, scan
    from itd.pipeline.demo import EXPECTED_LABEL, VARIANTS, filler_text, plant

    rng = random.Random(args.seed)
    data = Path(args.data)
    gsm = load_benchmark(data / "gsm8k" / "test.jsonl")
    gsm_raw = C.gsm8k_records(data, "test")
    mmlu = load_benchmark(data / "mmlu" / "test")

    from itd.core.text import tokenize

    expected = dict(EXPECTED_LABEL)
    expected.update({k: "input_and_label_contaminated" for k in MARKUP_VARIANTS})
    stem_kinds = {}
    for lo, hi in STEM_BUCKETS:
        kind = f"stem_only {lo}-{hi - 1}" if hi < 10_000 else f"stem_only {lo}+"
        stem_kinds[kind] = (lo, hi)
        # a shorter stem is not required either way: it may be found when it is most of a short item
        expected[kind] = "input_contaminated" if lo >= DISTINCTIVE_STEM else "any"
    gsm_kinds = VARIANTS + tuple(MARKUP_VARIANTS)
    mmlu_kinds = MMLU_VARIANTS + tuple(MARKUP_VARIANTS) + tuple(stem_kinds)

    # which items leak as what: distinct items per benchmark
    truth: dict[str, dict[int, str]] = {"gsm8k": {}, "mmlu": {}}
    order = rng.sample(range(len(gsm)), len(gsm_kinds) * args.per_variant)
    for k, kind in enumerate(gsm_kinds):
        for j in order[k * args.per_variant : (k + 1) * args.per_variant]:
            truth["gsm8k"][j] = kind
    plain = MMLU_VARIANTS + tuple(MARKUP_VARIANTS)
    order = rng.sample(range(len(mmlu)), len(plain) * args.per_variant)
    for k, kind in enumerate(plain):
        for j in order[k * args.per_variant : (k + 1) * args.per_variant]:
            truth["mmlu"][j] = kind
    stems = tokenize([s.question for s in mmlu])
    stem_len = stems.doc_token_offsets[1:] - stems.doc_token_offsets[:-1]
    for kind, (lo, hi) in stem_kinds.items():
        pool = [j for j in range(len(mmlu)) if lo <= stem_len[j] < hi and j not in truth["mmlu"]]
        for j in rng.sample(pool, min(args.per_variant, len(pool))):
            truth["mmlu"][j] = kind

    docs: list[tuple[str | None, int | None, str]] = [(None, None, filler_text(rng, rng.randint(50, 400))) for _ in range(args.filler)]
    for j, kind in truth["gsm8k"].items():  # the raw GSM8K record: solution with its <<calculator>> annotations
        q, a = gsm_raw[j]["question"], gsm_raw[j]["answer"]
        text = MARKUP_VARIANTS[kind](q + "\n" + a, rng) if kind in MARKUP_VARIANTS else plant(kind, q, a, rng)
        docs.append(("gsm8k", j, text))
    for j, kind in truth["mmlu"].items():
        key = "Answer: " + "ABCDEFGHIJ"[mmlu[j].answer]
        if kind in MARKUP_VARIANTS:
            text = MARKUP_VARIANTS[kind](render(mmlu[j], "options") + "\n" + key, rng)
        elif kind in stem_kinds:
            text = filler_text(rng, 40) + "\n" + mmlu[j].question + "\n" + filler_text(rng, 40)
        else:
            text = plant(kind, render(mmlu[j], "options"), key, rng)
        docs.append(("mmlu", j, text))
    rng.shuffle(docs)

    with C.workdir(args.workdir, "itd-bench-recall-") as wd:
        train = wd / "gsm8k_train.jsonl"
        train_records = C.gsm8k_records(data, "train")
        with open(train, "w", encoding="utf-8") as f:
            for r in train_records:
                f.write(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n")
        synthetic = wd / "synthetic.jsonl"
        planted_line: dict[tuple[str, int], int] = {}
        with open(synthetic, "w", encoding="utf-8") as f:
            for line, (bench, j, text) in enumerate(docs, 1):
                f.write(json.dumps({"text": text}) + "\n")
                if bench is not None:
                    planted_line[(bench, j)] = line
        corpus = [train, synthetic]
        mb = sum(p.stat().st_size for p in corpus) / 1e6

        cfg = ScanConfig(detectors=("ngram", "minhash"))
        reports, secs = {}, {}
        for name, samples in (("gsm8k", gsm), ("mmlu", mmlu)):
            t = time.perf_counter()
            reports[name] = scan(samples, corpus, cfg)
            secs[name] = time.perf_counter() - t

        planted_docs = {f"{synthetic}:{line}" for line in planted_line.values()}

        def where(result) -> str:
            """Where an un-planted flagged item's evidence lies."""
            kinds = set()
            for ev in result.evidence:
                if ev.doc.startswith(str(train) + ":"):
                    kinds.add("GSM8K train")
                elif ev.doc in planted_docs:
                    kinds.add("another item's planted document")
                else:
                    kinds.add("filler")
            if not kinds:
                return "no evidence (boilerplate n-grams shared by > 64 items only)"
            return " + ".join(sorted(kinds))

        rows = []
        for bench in ("gsm8k", "mmlu"):
            results = reports[bench].results
            for kind in gsm_kinds if bench == "gsm8k" else mmlu_kinds:
                items = [j for j, k in truth[bench].items() if k == kind]
                det = [j for j in items if results[j].label != "clean"]
                exp = [j for j in items if expected[kind] in ("any", results[j].label)]
                loc = [j for j in items if any(ev.doc == f"{synthetic}:{planted_line[(bench, j)]}" for ev in results[j].evidence)]
                by = Counter(pass_name(*passes_of(results[j])) for j in det)
                labels = Counter(results[j].label for j in items)
                rows.append(
                    (
                        "GSM8K" if bench == "gsm8k" else "MMLU",
                        kind,
                        expected[kind],
                        len(items),
                        len(det),
                        len(exp),
                        len(loc),
                        "; ".join(f"{k}: {v}" for k, v in by.most_common()) or "-",
                        "; ".join(f"{k}: {v}" for k, v in labels.most_common()),
                    )
                )

        fp_rows, listed = [], []
        for bench in ("gsm8k", "mmlu"):
            results = reports[bench].results
            clean_items = [j for j in range(len(results)) if j not in truth[bench]]
            flagged = [j for j in clean_items if results[j].label != "clean"]
            cats: Counter[tuple[str, str]] = Counter()
            groups: dict[tuple[str, str], Counter[str]] = {}
            for j in flagged:
                q_hit = any(f.input_hit for f in results[j].findings)
                part = "question" if q_hit else "answer only"
                key = (where(results[j]), pass_name(*passes_of(results[j])), part)
                cats[key] += 1
                groups.setdefault(key, Counter())[results[j].sample.id.rsplit(":", 1)[0]] += 1
                listed.append((bench, j, key[0]))
            name = "GSM8K" if bench == "gsm8k" else "MMLU"
            fp_rows.append((name, len(clean_items), len(flagged), f"{len(flagged) / len(clean_items):.2%}", "(all)", "-", "-", "-"))
            for key, n in sorted(cats.items(), key=lambda kv: -kv[1]):
                files = ", ".join(f"{k} {v}" for k, v in groups[key].most_common(3))
                fp_rows.append((name, "", n, f"{n / len(clean_items):.2%}", key[0], key[1], key[2], files))

        C.header("Recall and false positives per planted variant (detectors ngram + minhash, real data)")
        print(
            f"corpus: GSM8K train ({len(train_records):,} docs) + synthetic "
            f"({args.filler:,} filler docs + {len(docs) - args.filler} planted) = {mb:.1f} MB; "
            f"benchmarks: GSM8K test {len(gsm):,} items (scan {secs['gsm8k']:.1f} s), MMLU test {len(mmlu):,} items "
            f"(scan {secs['mmlu']:.1f} s)\n"
        )
        print("### Planted items\n")
        print(C.table(["benchmark", "variant", "expected label", "planted", "detected", "with expected label", "located", "detected by", "labels"], rows))
        print()
        print("### Un-planted items flagged (false positives and genuine near-duplicates)\n")
        print(C.table(["benchmark", "un-planted items", "flagged", "rate", "evidence in", "flagged by", "part over threshold", "top source files"], fp_rows))
        print()
        misses = [(b, j, k) for b in ("gsm8k", "mmlu") for j, k in truth[b].items() if expected[k] not in ("any", reports[b].results[j].label)]
        if misses and args.show:
            print(f"first {min(args.show, len(misses))} of {len(misses)} planted items without the expected label:\n")
            for bench, j, kind in misses[: args.show]:
                r = reports[bench].results[j]
                hits = ", ".join(f"{f.detector}{'' if not f.input_hit else ' input'}{'' if not f.label_hit else ' label'}" for f in r.findings if f.input_hit or f.label_hit)
                ev = r.evidence[0] if r.evidence else None
                print(f"- {r.sample.id} ({kind}: {r.label}, by {hits or '-'}): evidence \"{ev.text.replace(chr(10), ' ')[-90:] if ev else '-'}\" ({ev.part if ev else '-'})")
            print()
        if listed and args.show:
            print(f"first {min(args.show, len(listed))} un-planted flagged items, with their best evidence:\n")
            for bench, j, src in listed[: args.show]:
                r = reports[bench].results[j]
                ev = r.evidence[0] if r.evidence else None
                q = r.sample.question.replace("\n", " ")[:90]
                e = ev.text.replace("\n", " ")[:90] if ev else "-"
                print(f"- {r.sample.id} ({r.label}, {pass_name(*passes_of(r))}, evidence in {src}, score {ev.score if ev else 0:.0f}): item \"{q}...\" / evidence \"{e}...\"")
    return sft_layouts(args) if args.sft_per_layout else 0


SFT_LAYOUTS = {  # layout: (record of (prompt, response), the single input-side field a reader without layouts could use)
    "alpaca": (lambda q, a: {"instruction": q, "input": "", "output": a}, "instruction"),
    "messages": (lambda q, a: {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                            {"role": "user", "content": q}, {"role": "assistant", "content": a}]}, None),
    "sharegpt": (lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}, None),
}


def sft_layouts(args) -> int:
    """Recall and false positives of leaks planted across the turns of SFT records, before and after layouts."""
    from itd.core import load_benchmark
    from itd.core.errors import InputError
    from itd.core.render import render
    from itd.corpus.scan import ScanConfig, scan
    from itd.pipeline.demo import filler_text

    rng = random.Random(args.seed + 1)
    data = Path(args.data)
    gsm = load_benchmark(data / "gsm8k" / "test.jsonl")
    gsm_raw = C.gsm8k_records(data, "test")
    mmlu = load_benchmark(data / "mmlu" / "test")
    train = C.gsm8k_records(data, "train")
    k = args.sft_per_layout
    picks = {"gsm8k": rng.sample(range(len(gsm)), k * len(SFT_LAYOUTS)), "mmlu": rng.sample(range(len(mmlu)), k * len(SFT_LAYOUTS))}
    truth: dict[str, dict[str, list[int]]] = {bench: {} for bench in picks}
    rows, fp_rows = [], []
    with C.workdir(args.workdir, "itd-bench-sft-") as wd:
        files, origin = {}, {}  # origin: doc id -> "GSM8K train", "filler" or "planted"
        for li, (layout, (make, _)) in enumerate(SFT_LAYOUTS.items()):
            records = [("GSM8K train", make(r["question"], r["answer"])) for r in train[li::len(SFT_LAYOUTS)]]
            records += [("filler", make(filler_text(rng, rng.randint(20, 80)), filler_text(rng, rng.randint(50, 300)))) for _ in range(500)]
            truth["gsm8k"][layout] = picks["gsm8k"][li * k : (li + 1) * k]
            truth["mmlu"][layout] = picks["mmlu"][li * k : (li + 1) * k]
            for j in truth["gsm8k"][layout]:
                records.append(("planted", make(gsm_raw[j]["question"], gsm_raw[j]["answer"])))
            for j in truth["mmlu"][layout]:  # options in the prompt, the key alone in the response
                records.append(("planted", make(render(mmlu[j], "options"), "ABCDEFGHIJ"[mmlu[j].answer])))
            rng.shuffle(records)
            files[layout] = wd / f"{layout}.jsonl"
            with open(files[layout], "w", encoding="utf-8") as f:
                for line, (kind, r) in enumerate(records, 1):
                    f.write(json.dumps(r) + "\n")
                    origin[f"{files[layout]}:{line}"] = kind
        cfg = dict(detectors=("ngram", "minhash"))
        for bench, samples in (("gsm8k", gsm), ("mmlu", mmlu)):
            t = time.perf_counter()
            after = scan(samples, list(files.values()), ScanConfig(**cfg)).results
            secs = time.perf_counter() - t
            for layout, (_, field) in SFT_LAYOUTS.items():
                try:
                    scan(samples, [files[layout]], ScanConfig(**cfg, layout="text"))
                    refused = "no"
                except InputError:
                    refused = "yes (exit 2)"
                single = scan(samples, [files[layout]], ScanConfig(**cfg, text_field=field)).results if field else None
                items = truth[bench][layout]
                for when, results in (("before, --text-field " + field if field else "before, any single field", single), ("after (layout detected)", after)):
                    if when.startswith("after"):
                        refused = "-"
                    if results is None:
                        rows.append((bench, layout, when, len(items), "-", "-", "no field holds the whole turn list", refused))
                        continue
                    det = sum(results[j].label != "clean" for j in items)
                    full = sum(results[j].label == "input_and_label_contaminated" for j in items)
                    labels = Counter(results[j].label for j in items)
                    rows.append((bench, layout, when, len(items), det, full, "; ".join(f"{a}: {b}" for a, b in labels.most_common()), refused))
            planted = {j for layout in SFT_LAYOUTS for j in truth[bench][layout]}
            clean_items = [j for j in range(len(samples)) if j not in planted]
            flagged = [j for j in clean_items if after[j].label != "clean"]
            where = Counter(" + ".join(sorted({origin[e.doc].replace("planted", "another item's plant") for e in after[j].evidence})) or "no evidence" for j in flagged)
            fp_rows.append((bench, len(clean_items), len(flagged), f"{len(flagged) / len(clean_items):.2%}", f"{secs:.1f} s",
                            "; ".join(f"{k}: {v}" for k, v in where.most_common()) or "-",
                            ", ".join(after[j].sample.id for j in flagged[:8]) or "-"))
    C.header("Leaks split across the turns of SFT records (detectors ngram + minhash, real data)")
    print(f"corpus: one file per layout ({', '.join(SFT_LAYOUTS)}), each ~2,491 GSM8K train problems + 500 filler records "
          f"in that layout + {k} GSM8K and {k} MMLU test items planted (question in the input side, answer in the output side)\n")
    print(C.table(["benchmark", "layout", "read", "planted", "detected", "input_and_label", "labels", "default `text` field refused"], rows))
    print()
    print(C.table(["benchmark", "un-planted items", "flagged (after)", "rate", "scan", "evidence in", "first flagged"], fp_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
