"""The newer probes (Gap-K%, answer accuracy, DC-PDD, ReCaLL, Con-ReCall) against slow, direct implementations of
their published formulas, on the tiny random GPT-2 of test_models, and their registry and configs."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_models import _gsm8k, _ids, _plain_logits, corpus, lm, model_dir, nobos_dir, texts  # noqa: E402,F401

from itd.core import Sample  # noqa: E402
from itd.core.errors import InputError  # noqa: E402
from itd.probes.methods import (  # noqa: E402
    PROBES,
    ConReCaLLConfig,
    DCPDDConfig,
    FrequencyTable,
    GapKConfig,
    ReCaLLConfig,
    build_frequency_table,
    corpus_frequency_table,
)
from itd.probes.models import AnsweredText, ScoreConfig, load_model, score_texts  # noqa: E402


def _per_position(lm, text: str):
    """(ids, per scored position: log p(target), max log p, mu, sigma, argmax), float64, one position at a time."""
    ids = _ids(lm, text)
    logits = _plain_logits(lm, ids)
    rows = []
    for t in range(1, len(ids)):
        log_probs = torch.log_softmax(logits[t - 1], dim=-1)
        probs = torch.softmax(logits[t - 1], dim=-1)
        mu = (probs * log_probs).sum()
        sigma = ((probs * log_probs**2).sum() - mu**2).sqrt()
        rows.append((log_probs[ids[t]].item(), log_probs.max().item(), mu.item(), sigma.item(),
                     int(torch.argmax(logits[t - 1]))))
    return ids, rows


def _reference_gapk(lm, text: str, k: float, window: int) -> float:
    _, rows = _per_position(lm, text)
    gap = np.array([(lp - top) / sigma for lp, top, _, sigma, _ in rows])
    smoothed = np.convolve(gap, np.ones(window) / window, mode="valid") if gap.size >= window else gap
    m = max(1, int(len(smoothed) * k))
    return float(np.mean(np.sort(smoothed)[:m]))


def test_gapk_matches_the_published_formula(lm, texts):
    for k, window in ((0.2, 3), (0.5, 1), (1.0, 6)):
        cfg = ScoreConfig(methods=("gapk", "minkpp"), batch_size=3, options={"gapk": GapKConfig(k=k, window=window)})
        got = score_texts(lm, texts, cfg)
        for text, item in zip(texts, got):
            assert item.scores["gapk"] == pytest.approx(_reference_gapk(lm, text, k, window), abs=1e-4), (text, k)
            assert (item.token_gap <= 0).all()
    # Gap-K% is not Min-K%++: the two differ on most texts
    assert sum(abs(i.scores["gapk"] - i.scores["minkpp"]) > 1e-3 for i in got) >= len(got) // 2


def _answered_items(lm, shared_data, n: int = 6) -> list[AnsweredText]:
    """GSM8K test items cut to 20 tokens of question and 20 of answer, as question+answer renderings."""
    items = []
    for r in _gsm8k(shared_data, "test", n):
        question = lm.tokenizer.decode(lm.tokenizer(r["question"])["input_ids"][:20])
        answer = lm.tokenizer.decode(lm.tokenizer(r["answer"])["input_ids"][:20])
        items.append(AnsweredText(f"{question}\n{answer}", len(question) + 1))
    return items


def _answer_logps(lm, text: AnsweredText) -> list[float]:
    """log p of each answer token given all before it (the answer's first token: the first whose decoded prefix
    reaches past the answer's first character), one position at a time."""
    ids, rows = _per_position(lm, text)
    first = next(j for j in range(1, len(ids)) if len(lm.tokenizer.decode(ids[1 : j + 1])) > text.answer_start)
    return [rows[t - 1][0] for t in range(first, len(ids))]


def test_answer_accuracy_is_teacher_forced_top1_accuracy_on_the_answer(lm, shared_data):
    items = _answered_items(lm, shared_data)
    got = score_texts(lm, items, ScoreConfig(methods=("loss", "answer_acc", "answer_logp"), batch_size=4))
    for text, item in zip(items, got):
        ids, rows = _per_position(lm, text)
        # the answer's first token: the first whose decoded prefix reaches past the answer's first character
        first = next(j for j in range(1, len(ids)) if len(lm.tokenizer.decode(ids[1 : j + 1])) > text.answer_start)
        hits = [rows[t - 1][4] == ids[t] for t in range(first, len(ids))]
        assert item.answer_start == first - 1
        assert item.scores["answer_acc"] == pytest.approx(float(np.mean(hits)), abs=1e-12)
        # answer_logp: the mean log p of the answer's tokens given all before them
        assert item.scores["answer_logp"] == pytest.approx(float(np.mean(_answer_logps(lm, text))), abs=1e-4)
    # a plain text has no answer to score; nor has an answer that is empty
    plain = score_texts(lm, ["Janet has three ducks.", AnsweredText("Janet\n", 6)],
                        ScoreConfig(methods=("answer_acc", "answer_logp")))
    assert all(math.isnan(p.scores["answer_acc"]) and math.isnan(p.scores["answer_logp"]) for p in plain)
    with pytest.raises(ValueError, match="outside"):
        AnsweredText("abc", 4)


def test_answer_reference_is_the_answer_log_likelihood_ratio_to_the_reference_model(lm, nobos_dir, shared_data,
                                                                                    tmp_path):
    """answer_logp under the evaluated model minus the same under the reference model, each model reading the
    text under its own tokenizer (the reference here has another vocabulary and no BOS token)."""
    ref = load_model(nobos_dir, device="cpu")
    items = _answered_items(lm, shared_data)
    assert any(_ids(ref, t) != _ids(lm, t) for t in items)
    cfg = ScoreConfig(methods=("answer_logp", "answer_reference", "reference"), batch_size=4)
    got = score_texts(lm, items, cfg, reference=ref)
    for text, item in zip(items, got):
        ours, theirs = np.mean(_answer_logps(lm, text)), np.mean(_answer_logps(ref, text))
        assert item.reference_answer_logp == pytest.approx(float(theirs), abs=1e-4)
        assert item.scores["answer_reference"] == pytest.approx(float(ours - theirs), abs=1e-4)
        assert item.to_dict()["reference_answer_logp"] == item.reference_answer_logp
    # through a results store: the same scores and reference answer log-likelihoods
    import copy

    from itd.core.io import Journal

    stored_lm = copy.copy(lm)
    stored_lm.store = Journal(tmp_path / "scores.journal")
    for _ in range(2):  # scored, then read back
        stored = score_texts(stored_lm, items, cfg, reference=ref)
        assert [s.reference_answer_logp for s in stored] == pytest.approx([g.reference_answer_logp for g in got])
        assert all(s.scores == pytest.approx(g.scores) for s, g in zip(stored, got))
    # a plain text has no answer: NaN, and no reference answer log-likelihood
    plain = score_texts(lm, ["Janet has three ducks."], cfg, reference=ref)[0]
    assert math.isnan(plain.scores["answer_reference"]) and plain.reference_answer_logp is None
    # the probe and a reference model go together
    with pytest.raises(ValueError, match="reference model"):
        score_texts(lm, items, ScoreConfig(methods=("answer_reference",)))
    with pytest.raises(ValueError, match="reference model"):
        score_texts(lm, items, ScoreConfig(methods=("answer_logp",)), reference=ref)


@pytest.fixture(scope="module")
def table_file(lm, corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("dcpdd") / "freq.npz"
    build_frequency_table(lm.tokenizer, corpus, source="gsm8k train questions", batch=7).save(path)
    return path


def test_frequency_table_counts_every_token_and_round_trips(lm, corpus, table_file):
    table = FrequencyTable.load(table_file)
    counts = Counter(i for text in corpus for i in lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert table.n_documents == len(corpus) and table.n_tokens == sum(counts.values())
    assert all(table.counts[i] == c for i, c in counts.items())
    freq = table.frequencies()
    assert freq.sum() == pytest.approx(1.0) and freq.min() > 0
    with pytest.raises(InputError, match="no tokens"):
        build_frequency_table(lm.tokenizer, ["", ""])


def test_frequency_table_from_a_corpus_file(lm, shared_data, tmp_path):
    """Any corpus itd reads: here the GSM8K train file, read with its `question` field as the text."""
    path = shared_data / "gsm8k" / "train.jsonl"
    table = corpus_frequency_table(lm.tokenizer, [path], text_field="question")
    texts = [r["question"] for r in _gsm8k(shared_data, "train", 10**6)]
    assert table.n_documents == len(texts)
    expected = build_frequency_table(lm.tokenizer, texts)
    assert (table.counts == expected.counts).all() and table.tokenizer_hash == expected.tokenizer_hash


def test_cli_dcpdd_table_builds_the_table_detect_reads(lm, model_dir, nobos_dir, shared_data, tmp_path, capsys):
    """`itd dcpdd-table`: the model's tokenizer counts a corpus read as `itd scan` reads one (the same counts in a
    process pool), the table and its manifest commit together and say what was read, `itd detect` scores dcpdd
    with it and refuses it for a model of another tokenizer; bad input writes nothing and exits 2."""
    import json

    from itd.cli.commands import main

    train = shared_data / "gsm8k" / "train.jsonl"
    out = tmp_path / "freq.npz"
    args = ["dcpdd-table", "--model", str(model_dir), "--corpus", str(train), "--text-field", "question", "-q"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = FrequencyTable.load(out)
    expected = build_frequency_table(lm.tokenizer, [r["question"] for r in _gsm8k(shared_data, "train", 10**6)])
    assert (table.counts == expected.counts).all() and table.tokenizer_hash == expected.tokenizer_hash
    assert summary["documents"] == table.n_documents == table.read["documents"] == 7473
    assert summary["tokens"] == table.n_tokens and summary["files"] == 1 and summary["skipped_lines"] == 0
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text("utf-8"))
    assert manifest["command"] == "dcpdd-table" and manifest["models"] == [str(model_dir)]
    assert manifest["inputs"][0]["sha256"] and manifest["table"]["tokenizer_hash"] == table.tokenizer_hash
    pooled = tmp_path / "pooled.npz"
    assert main([*args, "--out", str(pooled), "-j", "2"]) == 0
    assert "7,473 documents" in capsys.readouterr().out
    assert (FrequencyTable.load(pooled).counts == table.counts).all()

    bench, ref = tmp_path / "bench.jsonl", tmp_path / "ref.jsonl"
    rows = _gsm8k(shared_data, "test", 60)
    for path, part in ((bench, rows[:20]), (ref, rows[20:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), "utf-8")
    detect = ["detect", str(bench), "--reference-set", str(ref), "--methods", "loss,dcpdd", "--decision", "dcpdd", "--dcpdd-table", str(out),
              "--device", "cpu", "--json", "-q"]
    scores = tmp_path / "scores.jsonl"
    assert main([*detect, "--model", str(model_dir), "--out", str(scores)]) in (0, 1)
    assert "dcpdd" in json.loads(capsys.readouterr().out)["set_tests"]
    manifest = json.loads(scores.with_name(scores.name + ".manifest.json").read_text("utf-8"))
    assert [f["path"] for f in manifest["inputs"]] == [str(bench), str(ref), str(out)]
    assert main([*detect, "--model", str(nobos_dir)]) == 2
    err = capsys.readouterr().err
    assert "another tokenizer" in err and "freq.npz" in err and "Traceback" not in err

    # reading nothing, or a malformed line, writes no table: exit 2, the file (and line) named
    empty, broken = tmp_path / "empty.jsonl", tmp_path / "broken.jsonl"
    empty.write_text("", "utf-8")
    broken.write_text('{"text": "Janet has ducks."}\n{"text": "She sells eggs."}\n{"text": oops\n', "utf-8")
    for corpus, where in ((empty, "read 0 documents"), (broken, "broken.jsonl:3: invalid JSON")):
        target = tmp_path / f"{corpus.stem}.npz"
        assert main(["dcpdd-table", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(target), "-q"]) == 2
        err = capsys.readouterr().err
        assert where in err and corpus.name in err and "Traceback" not in err
        assert not target.exists() and not target.with_name(target.name + ".manifest.json").exists()
    # skipping within the limit counts what was read
    target = tmp_path / "skipped.npz"
    assert main(["dcpdd-table", "--model", str(model_dir), "--corpus", str(broken), "--out", str(target), "-q",
                 "--skip-bad-lines", "--max-bad-lines", "1", "--json"]) == 0
    read = json.loads(capsys.readouterr().out)
    assert read["documents"] == 2 and read["skipped_lines"] == 1 and FrequencyTable.load(target).n_documents == 2


def test_cli_detect_scores_conrecall_with_a_member_prefix_file(model_dir, shared_data, tmp_path, capsys):
    """`--member-prefix FILE` gives Con-ReCall its member prefix (the non-member one comes from the reference set);
    without one, or with an empty file, `itd detect` says what it needs and exits 2."""
    import json

    from itd.cli.commands import main

    rows = _gsm8k(shared_data, "test", 40)
    bench, ref, member = tmp_path / "bench.jsonl", tmp_path / "ref.jsonl", tmp_path / "member.txt"
    for path, part in ((bench, rows[:12]), (ref, rows[12:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part), "utf-8")
    member.write_text("\n\n".join(r["question"] for r in _gsm8k(shared_data, "train", 3)), "utf-8")
    args = ["detect", str(bench), "--model", str(model_dir), "--reference-set", str(ref), "--methods",
            "loss,conrecall", "--decision", "conrecall", "--device", "cpu", "-q"]
    scores = tmp_path / "scores.jsonl"
    assert main([*args, "--member-prefix", str(member), "--out", str(scores), "--json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["set_tests"]["conrecall"]["n_benchmark"] == 12
    records = [json.loads(line) for line in scores.read_text("utf-8").splitlines()]
    assert len(records) == 12 and all(math.isfinite(r["conrecall"]) for r in records)
    assert main(args) == 2
    assert "--member-prefix" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", "utf-8")
    assert main([*args, "--member-prefix", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "holds no text" in err and "empty.txt" in err and "Traceback" not in err
    # an option for a probe that --methods leaves out would do nothing: a usage error
    assert main(["detect", str(bench), "--model", str(model_dir), "--reference-set", str(ref), "--methods", "loss",
                 "--decision", "loss", "--member-prefix", str(member), "-q"]) == 2
    assert "--member-prefix is for the conrecall probe" in capsys.readouterr().err


def test_a_decision_probe_that_read_nothing_decides_nothing(lm, model_dir, shared_data, tmp_path, capsys):
    """Items without an answer give the answer probes nothing to read, and within gold letters so do items whose
    letters the reference set lacks: with such a probe as the decision the verdict is undecided (exit 2, and the
    reason), never "no contamination detected" nor an internal error; beside a probe that reads them, the
    combination decides by that probe and says which one read nothing. Nor does a reference set too small for
    any scores to be found, nor a reference model that is the evaluated model."""
    import json

    from itd.cli.commands import main
    from itd.core import load_benchmark
    from itd.probes.detection import DetectConfig, detect

    rows = _gsm8k(shared_data, "test", 60)
    questions = [Sample(f"q{i}", "generic", r["question"]) for i, r in enumerate(rows)]
    items, reference = questions[:20], questions[20:]
    report = detect(items, lm, reference, DetectConfig(methods=("answer_acc",), decision="answer_acc"))
    assert report.untested == ["answer_acc"] and report.verdict == "undecided" and report.contaminated is None
    assert "scored no benchmark item that a reference item could be compared with" in report.undecided_reason
    threshold = detect(items, lm, None, DetectConfig(methods=("answer_logp",), decision="answer_logp", threshold=-3.0))
    no_mcq = detect(items, lm, None, DetectConfig(methods=("loss",), decision="loss", permutation_test=True))
    assert no_mcq.verdict == "undecided" and "it needs multiple-choice items" in no_mcq.undecided_reason
    assert threshold.verdict == "undecided" and "scored no benchmark item (" in threshold.undecided_reason
    both = detect(items, lm, reference, DetectConfig(methods=("loss", "answer_acc"), decision="combined"))
    assert both.untested == ["answer_acc"] and both.decided and both.combined_set["probes"] == ["loss"]
    # MCQ items of gold letters B-D against references that are all A: nothing to compare within letters
    mcq = [s for f in sorted((shared_data / "mmlu" / "test").glob("*.csv"))[:4] for s in load_benchmark(f)]
    letters_bcd, letter_a = [s for s in mcq if s.answer != 0][:20], [s for s in mcq if s.answer == 0][:30]
    by_letter = detect(letters_bcd, lm, letter_a, DetectConfig(methods=("loss", "answer_logp"), decision="answer_logp"))
    assert by_letter.untested == ["answer_logp"] and by_letter.verdict == "undecided"
    assert "loss" in by_letter.set_tests and not any("answer_logp" in it.p_values for it in by_letter.items)
    # three reference items: no item's p-value can pass the FDR level and no top-k test can reach alpha, so a
    # "no contamination detected" would not depend on the scores at all
    few = detect(items[:1], lm, reference[:3], DetectConfig(methods=("loss",), decision="loss"))
    assert few.untested == [] and few.verdict == "undecided" and "give more reference items" in few.undecided_reason
    assert detect(items, lm, reference[:12], DetectConfig(methods=("loss",), decision="loss")).decided
    # a reference model with the evaluated model's weights (here a copy of its directory) would compare the model
    # with itself: refused before anything is scored
    import shutil

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    with pytest.raises(InputError, match="has the evaluated model's weights"):
        detect(items, lm, reference, DetectConfig(methods=("loss", "reference"), decision="combined"),
               reference_model=load_model(copy, device="cpu"))

    bench, ref = tmp_path / "bench.jsonl", tmp_path / "ref.jsonl"
    for path, part in ((bench, rows[:20]), (ref, rows[20:])):
        path.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in part), "utf-8")
    args = ["detect", str(bench), "--model", str(model_dir), "--reference-set", str(ref), "--device", "cpu", "-q"]
    assert main([*args, "--methods", "answer_acc", "--decision", "answer_acc", "--json"]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["verdict"] == "undecided" and summary["untested"] == ["answer_acc"]
    assert "undecided: the decision probe (answer_acc) scored no" in " ".join(captured.err.split())
    assert main([*args, "--methods", "loss,answer_acc", "--decision", "combined"]) in (0, 1)
    assert "left out of every test and verdict: answer_acc" in capsys.readouterr().out



def test_a_reference_set_of_another_kind_is_refused(lm, model_dir, shared_data, tmp_path, capsys):
    """GSM8K questions against MMLU items (or the reverse) differ in form: each would be told apart from the other
    and "contaminated" would be found in every set. Refused before anything is scored, naming the reference file."""
    import json

    from itd.cli.commands import main
    from itd.core import load_benchmark
    from itd.probes.detection import detect

    mmlu_file = sorted((shared_data / "mmlu" / "test").glob("*.csv"))[0]
    gsm8k_file = tmp_path / "gsm8k.jsonl"
    gsm8k_file.write_text("".join(json.dumps(r) + "\n" for r in _gsm8k(shared_data, "test", 30)), "utf-8")
    gsm8k, mmlu = load_benchmark(gsm8k_file), load_benchmark(mmlu_file)
    for items, reference in ((gsm8k, mmlu), (mmlu, gsm8k), (gsm8k + mmlu[:5], gsm8k)):
        with pytest.raises(InputError, match="a reference set must hold clean items of the benchmark's kind"):
            detect(items, lm, reference)
    assert detect(gsm8k[:10], lm, gsm8k[10:]).decided
    args = ["detect", str(gsm8k_file), "--model", str(model_dir), "--reference-set", str(mmlu_file), "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {mmlu_file}: the reference set's items are multiple-choice and the benchmark's "
                          "free-form") and "Traceback" not in err


def test_benchmark_items_in_the_reference_set_are_left_out(lm, model_dir, shared_data, tmp_path, capsys):
    """A benchmark item in the reference set is compared with itself and hides its own leak: such items (the same
    scored text, whitespace and case aside) leave the reference, the report counts them, and a reference made of
    nothing else (the benchmark given as its own reference, which said "no contamination") is refused."""
    import json

    from itd.cli.commands import main
    from itd.core import load_benchmark
    from itd.probes.detection import DetectConfig, detect

    bench, ref = tmp_path / "bench.jsonl", tmp_path / "ref.jsonl"
    rows = _gsm8k(shared_data, "test", 60)
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]), "utf-8")
    spaced = [{**r, "question": "  " + r["question"].upper().replace(" ", "  ")} for r in rows[:5]]
    ref.write_text("".join(json.dumps(r) + "\n" for r in rows[20:] + spaced), "utf-8")
    items, reference = load_benchmark(bench), load_benchmark(ref)
    report = detect(items, lm, reference, DetectConfig(methods=("loss",), decision="loss"))
    assert report.reference_overlap == 5 and report.reference_size == 40
    assert report.summary()["reference_overlap"] == 5
    assert detect(items, lm, reference[:40], DetectConfig(methods=("loss",), decision="loss")).reference_overlap == 0
    with pytest.raises(InputError, match="every reference item is also a benchmark item"):
        detect(items, lm, items)
    args = ["detect", str(bench), "--model", str(model_dir), "--device", "cpu", "-q", "--methods", "loss",
            "--decision", "loss", "--reference-set"]
    assert main([*args, str(bench)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bench}: every reference item is also a benchmark item") and "Traceback" not in err
    assert main([*args, str(ref)]) in (0, 1)
    assert "5 reference items were benchmark items too and were left out" in " ".join(capsys.readouterr().out.split())


def _reference_dcpdd(lm, text: str, table: FrequencyTable, a: float) -> float:
    ids, rows = _per_position(lm, text)
    total = sum(table.counts)
    seen, alphas = set(), []
    for t in range(1, len(ids)):
        if ids[t] in seen:
            continue
        seen.add(ids[t])
        f = (table.counts[ids[t]] + 1) / (total + len(table.counts))
        alphas.append(min(math.exp(rows[t - 1][0]) * math.log(1 / f), a))
    return float(np.mean(alphas))


def test_dcpdd_matches_the_published_formula(lm, texts, table_file):
    table = FrequencyTable.load(table_file)
    for a in (0.01, 10.0):
        cfg = ScoreConfig(methods=("dcpdd",), batch_size=5, options={"dcpdd": {"table": table_file, "max_alpha": a}})
        for text, item in zip(texts, score_texts(lm, texts, cfg)):
            assert item.scores["dcpdd"] == pytest.approx(_reference_dcpdd(lm, text, table, a), rel=1e-4, abs=1e-7)
    assert math.isnan(score_texts(lm, [""], cfg)[0].scores["dcpdd"])


def test_dcpdd_refuses_a_table_of_another_tokenizer(lm, nobos_dir, corpus, table_file, tmp_path):
    other = load_model(nobos_dir, device="cpu")
    with pytest.raises(InputError, match="another tokenizer") as err:
        score_texts(other, ["Janet"], ScoreConfig(methods=("dcpdd",), options={"dcpdd": {"table": table_file}}))
    assert str(table_file) in str(err.value)
    with pytest.raises(InputError, match="needs a token-frequency table.*--dcpdd-table.*itd dcpdd-table"):
        score_texts(lm, ["Janet"], ScoreConfig(methods=("dcpdd",)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a table")
    with pytest.raises(InputError, match="bad.npz"):
        score_texts(lm, ["Janet"], ScoreConfig(methods=("dcpdd",), options={"dcpdd": DCPDDConfig(str(bad))}))


def _conditional_ll(lm, prefix: str, text: str) -> float:
    """Mean log-likelihood of `text`'s tokens behind `prefix` (labels=, prefix positions masked), the way the
    ReCaLL reference code computes it."""
    prefix_ids = lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    text_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [lm.prefix_token_id] + prefix_ids + text_ids
    labels = [-100] * (1 + len(prefix_ids)) + text_ids
    with torch.no_grad():
        return -lm.model(torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()


def test_recall_and_conrecall_match_the_published_formulas(lm, texts, shared_data):
    nonmember = "\n\n".join(r["question"][:20] for r in _gsm8k(shared_data, "train", 2)) + "\n\n"
    member = "A robe takes 2 bolts.\n\n"
    short = [t for t in texts if len(_ids(lm, t)) + len(_ids(lm, nonmember)) <= 64]
    assert len(short) >= 5
    cfg = ScoreConfig(methods=("loss", "recall", "conrecall"), batch_size=4, options={
        "recall": ReCaLLConfig(nonmember),
        "conrecall": ConReCaLLConfig(nonmember_prefix=nonmember, member_prefix=member, gamma=0.5)})
    for text, item in zip(short, score_texts(lm, short, cfg)):
        ll = -item.nll
        ll_nm, ll_m = _conditional_ll(lm, nonmember, text), _conditional_ll(lm, member, text)
        assert item.scores["recall"] == pytest.approx(ll_nm / ll, abs=1e-4)
        assert item.scores["conrecall"] == pytest.approx((ll_nm - 0.5 * ll_m) / ll, abs=1e-4)
    # a prefix too long for the context keeps its last tokens: the text is still scored in one window
    long = score_texts(lm, short[:2], ScoreConfig(methods=("recall",), options={"recall": {"prefix": nonmember * 20}}))
    assert all(math.isfinite(i.scores["recall"]) for i in long)
    with pytest.raises(InputError, match="non-member prefix"):
        score_texts(lm, ["Janet"], ScoreConfig(methods=("recall",)))


def test_new_probes_batched_equal_unbatched(lm, texts, table_file):
    methods = ("gapk", "answer_acc", "dcpdd", "minkpp", "recall")
    options = {"dcpdd": {"table": table_file}, "recall": {"prefix": "Natalia sold clips.\n\n"}}
    items = [AnsweredText(t, len(t) // 2) for t in texts]
    batched = score_texts(lm, items, ScoreConfig(methods=methods, batch_size=5, options=options))
    for text, b in zip(items, batched):
        single = score_texts(lm, [text], ScoreConfig(methods=methods, batch_size=1, options=options))[0]
        for m in methods:
            assert b.scores[m] == pytest.approx(single.scores[m], abs=1e-4, nan_ok=True), m


def test_probe_registry_and_options():
    assert {"gapk", "answer_acc", "dcpdd", "recall", "conrecall", "minkpp"} <= set(PROBES.names())
    with pytest.raises(ValueError, match="Did you mean 'gapk'"):
        ScoreConfig(methods=("gapkk",))
    with pytest.raises(ValueError, match="Did you mean 'gapk'"):
        ScoreConfig(methods=("gapk",), options={"gap_k": {"k": 0.1}})
    with pytest.raises(ValueError, match="unknown gapk parameter"):
        ScoreConfig(methods=("gapk",), options={"gapk": {"kk": 0.1}})
    with pytest.raises(ValueError, match="no parameters"):
        ScoreConfig(methods=("loss",), options={"loss": {}})
    with pytest.raises(ValueError, match="window"):
        GapKConfig(window=0)
    cfg = ScoreConfig(methods=("gapk", "loss"), options={"gapk": {"k": 0.3}})
    assert cfg.options == {"gapk": GapKConfig(k=0.3, window=3)}
    assert ScoreConfig(methods=("loss",)).options == {}


def test_stored_run_keeps_the_newer_probes_and_the_answer_boundary(lm, texts, tmp_path):
    """Through a results store: the same scores, and a changed answer boundary is a new piece of work."""
    import copy

    from itd.core.io import Journal

    cfg = ScoreConfig(methods=("gapk", "answer_acc"), batch_size=4)
    items = [AnsweredText(t, len(t) // 2) for t in texts]
    direct = score_texts(lm, items, cfg)
    stored_lm = copy.copy(lm)
    stored_lm.store = Journal(tmp_path / "scores.journal")
    first = score_texts(stored_lm, items, cfg)
    again = score_texts(stored_lm, items, cfg)
    for d, f, a in zip(direct, first, again):
        assert d.scores == pytest.approx(f.scores, nan_ok=True) and f.scores == pytest.approx(a.scores, nan_ok=True)
        assert f.answer_start == d.answer_start and np.array_equal(f.token_gap, d.token_gap)
    moved = [AnsweredText(t, 0) for t in texts]
    assert [s.answer_start for s in score_texts(stored_lm, moved, cfg)] == [0] * len(texts)


def test_detect_config_of_the_combined_verdict():
    from itd.probes.detection import DetectConfig

    assert DetectConfig(decision="combined").combine == DetectConfig().methods
    assert DetectConfig(methods=("loss", "gapk"), decision="combined", combine=("gapk",)).combine == ("gapk",)
    with pytest.raises(InputError, match="combined probes"):
        DetectConfig(methods=("loss",), decision="loss", combine=("gapk",))
    with pytest.raises(InputError, match="threshold"):
        DetectConfig(decision="combined", threshold=1.0)
    with pytest.raises(InputError, match="recall_shots"):
        DetectConfig(recall_shots=0)
    # a mistyped probe is reported as such (with a suggestion), not as a decision missing from the methods
    with pytest.raises(InputError, match="unknown probe method 'minkp'. Did you mean 'minkpp'"):
        DetectConfig(methods=("minkp",))
    # the files the probes read go into a manifest's input hashes: DC-PDD's table, when dcpdd is scored
    with_table = {"dcpdd": {"table": "freq.npz"}}
    assert DetectConfig(methods=("loss", "dcpdd"), decision="loss", options=with_table).input_files() == ["freq.npz"]
    assert DetectConfig(methods=("loss",), decision="loss", options=with_table).input_files() == []


def _item(i: int, question: str) -> Sample:
    return Sample(id=f"c:{i}", benchmark="gsm8k", question=question, answer=str(i), solution=f"It is {i}.\n#### {i}")


def test_codec_delta_is_the_in_context_minus_the_alone_log_likelihood(lm):
    """CoDeC's per-item delta against the formula: the mean log p of the item's tokens behind the other item,
    minus alone, each position scored directly."""
    from itd.probes.codec import SEPARATOR, context_deltas

    samples = [_item(1, "Tom has three red apples."), _item(2, "A robe takes two bolts of blue fiber.")]
    deltas = context_deltas(lm, samples, shots=1, rendering="question")
    for i, s in enumerate(samples):
        text, other = s.question, samples[1 - i].question
        _, rows = _per_position(lm, text)
        alone = float(np.mean([r[0] for r in rows]))
        joined = other + SEPARATOR + text
        ids, rows = _per_position(lm, joined)
        start = len(other) + len(SEPARATOR)
        first = next(j for j in range(1, len(ids)) if len(lm.tokenizer.decode(ids[1 : j + 1])) > start)
        behind = float(np.mean([rows[t - 1][0] for t in range(first, len(ids))]))
        assert deltas[i] == pytest.approx(behind - alone, abs=1e-4)


def test_codec_test_scores_both_sets_and_compares_them(lm, shared_data):
    from itd.core import load_benchmark
    from itd.probes.codec import codec_test

    items = [s for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:40]]
    short = [_item(i, lm.tokenizer.decode(lm.tokenizer(s.question)["input_ids"][:12])) for i, s in enumerate(items)]
    result = codec_test(lm, short[:20], short[20:], shots=2, rendering="question", seed=3)
    assert 0 <= result.score <= 1 and 0 <= result.reference_score <= 1 and 0 < result.p_value <= 1
    assert result.score == pytest.approx(float(np.mean(np.array(result.deltas) < 0)))
    low, high = result.score_ci
    assert low <= result.score <= high and result.n_reference == 20 and len(result.deltas) == 20
    again = codec_test(lm, short[:20], short[20:], shots=2, rendering="question", seed=3)
    assert again == result  # seeded contexts
    with pytest.raises(ValueError, match="at least 2"):
        codec_test(lm, short[:1])
    # in detection: reported beside the set-level tests when asked for, never deciding
    from itd.probes.detection import DetectConfig, detect

    config = DetectConfig(methods=("loss",), decision="loss", rendering="question", codec=True, codec_shots=2, seed=3)
    report = detect(short[:20], lm, short[20:], config)
    assert report.summary()["codec"] == result.to_dict()
    plain = detect(short[:20], lm, short[20:], DetectConfig(methods=("loss",), decision="loss", rendering="question"))
    assert "codec" not in plain.summary() and plain.verdict == report.verdict


def test_answer_probes_are_calibrated_among_items_with_the_same_gold_letter(lm, shared_data, capsys):
    """A model's preference among the letters is no evidence of a leak: the answer probes' p-values of MCQ items
    come from the reference items with the same gold letter, and their set tests compare within letters; the
    other probes' from the whole reference set. Ground-truth figures are given on both rankings."""
    from itd.core import load_benchmark
    from itd.cli.terminal import print_detection
    from itd.core.stats import auroc, conformal_pvalues, set_level_test, sparse_set_test, tpr_at_fpr
    from itd.probes.detection import DetectConfig, detect

    mmlu = load_benchmark(shared_data / "mmlu" / "test" / "high_school_biology_test.csv")
    short = [dataclasses.replace(s, question=lm.tokenizer.decode(lm.tokenizer(s.question)["input_ids"][:10]),
                                 choices=tuple(c[:20] for c in s.choices)) for s in mmlu[:260]]
    bench, reference = short[:40], short[40:]
    config = DetectConfig(methods=("loss", "answer_logp"), decision="answer_logp", rendering="options+answer")
    truth = {"leaked": [s.id for s in bench[:20]], "unseen": [s.id for s in bench[20:]]}
    report = detect(bench, lm, reference, config, truth=truth)
    ref_scores = {m: np.array(report.reference_scores[m]) for m in ("loss", "answer_logp")}
    letters = np.array([s.answer for s in reference])
    assert all(np.sum(letters == k) >= 20 for k in range(4))
    for it in report.items:
        own = ref_scores["answer_logp"][letters == it.sample.answer]
        assert it.p_values["answer_logp"] == conformal_pvalues([it.scores["answer_logp"]], own)[0]
        assert it.p_values["loss"] == conformal_pvalues([it.scores["loss"]], ref_scores["loss"])[0]
    scores = {m: np.array([it.scores[m] for it in report.items]) for m in ("loss", "answer_logp")}
    by_letter = {"strata": [s.answer for s in bench], "reference_strata": letters.tolist()}
    assert report.set_tests["answer_logp"] == set_level_test(scores["answer_logp"], ref_scores["answer_logp"],
                                                             **by_letter)
    assert report.sparse_tests["answer_logp"] == sparse_set_test(scores["answer_logp"], ref_scores["answer_logp"],
                                                                 alpha=config.alpha, **by_letter)
    assert report.set_tests["loss"] == set_level_test(scores["loss"], ref_scores["loss"])
    # the ground-truth figures of an answer probe also rank items as its p-values do ("within letter")
    calibrated = -np.log10([it.p_values["answer_logp"] for it in report.items])
    within = report.truth["within_letter"]
    assert set(within) == {"answer_logp"}
    assert within["answer_logp"]["auroc"] == round(auroc(calibrated[:20], calibrated[20:]), 4)
    assert within["answer_logp"]["tpr_at_5pct_fpr"] == round(tpr_at_fpr(calibrated[:20], calibrated[20:], 0.05), 4)
    assert report.truth["methods"]["answer_logp"]["auroc"] == round(
        auroc(scores["answer_logp"][:20], scores["answer_logp"][20:]), 4)
    print_detection(report)
    row = next(line for line in capsys.readouterr().out.splitlines() if "answer_logp" in line)
    assert f"({within['answer_logp']['auroc']:.3f} within letter)" in row
    pooled = detect(bench, lm, reference, dataclasses.replace(config, stratify=False), truth=truth)
    assert "within_letter" not in pooled.truth
    assert [it.p_values["answer_logp"] for it in pooled.items] == [
        conformal_pvalues([it.scores["answer_logp"]], ref_scores["answer_logp"])[0] for it in pooled.items]
    assert pooled.set_tests["answer_logp"] == set_level_test(scores["answer_logp"], ref_scores["answer_logp"])
