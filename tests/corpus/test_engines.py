"""Execution engines (`itd.corpus.engines`): the Ray engine gives the local engine's report byte for byte, survives a
killed worker, builds the same index; corpus URLs through fsspec; engine options and a missing Ray.

The corpus is real shared data (GSM8K train, MMLU dev, filler) with planted GSM8K test leaks, written as plain
JSONL (split into byte-range shards), .jsonl.gz, .jsonl.zst and parquet. The Ray tests start one local Ray
instance with 2 CPUs for the module. Without Ray they skip, unless ITD_REQUIRE_RAY=1 (set by .ci/run), where
they fail.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from itd.cli.commands import main
from itd.core import load_benchmark
from itd.core.errors import InputError, MissingDependencyError
from itd.core.io import build_manifest
from itd.corpus.engines import ENGINES, LocalEngine, make_engine
from itd.corpus.index import NGramIndex, build_index
from itd.corpus.readers import Shard
from itd.corpus.scan import ScanConfig, scan
from itd.pipeline.demo import VARIANTS, filler_text, plant

ROOT = Path(__file__).resolve().parents[2]
DETECTORS = ("ngram", "minhash")
SHARD_BYTES = 1 << 20


def _assert_same_index(a: Path, b: Path) -> None:
    """Both indexes hold the same n-gram hashes in every part (four parts: two passes x two n)."""
    one, two = NGramIndex(a), NGramIndex(b)
    keys = [(p, n) for p in ("raw", "numnorm") for n in sorted({one.n, one.n_short})]
    assert len(keys) == 4 and (two.n, two.n_short) == (one.n, one.n_short)
    for p, n in keys:
        assert one.array(p, n).size > 0
        np.testing.assert_array_equal(one.array(p, n), two.array(p, n))


# ---- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case(shared_data, tmp_path_factory):
    """(samples, corpus directory, planted ids): GSM8K test items planted into real text, in four formats."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    import zstandard

    rng = random.Random(11)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:300]
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        docs = [(lambda r: r["question"] + "\n" + r["answer"])(json.loads(line)) for line in f]
    docs += [filler_text(rng, rng.randint(100, 600)) for _ in range(300)]
    docs += [s.prompt_text() for s in load_benchmark(shared_data / "mmlu" / "dev")]
    rng.shuffle(docs)
    planted = set()
    for k, i in enumerate(rng.sample(range(len(samples)), 2 * len(VARIANTS))):
        s = samples[i]
        planted.add(s.id)
        docs.insert(rng.randrange(len(docs)), plant(VARIANTS[k % len(VARIANTS)], s.question, s.solution, rng))
    d = tmp_path_factory.mktemp("engine-corpus")
    n = len(docs)
    parts = {"a.jsonl": docs[: int(0.7 * n)], "b.jsonl.gz": docs[int(0.7 * n) : int(0.8 * n)],
             "c.jsonl.zst": docs[int(0.8 * n) : int(0.9 * n)]}
    for name, part in parts.items():
        data = "".join(json.dumps({"text": t}) + "\n" for t in part).encode("utf-8")
        if name.endswith(".gz"):
            data = gzip.compress(data)
        elif name.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(data)
        (d / name).write_bytes(data)
    pq.write_table(pa.table({"text": docs[int(0.9 * n) :]}), d / "d.parquet")
    assert (d / "a.jsonl").stat().st_size > 2 * SHARD_BYTES  # the plain file is cut into byte ranges
    return samples, d, planted


@pytest.fixture(scope="module")
def local_report(case):
    samples, corpus, _ = case
    return scan(samples, [corpus], ScanConfig(detectors=DETECTORS))


def _sorted_lines(report, path: Path) -> list[str]:
    report.write_jsonl(path)
    return sorted(path.read_text(encoding="utf-8").splitlines())


