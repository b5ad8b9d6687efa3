"""Corpus scan on real GSM8K and MMLU data with planted leaks of every kind.

The corpus is GSM8K train problems, MMLU dev questions and generated filler prose, with test items planted as
verbatim copies, reformatted copies, embedded in a 5,000-word document, question only, first half only, numbers
changed and a few words edited. Labels, coverage, evidence offsets, and cleanliness of the rest are asserted.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from itd.core import load_benchmark
from itd.corpus.scan import ScanConfig, scan
from itd.pipeline.demo import EXPECTED_LABEL, VARIANTS, filler_text, plant

PER_KIND = 2


@pytest.fixture(scope="module")
def gsm8k_case(shared_data, tmp_path_factory):
    """(samples, corpus path, truth id -> kind, planted line -> (id, kind))."""
    rng = random.Random(7)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:300]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")][:1500]
    docs = [{"text": r["question"] + "\n" + r["answer"], "origin": "train"} for r in train]
    docs += [{"text": filler_text(rng, rng.randint(100, 600)), "origin": "filler"} for _ in range(300)]
    mmlu_dev = load_benchmark(shared_data / "mmlu" / "dev")
    docs += [{"text": s.prompt_text(), "origin": "mmlu"} for s in mmlu_dev]
    rng.shuffle(docs)
    picks = rng.sample(range(len(samples)), PER_KIND * len(VARIANTS))
    truth = {}
    for k, kind in enumerate(VARIANTS):
        for i in picks[k * PER_KIND : (k + 1) * PER_KIND]:
            s = samples[i]
            truth[s.id] = kind
            docs.insert(rng.randrange(len(docs)), {"text": plant(kind, s.question, s.solution, rng), "origin": "planted", "item": s.id})
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return samples, corpus, truth, docs


@pytest.fixture(scope="module")
def gsm8k_report(gsm8k_case):
    samples, corpus, _, _ = gsm8k_case
    return scan(samples, corpus, ScanConfig(detectors=("ngram", "minhash")))


def _doc_line(ev) -> int:
    return int(ev.doc.rsplit(":", 1)[1])


@pytest.mark.parametrize("kind", VARIANTS)
def test_planted_variant_gets_expected_label(gsm8k_case, gsm8k_report, kind):
    _, _, truth, docs = gsm8k_case
    results = gsm8k_report.by_id()
    for sid, k in truth.items():
        if k != kind:
            continue
        r = results[sid]
        assert r.label == EXPECTED_LABEL[kind], (sid, kind, r.to_dict())
        # the best evidence points at the planted document
        planted_lines = [i + 1 for i, d in enumerate(docs) if d.get("item") == sid]
        assert any(_doc_line(e) in planted_lines for e in r.evidence), r.to_dict()["evidence"]


def test_coverage_bounds_and_which_pass(gsm8k_case, gsm8k_report):
    _, _, truth, _ = gsm8k_case
    results = gsm8k_report.by_id()
    for sid, kind in truth.items():
        rec = results[sid].to_dict()
        raw, num = rec["coverage"]["raw"], rec["coverage"]["numnorm"]
        if kind in ("verbatim", "reformatted", "embedded"):
            assert raw["question"] == 1.0 and raw["answer"] >= 0.95 and rec["match"] == "raw"
        elif kind == "question_only":
            assert raw["question"] == 1.0 and raw["answer"] < 0.4
        elif kind == "first_half":
            assert 0.4 <= raw["question"] <= 0.6 and raw["answer"] == 0.0
        elif kind == "numbers_changed":
            # a number-swapped copy is caught only by the number-normalised pass
            assert num["question"] >= 0.8 and raw["question"] < num["question"] and rec["match"] == "numnorm"
        elif kind == "edited":
            assert "minhash" in rec["detected_by"] and rec["fuzzy"]["question"] >= 85


def test_evidence_offsets_point_at_the_copy(gsm8k_case, gsm8k_report):
    samples, _, truth, docs = gsm8k_case
    by_id = {s.id: s for s in samples}
    results = gsm8k_report.by_id()
    for sid, kind in truth.items():
        if kind not in ("verbatim", "embedded"):
            continue
        ev = next(e for e in results[sid].evidence if e.detector == "ngram")
        text = docs[_doc_line(ev) - 1]["text"]
        assert ev.text == text[ev.start : ev.end]
        assert ev.score >= 95
        assert by_id[sid].question[:40] in text[ev.start : ev.end]
        if kind == "embedded":
            assert ev.start > 10_000  # in the middle of a 5,000-word document


def test_unplanted_items_are_clean(gsm8k_case, gsm8k_report):
    """Un-planted items are clean, except genuine GSM8K train near-duplicates, which must point at train docs."""
    _, _, truth, docs = gsm8k_case
    flagged = [r for r in gsm8k_report.results if r.sample.id not in truth and r.label != "clean"]
    for r in flagged:
        origins = {docs[_doc_line(e) - 1]["origin"] for e in r.evidence}
        assert origins == {"train"}, (r.sample.id, r.to_dict())
        assert r.to_dict()["coverage"]["raw"]["question"] < 0.4  # never a verbatim hit
    assert len(flagged) <= 0.03 * (len(gsm8k_report.results) - len(truth))


def test_two_workers_give_the_same_report(gsm8k_case, gsm8k_report):
    samples, corpus, _, _ = gsm8k_case
    two = scan(samples, corpus, ScanConfig(detectors=("ngram", "minhash"), workers=2, shard_bytes=1 << 18))
    assert two.stats["shards"] > 2
    one_recs = [r.to_dict() for r in gsm8k_report.results]
    assert [r.to_dict() for r in two.results] == one_recs


def _harness(s, key: str = "") -> str:
    """An item in lm-evaluation-harness's MMLU prompt layout: letters before the choices, then "Answer:"."""
    return s.question + "\n" + "\n".join(f"{l}. {c}" for l, c in zip("ABCD", s.choices)) + "\nAnswer:" + key


