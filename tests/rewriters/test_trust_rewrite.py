"""Rewriting can be trusted with any input: text arithmetic is bounded, one bad item fails only itself, a dead or
lost LLM endpoint stops the run (exit 2) instead of "rejecting" every item, and the rewritten set, its log and
their manifests change together or not at all (also under `kill -9`)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itd.cli.commands import main
from itd.core import load_benchmark
from itd.core.errors import EndpointError, InputError
from itd.core.io import atomic_group, manifest_path
from itd.rewriters.base import Candidate, NotRewritable
from itd.rewriters.chain import MAX_DIGITS, ChainCheck, ExpressionError, check_chain, evaluate
from itd.rewriters.loop import rewrite
from itd.rewriters.numeric import NumericRewriter
from itd.rewriters.verify import Verifier, VerifyConfig

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
NO_EMBED = VerifyConfig(embedder="off")
DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there

# ---------------------------------------------------------------------------------------------------------------------
# crafted annotations on real GSM8K items

BIG = "9" * 50_000
CRAFTED = {  # line of test.jsonl (1-based) -> (how the item is broken, the reason it must be rejected with)
    2: ("<<7/0=0>>", "annotation: division by zero at <<7/0=0>>"),
    3: ("<<9**9**9**9=1>>", "annotation: exponent 387420489 too large (limit 64) at <<9**9**9**9=1>>"),
    4: ("<<10**100000=1>>", "annotation: exponent 100000 too large (limit 64) at <<10**100000=1>>"),
    5: ("question", f"number too large: 50000 digits in the question (limit {MAX_DIGITS})"),
    6: ("<<" + "-" * 150 + "1=-1>>", "unsupported annotation: step 1: expression nested too deeply (limit 100 levels)"),
}


def _break(rec: dict, how: str) -> dict:
    rec = dict(rec)
    if how == "question":
        rec["question"] += f" The jar holds {BIG} grains."
    else:  # the item's first annotation replaced by the crafted one
        start = rec["answer"].index("<<")
        rec["answer"] = rec["answer"][:start] + how + rec["answer"][rec["answer"].index(">>", start) + 2:]
    return rec


@pytest.fixture
def crafted(shared_data, tmp_path) -> Path:
    """The first 10 GSM8K test items in a tmp copy, five of them broken as `CRAFTED` says."""
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:10]
    recs = [json.loads(line) for line in lines]
    for n, (how, _) in CRAFTED.items():
        recs[n - 1] = _break(recs[n - 1], how)
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def test_crafted_annotations_reject_their_item_with_the_reason(crafted):
    rewriter = NumericRewriter()
    for sample in load_benchmark(crafted):
        line = sample.source.line
        if line in CRAFTED:
            with pytest.raises(NotRewritable) as exc:
                rewriter.propose(sample)
            assert exc.value.reason == CRAFTED[line][1]


def test_cli_numeric_rewrite_goes_on_past_crafted_items(crafted, tmp_path):
    out = tmp_path / "out" / "test.jsonl"
    res = subprocess.run([sys.executable, "-m", "itd.cli.commands", "rewrite", str(crafted), "--method", "numeric", "--out",
                          str(out), "--json", "-q"], capture_output=True, text=True, env=ENV, cwd=str(ROOT), timeout=300)
    assert res.returncode == 1, res.stderr  # some items rejected: not a crash (2) nor a traceback
    assert "Traceback" not in res.stderr
    summary = json.loads(res.stdout)
    log = {r["id"]: r for r in map(json.loads, Path(str(out) + ".log.jsonl").read_text().splitlines())}
    originals = {s.id: s for s in load_benchmark(crafted)}
    written = {s.id: s for s in load_benchmark(out)}
    assert list(written) == list(originals)  # the whole set, in order
    for sid, s in originals.items():
        if s.source.line in CRAFTED:
            assert log[sid]["status"] == "rejected"
            assert {a["reason"] for a in log[sid]["attempts"]} == {CRAFTED[s.source.line][1]}
            assert written[sid].question == s.question and written[sid].solution == s.solution  # kept unchanged
    assert summary["counts"]["rewritten"] >= 3  # the sound items are rewritten as usual
    assert json.loads(manifest_path(out).read_text())["summary"]["counts"] == summary["counts"]


# ---------------------------------------------------------------------------------------------------------------------
# fuzzing the chain evaluator

_NUMBERS = st.one_of(
    st.integers(0, 10**6).map(str),
    st.from_regex(r"[0-9]{1,6}\.[0-9]{1,8}", fullmatch=True),
    st.integers(1, 2 * MAX_DIGITS).map(lambda n: "9" * n),  # long numerals, some over the bound
    st.sampled_from(["0", "0.0", ".5", "1,000", "$2.50", "20%", "7.", "1e5", "x", "1_0", "()", "١٢"]),
)
_OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", " x ", "×", "÷", "−"])


def _compound(children):
    return st.one_of(
        st.tuples(children, _OPS, children).map("".join),
        children.map(lambda e: f"({e})"),
        children.map(lambda e: f"-{e}"),
    )


_EXPRESSIONS = st.one_of(
    st.recursive(_NUMBERS, _compound, max_leaves=40),
    st.lists(st.integers(0, 999).map(str), min_size=2, max_size=6).map("**".join),  # power towers
    st.integers(1, 400).map(lambda n: "-" * n + "1"),  # deep nesting
    st.integers(1, 400).map(lambda n: "(" * n + "1" + ")" * n),
    st.text(alphabet=list("0123456789+-*/%().,$x×÷ eE_<>="), max_size=400),
)


@settings(max_examples=400, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])
@given(_EXPRESSIONS)
def test_chain_evaluator_returns_a_value_or_its_own_error(expr):
    try:
        value = evaluate(expr)
    except ExpressionError:
        return
    assert isinstance(value, Fraction)
    assert len(str(abs(value.numerator))) <= MAX_DIGITS + 1 and len(str(value.denominator)) <= MAX_DIGITS + 1


@settings(max_examples=200, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])
@given(_EXPRESSIONS, st.one_of(_NUMBERS, st.text(max_size=50)), st.one_of(st.none(), _NUMBERS))
def test_check_chain_always_gives_a_verdict(expr, result, expected):
    check = check_chain(f"So {expr} = <<{expr}={result}>>{result} in all.\n#### {result}", expected)
    assert isinstance(check, ChainCheck) and (check.ok or check.reason)


@pytest.fixture(scope="module")
def janet(shared_data):
    return load_benchmark(shared_data / "gsm8k" / "test.jsonl")[0]


@settings(max_examples=60, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow,
                                                                                   HealthCheck.function_scoped_fixture])
@given(_EXPRESSIONS)
def test_numeric_rewriter_proposes_or_says_why_on_any_annotation(janet, expr):
    import dataclasses

    sol = janet.solution.replace("<<16-3-4=9>>", f"<<{expr}=9>>")
    try:
        cand = NumericRewriter(max_tries=200).propose(dataclasses.replace(janet, solution=sol))
    except NotRewritable as exc:
        assert exc.reason and not exc.reason.startswith("error:")
    else:
        assert isinstance(cand, Candidate)


# ---------------------------------------------------------------------------------------------------------------------
# one bad item is that item's problem


@pytest.fixture(scope="module")
def items(shared_data):
    return load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:8]


@pytest.fixture(scope="module")
def baseline(items):
    return {it.original.id: it.status for it in rewrite(items, NumericRewriter(), NO_EMBED, rounds=1).items}


def _victim(items, baseline):
    return next(s.id for s in items if baseline[s.id] == "rewritten")


def _statuses_except(report, victim):
    return {it.original.id: it.status for it in report.items if it.original.id != victim}


def test_an_exception_in_the_rewriter_rejects_only_its_item(items, baseline, monkeypatch):
    victim = _victim(items, baseline)
    real = NumericRewriter.propose

    def propose(self, sample, attempt=0):
        if sample.id == victim:
            raise RuntimeError("boom in the rewriter")
        return real(self, sample, attempt)

    monkeypatch.setattr(NumericRewriter, "propose", propose)
    report = rewrite(items, NumericRewriter(), NO_EMBED, rounds=1)
    it = next(i for i in report.items if i.original.id == victim)
    assert it.status == "rejected" and it.reasons == ["error: rewriter: RuntimeError: boom in the rewriter"]
    assert _statuses_except(report, victim) == {k: v for k, v in baseline.items() if k != victim}
    assert report.summary()["rejection_reasons"].get("error: rewriter") == 1


def test_a_batch_that_raises_is_split_until_the_bad_item(items, baseline, monkeypatch):
    victim = _victim(items, baseline)
    real_propose, real_verify = NumericRewriter.propose_many, Verifier.verify_many
    calls = []

    def propose_many(self, jobs, progress=None):
        calls.append(len(jobs))
        if any(s.id == victim for s, _ in jobs):
            raise KeyError("a batch-level failure")
        return real_propose(self, jobs, progress)

    monkeypatch.setattr(NumericRewriter, "propose_many", propose_many)
    report = rewrite(items, NumericRewriter(), NO_EMBED, rounds=1)
    assert calls[0] == len(items) and len(calls) < 2 * len(items)  # halves, not one call per item
    assert next(i for i in report.items if i.original.id == victim).reasons == ["error: rewriter: KeyError: 'a batch-level failure'"]
    assert _statuses_except(report, victim) == {k: v for k, v in baseline.items() if k != victim}

    monkeypatch.setattr(NumericRewriter, "propose_many", real_propose)

    def verify_many(self, pairs, kind):
        if any(o.id == victim for o, _ in pairs):
            raise ZeroDivisionError("verify blew up")
        return real_verify(self, pairs, kind)

    monkeypatch.setattr(Verifier, "verify_many", verify_many)
    report = rewrite(items, NumericRewriter(), NO_EMBED, rounds=1)
    assert next(i for i in report.items if i.original.id == victim).reasons == ["error: verify: ZeroDivisionError: verify blew up"]
    assert _statuses_except(report, victim) == {k: v for k, v in baseline.items() if k != victim}


class _FlakyAssurance:
    name = "flaky"

    def __init__(self, victim):
        self.victim = victim

    def still_flagged(self, samples, kind):
        if any(s.id == self.victim for s in samples):
            raise ValueError("the detector broke on this item")
        return {}


def test_an_exception_in_assurance_rejects_only_its_item(items, baseline):
    victim = _victim(items, baseline)
    report = rewrite(items, NumericRewriter(), NO_EMBED, rounds=1, assurance=[_FlakyAssurance(victim)])
    it = next(i for i in report.items if i.original.id == victim)
    assert it.status == "rejected" and it.reasons == ["error: assurance (flaky): ValueError: the detector broke on this item"]
    assert _statuses_except(report, victim) == {k: v for k, v in baseline.items() if k != victim}


def test_a_lost_endpoint_stops_the_loop(items, monkeypatch):
    def propose(self, sample, attempt=0):
        raise EndpointError("lost the LLM endpoint http://x/v1", "http://x/v1")

    monkeypatch.setattr(NumericRewriter, "propose", propose)
    with pytest.raises(EndpointError, match="lost the LLM endpoint"):
        rewrite(items, NumericRewriter(), NO_EMBED, rounds=1)


# ---------------------------------------------------------------------------------------------------------------------
# endpoints: checked before the work, a lost one stops the run


@pytest.fixture
def gsm8k_file(shared_data, tmp_path) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_text("".join((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines(keepends=True)[:6]))
    return path


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ITD_API_KEY", "sk-trust-test-SECRET-123456")


def test_unreachable_endpoint_is_exit_2_at_once_naming_the_url(gsm8k_file, tmp_path, capsys, key):
    pytest.importorskip("openai")
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    rc = main(["rewrite", str(gsm8k_file), "--method", "llm", "--model", "m", "--base-url",
               "http://user:hunter2@127.0.0.1:9/v1?api-key=hunter3", "--out", str(out), "-q"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and "cannot connect to http://<redacted>@127.0.0.1:9/v1" in err, err
    assert "hunter2" not in err and "hunter3" not in err and "sk-trust-test" not in err
    assert elapsed < 15  # not minutes of retries
    assert not out.exists() and not Path(str(out) + ".log.jsonl").exists()  # no set that pretends to be a result


def test_scan_judge_and_run_endpoints_are_checked_first(gsm8k_file, tmp_path, capsys, key):
    pytest.importorskip("openai")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("nothing to see here\n")
    rc = main(["scan", str(gsm8k_file), "--corpus", str(corpus), "--detector", "semantic", "--judge-model", "j",
               "--judge-base-url", DEAD, "-q"])
    assert rc == 2 and f"cannot connect to {DEAD}" in capsys.readouterr().err

    config = tmp_path / "run.toml"
    config.write_text(f'[benchmark]\npath = "{gsm8k_file.name}"\n\n[model]\nname = "m"\nbase_url = "{DEAD}"\n')
    rc = main(["run", str(config), "--out", str(tmp_path / "run"), "-q"])
    assert rc == 2 and f"cannot connect to {DEAD}" in capsys.readouterr().err


def _snapshot(out: Path) -> dict[str, bytes | None]:
    paths = [out, manifest_path(out), Path(str(out) + ".log.jsonl"), manifest_path(Path(str(out) + ".log.jsonl"))]
    return {p.name: (p.read_bytes() if p.exists() else None) for p in paths}


def test_endpoint_lost_midway_stops_with_exit_2_keeps_the_cache_and_the_old_set(gsm8k_file, tmp_path, capsys, key):
    pytest.importorskip("openai")
    from openai_server import OpenAIServer, rewrite_responder

    out, cache = tmp_path / "out.jsonl", tmp_path / "cache"
    args = ["rewrite", str(gsm8k_file), "--method", "llm", "--model", "test-model", "--embedder", "off",
            "--cache-dir", str(cache), "--concurrency", "1", "--max-retries", "1", "--timeout", "5", "--rounds", "1",
            "--out", str(out), "--json", "-q"]
    with OpenAIServer(rewrite_responder) as server:
        assert main(args + ["--base-url", server.url, "--seed", "0"]) in (0, 1)
    old = _snapshot(out)
    assert all(v is not None for v in old.values())
    capsys.readouterr()

    server = OpenAIServer()
    served = []

    def dying(request):  # answers two requests, then the server goes away
        served.append(1)
        if len(served) == 2:
            server._closing.set()  # nothing after this request is answered; the socket closes next
            threading.Thread(target=server.close).start()
        return rewrite_responder(request)

    server.responder = dying
    try:
        rc = main(args + ["--base-url", server.url, "--seed", "7"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert rc == 2 and f"lost the LLM endpoint {server.url}" in err, err
    assert "run again" in err
    assert _snapshot(out) == old  # the previous outputs, whole; no set claiming to be this run's
    assert len(list(cache.rglob("*.json"))) >= 6 + 1  # the first run's 6 replies and this run's answered ones
    with OpenAIServer(rewrite_responder) as again:
        assert main(args + ["--base-url", again.url, "--seed", "7"]) in (0, 1)
        summary = json.loads(capsys.readouterr().out)
        assert summary["stats"]["cache_hits"] >= 1 and again.calls == 6 - summary["stats"]["cache_hits"]
    assert _snapshot(out) != old


# ---------------------------------------------------------------------------------------------------------------------
# outputs commit as one unit


def _group(tmp_path: Path) -> list[Path]:
    out = tmp_path / "o" / "set.jsonl"
    log = tmp_path / "o" / "set.jsonl.log.jsonl"
    return [out, manifest_path(out), log, manifest_path(log)]


def _commit(paths: list[Path], tag: str, skip: int | None = None) -> None:
    with atomic_group(paths) as staged:
        for n, p in enumerate(paths):
            if n != skip:
                staged.path(p).write_text(f"{tag} {p.name}\n" * 200)


def _read(paths: list[Path]) -> tuple[str | None, ...]:
    return tuple(p.read_text() if p.exists() else None for p in paths)


def _expect(paths: list[Path], tag: str | None, skip: int | None = None) -> tuple[str | None, ...]:
    return tuple(None if tag is None or n == skip else f"{tag} {p.name}\n" * 200 for n, p in enumerate(paths))


def test_atomic_group_commits_replaces_and_drops_members(tmp_path):
    paths = _group(tmp_path)
    with pytest.raises(RuntimeError):  # a first commit that fails leaves nothing behind
        with atomic_group(paths):
            raise RuntimeError("the run failed")
    assert list(paths[0].parent.iterdir()) == []
    _commit(paths, "one")
    assert _read(paths) == _expect(paths, "one")
    _commit(paths, "two", skip=0)  # a member not written is absent afterwards (no stale set beside a new log)
    assert _read(paths) == _expect(paths, "two", skip=0)
    with pytest.raises(RuntimeError):
        with atomic_group(paths) as staged:
            staged.path(paths[0]).write_text("half")
            raise RuntimeError("the run failed")
    assert _read(paths) == _expect(paths, "two", skip=0)
    store = paths[0].parent / ".set.jsonl.itd"
    assert [p.name for p in store.iterdir() if p.name.startswith(("g-", "s-"))] == [os.readlink(store / "current")]


def test_concurrent_commits_wait_for_each_other(tmp_path):
    paths = _group(tmp_path)
    errors = []

    def writer(tag: str) -> None:
        try:
            for i in range(5):
                _commit(paths, f"{tag}{i}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _read(paths) in (_expect(paths, "a4"), _expect(paths, "b4"))


def test_atomic_group_takes_over_plain_outputs_and_refuses_a_foreign_directory(tmp_path):
    paths = _group(tmp_path)
    paths[0].parent.mkdir(parents=True)
    for p in paths[:2]:  # outputs of an older itd: plain files
        p.write_text("older")
    _commit(paths, "new")
    assert _read(paths) == _expect(paths, "new") and all(p.is_symlink() for p in paths)

    older = tmp_path / "older-set"  # a set directory of an older itd, its manifest beside it
    older.mkdir()
    (older / "a.csv").write_text("older")
    manifest_path(older).write_text(json.dumps({"tool": "itd", "command": "rewrite"}))
    with atomic_group([older, manifest_path(older)]) as staged:
        staged.path(older).mkdir()
        staged.path(older).joinpath("b.csv").write_text("new")
        staged.path(manifest_path(older)).write_text("{}")
    assert [p.name for p in older.iterdir()] == ["b.csv"] and manifest_path(older).read_text() == "{}"

    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="no itd output"):
        with atomic_group([mine, manifest_path(mine)]):
            pass
    assert (mine / "precious.txt").read_text() == "keep me"


def test_cli_directory_output_is_replaced_as_a_whole(shared_data, tmp_path, capsys):
    bench = tmp_path / "mmlu"
    bench.mkdir()
    for name in ("anatomy_test.csv", "abstract_algebra_test.csv"):
        lines = (shared_data / "mmlu" / "test" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (bench / name).write_text("".join(lines[:6]), encoding="utf-8")
    out = tmp_path / "clean"
    assert main(["rewrite", str(bench), "--method", "permute", "--out", str(out), "-q"]) in (0, 1)
    assert sorted(p.name for p in out.iterdir()) == ["abstract_algebra_test.csv", "anatomy_test.csv"]
    first = {p.name: p.read_text() for p in out.iterdir()}
    (bench / "abstract_algebra_test.csv").unlink()  # the next run writes one file: the other one must not linger
    assert main(["rewrite", str(bench), "--method", "permute", "--seed", "1", "--out", str(out), "-q"]) in (0, 1)
    assert [p.name for p in out.iterdir()] == ["anatomy_test.csv"] and out.joinpath("anatomy_test.csv").read_text() != first["anatomy_test.csv"]
    assert json.loads(manifest_path(out).read_text())["config"]["method"]["seed"] == 1

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["rewrite", str(bench), "--method", "permute", "--out", str(mine), "-q"]) == 2
    assert "no itd output" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"


_FS_STEPS = ("replace", "rename", "symlink", "link")


class _Crash(BaseException):
    """Stands for the process stopping at that step: no handler of the code under test catches it."""


@pytest.mark.parametrize("older", ["group", "plain", "none"])
def test_a_crash_at_any_step_leaves_the_complete_old_or_new_set(tmp_path, monkeypatch, older):
    """Every file-system step of a commit in turn fails (as a crash there would stop it): afterwards the outputs
    are all old or all new, and the next commit succeeds."""
    counter = {"n": 0, "fail_at": 0}
    real = {name: getattr(os, name) for name in _FS_STEPS}

    def wrap(name):
        def step(*args, **kwargs):
            counter["n"] += 1
            if counter["n"] == counter["fail_at"]:
                raise _Crash(f"injected crash at {name} #{counter['n']}")
            return real[name](*args, **kwargs)
        return step

    def setup(root: Path) -> list[Path]:
        paths = _group(root)
        if older == "group":
            _commit(paths, "old")
        elif older == "plain":
            paths[0].parent.mkdir(parents=True)
            for p in paths:
                p.write_text(f"old {p.name}\n" * 200)
        return paths

    for name in _FS_STEPS:
        monkeypatch.setattr(os, name, wrap(name))
    paths = setup(tmp_path / "count")
    counter.update(n=0, fail_at=0)
    _commit(paths, "new")
    steps = counter["n"]
    assert steps >= 2
    old = _expect(paths, None if older == "none" else "old")
    for k in range(1, steps + 1):
        paths = setup(tmp_path / f"crash{k}")
        counter.update(n=0, fail_at=k)
        with pytest.raises(_Crash):
            _commit(paths, "new")
        counter.update(fail_at=0)
        assert _read(paths) in (old, _expect(paths, "new")), f"a mix after a crash at step {k}"
        _commit(paths, "newer")
        assert _read(paths) == _expect(paths, "newer")


def test_cli_rewrite_with_os_replace_failing_after_the_first_call_keeps_the_old_outputs(gsm8k_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["rewrite", str(gsm8k_file), "--method", "numeric", "--out", str(out), "-q"]) in (0, 1)
    old = _snapshot(out)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise OSError("injected crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(["rewrite", str(gsm8k_file), "--method", "numeric", "--seed", "3", "--out", str(out), "-q"]) == 2
    assert "injected crash" in capsys.readouterr().err
    monkeypatch.setattr(os, "replace", real)
    assert _snapshot(out) == old


COMMITTER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from itd.core.io import atomic_group

    paths = [Path(p) for p in sys.argv[1:]]
    gen = 0
    while True:
        gen += 1
        with atomic_group(paths) as staged:
            for p in paths:
                staged.path(p).write_text(f"{gen}\\n" * 5000)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_at_random_moments_leaves_one_generation(tmp_path):
    paths = _group(tmp_path)
    rng = random.Random(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", COMMITTER, *map(str, paths)], env=ENV, cwd=str(ROOT))
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = {p.read_text() if p.exists() else None for p in paths}
        assert len(seen) == 1, "outputs of different commits side by side"
    assert seen != {None}  # some commit got through


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_of_itd_rewrite_leaves_the_old_or_the_new_outputs(gsm8k_file, tmp_path):
    def run(out: Path, seed: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "itd.cli.commands", "rewrite", str(gsm8k_file), "--method", "numeric",
                                 "--seed", str(seed), "--out", str(out), "-q"], env=ENV, cwd=str(ROOT),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    reference = tmp_path / "ref" / "out.jsonl"  # what an uninterrupted run with seed 1 writes
    t0 = time.monotonic()
    assert run(reference, 1).wait(timeout=300) in (0, 1)
    duration = time.monotonic() - t0
    new_set = reference.read_bytes()
    new_log = Path(str(reference) + ".log.jsonl").read_bytes()

    out = tmp_path / "out.jsonl"
    assert run(out, 0).wait(timeout=300) in (0, 1)
    rng = random.Random(1)
    for _ in range(2):
        before = _snapshot(out)
        proc = run(out, 1)
        time.sleep(rng.uniform(0.2, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = _snapshot(out)
        if after != before:  # then it is the whole new generation
            assert after["out.jsonl"] == new_set and after["out.jsonl.log.jsonl"] == new_log
            set_manifest = json.loads(after["out.jsonl.manifest.json"])
            log_manifest = json.loads(after["out.jsonl.log.jsonl.manifest.json"])
            assert set_manifest["created"] == log_manifest["created"] and set_manifest["config"]["method"]["seed"] == 1


def test_every_stage_of_a_round_reports_its_completion(items):
    seen: dict[str, tuple[int, int]] = {}
    rewrite(items, NumericRewriter(), NO_EMBED, rounds=1, assurance=[_FlakyAssurance(victim=None)],
            progress=lambda stage, done, total, counters: seen.__setitem__(stage, (done, total)))
    stages = {s: v for s, v in seen.items() if s.startswith("round 1")}
    assert set(stages) == {"round 1: rewriting", "round 1: verifying", "round 1: assurance (flaky)"}
    assert all(done == total > 0 for done, total in stages.values()), stages
