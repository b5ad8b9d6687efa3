"""Corpora as they come: fine-tuning and chat record layouts, read with roles, from JSONL, parquet and `datasets`.

Every layout is built from real GSM8K and MMLU items: a leaked item's question in the input side (instruction,
prompt, user turn) with its answer in the output side (output, completion, assistant turn) is
`input_and_label_contaminated`, exactly as when both are in one text; items not in the corpus stay clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itd.core import load_benchmark
from itd.core.errors import InputError
from itd.corpus.layouts import LAYOUTS, fields_layout
from itd.corpus.readers import ShardReader, iter_documents, plan_shards
from itd.corpus.scan import ScanConfig, scan

LETTERS = "ABCD"
NGRAM = ScanConfig(detectors=("ngram",))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itd.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, timeout=300)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gsm(shared_data):
    """(40 GSM8K test samples, their raw records, 40 GSM8K train records as unrelated filler)."""
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()[:40]
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:40]
    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()[:40]]
    return samples, [json.loads(x) for x in lines], train


@pytest.fixture(scope="module")
def mmlu(shared_data):
    """40 MMLU test items of one subject (real MCQ with a distinctive stem)."""
    return load_benchmark(shared_data / "mmlu" / "test" / "high_school_geography_test.csv")[:40]


# every SFT layout: (name, record of (prompt, response))
SFT = {
    "alpaca": lambda q, a: {"instruction": "Solve the problem.", "input": q, "output": a},
    "alpaca-no-input": lambda q, a: {"instruction": q, "input": "", "output": a},
    "prompt-completion": lambda q, a: {"prompt": q, "completion": a},
    "prompt-response": lambda q, a: {"prompt": q, "response": a},
    "messages": lambda q, a: {"messages": [{"role": "system", "content": "You are a tutor."},
                                           {"role": "user", "content": q}, {"role": "assistant", "content": a}]},
    "messages-parts": lambda q, a: {"messages": [{"role": "user", "content": [{"type": "text", "text": q}]},
                                                 {"role": "assistant", "content": [{"type": "text", "text": a}]}]},
    "sharegpt": lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
    "gsm8k": lambda q, a: {"question": q, "answer": a},
}
LAYOUT_OF = {"alpaca-no-input": "alpaca", "messages-parts": "messages"}


@pytest.mark.parametrize("kind", list(SFT))
def test_gsm8k_leaks_split_across_roles_are_input_and_label(gsm, tmp_path, kind):
    samples, raw, train = gsm
    make = SFT[kind]
    leaked = {0, 7, 19, 33}
    records = [make(r["question"], r["answer"]) for r in train[:20]]
    for i in sorted(leaked):
        records.insert(3 * i % len(records), make(raw[i]["question"], raw[i]["answer"]))
    records.append(make(raw[5]["question"], "I am not sure how to solve this one."))  # question only
    report = scan(samples, [write_jsonl(tmp_path / "sft.jsonl", records)], NGRAM)
    labels = {r.sample.id: r.label for r in report.results}
    for i, s in enumerate(samples):
        want = ("input_and_label_contaminated" if i in leaked else "input_contaminated" if i == 5 else "clean")
        assert labels[s.id] == want, (s.id, kind)
    layout = LAYOUT_OF.get(kind, kind)
    assert list(report.stats["layouts"]) == [layout]
    assert report.stats["layouts"][layout]["documents"] == len(records)
    # evidence offsets point into the joined document
    doc_text = {f"{tmp_path / 'sft.jsonl'}:{n}": d.text for n, d in enumerate(iter_documents([tmp_path / "sft.jsonl"]), 1)}
    for r in report.contaminated:
        for e in r.evidence:
            assert doc_text[e.doc][e.start:e.end] == e.text


def test_field_counts_per_role(gsm, tmp_path):
    _, raw, train = gsm
    records = [SFT["messages"](r["question"], r["answer"]) for r in train[:10]]
    records[3]["messages"].append({"role": "user", "content": "Thanks! And another one?"})
    records[4]["messages"][0]["content"] = ""  # an empty system prompt gives no text
    report = scan(gsm[0], [write_jsonl(tmp_path / "chat.jsonl", records)], NGRAM)
    assert report.stats["layouts"]["messages"]["fields"] == {"messages[system]": 9, "messages[user]": 10, "messages[assistant]": 10}
    (entry,) = report.stats["file_layouts"]
    assert entry["layout"] == "messages" and entry["documents"] == 10 and entry["file"].endswith("chat.jsonl")


MCQ_RESPONSES = {
    "letter": lambda s: LETTERS[s.answer],
    "letter-and-text": lambda s: f"({LETTERS[s.answer]}) {s.choices[s.answer]}",
    "choice-text": lambda s: s.choices[s.answer],
    "answer-is": lambda s: f"The answer is {LETTERS[s.answer]}.",
}


@pytest.mark.parametrize("response", list(MCQ_RESPONSES))
def test_mmlu_question_in_user_turn_key_in_assistant_turn(mmlu, tmp_path, response):
    say = MCQ_RESPONSES[response]
    records = []
    for i in (2, 11, 25):  # key in the assistant turn
        s = mmlu[i]
        records.append(SFT["messages"](s.question + "\n" + "\n".join(f"{L}. {c}" for L, c in zip(LETTERS, s.choices)), say(s)))
    wrong = mmlu[30]  # the item with a wrong key: the input only
    records.append(SFT["sharegpt"](wrong.prompt_text(), LETTERS[(wrong.answer + 1) % 4]))
    report = scan(mmlu, [write_jsonl(tmp_path / "mcq.jsonl", records)], NGRAM)
    labels = {r.sample.id: r.label for r in report.results}
    assert [labels[mmlu[i].id] for i in (2, 11, 25)] == ["input_and_label_contaminated"] * 3
    assert labels[wrong.id] == "input_contaminated"
    assert sum(label != "clean" for label in labels.values()) == 4


def test_mmlu_shaped_corpus_records(mmlu, tmp_path):
    """A benchmark-shaped MMLU record (question, choices, 0-based answer) used as training data."""
    records = [{"question": s.question, "subject": "geo", "choices": list(s.choices), "answer": s.answer} for s in mmlu[:5]]
    report = scan(mmlu, [write_jsonl(tmp_path / "mmlu.jsonl", records)], NGRAM)
    assert list(report.stats["layouts"]) == ["mmlu"]
    assert report.stats["layouts"]["mmlu"]["fields"] == {"question": 5, "choices": 5, "answer": 5}
    assert [r.label for r in report.results[:5]] == ["input_and_label_contaminated"] * 5
    assert all(r.label == "clean" for r in report.results[5:])


def test_text_field_paths_and_several_fields(gsm, tmp_path):
    samples, raw, train = gsm
    records = [SFT["messages"](r["question"], r["answer"]) for r in train[:5]] + [SFT["messages"](raw[2]["question"], raw[2]["answer"])]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    user_only = scan(samples, [path], ScanConfig(detectors=("ngram",), text_field="messages[1].content"))
    assert user_only.by_id()[samples[2].id].label == "input_contaminated"
    both = scan(samples, [path], ScanConfig(detectors=("ngram",), text_field="messages[*].content"))
    assert both.by_id()[samples[2].id].label == "input_and_label_contaminated"
    assert both.stats["layouts"]["fields"]["fields"] == {"messages[system]": 6, "messages[user]": 6, "messages[assistant]": 6}
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [SFT["alpaca"](raw[4]["question"], raw[4]["answer"])])
    picked = scan(samples, [alpaca], ScanConfig(detectors=("ngram",), text_field="input, output"))
    assert picked.by_id()[samples[4].id].label == "input_and_label_contaminated"
    assert picked.stats["layouts"]["fields"]["fields"] == {"input": 1, "output": 1}
    with pytest.raises(InputError, match="field path"):
        ScanConfig(text_field="messages[x.content")
    assert [s.path for s in fields_layout("a, b.c").fields] == ["a", "b.c"]


def test_layout_forced_and_the_errors(gsm, tmp_path):
    samples, raw, _ = gsm
    rec = {"text": "a rendered chat without the question", **SFT["messages"](raw[1]["question"], raw[1]["answer"])}
    path = write_jsonl(tmp_path / "both.jsonl", [rec])
    assert scan(samples, [path], NGRAM).contaminated == []  # detected: `text` comes first
    forced = scan(samples, [path], ScanConfig(detectors=("ngram",), layout="messages"))
    assert [r.sample.id for r in forced.contaminated] == [samples[1].id]
    with pytest.raises(InputError, match="unknown corpus layout 'chatml'; known: auto, text"):
        ScanConfig(layout="chatml")
    with pytest.raises(InputError, match="give one"):
        ScanConfig(layout="alpaca", text_field="body")
    # no record fits any layout: an error naming the file and the layouts tried
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"body": raw[0]["question"], "solution": raw[0]["answer"]}] * 3)
    with pytest.raises(InputError, match="fits a known corpus layout") as info:
        scan(samples, [odd], NGRAM)
    assert info.value.path == str(odd) and all(name in info.value.message for name in LAYOUTS)
    with pytest.raises(InputError, match="set --text-field"):
        scan(samples, [odd], ScanConfig(detectors=("ngram",), skip_bad_lines=True, max_bad_lines=10))
    # forced alpaca on it: the layout's fields are missing from every record
    with pytest.raises(InputError, match=r"no record read so far has every text field of the alpaca layout"):
        scan(samples, [odd], ScanConfig(detectors=("ngram",), layout="alpaca"))
    # a record of a detected layout without its texts is a bad line
    bad = write_jsonl(tmp_path / "bad.jsonl", [SFT["alpaca"](r["question"], r["answer"]) for r in raw[:3]] + [{"note": "x"}])
    with pytest.raises(InputError, match=r"bad.jsonl:4: every text field of the alpaca layout \(instruction, input, output\) is missing"):
        scan(samples, [bad], NGRAM)
    skipped = scan(samples, [bad], ScanConfig(detectors=("ngram",), skip_bad_lines=True, max_bad_lines=1))
    assert skipped.stats["skipped_lines"] == 1 and skipped.stats["documents"] == 3


def test_parquet_with_a_messages_column(gsm, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    samples, raw, train = gsm
    rows = [SFT["messages"](r["question"], r["answer"]) for r in train[:10] + raw[8:10]]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = scan(samples, [path], NGRAM)
    assert [r.sample.id for r in report.contaminated] == [samples[8].id, samples[9].id]
    assert {r.label for r in report.contaminated} == {"input_and_label_contaminated"}
    assert report.stats["layouts"]["messages"]["fields"]["messages[assistant]"] == 12
    ev = report.contaminated[0].evidence[0]
    assert ev.doc == f"{path}:11"
    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist([SFT["alpaca"](raw[3]["question"], raw[3]["answer"])]), alpaca)
    assert scan(samples, [alpaca], NGRAM).by_id()[samples[3].id].label == "input_and_label_contaminated"
    odd = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"body": ["x"]}), odd)
    with pytest.raises(InputError, match="fits no known corpus layout"):
        scan(samples, [odd], NGRAM)


def test_datasets_corpora_saved_to_disk_and_loaded_from_local_json(gsm, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples, raw, train = gsm
    rows = [SFT["sharegpt"](r["question"], r["answer"]) for r in train[:10] + [raw[12]]]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    report = scan(samples, [saved], NGRAM)
    assert [(r.sample.id, r.label) for r in report.contaminated] == [(samples[12].id, "input_and_label_contaminated")]
    assert report.contaminated[0].evidence[0].doc == f"{saved}:11"
    assert report.stats["layouts"]["sharegpt"]["documents"] == 11
    local = tmp_path / "local"
    local.mkdir()
    write_jsonl(local / "train.jsonl", [SFT["alpaca"](r["question"], r["answer"]) for r in train[:5] + [raw[13]]])
    loaded = scan(samples, [f"hf://{local}:train"], NGRAM)
    assert [r.sample.id for r in loaded.contaminated] == [samples[13].id]
    assert loaded.contaminated[0].evidence[0].doc == f"hf://{local}:train:6"
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(splits))
    assert scan(samples, [f"hf://{splits}:train"], NGRAM).contaminated[0].sample.id == samples[12].id
    with pytest.raises(InputError, match="no split 'test'; splits: train"):
        scan(samples, [f"hf://{splits}:test"], NGRAM)


def test_shards_of_one_file_read_the_same_layout(gsm, tmp_path):
    """A large file split into byte ranges: every shard detects the file's layout; ids do not change."""
    _, raw, train = gsm
    path = write_jsonl(tmp_path / "big.jsonl", [SFT["prompt-completion"](r["question"], r["answer"] * 20) for r in train * 4])
    whole = [(d.id, d.text) for d in iter_documents([path])]
    shards = plan_shards([path], 1 << 16)
    assert len(shards) > 2
    readers = [ShardReader(s) for s in shards]
    assert [(d.id, d.text) for r in readers for d in r] == whole
    assert {r.layout_used for r in readers} == {"prompt-completion"}