def test_mmlu_items_found_in_corpus(shared_data, tmp_path):
    """The label of an MCQ item is its key: the choices alone (which include the correct one) are only input."""
    rng = random.Random(3)
    samples = load_benchmark(shared_data / "mmlu" / "test" / "high_school_biology_test.csv")
    s = {i: samples[i] for i in (5, 40, 77, 91, 120, 133)}
    planted = {
        5: (s[5].prompt_text() + "\nAnswer: " + s[5].choices[s[5].answer], "input_and_label_contaminated"),
        40: ("Q: " + s[40].question, "input_contaminated"),
        77: (_harness(s[77]), "input_contaminated"),
        91: (_harness(s[91], " " + "ABCD"[s[91].answer]), "input_and_label_contaminated"),
        120: (s[120].prompt_text(), "input_contaminated"),
        133: (_harness(s[133], " " + "ABCD"[(s[133].answer + 1) % 4]), "input_contaminated"),  # a wrong key
    }
    docs = [filler_text(rng, 300) for _ in range(200)]
    for k, (i, (text, _)) in enumerate(planted.items()):
        docs.insert(10 + 20 * k, text + "\n\n" + filler_text(rng, 40))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    for detectors in (("ngram",), ("minhash",), ("ngram", "minhash")):
        report = scan(samples, corpus, ScanConfig(detectors=detectors))
        labels = {r.sample.id: r.label for r in report.results}
        got = {i: labels[samples[i].id] for i in planted}
        expected = {i: label for i, (_, label) in planted.items()}
        if detectors == ("minhash",):  # too short for an item-sized fuzzy window: only n-grams find a bare question
            expected[40] = got[40]
        assert got == expected, detectors
        assert sum(label != "clean" for sid, label in labels.items() if sid not in {samples[i].id for i in planted}) == 0
    key_evidence = [e for e in report.by_id()[samples[91].id].evidence if e.part == "question+answer"]
    assert key_evidence and key_evidence[0].text.rstrip().endswith("Answer: " + "ABCD"[s[91].answer])


