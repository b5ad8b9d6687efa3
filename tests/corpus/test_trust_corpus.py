"""Corpus-side verdicts are never a silent "clean": a corpus read as nothing, cut short, corrupt, in another
layout or mostly malformed is an input error (exit 2, no traceback), and every summary says what was read.
Also model-side `itd detect` without anything to decide by: "undecided", exit 2."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itd.cli.commands import main
from itd.core import load_benchmark
from itd.core.errors import InputError
from itd.corpus.index import NGramIndex, build_index
from itd.corpus.index import check as run_check
from itd.corpus.readers import iter_documents
from itd.corpus.scan import ScanConfig, ShardTally, scan

zstandard = pytest.importorskip("zstandard")

CUTS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command line as a user runs it (a fresh process: a traceback would show on stderr)."""
    return subprocess.run([sys.executable, "-m", "itd.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, timeout=300)


@pytest.fixture(scope="module")
def questions(shared_data) -> list[str]:
    """GSM8K test questions: real corpus text."""
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines]


@pytest.fixture(scope="module")
def bench(shared_data, tmp_path_factory) -> Path:
    """A small benchmark: the first 30 GSM8K test items."""
    path = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()[:30]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def jsonl(texts: list[str], bad: set[int] = frozenset()) -> bytes:
    """JSONL records `{"text": ...}`; the lines numbered in `bad` (0-based) lack the text field."""
    return "".join(json.dumps({"body": t} if i in bad else {"text": t}) + "\n" for i, t in enumerate(texts)).encode()


# ---- truncated and corrupt compressed corpora ----------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed(questions, tmp_path_factory):
    """A 200-record JSONL corpus as one gzip member, one zstd frame (with checksum) and two zstd frames."""
    data = jsonl(questions[:200])
    half = data.index(b"\n", len(data) // 2) + 1
    zc = zstandard.ZstdCompressor(write_checksum=True)
    first = zc.compress(data[:half])
    return {
        "gz": gzip.compress(data, mtime=0),
        "zst": zc.compress(data),
        "zst2": first + zc.compress(data[half:]),
        "data": data,
        "first_frame": (len(first), data[:half].count(b"\n")),
        "dir": tmp_path_factory.mktemp("compressed"),
    }


def read_texts(path: Path) -> list[str]:
    return [d.text for d in iter_documents([path])]


def assert_input_error_naming(path: Path, exc: InputError) -> None:
    assert exc.path == str(path) and "Traceback" not in str(exc)


@CUTS
@given(kind=st.sampled_from(["gz", "zst"]), cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_compressed_corpus_is_an_input_error(compressed, questions, kind, cut):
    """Cut anywhere before its end, a single-member .gz or single-frame .zst is an InputError naming the file,
    never a shorter silent read and never another exception."""
    blob = compressed[kind]
    at = int(cut * len(blob))
    path = compressed["dir"] / f"cut-{kind}-{at}.jsonl.{kind}"
    path.write_bytes(blob[:at])
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert_input_error_naming(path, info.value)
    assert "truncated" in info.value.message
    assert read_texts(_whole(compressed, kind)) == questions[:200]


def _whole(compressed, kind: str) -> Path:
    path = compressed["dir"] / f"whole.jsonl.{kind}"
    if not path.exists():
        path.write_bytes(compressed[kind])
    return path


@CUTS
@given(cut=st.integers(0, 10**9))
def test_a_cut_two_frame_zst_reads_whole_frames_or_fails(compressed, questions, cut):
    """Across zstd frames: a cut exactly at the frame boundary is a complete first frame (a valid file); any
    other cut is an InputError."""
    blob = compressed["zst2"]
    boundary, first_lines = compressed["first_frame"]
    at = cut % len(blob)
    path = compressed["dir"] / f"cut2-{at}.jsonl.zst"
    path.write_bytes(blob[:at])
    if at == boundary:
        assert read_texts(path) == questions[:first_lines]
        return
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert_input_error_naming(path, info.value)


@CUTS
@given(kind=st.sampled_from(["gz", "zst"]), where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_corrupt_compressed_bytes_read_whole_or_fail_cleanly(compressed, questions, kind, where, flip):
    """A corrupted byte either leaves the documents as they were (header bytes that carry no data) or is an
    InputError naming the file; never a zlib/zstd traceback, never different text."""
    blob = bytearray(compressed[kind])
    at = int(where * len(blob))
    blob[at] ^= flip
    path = compressed["dir"] / f"flip-{kind}-{at}-{flip}.jsonl.{kind}"
    path.write_bytes(bytes(blob))
    try:
        texts = read_texts(path)
    except InputError as exc:
        assert_input_error_naming(path, exc)
        return
    assert texts == questions[:200]


def test_corrupt_and_truncated_errors_say_where(compressed, questions, tmp_path):
    bad_header = tmp_path / "bad.jsonl.zst"
    bad_header.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    with pytest.raises(InputError, match="corrupt or truncated .zst data within the first 68 compressed bytes"):
        read_texts(bad_header)
    blob = bytearray(compressed["gz"])
    blob[-6] ^= 0xFF  # the CRC of the data: every line reads, then the check at the end fails
    corrupt_gz = tmp_path / "corrupt.jsonl.gz"
    corrupt_gz.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"corrupt or truncated \.gz data within the first [\d,]+ compressed bytes, "
                       r"after 200 complete line\(s\): CRC check failed") as info:
        read_texts(corrupt_gz)
    assert info.value.path == str(corrupt_gz) and info.value.line == 201
    cut = tmp_path / "cut.jsonl.zst"
    whole = zstandard.ZstdCompressor().compress(jsonl(questions))  # several 128 kB blocks
    cut.write_bytes(whole[: len(whole) * 9 // 10])
    with pytest.raises(InputError, match=r"after [\d,]+ complete line\(s\)") as info:
        read_texts(cut)
    assert 1 < info.value.line <= len(questions)  # the line reached: what the decoded blocks held
    for kind in ("gz", "zst"):  # a compressed stream is never 0 bytes long
        empty = tmp_path / f"empty.jsonl.{kind}"
        empty.write_bytes(b"")
        with pytest.raises(InputError, match="empty"):
            read_texts(empty)


def test_cli_reports_a_truncated_zst_as_exit_2(compressed, bench, tmp_path):
    cut = tmp_path / "corpus.jsonl.zst"
    cut.write_bytes(compressed["zst"][:-5])
    res = run_cli("scan", str(bench), "--corpus", str(cut), "--detector", "ngram", "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(cut) in res.stderr and "truncated" in res.stderr
    res = run_cli("index", "build", "--corpus", str(cut), "--out", str(tmp_path / "idx"), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr and not (tmp_path / "idx").exists()


# ---- parquet -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parquet_blob(questions) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": questions[:300]}), sink, row_group_size=100, write_page_checksum=True)
    return sink.getvalue()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255), truncate=st.booleans())
def test_corrupt_or_truncated_parquet_is_an_input_error(parquet_blob, questions, tmp_path_factory, where, flip, truncate):
    """A cut parquet file, or one with a corrupted byte, reads as it was or is an InputError naming it (pages
    carry CRCs here, so corrupted text is caught too)."""
    blob = bytearray(parquet_blob)
    at = int(where * len(blob))
    if truncate:
        blob = blob[:at]
    else:
        blob[at] ^= flip
    path = tmp_path_factory.mktemp("pq") / "corpus.parquet"
    path.write_bytes(bytes(blob))
    try:
        texts = read_texts(path)
    except InputError as exc:
        assert_input_error_naming(path, exc)
        return
    assert not truncate and texts == questions[:300]


def test_parquet_null_text_and_non_text_column(questions, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": [questions[0], None, questions[2]]}), nulls)
    with pytest.raises(InputError, match="null") as info:
        read_texts(nulls)
    assert info.value.line == 2
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), numbers)
    with pytest.raises(InputError, match="holds int64, not text"):
        read_texts(numbers)


# ---- a corpus in another layout, mostly malformed corpora ----------------------------------------------------
@pytest.fixture(scope="module")
def unknown_layout(shared_data, tmp_path_factory) -> Path:
    """The real GSM8K train records with their fields renamed (body, solution): a layout no reader knows."""
    path = tmp_path_factory.mktemp("layout") / "train.jsonl"
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            rec = json.loads(line)
            f.write(json.dumps({"body": rec["question"], "solution": rec["answer"]}) + "\n")
    return path


def test_unknown_layout_skip_bad_lines_is_exit_2(shared_data, unknown_layout, bench, tmp_path):
    """Records with no known layout's fields: skipping every line is not a scan."""
    train = unknown_layout
    for extra in ([], ["-j", "2"]):
        res = run_cli("scan", str(bench), "--corpus", str(train), "--skip-bad-lines", "--detector", "ngram", "-q", *extra)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and "set --text-field" in res.stderr and str(train) in res.stderr
    res = run_cli("scan", str(bench), "--corpus", str(train), "--detector", "ngram", "-q")
    assert res.returncode == 2 and f"{train}:1:" in res.stderr
    assert "set --text-field" in res.stderr and "--skip-bad-lines" not in res.stderr  # a layout, not bad lines
    out = tmp_path / "idx"
    res = run_cli("index", "build", "--corpus", str(train), "--out", str(out), "--skip-bad-lines", "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "set --text-field" in res.stderr
    assert not out.exists()  # no index left behind, so no `itd check` can pass against one
    res = run_cli("scan", str(bench), "--corpus", str(train), "--text-field", "body", "--detector", "ngram", "-q")
    assert res.returncode in (0, 1) and "read 7,473 documents" in res.stdout  # train holds near-copies of test items
    # the real GSM8K train file is read in its own layout: question and answer
    res = run_cli("scan", str(bench), "--corpus", str(shared_data / "gsm8k" / "train.jsonl"), "--detector", "ngram", "-q")
    assert res.returncode in (0, 1) and "read 7,473 documents" in res.stdout
    assert "layout gsm8k: 1 file, 7,473 documents (records with text per field: question 7,473, answer 7,473)" in res.stdout


def test_a_small_file_without_the_field_is_a_layout_error(unknown_layout, bench, questions, tmp_path):
    """Under the early layout probe (1000 records): the whole file is read, every line skipped, then refused;
    and one such file beside a good one is refused too (it would not have been scanned)."""
    lines = unknown_layout.read_text("utf-8").splitlines()[:40]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_bytes(jsonl(questions[:500]))
    (corpus / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = load_benchmark(bench)
    config = ScanConfig(skip_bad_lines=True, max_bad_lines=1000)
    with pytest.raises(InputError, match="0 documents read from this file, 40 line") as info:
        scan(samples, [corpus], config)
    assert info.value.path == str(corpus / "b.jsonl") and "set --text-field" in info.value.message
    with pytest.raises(InputError, match="read 0 documents from 1 file"):
        scan(samples, [corpus / "b.jsonl"], config)


@pytest.fixture(scope="module")
def some_bad(questions, tmp_path_factory) -> Path:
    """1000 real records of which 12 (1.2%) lack the text field, after the first record."""
    path = tmp_path_factory.mktemp("bad") / "corpus.jsonl"
    path.write_bytes(jsonl(questions[:1000], bad={10 + 80 * i for i in range(12)}))
    return path


@pytest.mark.parametrize(("limit", "ok"), [(None, False), ("0.02", True), ("1.5%", True), ("1%", False), ("11", False), ("12", True)])
def test_max_bad_lines_share_and_count(some_bad, bench, limit, ok):
    res = run_cli("scan", str(bench), "--corpus", str(some_bad), "--skip-bad-lines", "--detector", "ngram", "-q",
                  *(["--max-bad-lines", limit] if limit else []))
    assert "Traceback" not in res.stderr
    if ok:
        assert res.returncode == 1, res.stderr  # the corpus holds the benchmark's first items
        assert "read 988 documents" in res.stdout and "12 lines skipped" in res.stdout
        assert "skipped 12 malformed corpus line(s) of 1,000 (1.20%)" in res.stderr
    else:
        assert res.returncode == 2
        assert "--max-bad-lines" in res.stderr and f"{some_bad}:11: text field 'text' is missing" in res.stderr


def test_max_bad_lines_option_is_validated(some_bad, bench):
    for bad in ("1.5", "-1", "lots"):
        res = run_cli("scan", str(bench), "--corpus", str(some_bad), "--max-bad-lines", bad)
        assert res.returncode == 2 and "--max-bad-lines" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(InputError, match="whole"):
        ScanConfig(max_bad_lines=2.5)


def test_library_scan_and_index_raise_on_too_many_bad_lines(some_bad, bench, tmp_path):
    samples = load_benchmark(bench)
    with pytest.raises(InputError, match="12 of 1,000 corpus lines"):
        scan(samples, [some_bad], ScanConfig(skip_bad_lines=True))
    with pytest.raises(InputError, match="more than 5 malformed"):
        scan(samples, [some_bad], ScanConfig(skip_bad_lines=True, max_bad_lines=5))
    with pytest.raises(InputError, match="12 of 1,000 corpus lines"):
        build_index([some_bad], tmp_path / "idx", skip_bad_lines=True)
    assert not (tmp_path / "idx").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(InputError):
        build_index([some_bad], existing, skip_bad_lines=True)
    assert existing.is_dir() and not any(existing.iterdir())  # a directory given by the user stays, empty


def test_counts_are_the_same_across_workers(some_bad, bench, tmp_path):
    """Split into byte-range shards over 2 processes, the tally (documents, bytes, files, skipped) is the same."""
    samples = load_benchmark(bench)
    config = dict(skip_bad_lines=True, max_bad_lines=0.05, detectors=("ngram",))
    one = scan(samples, [some_bad], ScanConfig(**config)).stats
    two = scan(samples, [some_bad], ScanConfig(**config, workers=2, shard_bytes=1 << 16)).stats
    assert two["shards"] > 2
    keys = ("documents", "bytes", "files", "skipped_lines", "empty_files")
    assert {k: two[k] for k in keys} == {k: one[k] for k in keys} == {
        "documents": 988, "bytes": some_bad.stat().st_size, "files": 1, "skipped_lines": 12, "empty_files": 0}
    meta = build_index([some_bad], tmp_path / "idx", skip_bad_lines=True, max_bad_lines=12, workers=2, shard_bytes=1 << 16)
    assert (meta["documents"], meta["skipped_lines"], meta["files"], meta["bytes"]) == (988, 12, 1, some_bad.stat().st_size)




@pytest.mark.slow
def test_ray_keeps_the_counts_and_refuses_the_same(ray_local, some_bad, bench, tmp_path):
    samples = load_benchmark(bench)
    stats = scan(samples, [some_bad], ScanConfig(skip_bad_lines=True, max_bad_lines=12, detectors=("ngram",),
                                                 engine="ray", shard_bytes=1 << 16)).stats
    assert stats["shards"] > 2 and (stats["documents"], stats["skipped_lines"], stats["files"]) == (988, 12, 1)
    with pytest.raises(InputError, match="12 of 1,000 corpus lines"):
        scan(samples, [some_bad], ScanConfig(skip_bad_lines=True, engine="ray", shard_bytes=1 << 16))
    with pytest.raises(InputError, match="12 of 1,000 corpus lines"):
        build_index([some_bad], tmp_path / "idx", skip_bad_lines=True, engine="ray", shard_bytes=1 << 16)
    assert not (tmp_path / "idx").exists()


def test_tally_rules():
    """The rules behind the errors, on tallies: 0 documents, a file all skipped, the share and the count."""
    tally = ShardTally()
    with pytest.raises(InputError, match="read 0 documents from 0 file"):
        tally.validate()
    from itd.corpus.scan import FileTally

    ok = ShardTally(documents=990, skipped=10, errors=["a:1: x"], files={"a": FileTally(100, 990, 10, 0, "a:1: x")})
    ok.validate(0.01)
    ok.validate(10)
    with pytest.raises(InputError, match="10 of 1,000"):
        ok.validate(0.0099)
    with pytest.raises(InputError, match="10 of 1,000"):
        ok.validate(9)
    ok.add(ShardTally(documents=0, skipped=3, errors=["b:1: y"], files={"b": FileTally(5, 0, 3, 3, "b:1: y")}))
    with pytest.raises(InputError, match="0 documents read from this file, 3 line") as info:
        ok.validate(100)
    assert info.value.path == "b" and "set --text-field" in info.value.message


def test_an_empty_corpus_is_exit_2(bench, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    res = run_cli("scan", str(bench), "--corpus", str(empty), "--detector", "ngram", "-q")
    assert res.returncode == 2 and "read 0 documents" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("index", "build", "--corpus", str(empty), "--out", str(tmp_path / "idx"), "-q")
    assert res.returncode == 2 and not (tmp_path / "idx").exists()


# ---- summaries say what the verdict stands on ----------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_corpus(questions, tmp_path_factory) -> Path:
    """Two files of GSM8K test questions none of which is in `bench` (items 500-899), one empty file."""
    folder = tmp_path_factory.mktemp("clean")
    (folder / "a.jsonl").write_bytes(jsonl(questions[500:700]))
    (folder / "b.jsonl").write_bytes(jsonl(questions[700:900]))
    (folder / "c.jsonl").write_bytes(b"")
    return folder


def test_scan_summaries_state_what_was_read(clean_corpus, bench):
    size = sum(f.stat().st_size for f in clean_corpus.iterdir())
    res = run_cli("scan", str(bench), "--corpus", str(clean_corpus), "--detector", "ngram", "-q")
    assert res.returncode == 0, res.stderr
    assert "read 400 documents (" in res.stdout and "from 3 files; 0 lines skipped; 1 file without documents" in res.stdout
    assert "1 corpus file(s) held no documents" in res.stderr and "c.jsonl" in res.stderr
    res = run_cli("scan", str(bench), "--corpus", str(clean_corpus), "--detector", "ngram", "-q", "--json")
    stats = json.loads(res.stdout)["stats"]
    assert (stats["documents"], stats["bytes"], stats["files"], stats["skipped_lines"]) == (400, size, 3, 0)
    assert stats["empty_files"] == 1 and stats["empty_file_names"] == [str(clean_corpus / "c.jsonl")]


def test_index_build_and_check_summaries(clean_corpus, bench, tmp_path):
    idx = tmp_path / "idx"
    res = run_cli("index", "build", "--corpus", str(clean_corpus), "--out", str(idx), "-q")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"index written to {idx}: read 400 documents (")
    meta = json.loads(run_cli("index", "build", "--corpus", str(clean_corpus), "--out", str(idx), "-q", "--json").stdout)
    assert (meta["documents"], meta["files"], meta["skipped_lines"]) == (400, 3, 0)
    res = run_cli("check", str(bench), "--index", str(idx))
    assert res.returncode == 0
    assert res.stdout.strip() == ("1 file clean; checked 30 items against an index of 400 documents "
                                  f"({meta['bytes'] / 1000:.1f} kB) from 3 files; 0 lines skipped when it was built")
    data = json.loads(run_cli("check", str(bench), "--index", str(idx), "--json").stdout)
    assert data["items"] == 30 and data["contaminated"] == []
    assert data["index"] | {"path": None} == {"path": None, "documents": 400, "bytes": meta["bytes"], "files": 3, "skipped_lines": 0}


def test_check_refuses_an_index_of_0_documents(clean_corpus, bench, tmp_path):
    """An index with 0 documents (as older versions wrote with --skip-bad-lines) is no basis for "clean"."""
    idx = tmp_path / "idx"
    build_index([clean_corpus], idx)
    meta_file = idx / "index.json"
    meta = json.loads(meta_file.read_text("utf-8"))
    meta_file.write_text(json.dumps({**meta, "documents": 0}), encoding="utf-8")
    res = run_cli("check", str(bench), "--index", str(idx))
    assert res.returncode == 2 and "0 documents" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(InputError, match="0 documents"):
        run_check(load_benchmark(bench), idx)
    with pytest.raises(InputError, match="0 documents"):
        NGramIndex(idx)


# ---- model-side: nothing to decide by -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(questions, tmp_path_factory) -> Path:
    """A tiny random GPT-2 with a tokenizer trained here on GSM8K questions (no network)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(questions[:200], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=512,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_detect_without_reference_or_threshold_is_undecided(tiny_model, shared_data, tmp_path, capsys):
    bench = tmp_path / "five.jsonl"
    bench.write_text("\n".join((shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()[:5]) + "\n", "utf-8")
    args = ["detect", str(bench), "--model", str(tiny_model), "--device", "cpu", "-q"]
    res = run_cli(*args)  # as a user runs it: a traceback would show
    assert res.returncode == 2, res.stderr
    assert "verdict: undecided" in res.stdout and "no contamination detected" not in res.stdout
    assert "--reference-set" in res.stderr and "Traceback" not in res.stderr
    out = tmp_path / "scores.jsonl"
    assert main([*args, "--json", "--out", str(out)]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "undecided" and summary["contaminated"] is None
    assert len(out.read_text("utf-8").splitlines()) == 5  # the scores are kept
    assert main([*args, "--json", "--threshold", "1e9"]) == 0  # a threshold decides: nothing scores above it
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "not_detected" and summary["contaminated"] is False


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_run_with_undecided_detection_refuses_to_rewrite_nothing(tiny_model, shared_data, tmp_path):
    """`itd run` with probes but no reference set or threshold cannot pick the items to rewrite: exit 2, not a
    run that silently rewrites none of them."""
    bench = tmp_path / "five.jsonl"
    bench.write_text("\n".join((shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()[:5]) + "\n", "utf-8")
    config = tmp_path / "run.toml"
    config.write_text(f'[benchmark]\npath = "{bench}"\n[model]\nname = "{tiny_model}"\ndevice = "cpu"\n'
                      '[evaluate]\nenabled = false\n', "utf-8")
    res = run_cli("run", str(config), "--out", str(tmp_path / "run"), "-q")
    assert res.returncode == 2, res.stderr
    assert "reference" in res.stderr and "threshold" in res.stderr and "Traceback" not in res.stderr


def test_jsonl_records_read_the_same_with_and_without_orjson(tmp_path, monkeypatch):
    """orjson is only a faster path: what it refuses and the standard library reads (NaN, a lone surrogate, an
    integer past 64 bits) reads as before, and a bad line is reported with the standard library's message."""
    from itd.corpus import readers

    pytest.importorskip("orjson")
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"text": "plain \\u00e9 text", "n": 1}\n'
                       b'{"text": "a lone \\ud800 surrogate"}\n'
                       b'{"text": "not a number", "score": NaN}\n'
                       b'{"text": "big", "id": 123456789012345678901234567890}\n'
                       b'{"text": broken\n')

    def read():
        from itd.corpus.readers import ShardReader, plan_shards

        reader = ShardReader(plan_shards([corpus])[0], skip_bad=True)
        return [(d.id, d.text) for d in reader], reader.skipped

    fast = read()
    monkeypatch.setattr(readers, "_orjson", None)
    assert read() == fast
    docs, skipped = fast
    assert [text for _, text in docs] == ["plain \u00e9 text", "a lone \ud800 surrogate", "not a number", "big"]
    assert len(skipped) == 1 and "c.jsonl:5: invalid JSON (Expecting value" in skipped[0]