def test_cli_scan_says_which_layout_was_read(gsm, shared_data, tmp_path):
    samples, raw, train = gsm
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "a.jsonl", [SFT["alpaca"](r["question"], r["answer"]) for r in train[:6] + [raw[1]]])
    write_jsonl(corpus / "b.jsonl", [SFT["messages"](r["question"], r["answer"]) for r in train[6:9]])
    res = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram", "-q")
    assert res.returncode == 1, res.stderr
    assert "layout alpaca: 1 file, 7 documents (records with text per field: instruction 7, input 7, output 7)" in res.stdout
    assert "layout messages: 1 file, 3 documents" in res.stdout
    res = run_cli("scan", str(bench), "--corpus", str(corpus / "b.jsonl"), "--layout", "alpaca", "-q", "--detector", "ngram")
    assert res.returncode == 2 and "alpaca layout" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("scan", str(bench), "--corpus", str(corpus / "b.jsonl"), "--text-field", "messages[*].content", "-q",
                  "--detector", "ngram", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["stats"]["layouts"]["fields"]["documents"] == 3


# ---- --write-matches ----------------------------------------------------------------------------------------
def test_write_matches_lists_every_match_uncapped_in_corpus_order(gsm, tmp_path):
    samples, raw, train = gsm
    # item 2 copied into 8 documents (more than the report's 5 pieces of evidence), item 6 once; filler around
    records = [SFT["alpaca"](r["question"], r["answer"]) for r in train[:12]]
    for at in range(1, 17, 2):
        records.insert(at, SFT["messages"](raw[2]["question"], raw[2]["answer"]))
    records.append({"prompt": raw[6]["question"], "completion": raw[6]["answer"]})
    corpus = write_jsonl(tmp_path / "mixed.jsonl", records)
    out = tmp_path / "out" / "matches.jsonl"
    config = ScanConfig(detectors=("ngram", "minhash"))
    report = scan(samples, [corpus], config, matches_out=out)
    capped = report.by_id()[samples[2].id].evidence
    assert [e.detector for e in capped].count("ngram") == 5  # the report keeps 5 per detector
    from itd.corpus.matches import read_matches

    matches = read_matches(out)
    assert report.stats["matches_written"] == len(matches)
    lines = {n for n, r in enumerate(records, 1) if r.get("messages")}
    for det in ("ngram", "minhash"):
        assert {m["line"] for m in matches if m["item"] == samples[2].id and m["detector"] == det} == lines
    assert {m["item"] for m in matches} == {samples[2].id, samples[6].id}
    docs = {n: d.text for n, d in enumerate(iter_documents([corpus]), 1)}
    for m in matches:
        assert m["file"] == str(corpus) and m["doc"] == f"{corpus}:{m['line']}"
        assert docs[m["line"]][m["start"]:m["end"]] == m["text"] and m["score"] > 0
        assert m["label"] == "input_and_label_contaminated"
    assert [m["line"] for m in matches] == sorted(m["line"] for m in matches)
    assert not [p for p in out.parent.iterdir() if p.name != "matches.jsonl"]  # no spool left behind
    # the same file however the corpus is split into shards and read by workers
    split = scan(samples, [corpus], ScanConfig(detectors=("ngram", "minhash"), workers=2, shard_bytes=1 << 16,
                                                 batch_chars=4096), matches_out=tmp_path / "split.jsonl")
    assert split.stats["shards"] >= 1 and read_matches(tmp_path / "split.jsonl") == matches


def test_cli_write_matches_with_manifest(gsm, tmp_path):
    samples, raw, train = gsm
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    corpus = write_jsonl(tmp_path / "c.jsonl", [SFT["sharegpt"](r["question"], r["answer"]) for r in train[:5] + raw[:2]])
    out = tmp_path / "m.jsonl"
    res = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram", "-q", "--write-matches", str(out))
    assert res.returncode == 1, res.stderr
    manifest = json.loads((tmp_path / "m.jsonl.manifest.json").read_text())
    matches = [json.loads(x) for x in out.read_text().splitlines()]
    assert manifest["matches"] == len(matches) == 2 and manifest["contaminated_items"] == 2
    assert [m["line"] for m in matches] == [6, 7] and {m["item"] for m in matches} == {"bench:1", "bench:2"}
    clean = tmp_path / "clean.jsonl"
    write_jsonl(clean, [SFT["sharegpt"](r["question"], r["answer"]) for r in train[:5]])
    res = run_cli("scan", str(bench), "--corpus", str(clean), "--detector", "ngram", "-q", "--write-matches", str(out))
    assert res.returncode == 0 and out.read_text() == ""  # read, nothing matched: an empty file, not a stale one


# ---- --write-clean-corpus -----------------------------------------------------------------------------------
def test_clean_corpus_drop_and_cut_keep_layout_files_and_compression(gsm, tmp_path):
    gzip = pytest.importorskip("gzip")
    zstandard = pytest.importorskip("zstandard")
    from itd.corpus.clean import write_clean_corpus
    from itd.corpus.matches import read_matches

    samples, raw, train = gsm
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    chat = [SFT["messages"](r["question"], r["answer"]) for r in train[:6]]
    chat.insert(2, SFT["messages"]("Please help: " + raw[3]["question"], raw[3]["answer"]))
    alpaca = [SFT["alpaca"](r["question"], r["answer"]) for r in train[6:10]] + [SFT["alpaca"](raw[9]["question"], "No idea.")]
    (corpus / "chat.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in chat).encode()))
    (corpus / "sub" / "alpaca.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in alpaca).encode()))
    text = "\n\n".join([train[11]["question"], raw[20]["question"] + "\n" + raw[20]["answer"], train[12]["question"]]) + "\n"
    (corpus / "notes.txt").write_text(text, encoding="utf-8")
    report = scan(samples, [corpus], NGRAM, matches_out=tmp_path / "m.jsonl")
    assert {r.sample.id for r in report.contaminated} == {samples[3].id, samples[9].id, samples[20].id}
    matches = read_matches(tmp_path / "m.jsonl")

    dropped = write_clean_corpus([corpus], matches, tmp_path / "dropped", "drop-document")
    assert (dropped["documents"], dropped["dropped"], dropped["cut"]) == (len(chat) + len(alpaca) + 3, 3, 0)
    assert sorted(str(p.relative_to(tmp_path / "dropped")) for p in (tmp_path / "dropped").rglob("*") if p.is_file()) == [
        "chat.jsonl.gz", "notes.txt", "sub/alpaca.jsonl.zst"]
    back = [json.loads(x) for x in gzip.decompress((tmp_path / "dropped" / "chat.jsonl.gz").read_bytes()).splitlines()]
    assert back == chat[:2] + chat[3:]
    assert scan(samples, [tmp_path / "dropped"], NGRAM).contaminated == []  # rescanned: clean

    cut = write_clean_corpus([corpus], matches, tmp_path / "cut", "cut-span")
    assert (cut["dropped"], cut["cut"]) == (0, 3)
    back = [json.loads(x) for x in gzip.decompress((tmp_path / "cut" / "chat.jsonl.gz").read_bytes()).splitlines()]
    assert back[2]["messages"][0] == chat[2]["messages"][0]  # the system turn is kept
    assert back[2]["messages"][1]["content"].startswith("Please help:") and raw[3]["question"][:40] not in back[2]["messages"][1]["content"]
    assert [m["role"] for m in back[2]["messages"]] == ["system", "user", "assistant"]
    notes = (tmp_path / "cut" / "notes.txt").read_text("utf-8")
    assert train[11]["question"] in notes and train[12]["question"] in notes and raw[20]["question"][:40] not in notes
    assert scan(samples, [tmp_path / "cut"], NGRAM).contaminated == []
    with pytest.raises(InputError, match="not empty"):
        write_clean_corpus([corpus], matches, tmp_path / "cut", "cut-span")


def test_clean_corpus_parquet_and_mcq_key_drops(mmlu, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from itd.corpus.clean import write_clean_corpus
    from itd.corpus.matches import read_matches

    rows = [{"question": s.question, "choices": list(s.choices), "answer": s.answer} for s in mmlu[:3]]
    path = tmp_path / "c" / "mmlu.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    scan(mmlu, [path], NGRAM, matches_out=tmp_path / "m.jsonl")
    result = write_clean_corpus([path], read_matches(tmp_path / "m.jsonl"), tmp_path / "clean", "cut-span")
    assert result["dropped"] == 3  # the match runs into the answer index, which cannot be cut
    assert pq.read_table(tmp_path / "clean" / "mmlu.parquet").num_rows == 0


def test_cli_write_clean_corpus_with_manifest(gsm, tmp_path):
    samples, raw, train = gsm
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    corpus = write_jsonl(tmp_path / "c.jsonl", [SFT["prompt-response"](r["question"], r["answer"]) for r in train[:5] + raw[:2]])
    out = tmp_path / "clean"
    res = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram,minhash", "-q",
                  "--write-clean-corpus", str(out), "--clean-policy", "drop-document")
    assert res.returncode == 1, res.stderr
    assert [json.loads(x) for x in (out / "c.jsonl").read_text().splitlines()] == [SFT["prompt-response"](r["question"], r["answer"]) for r in train[:5]]
    manifest = json.loads((tmp_path / "clean.manifest.json").read_text())
    assert manifest["clean"]["dropped"] == 2 and manifest["config"]["clean_policy"] == "drop-document"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    res = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram", "-q", "--write-clean-corpus", str(out))
    assert res.returncode == 2 and "not empty" in res.stderr


# ---- several benchmarks in one corpus pass -----------------------------------------------------------------
def test_several_benchmarks_in_one_pass_label_as_each_alone(gsm, mmlu, tmp_path):
    from itd.corpus.scan import scan_many

    samples, raw, train = gsm
    records = [SFT["messages"](r["question"], r["answer"]) for r in train[:8] + [raw[4]]]
    records.append(SFT["sharegpt"](mmlu[6].prompt_text(), LETTERS[mmlu[6].answer]))
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    config = ScanConfig(detectors=("ngram", "minhash"))
    together = scan_many([samples, mmlu], [corpus], config, matches_out=tmp_path / "m.jsonl")
    alone = [scan(samples, [corpus], config), scan(mmlu, [corpus], config)]
    for a, b in zip(together, alone):
        assert [(r.sample.id, r.label, [e.to_dict() for e in r.evidence]) for r in a.results] == [
            (r.sample.id, r.label, [e.to_dict() for e in r.evidence]) for r in b.results]
    assert [r.sample.id for r in together[0].contaminated] == [samples[4].id]
    assert [(r.sample.id, r.label) for r in together[1].contaminated] == [(mmlu[6].id, "input_and_label_contaminated")]
    assert together[0].stats["documents"] == len(records) and together[0].stats["benchmarks_in_pass"] == 2
    from itd.corpus.matches import read_matches

    assert {(m["item"], m["benchmark"]) for m in read_matches(tmp_path / "m.jsonl")} == {(samples[4].id, "gsm8k"), (mmlu[6].id, "mmlu")}


def test_cli_scan_several_benchmarks(gsm, shared_data, tmp_path):
    samples, raw, train = gsm
    bench = tmp_path / "gsm.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    mmlu_file = shared_data / "mmlu" / "test" / "high_school_geography_test.csv"
    mmlu = load_benchmark(mmlu_file)
    corpus = write_jsonl(tmp_path / "c.jsonl", [SFT["alpaca"](r["question"], r["answer"]) for r in train[:4] + [raw[0]]]
                         + [SFT["alpaca"](mmlu[3].prompt_text(), "Answer: " + LETTERS[mmlu[3].answer])])
    res = run_cli("scan", str(bench), str(mmlu_file), "--corpus", str(corpus), "--detector", "ngram", "-q", "--json")
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    assert summary["benchmarks"][str(bench)]["contaminated_ids"] == ["gsm:1"]
    assert summary["benchmarks"][str(mmlu_file)]["labels"]["input_and_label_contaminated"] == 1
    assert summary["stats"]["documents"] == 6
    res = run_cli("scan", str(bench), str(bench), "--corpus", str(corpus), "-q")
    assert res.returncode == 2 and "named twice" in res.stderr


def test_index_build_reads_layouts_too(gsm, tmp_path):
    from itd.corpus.index import build_index
    from itd.corpus.index import check as run_check

    samples, raw, train = gsm
    corpus = write_jsonl(tmp_path / "chat.jsonl", [SFT["sharegpt"](r["question"], r["answer"]) for r in train[:6] + [raw[15]]])
    meta = build_index([corpus], tmp_path / "idx")
    assert meta["layouts"]["sharegpt"]["documents"] == 7
    report = run_check(samples, tmp_path / "idx")
    assert [(r.sample.id, r.label) for r in report.contaminated] == [(samples[15].id, "input_and_label_contaminated")]
    with pytest.raises(InputError, match="no record read so far has every text field of the alpaca layout"):
        build_index([corpus], tmp_path / "idx2", layout="alpaca")


def test_a_window_of_a_joined_record_keeps_its_output_starts_and_offset():
    """A long chat record read in windows (`itd.corpus.scan.batches`): each window's output starts are where the
    assistant turns start inside that window, and its offset places it in the whole record."""
    from itd.corpus.layouts import Segment
    from itd.corpus.readers import Document
    from itd.corpus.scan import batches

    user, assistant = "question " * 600, "answer " * 600
    text = user + "\n\n" + assistant
    doc = Document("chat.jsonl", 3, text, segments=(Segment("messages[user]", "input", 0, len(user)),
                                                     Segment("messages[assistant]", "output", len(user) + 2, len(text))))
    windows = [d for batch in batches([doc], 2048, overlap_tokens=50) for d in batch]
    assert len(windows) > 2 and windows[0].offset == 0
    for w in windows:
        assert text[w.offset:w.offset + len(w.text)] == w.text
        for start in w.output_starts():
            if 0 <= start < len(w.text):
                assert w.offset + start == len(user) + 2
    assert any(0 <= s < len(w.text) for w in windows for s in w.output_starts())