def test_number_pass_ignores_pure_arithmetic(shared_data, tmp_path):
    """An n-gram made mostly of numbers ("3 + 4 = 7 ...") must not match unrelated math in the number pass."""
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:200]
    arithmetic = " ".join(f"{a} + {a + 1} = {2 * a + 1}." for a in range(400))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": arithmetic}) + "\n", encoding="utf-8")
    report = scan(samples, corpus, ScanConfig(detectors=("ngram",)))
    assert report.counts()["clean"] == len(samples)
    assert re.search(r"\d", arithmetic)


def _mmlu(shared_data, subject):
    return load_benchmark(shared_data / "mmlu" / "test" / f"{subject}_test.csv")


def _corpus(tmp_path, texts, rng):
    docs = [filler_text(rng, 200) for _ in range(40)]
    for k, text in enumerate(texts):
        docs.insert(2 + 3 * k, filler_text(rng, 30) + "\n" + text + "\n" + filler_text(rng, 30))
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_distinctive_stem_alone_is_input_and_generic_stem_is_not(shared_data, tmp_path):
    """An MCQ stem copied without its options is input_contaminated when it is long enough to be distinctive
    (>= 13 tokens), whatever the share of the options in the item; a short generic stem is not."""
    from itd.core.text import tokenize

    rng = random.Random(5)
    samples = _mmlu(shared_data, "high_school_biology")
    tokens = lambda s: len(tokenize([s.question]).hashes)  # noqa: E731
    long_stems = [s for s in samples if 13 <= tokens(s) <= 16 and sum(map(len, s.choices)) > 2 * len(s.question)][:3]
    generic = [s for s in samples if s.question.strip().lower().startswith("which of the following") and tokens(s) <= 7][:2]
    assert len(long_stems) == 3 and generic
    corpus = _corpus(tmp_path, [s.question for s in long_stems + generic], rng)
    report = scan(samples, corpus, ScanConfig(detectors=("ngram",)))
    by_id = report.by_id()
    for s in long_stems:
        r = by_id[s.id]
        assert r.label == "input_contaminated", (s.question, r.to_dict()["coverage"])
        assert r.findings[0].details.get("stem_only") is True
        assert r.evidence and s.question[:20] in r.evidence[0].text
    for s in generic:
        assert by_id[s.id].label == "clean"
    assert len(report.contaminated) == len(long_stems)


@pytest.mark.parametrize("detectors", [("ngram",), ("minhash",)])
def test_a_shared_passage_alone_does_not_flag_its_siblings(shared_data, tmp_path, detectors):
    """Items that quote the same source passage differ in their question and options: a copy of one item makes
    that item contaminated, not its siblings, which share only the passage with it (exact and fuzzy detectors)."""
    rng = random.Random(6)
    samples = _mmlu(shared_data, "high_school_european_history")
    by_passage: dict[str, list] = {}
    for s in samples:
        by_passage.setdefault(s.question[:400], []).append(s)
    group = next(g for g in by_passage.values() if len(g) >= 3)
    leaked, siblings = group[0], group[1:]
    corpus = _corpus(tmp_path, [leaked.prompt_text() + "\nAnswer: " + "ABCD"[leaked.answer]], rng)
    report = scan(samples, corpus, ScanConfig(detectors=detectors))
    by_id = report.by_id()
    assert by_id[leaked.id].label == "input_and_label_contaminated"
    assert [by_id[s.id].label for s in siblings] == ["clean"] * len(siblings)
    assert len(report.contaminated) == 1


