"""Verdicts that can be trusted after a crash: an index is whole or absent under `kill -9`, a mixed or corrupted
index is refused, a failed build leaves nothing, worker processes end with their parent, and a long document read
in windows gives the same findings as the same text in one piece (memory bounded by design)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.core.text import normalize, tokenize, window_spans
from itd.corpus.index import IndexIntegrityError, NGramIndex, build_index
from itd.corpus.readers import Document
from itd.corpus.scan import ScanConfig, batches, scan

ROOT = Path(__file__).resolve().parents[2]
PASSES_NS = [(p, n) for p in ("raw", "numnorm") for n in (8, 13)]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itd.cli.commands", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "NO_COLOR": "1"}, **kwargs)


def _write_corpus(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpora(shared_data, tmp_path_factory):
    """Two corpora of GSM8K train text (A: the first 600 items and test item 3; B: the next 800 and test
    item 50), the index of each, and an eval file of both test items."""
    tmp = tmp_path_factory.mktemp("trust")
    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()]
    test = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
    texts = [t["question"] + "\n" + t["answer"] for t in train]
    a = _write_corpus(tmp / "a.jsonl", texts[:600] + [json.loads(test[3])["question"]])
    b = _write_corpus(tmp / "b.jsonl", texts[600:1400] + [json.loads(test[50])["question"]])
    evals = tmp / "eval.jsonl"
    evals.write_text(test[3] + "\n" + test[50] + "\n", encoding="utf-8")
    build_index([a], tmp / "ref_a")
    build_index([b], tmp / "ref_b")
    return {"a": a, "b": b, "ref_a": tmp / "ref_a", "ref_b": tmp / "ref_b", "eval": evals, "tmp": tmp}


def _same_content(index: Path, reference: Path) -> bool:
    got, ref = NGramIndex(index), NGramIndex(reference)
    return got.meta["documents"] == ref.meta["documents"] and all(
        np.array_equal(got.array(p, n), ref.array(p, n)) for p, n in PASSES_NS)


def _state(out: Path, corpora) -> str:
    """"absent", "old" (= index A) or "new" (= index B): anything else fails the test."""
    if not out.exists():
        return "absent"
    if _same_content(out, corpora["ref_a"]):
        return "old"
    assert _same_content(out, corpora["ref_b"]), "the index is neither the old one nor the new one"
    return "new"


def _leftovers(out: Path) -> list[str]:
    """Staging directories beside `out` and parts directories inside it that its index.json does not name."""
    found = [p.name for p in out.parent.glob(f".{out.name}.build-*")]
    if (out / "index.json").is_file():
        current = json.loads((out / "index.json").read_text())["build"]
        found += [p.name for p in out.glob("parts-*") if p.name != f"parts-{current}"]
        found += [p.name for p in out.iterdir() if p.is_file() and p.name != "index.json"]
    return found


def _build_killed_at_step(corpus: Path, out: Path, k: int) -> bool:
    """Build the index of `corpus` into `out` in a forked child that dies like `kill -9` (`os._exit`: no cleanup
    runs) at its k-th file-system change (rename, replace, unlink, rmdir, rmtree). True if it was killed, False if
    the build ran past its last step."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            count = [0]

            def dying(fn):
                def wrapped(*a, **kw):
                    if count[0] == k:
                        os._exit(137)
                    count[0] += 1
                    return fn(*a, **kw)

                return wrapped

            for name in ("rename", "replace", "unlink", "rmdir"):
                setattr(os, name, dying(getattr(os, name)))
            shutil.rmtree = dying(shutil.rmtree)
            build_index([corpus], out)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 137), code
    return code == 137


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
def test_index_build_killed_at_every_step_is_whole_or_absent(corpora, tmp_path, existing):
    """Every file-system step of a build, in turn, is where it dies: the index is the old one (or absent) or the
    new one, never a mix; and the next build clears what the killed ones left behind."""
    out = tmp_path / "idx"

    def reset() -> None:
        for d in [out, *tmp_path.glob(".idx.build-*")]:
            shutil.rmtree(d, ignore_errors=True)
        if existing:
            shutil.copytree(corpora["ref_a"], out)

    outcomes = []
    for k in range(60):
        reset()
        killed = _build_killed_at_step(corpora["b"], out, k)
        state = _state(out, corpora)
        assert state in (("old", "new") if existing else ("absent", "new")), (k, state)
        outcomes.append(state)
        if not killed:
            break
    else:
        pytest.fail("the build never completed")
    switched = outcomes.index("new")  # the old state up to the switch, the new one from it on
    assert switched > 0 and set(outcomes[:switched]) == {outcomes[0]} and set(outcomes[switched:]) == {"new"}
    # killed at its last step (after the switch when replacing, at it when new): it leaves a staging directory or
    # the old parts behind, which the next build clears
    reset()
    assert _build_killed_at_step(corpora["b"], out, len(outcomes) - 2)
    assert _leftovers(out)
    build_index([corpora["b"]], out)
    assert _state(out, corpora) == "new" and _leftovers(out) == []


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_index_build_cli_killed_at_random_moments(corpora, tmp_path):
    """`kill -9` of `itd index build` replacing an index, at three random moments: the old or the new index,
    which `itd check` reads with the verdict of that index."""
    out = tmp_path / "idx"
    shutil.copytree(corpora["ref_a"], out)
    cmd = [sys.executable, "-m", "itd.cli.commands", "index", "build", "-c", str(corpora["b"]), "-o", str(out), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=300)
    full = time.perf_counter() - t0
    rng = random.Random()
    for _ in range(3):
        shutil.rmtree(out)
        shutil.copytree(corpora["ref_a"], out)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(rng.uniform(0.2, 1.1) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(out, corpora)
        check = run_cli("check", str(corpora["eval"]), "--index", str(out), "--json")
        assert check.returncode == 1, check.stderr
        found = {rec["line"] for rec in json.loads(check.stdout)["contaminated"]}
        assert found == ({1} if state == "old" else {2}), state  # test item 3 is in corpus A, item 50 in B


def test_mixed_or_corrupted_index_is_refused(corpora, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(corpora["ref_a"], a)
    shutil.copytree(corpora["ref_b"], b)
    part_a = next(a.glob("parts-*")) / "raw_13.npy"
    part_b = next(b.glob("parts-*")) / "raw_13.npy"
    # a part of another build copied in: its size does not match
    shutil.copy(part_b, part_a)
    res = run_cli("check", str(corpora["eval"]), "--index", str(a))
    assert res.returncode == 2 and "raw_13.npy" in res.stderr and "Traceback" not in res.stderr
    # a missing part
    part_a.unlink()
    res = run_cli("check", str(corpora["eval"]), "--index", str(a))
    assert res.returncode == 2 and "missing" in res.stderr
    # index.json pointing at the parts of another build
    shutil.rmtree(a)
    shutil.copytree(corpora["ref_a"], a)
    meta = json.loads((a / "index.json").read_text())
    meta["build"] = json.loads((b / "index.json").read_text())["build"]
    (a / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexIntegrityError, match="do not belong together"):
        NGramIndex(a)
    # same-size corruption: the cheap check cannot see it, the SHA-256 check can
    shutil.rmtree(a)
    shutil.copytree(corpora["ref_a"], a)
    part_a = next(a.glob("parts-*")) / "raw_13.npy"
    data = bytearray(part_a.read_bytes())
    data[-8:] = bytes(8)
    part_a.write_bytes(bytes(data))
    NGramIndex(a)
    with pytest.raises(IndexIntegrityError, match="SHA-256"):
        NGramIndex(a, verify=True)
    res = run_cli("index", "verify", str(a))
    assert res.returncode == 1 and "SHA-256" in res.stderr
    assert run_cli("index", "verify", str(corpora["ref_a"])).returncode == 0
    # an index of the old layout (format 1)
    meta = json.loads((a / "index.json").read_text())
    (a / "index.json").write_text(json.dumps({**meta, "format": 1}))
    res = run_cli("check", str(corpora["eval"]), "--index", str(a))
    assert res.returncode == 2 and "rebuild" in res.stderr


def test_failed_build_leaves_nothing(corpora, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpora["a"].read_text().splitlines()[0] + "\n{not json\n", encoding="utf-8")
    out = tmp_path / "new" / "deeper" / "idx"
    res = run_cli("index", "build", "-c", str(bad), "-o", str(out), "-q")
    assert res.returncode == 2 and f"{bad}:2" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == [bad]  # not even the parent directories it made
    # replacing: the old index is untouched, nothing is left beside it
    out = tmp_path / "idx"
    shutil.copytree(corpora["ref_a"], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run_cli("index", "build", "-c", str(bad), "-o", str(out), "-q")
    assert res.returncode == 2
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "idx"]
    # a directory that is not an index is not written into
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(InputError, match="not replacing"):
        build_index([corpora["a"]], other)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]


# ---- worker processes end with their parent --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its new parent has not reaped yet)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_scan_workers_end_with_their_parent(shared_data, tmp_path, sig):
    """`itd scan -j 2` killed by a signal its Python cannot catch or does not handle: no worker survives it."""
    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()]
    texts = [t["question"] + "\n" + t["answer"] for t in train]
    for i in range(4):  # four files, four shards of ~30 MB: both workers are busy for a while, even at full speed
        _write_corpus(tmp_path / f"c{i}.jsonl", texts * 8)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join((shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()[:50]) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "itd.cli.commands", "scan", str(bench), "-c", str(tmp_path), "-j", "2",
                             "--detector", "minhash", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while len(workers := _children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(workers) >= 2, "the scan did not start its two workers"
        time.sleep(0.2)
        assert all(_running(w) for w in workers)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.time() + 5
        while any(_running(w) for w in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _running(w)], "a worker outlived the scan"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


_PARENT = """
import os, sys, time, multiprocessing as mp
from itd.core import processes
def busy(parent, watchdog):
    if watchdog:  # the fallback of platforms without prctl
        processes._set_pdeathsig = lambda: False
    processes.die_with_parent(parent, poll_s=0.1)
    while True:  # CPU-bound, as a worker is: the watchdog thread must still get its turn
        sum(range(1000))

if __name__ == "__main__":
    child = mp.get_context(sys.argv[1]).Process(target=busy, args=(os.getpid(), sys.argv[2] == "watchdog"))
    child.start()
    print(child.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
def test_die_with_parent_on_sigkill(tmp_path, how):
    """A worker (spawned, as the scoring replicas are) ends when its parent is SIGKILLed: through the kernel's
    parent-death signal, and through the watchdog thread used where there is none."""
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), "spawn", how], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(parent.stdout.readline())
    try:
        time.sleep(0.5)
        assert _running(child)
        parent.kill()
        parent.wait()
        deadline = time.time() + 5
        while _running(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(child), f"the worker outlived its parent ({how})"
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)


# ---- long documents in windows ----------------------------------------------------------------------------------
def test_window_spans_keep_tokens_and_every_run_of_k_tokens():
    """Windows cut between tokens (each window's tokens are the text's own tokens there) and every run of
    `overlap` consecutive tokens lies whole in one window; on text with numbers, annotations and option markers."""
    rng = random.Random(7)
    words = ["apples", "1,000", "3.5", "<<4*5=20>>20", "(b)", "B.", "x", "costs", "$12", "a-b", "--", "\n", "\n\n",
             "sold", "half", "eggs,", "it's", "#### 18", "élan", "naïve", "’quoted’"]
    for trial in range(30):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(200, 3000)))
        # windows of `size` characters (grown up to 4x) hold twice k of these tokens
        size, k = rng.choice([(64, 1), (64, 5), (200, 5), (200, 13), (1000, 13), (1000, 40)])
        whole = tokenize([normalize(text)], normalized=True)
        spans = list(window_spans(text, size, k))
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(a0 < a1 and b0 < b1 and a1 <= b0 for (a0, b0), (a1, b1) in zip(spans, spans[1:]))
        starts = whole.starts  # ASCII-length-preserving text: byte offsets are character offsets
        if not text.isascii():
            from itd.core.text import byte_to_char

            starts = byte_to_char(normalize(text), whole.starts)
        covered = np.zeros(whole.n_tokens, dtype=np.int64)  # index of the last window each token starts in
        for w, (a, b) in enumerate(spans):
            part = tokenize([normalize(text[a:b])], normalized=True)
            inside = np.flatnonzero((starts >= a) & (starts < b))
            np.testing.assert_array_equal(part.hashes, whole.hashes[inside], err_msg=f"trial {trial} window {w}")
            covered[inside] = w
        # token i and token i+k-1 are in one window: the window holding i+k-1 first also holds i
        first_window = np.full(whole.n_tokens, len(spans))
        for w, (a, b) in reversed(list(enumerate(spans))):
            first_window[(starts >= a) & (starts < b)] = w
        for i in range(whole.n_tokens - k + 1):
            w = first_window[i + k - 1]
            assert spans[w][0] <= starts[i], (trial, i)


def test_long_document_in_windows_gives_the_findings_of_one_piece(shared_data, tmp_path):
    """A 200 kB document with planted GSM8K test items, read in ~2 kB windows, gives the same report as read in
    one piece (labels, coverage, fuzzy scores, evidence offsets in the whole document), and the same index."""
    rng = random.Random(3)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:300]
    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()[:400]]
    parts = [t["question"] + "\n" + t["answer"] for t in train]
    for i in rng.sample(range(300), 8):
        parts.insert(rng.randrange(len(parts)), samples[i].question + "\n" + samples[i].answer_text())
    text = "\n\n".join(parts)
    corpus = _write_corpus(tmp_path / "one.jsonl", [text])
    docs = [d for batch in batches([Document("f", 1, text)], 2048, overlap_tokens=600) for d in batch]
    assert len(docs) > 20 and docs[0].offset == 0 and all(d.offset > 0 for d in docs[1:])

    def report(batch_chars: int):
        return scan(samples, [corpus], ScanConfig(detectors=("ngram", "minhash"), batch_chars=batch_chars))

    whole, windowed = report(len(text) + 1), report(2048)
    assert whole.stats["documents"] == windowed.stats["documents"] == 1
    assert len(whole.contaminated) >= 8
    assert [r.to_dict() for r in windowed.results] == [r.to_dict() for r in whole.results]
    for r in whole.contaminated:
        for ev in r.to_dict()["evidence"]:
            assert text[ev["start"] : ev["end"]] == ev["text"]
    build_index([corpus], tmp_path / "whole", batch_chars=len(text) + 1)
    build_index([corpus], tmp_path / "windowed", batch_chars=1024)
    assert _same_content(tmp_path / "windowed", tmp_path / "whole")


def test_long_benchmark_item_is_matched_by_its_opening_and_ending(shared_data, tmp_path):
    """An item of ~5,000 tokens (over `MAX_MATCH_TOKENS`): a corpus copy of it is found by both detectors, with
    the label (its ending holds the answer); a copy of its opening alone marks the input only."""
    from itd.detectors.base import MAX_MATCH_TOKENS

    train = [json.loads(x) for x in (shared_data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()[:90]]
    question = "\n".join(t["question"] for t in train)
    answer = "\n".join(t["answer"].split("####")[0] for t in train[:30]) + "\n#### 7"
    item = Sample(id="long", benchmark="gsm8k", question=question, answer="7", solution=answer)
    assert tokenize([question + answer]).n_tokens > 2 * MAX_MATCH_TOKENS
    small = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:50]
    corpus = _write_corpus(tmp_path / "c.jsonl", ["filler text " * 50, question + "\n" + answer])
    opening = _write_corpus(tmp_path / "o.jsonl", ["\n".join(t["question"] for t in train[:60])])
    config = ScanConfig(detectors=("ngram", "minhash"))
    full = scan(small + [item], [corpus], config).results[-1]
    assert full.label == "input_and_label_contaminated" and set(full.to_dict()["detected_by"]) == {"ngram", "minhash"}
    assert all(len(e.text) < len(question) for f in full.findings for e in f.evidence)  # bounded evidence
    part = scan(small + [item], [opening], ScanConfig(detectors=("minhash",))).results[-1]
    assert part.label == "input_contaminated"