# ---- Ray engine -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_report_equals_local_byte_for_byte(ray_local, case, local_report, tmp_path):
    samples, corpus, planted = case
    seen = []
    ray_report = scan(
        samples,
        [str(corpus / "*.jsonl*"), str(corpus / "*.parquet")],  # globs here, the directory for the local run
        ScanConfig(detectors=DETECTORS, engine="ray", shard_bytes=SHARD_BYTES),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert _sorted_lines(ray_report, tmp_path / "ray.jsonl") == _sorted_lines(local_report, tmp_path / "local.jsonl")
    labels = {r.sample.id: r.label for r in ray_report.results}
    assert all(labels[i] != "clean" for i in planted)  # the leaks are there to be found
    total = sum(f.stat().st_size for f in corpus.iterdir())
    stats = ray_report.stats
    assert stats["engine"] == "ray" and stats["bytes"] == total and stats["retries"] == 0
    assert stats["shards"] >= 6 and 1 <= stats["workers"] and stats["nodes"] == 1 and stats["parallelism"] == 2
    assert stats["documents"] == local_report.stats["documents"]
    assert stats["worker_peak_rss_mb"] > 0
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and seen[-1] == (total, total) and all(t == total for _, t in seen)


def _running_shard_workers() -> list[int]:
    """Pids of Ray worker processes running a shard task right now (Ray titles them `ray::_run_shard`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::_run_shard"):
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's worker processes in /proc")
def test_killed_worker_loses_no_shard(ray_local, case, local_report, tmp_path):
    samples, corpus, _ = case
    killed: list[int] = []

    def kill_two(done: int, total: int) -> None:
        # two workers, at two progress reports: on a busy machine a worker listed as running can finish its shard
        # before the signal lands, and then no task is lost (and none retried); the scan allows 3 retries a shard
        if len(killed) < 2 and done > 0:
            pids = [pid for pid in _running_shard_workers() if pid not in killed]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    # small shards: many tasks, so one is still running when the first reports progress, however fast a shard is
    config = ScanConfig(detectors=DETECTORS, engine="ray", shard_bytes=SHARD_BYTES // 16)
    report = scan(samples, [corpus], config, progress=kill_two)
    assert killed, "no shard task was running to kill"
    assert report.stats["retries"] >= 1
    assert _sorted_lines(report, tmp_path / "ray.jsonl") == _sorted_lines(local_report, tmp_path / "local.jsonl")


def test_a_worker_dying_at_once_counts_as_a_retry(ray_local, tmp_path):
    # the worker dies right after its task starts, before a message it sent can reach the progress tracker:
    # the retry is still counted (from Ray's own attempt number), and the shard's result still comes back once
    def exit_on_first_run(marker_dir: str, shard: Shard, on_bytes) -> str:
        # local, so Ray's pickler sends it by value: the workers cannot import this test module
        marker = os.path.join(marker_dir, "ran")
        if shard.path == "a" and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        on_bytes(shard.size)
        return shard.path

    engine = make_engine("ray")
    shards = [Shard(path=name, kind="txt", compression=None, size=10) for name in ("a", "b", "c")]
    results = dict(engine.map_shards(exit_on_first_run, str(tmp_path), shards))
    assert results == {0: "a", 1: "b", 2: "c"} and engine.stats.retries == 1


@pytest.mark.slow
def test_ray_index_equals_local_index(ray_local, case, tmp_path):
    _, corpus, _ = case
    local = build_index([corpus], tmp_path / "local")
    # small shards: more than the tasks kept in flight, so tasks are submitted as results come back
    on_ray = build_index([corpus], tmp_path / "ray", engine="ray", shard_bytes=1 << 16)
    assert on_ray["shards"] > 40 and on_ray["engine"] == "ray"
    for key in ("documents", "bytes", "ngrams"):
        assert on_ray[key] == local[key], key
    _assert_same_index(tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow
def test_cli_scan_and_index_on_ray(ray_local, case, shared_data, tmp_path, capsys):
    _, corpus, _ = case
    bench = str(shared_data / "gsm8k" / "test.jsonl")
    rc = main(["scan", bench, "--corpus", str(corpus), "--detector", "ngram", "--engine", "ray", "--json",
               "--out", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert rc == 1
    summary = json.loads(out)
    assert summary["stats"]["engine"] == "ray" and summary["stats"]["shards"] >= 4
    assert "shard(s) on" in err and "at a time (engine ray)" in err and summary["labels"]["clean"] < summary["samples"]
    local = scan(load_benchmark(bench), [corpus], ScanConfig(detectors=("ngram",)))
    assert sorted((tmp_path / "r.jsonl").read_text("utf-8").splitlines()) == _sorted_lines(local, tmp_path / "l.jsonl")
    rc = main(["index", "build", "--corpus", str(corpus / "a.jsonl"), "--out", str(tmp_path / "idx"), "--engine", "ray"])
    _, err = capsys.readouterr()
    assert rc == 0 and "indexed" in err and "engine ray" in err
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["engine"] == "ray"


# ---- corpus URLs (fsspec) ---------------------------------------------------------------------------------------
def _as(report, local_dir: Path, url_dir: str, path: Path) -> list[str]:
    """The report's sorted JSONL lines with the local corpus directory written as a URL directory."""
    return [line.replace(str(local_dir), url_dir) for line in _sorted_lines(report, path)]


def test_memory_urls_scan_like_local_files(case, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    samples, corpus, _ = case
    fs = fsspec.filesystem("memory")
    for f in corpus.iterdir():
        fs.pipe(f"/itd-test/corpus/{f.name}", f.read_bytes())
    try:
        config = ScanConfig(detectors=("ngram",))
        local = scan(samples, [corpus], config)
        expected = _as(local, corpus, "memory:///itd-test/corpus", tmp_path / "l.jsonl")
        for urls in (["memory://itd-test/corpus"], ["memory://itd-test/corpus/*.jsonl*", "memory://itd-test/corpus/d.parquet"]):
            report = scan(samples, urls, config)
            lines = _sorted_lines(report, tmp_path / "m.jsonl")
            if len(urls) > 1:  # a file URL keeps the user's spelling
                lines = [x.replace("memory://itd-test/corpus/d.parquet", "memory:///itd-test/corpus/d.parquet") for x in lines]
            assert lines == expected, urls
            assert report.stats["bytes"] == local.stats["bytes"] and report.stats["documents"] == local.stats["documents"]
        manifest = build_manifest(command="scan", config={}, inputs=["memory://itd-test/corpus", str(corpus / "*")])
        remote = [f for f in manifest["inputs"] if f["path"].startswith("memory://")]
        local_files = [f for f in manifest["inputs"] if not f["path"].startswith("memory://")]
        assert len(remote) == len(local_files) == len(list(corpus.iterdir()))
        assert all(f["bytes"] > 0 and f["fingerprint"] for f in remote)
        assert all(len(f["sha256"]) == 64 for f in local_files)
        with pytest.raises(InputError, match="no such file"):
            scan(samples, ["memory://itd-test/missing.jsonl"], config)
        with pytest.raises(InputError, match="glob matches no files"):
            scan(samples, ["memory://itd-test/corpus/*.csv"], config)
    finally:
        fs.rm("/itd-test", recursive=True)


def test_file_url_on_ray(ray_local, case, tmp_path):
    pytest.importorskip("fsspec")
    samples, corpus, _ = case
    config = ScanConfig(detectors=("ngram",))
    expected = _as(scan(samples, [corpus], config), corpus, f"file://{corpus}", tmp_path / "l.jsonl")
    report = scan(samples, [f"file://{corpus}"], ScanConfig(detectors=("ngram",), engine="ray"))
    assert _sorted_lines(report, tmp_path / "r.jsonl") == expected
    assert report.stats["shards"] == 4  # a URL is one shard per file


def test_url_errors(monkeypatch):
    pytest.importorskip("fsspec")
    from itd.corpus.readers import plan_shards

    with pytest.raises(InputError, match="Protocol not known"):
        plan_shards(["nosuchprotocol://bucket/x.jsonl"])
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'itd\[remote\]'"):
        plan_shards(["s3://bucket/x.jsonl"])


# ---- options, errors, a missing Ray -------------------------------------------------------------------------------
def test_engine_options_are_validated():
    assert ENGINES.names() == ["local", "ray"]
    with pytest.raises(InputError, match="Did you mean 'ray'"):
        ScanConfig(engine="rya")
    with pytest.raises(InputError, match="needs the Ray engine"):
        ScanConfig(ray_address="auto")
    assert ScanConfig(engine=" Ray ", ray_address="auto").engine == "ray"
    assert isinstance(make_engine("local", workers=2), LocalEngine)
    with pytest.raises(InputError, match="workers must be >= 1"):
        make_engine("local", workers=0)


def test_local_pool_stats(case):
    samples, corpus, _ = case
    report = scan(samples, [corpus / "a.jsonl"], ScanConfig(detectors=("ngram",), workers=2, shard_bytes=1 << 18))
    stats = report.stats
    assert stats["engine"] == "local" and stats["shards"] > 2 and 1 <= stats["workers"] <= 2 and stats["retries"] == 0


def test_index_on_a_local_pool(case, tmp_path):
    _, corpus, _ = case
    local = build_index([corpus], tmp_path / "one")
    pooled = build_index([corpus], tmp_path / "pool", workers=2, shard_bytes=1 << 18)
    assert pooled["shards"] > local["shards"] and pooled["workers"] >= 1 and pooled["ngrams"] == local["ngrams"]
    _assert_same_index(tmp_path / "one", tmp_path / "pool")


def _cli_without_ray(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; sys.modules['ray'] = None; from itd.cli.commands import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"}, cwd=ROOT)


def test_missing_ray_exits_2_with_the_install_command(shared_data, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "nothing to see"}\n', encoding="utf-8")
    bench = str(shared_data / "gsm8k" / "test.jsonl")
    for args in (["scan", bench, "--corpus", str(corpus), "--engine", "ray"],
                 ["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "idx"), "--engine", "ray"]):
        res = _cli_without_ray(*args)
        assert res.returncode == 2, res.stderr
        assert "pip install 'itd[ray]'" in res.stderr and "Traceback" not in res.stderr
    res = _cli_without_ray("scan", bench, "--corpus", str(corpus), "--engine", "rya")
    assert res.returncode == 2 and "Did you mean 'ray'" in res.stderr


def test_evidence_books_merge_the_same_in_any_order():
    """Shards finish in any order on an engine: tied evidence must not depend on which arrived first."""
    import itertools

    from itd.detectors.base import Evidence, EvidenceBook

    evs = [Evidence(84.42, "ngram", "numnorm", "answer", f"{name}:{line}", 10, 50, "x")
           for name, line in (("a.jsonl", 3951), ("b.jsonl.gz", 671), ("c.jsonl", 7), ("a.jsonl", 12))]
    evs += [Evidence(91.8, "ngram", "numnorm", "answer", "d.parquet:125", 0, 40, "y"),
            Evidence(91.8, "ngram", "raw", "answer", "d.parquet:125", 30, 60, "z")]  # overlaps the one before
    results = set()
    for order in itertools.permutations(range(len(evs))):
        books = []
        for i in order:  # one book per "shard", merged in this order
            book = EvidenceBook(limit=3)
            book.add(0, evs[i])
            books.append(book)
        merged = EvidenceBook(limit=3)
        for book in books:
            merged.merge(book)
        results.add(tuple((e.doc, e.start, e.match) for e in merged.get(0)))
    # the overlapping pair counts once (the first by offset), then the ties by document name and line
    assert results == {(("d.parquet:125", 0, "numnorm"), ("a.jsonl:12", 10, "numnorm"), ("a.jsonl:3951", 10, "numnorm"))}


@pytest.mark.slow
def test_dcpdd_table_on_ray_equals_local(ray_local, case, shared_data, tmp_path):
    """DC-PDD's token-frequency table counted on Ray: the tokenizer travels to the workers, and the counts and what
    was read equal those of the pass in this process."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from itd.probes.methods import corpus_frequency_table

    _, corpus, _ = case
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["question"] for _, line in zip(range(300), f)]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]")
    local = corpus_frequency_table(tokenizer, [corpus])
    on_ray = corpus_frequency_table(tokenizer, [corpus], engine="ray", workers=2)
    assert (on_ray.counts == local.counts).all() and on_ray.n_documents == local.n_documents > 0
    assert on_ray.read["files"] == local.read["files"] > 1 and on_ray.read["bytes"] == local.read["bytes"]