def test_neighbours_sharing_a_template_or_options_are_not_flagged(shared_data, tmp_path):
    """A copy of one item does not flag the items that share its template, options or all but a few characters
    with it: the near-twin physics item written with `*` for `x`, the moral scenarios with the same four
    "Wrong, Not wrong" options, the expressions to evaluate that differ only in their numbers, and the items made
    of one neighbour's stem and another's options (nothing of their own but the combination)."""
    rng = random.Random(11)
    subjects = ("college_physics", "moral_scenarios", "elementary_mathematics", "high_school_chemistry",
                "conceptual_physics")
    samples = [s for subject in subjects for s in _mmlu(shared_data, subject)]
    by_id = {s.id: s for s in samples}
    twin = by_id["college_physics_test:39"]
    assert any(s.question == twin.question and s.id != twin.id for s in samples)
    scenario = next(s for s in samples if s.id.startswith("moral_scenarios"))
    expressions = [s for s in samples if "the value of the expression" in s.question]
    assert len(expressions) >= 4
    # :100 is the stem of :126 with the options of :8; :158 the stem of :37 with the options of :91
    for combined, stem_of, options_of in (("high_school_chemistry_test:100", "high_school_chemistry_test:126",
                                           "high_school_chemistry_test:8"),
                                          ("conceptual_physics_test:158", "conceptual_physics_test:37",
                                           "conceptual_physics_test:91")):
        words = lambda text: re.sub(r"\W+", " ", text).strip()  # noqa: E731
        assert words(by_id[combined].question) == words(by_id[stem_of].question)
        assert by_id[combined].choices[1:3] == by_id[options_of].choices[1:3]
    leaked = [twin, scenario, expressions[0], by_id["high_school_chemistry_test:8"],
              by_id["conceptual_physics_test:37"]]
    corpus = _corpus(tmp_path, [_harness(s, " " + "ABCD"[s.answer]) for s in leaked], rng)
    report = scan(samples, corpus, ScanConfig(detectors=("ngram", "minhash")))
    by_id = report.by_id()
    assert [by_id[s.id].label for s in leaked] == ["input_and_label_contaminated"] * len(leaked)
    assert sorted(r.sample.id for r in report.contaminated) == sorted(s.id for s in leaked)


def test_numeric_option_lists_do_not_match_arithmetic(shared_data, tmp_path):
    """Options that are a list of numbers with one unit ("50 square inches", "77 square inches", ...) are
    "# square inches # square inches ..." once numbers are ignored, which any worked solution with that unit
    holds: such n-grams are not evidence, so short items with numeric options stay clean."""
    samples = _mmlu(shared_data, "miscellaneous")
    numeric = [s for s in samples if s.id in ("miscellaneous_test:290", "miscellaneous_test:349")]
    assert [len({c.split(" ", 1)[-1] for c in s.choices}) <= 2 for s in numeric] == [True, True]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")]
    unit_lists = re.compile(r"\d+ square inches.*\d+ square inches|\d+ miles per hour.*\d+ miles per hour")
    solutions = [r["question"] + "\n" + r["answer"] for r in train if unit_lists.search(r["answer"])]
    assert len(solutions) >= 5
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in solutions), encoding="utf-8")
    report = scan(samples, corpus, ScanConfig(detectors=("ngram", "minhash")))
    assert [report.by_id()[s.id].label for s in numeric] == ["clean", "clean"]
    assert report.contaminated == []


def test_a_solution_alone_with_other_numbers_is_not_a_leak(shared_data, tmp_path):
    """Generic solution phrasing found through the number-normalised pass, without the question, is not
    contamination; the same solution with its own numbers (and the question) still is."""
    rng = random.Random(8)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:200]
    solution_only, full = samples[11], samples[12]
    other_numbers = re.sub(r"\d+", lambda m: str(int(m.group()) + 3), solution_only.solution)
    corpus = _corpus(tmp_path, [other_numbers, full.question + "\n" + full.solution], rng)
    report = scan(samples, corpus, ScanConfig(detectors=("ngram",)))
    by_id = report.by_id()
    assert by_id[solution_only.id].label == "clean", by_id[solution_only.id].to_dict()["coverage"]
    assert by_id[full.id].label == "input_and_label_contaminated"
    assert len(report.contaminated) == 1


@pytest.mark.parametrize("markup", ["html", "markdown", "rewrapped", "latex"])
def test_marked_up_copies_still_match(shared_data, tmp_path, markup):
    """A verbatim copy re-wrapped to short lines, as HTML with character references, as Markdown, or with its
    LaTeX re-spaced is found with its key."""
    import html
    import textwrap

    rng = random.Random(9)
    samples = _mmlu(shared_data, "high_school_mathematics")
    items = [s for s in samples if "$" in s.question][:4]
    texts = []
    for s in items:
        text = _harness(s, " " + "ABCD"[s.answer])
        if markup == "html":
            text = "<div><p>" + html.escape(text).replace("\n", "</p>\n<p>").replace(" ", " <em></em>", 1) + "</p></div>"
        elif markup == "markdown":
            text = "## Problem\n\n**" + text.replace("\n", "**\n- ", 1).replace("\nAnswer:", "\n\n**Answer:**")
        elif markup == "rewrapped":
            text = "\n".join(textwrap.fill(line, 28) for line in text.split("\n"))
        else:
            text = re.sub(r" ?([=+<>-]) ?", r"\1", text).replace(", ", ",\\; ").replace("(", "\\left(").replace("$", "$\\,")
        texts.append(text)
    report = scan(samples, _corpus(tmp_path, texts, rng), ScanConfig(detectors=("ngram",)))
    by_id = report.by_id()
    assert [by_id[s.id].label for s in items] == ["input_and_label_contaminated"] * len(items)
    assert len(report.contaminated) == len(items)


def test_mcq_keys_are_seen_through_the_index(shared_data, tmp_path):
    """`itd check` against a persistent index labels an MCQ copy with its key (letter or choice text) as
    input_and_label, one with a wrong key or none as input only, like a scan of the same corpus."""
    from itd.corpus.index import build_index, check

    rng = random.Random(10)
    samples = _mmlu(shared_data, "high_school_biology")
    s = [samples[i] for i in (3, 30, 60, 90)]
    texts = [_harness(s[0], " " + "ABCD"[s[0].answer]),
             s[1].prompt_text() + "\nAnswer: " + s[1].choices[s[1].answer],
             _harness(s[2], " " + "ABCD"[(s[2].answer + 1) % 4]),
             _harness(s[3])]
    corpus = _corpus(tmp_path, texts, rng)
    build_index([corpus], tmp_path / "idx")
    expected = ["input_and_label_contaminated", "input_and_label_contaminated", "input_contaminated", "input_contaminated"]
    for report in (check(samples, tmp_path / "idx"), scan(samples, corpus, ScanConfig(detectors=("ngram",)))):
        by_id = report.by_id()
        assert [by_id[x.id].label for x in s] == expected
        assert len(report.contaminated) == 4


def test_the_index_check_finds_what_the_ngram_scan_finds(gsm8k_case, tmp_path):
    """`itd check` against an index, whose number-normalised parts keep only n-grams with a number, gives every
    item the label and per-pass coverage an n-gram scan gives it, copies with other numbers included."""
    from itd.corpus.index import build_index, check

    samples, corpus, truth, _ = gsm8k_case
    meta = build_index([corpus], tmp_path / "idx")
    assert meta["ngrams"]["numnorm_13"] < meta["ngrams"]["raw_13"] / 2
    via_index = check(samples, tmp_path / "idx").by_id()
    via_scan = scan(samples, corpus, ScanConfig(detectors=("ngram",))).by_id()
    assert via_index.keys() == via_scan.keys()
    for sid, r in via_scan.items():
        assert via_index[sid].label == r.label, sid
        got, want = via_index[sid].findings[0].details, r.findings[0].details
        assert got["coverage"] == want["coverage"], sid
    renumbered = [sid for sid, kind in truth.items() if via_scan[sid].findings[0].details.get("match") == "numnorm"]
    assert renumbered and all(via_index[sid].label != "clean" for sid in renumbered)
