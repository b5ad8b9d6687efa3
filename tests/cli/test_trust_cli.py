"""Trustworthy command line: bad option values, unwritable or clobbering outputs, unreadable inputs (FIFOs,
symlink loops) and unknown names are usage errors (exit 2, no traceback) raised before any work; URL credentials
never reach a file; every option's documented environment variable works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from itd.cli import commands as itd_cli
from itd.cli.commands import FiniteFloat, main
from itd.core.errors import InputError
from itd.core.io import build_manifest, redact_text, redact_url, url_secrets
from itd.core.registry import Registry, close_names

ROOT = Path(__file__).resolve().parents[2]
SECRET_URL = "http://user:sekret@127.0.0.1:9/v1?api_key=sekret2"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m itd.cli.commands` of this checkout, as a user runs it."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "itd.cli.commands", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def usage_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    return res.stderr


@pytest.fixture
def files(tmp_path, shared_data):
    """A small GSM8K benchmark and a one-document corpus in `tmp_path`."""
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(lines[:20]) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Nothing of the benchmark is in here."}) + "\n", encoding="utf-8")
    return bench, corpus


def _commands(group: click.Group = itd_cli.cli, path: tuple[str, ...] = ()):
    """(command path, command) of every leaf command of the click tree."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _options():
    return [(path, cmd, p) for path, cmd in _commands() for p in cmd.params
            if isinstance(p, click.Option) and p.expose_value]


def _arguments(cmd: click.Command) -> list[str]:
    """Placeholder values of a command's required arguments."""
    return ["placeholder" for p in cmd.params if isinstance(p, click.Argument) and p.required]


# ---- 1. float options ------------------------------------------------------------------------------------------
FLOAT_OPTIONS = [(path, p) for path, _, p in _options() if isinstance(p.type, click.types.FloatParamType)]


def test_there_are_float_options_to_check():
    assert len(FLOAT_OPTIONS) >= 15


@pytest.mark.parametrize("path,option", FLOAT_OPTIONS, ids=lambda v: "-".join(v) if isinstance(v, tuple) else v.name)
def test_every_float_option_refuses_nan_and_infinities(path, option):
    assert isinstance(option.type, FiniteFloat), f"{' '.join(path)} {option.opts[0]} must use FiniteFloat"
    for bad in ("nan", "NaN", "inf", "-inf", "1e999"):
        with pytest.raises(click.BadParameter, match="not a finite number"):
            option.type.convert(bad, option, None)


def test_nan_thresholds_are_usage_errors_end_to_end(files):
    bench, corpus = files
    for flag in ("--input-threshold", "--label-threshold", "--fuzzy-min-score"):
        for value in ("nan", "inf", "-inf"):
            err = usage_error(run_cli("scan", str(bench), "-c", str(corpus), flag, value))
            assert f"Invalid value for '{flag}'" in err and "not a finite number" in err
    err = usage_error(run_cli("scan", str(bench), "-c", str(corpus), "--fuzzy-min-score", "-5"))
    assert "--fuzzy-min-score" in err


def test_finite_float_keeps_its_bounds():
    t = FiniteFloat(0, 1, min_open=True)
    assert t.convert("0.5", None, None) == 0.5
    with pytest.raises(click.BadParameter):
        t.convert("0", None, None)
    with pytest.raises(click.BadParameter):
        t.convert("1.5", None, None)
    assert FiniteFloat().convert("-3.25", None, None) == -3.25


def test_help_shows_ranges_but_no_empty_one(capsys):
    """An unbounded float option's help names no range (click would print "x<=None")."""
    assert main(["detect", "--help"]) == 0
    text = capsys.readouterr().out
    assert "0<x<1" in text and "None]" not in text


@pytest.mark.parametrize("args,message", [(["--preset", "huge"], "unknown lab preset 'huge'"),
                                          (["--device", "gpu"], "device must be"),
                                          (["--seed", "-1"], "-1 is not in the range x>=0")])
def test_bad_demo_options_are_input_errors_before_anything_is_written(tmp_path, capsys, args, message):
    assert main(["demo", "--out", str(tmp_path / "demo"), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "demo").exists()


# ---- 2. outputs checked before any work ------------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Make every command's expensive step fail the test if it is reached."""
    import itd.corpus.index
    import itd.corpus.scan
    import itd.lab
    import itd.pipeline.demo
    import itd.pipeline.run
    import itd.probes.models
    import itd.rewriters.loop

    def reached(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    for module, name in ((itd.corpus.scan, "scan"), (itd.corpus.index, "build_index"), (itd.lab, "build_lab"),
                         (itd.pipeline.demo, "run_demo"), (itd.probes.models, "load_model"), (itd.rewriters.loop, "rewrite")):
        monkeypatch.setattr(module, name, reached)
    monkeypatch.setattr(itd.pipeline.run.Pipeline, "run", reached)


def _bad_outputs(tmp_path, bench, corpus):
    """(argv, expected message) pairs of outputs that cannot be written or would destroy an input."""
    regular = tmp_path / "regular.txt"
    regular.write_text("x")
    link = tmp_path / "link.jsonl"
    link.symlink_to(corpus)
    bench_link = tmp_path / "bench-link.jsonl"
    bench_link.symlink_to(bench)
    hard = tmp_path / "hard.jsonl"
    os.link(bench, hard)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling-index"
    dangling.symlink_to(tmp_path / "nowhere")
    scan = ["scan", str(bench), "-c", str(corpus), "--detector", "ngram", "-q"]
    rewrite = ["rewrite", str(bench), "--method", "numeric", "-q"]
    cases = [
        (scan + ["--out", str(regular / "out.jsonl")], f"{regular} is not a directory"),
        (scan + ["--out", "/proc/itd-test/out.jsonl"], "is not writable"),
        (scan + ["--out", str(corpus)], "is an input of this command"),
        (scan + ["--out", str(link)], "is an input of this command"),
        (scan + ["--out", str(bench)], "is an input of this command"),
        (scan + ["--out", str(fifo)], "named pipe"),
        (scan + ["--out", "/dev/null"], "character device"),
        (scan + ["--judge-cache-dir", str(regular / "cache")], "is not a directory"),
        (["index", "build", "-c", str(corpus), "--out", str(regular / "idx")], "is not a directory"),
        (["index", "build", "-c", str(tmp_path), "--out", str(tmp_path)], "is an input of this command"),
        (["index", "build", "-c", str(corpus), "--out", str(dangling)], "dangling symlink"),
        (rewrite + ["--out", str(bench_link)], "is an input of this command"),
        (rewrite + ["--out", str(hard)], "is an input of this command"),
        (rewrite + ["--out", str(tmp_path / "r.jsonl"), "--log", str(tmp_path / "r.jsonl")], "same path"),
        (rewrite + ["--out", str(tmp_path)], "must be a file, but this is a directory"),
        (rewrite + ["--out", str(tmp_path / "r.jsonl"), "--log", "/proc/itd-test.log"], "is not writable"),
        (["lab", "-b", str(bench), "--out", str(regular / "lab"), "-q"], "is not a directory"),
        (["demo", "--out", str(regular / "demo"), "-q"], "is not a directory"),
        (["detect", str(bench), "-m", "some-model", "--out", "/proc/itd-test.jsonl", "-q"], "is not writable"),
        (["detect", str(bench), "-m", "some-model", "--out", str(bench), "-q"], "is an input of this command"),
        (["run", "--benchmark", str(bench), "--corpus", str(tmp_path), "--out", str(tmp_path), "-q"],
         "is an input of this command"),
        (["run", "--benchmark", str(bench), "--out", str(regular / "run"), "-q"], "is not a directory"),
    ]
    config = tmp_path / "c.toml"
    config.write_text(f'[benchmark]\npath = "{bench}"\n')
    (tmp_path / "c-run").write_text("a file where the run directory goes")
    cases.append((["run", str(config), "-q"], "the run directory must be a directory"))
    return cases


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_bad_outputs_are_refused_before_any_work(files, tmp_path, capsys, no_work):
    bench, corpus = files
    for argv, expected in _bad_outputs(tmp_path, bench, corpus):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert expected in err, (argv, err)
    assert bench.read_text("utf-8").count("\n") == 20 and corpus.stat().st_size > 0  # inputs untouched


def test_bad_out_end_to_end_exits_2_at_once(files, tmp_path):
    bench, corpus = files
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    res = run_cli("scan", str(bench), "-c", str(corpus), "--out", str(blocker / "report.jsonl"))
    assert "cannot write --out here" in usage_error(res)
    assert "scanned" not in res.stderr  # refused before the scan, not after it


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only directories")
def test_output_in_a_read_only_directory_is_refused(files, tmp_path, capsys, no_work):
    bench, corpus = files
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["scan", str(bench), "-c", str(corpus), "--out", str(locked / "sub" / "r.jsonl")]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_good_outputs_pass_and_missing_parents_are_created(files, tmp_path):
    bench, corpus = files
    out = tmp_path / "new" / "deeper" / "report.jsonl"
    assert main(["scan", str(bench), "-c", str(corpus), "--detector", "ngram", "-q", "--out", str(out)]) == 0
    assert out.is_file() and (out.parent / "report.jsonl.manifest.json").is_file()
    assert not list(out.parent.glob(".itd-write-check-*"))  # the probe leaves nothing behind
    assert main(["scan", str(bench), "-c", str(corpus), "--detector", "ngram", "-q", "--out", str(out)]) == 0


# ---- 3. inputs that are not regular files ------------------------------------------------------------------------
def test_fifo_inputs_are_refused_instead_of_hanging(files, tmp_path):
    bench, corpus = files
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for args in (["scan", str(fifo), "-c", str(corpus)], ["scan", str(bench), "-c", str(fifo)],
                 ["rewrite", str(fifo), "--method", "numeric", "--out", str(tmp_path / "r.jsonl")]):
        err = usage_error(run_cli(*args, timeout=60))
        assert f"{fifo}: not a regular file: it is a named pipe (FIFO)" in err


def test_fifo_eval_file_of_check_is_refused(files, tmp_path, capsys):
    _, corpus = files
    assert main(["index", "build", "-c", str(corpus), "--out", str(tmp_path / "idx"), "-q"]) == 0
    fifo = tmp_path / "eval.jsonl"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert main(["check", str(fifo), "--index", str(tmp_path / "idx")]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_devices_and_special_files_in_directories_are_errors_not_skipped(files, tmp_path, capsys):
    bench, corpus = files
    assert main(["scan", str(bench), "-c", "/dev/zero"]) == 2
    assert "/dev/zero: not a regular file: it is a character device" in capsys.readouterr().err
    bench_dir = tmp_path / "bench_dir"
    bench_dir.mkdir()
    (bench_dir / "a.jsonl").write_bytes(bench.read_bytes())
    os.mkfifo(bench_dir / "b.jsonl")
    assert main(["scan", str(bench_dir), "-c", str(corpus)]) == 2
    assert "b.jsonl: not a regular file" in capsys.readouterr().err
    corpus_dir = tmp_path / "corpus_dir"
    corpus_dir.mkdir()
    (corpus_dir / "a.jsonl").write_bytes(corpus.read_bytes())
    (corpus_dir / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert main(["scan", str(bench), "-c", str(corpus_dir)]) == 2
    assert "gone.jsonl: dangling symlink" in capsys.readouterr().err


def test_symlink_loop_is_reported_as_such(files, tmp_path):
    bench, corpus = files
    (tmp_path / "loop_a.jsonl").symlink_to(tmp_path / "loop_b.jsonl")
    (tmp_path / "loop_b.jsonl").symlink_to(tmp_path / "loop_a.jsonl")
    loop = str(tmp_path / "loop_a.jsonl")
    for args in (["scan", loop, "-c", str(corpus)], ["scan", str(bench), "-c", loop]):
        err = usage_error(run_cli(*args))
        assert "symlink loop" in err and "no such file" not in err


@pytest.mark.skipif(AS_ROOT, reason="root reads files without read permission")
def test_unreadable_input_says_permission_denied(files, tmp_path, capsys):
    bench, corpus = files
    corpus.chmod(0)
    try:
        assert main(["scan", str(bench), "-c", str(corpus)]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        corpus.chmod(0o644)


def test_missing_and_dangling_inputs(files, tmp_path, capsys):
    bench, corpus = files
    assert main(["scan", str(tmp_path / "missing.jsonl"), "-c", str(corpus)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert main(["scan", str(tmp_path / "dangling.jsonl"), "-c", str(corpus)]) == 2
    assert "dangling symlink" in capsys.readouterr().err


# ---- 4. "did you mean" only for close names ----------------------------------------------------------------------
def test_unknown_format_suggests_only_close_names(files, capsys):
    bench, corpus = files
    assert main(["scan", str(bench), "-c", str(corpus), "--format", "xml"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean" not in err and "Known: auto, csv, gsm8k, jsonl, mmlu" in err
    assert main(["scan", str(bench), "-c", str(corpus), "--format", "jsnl"]) == 2
    assert "Did you mean 'jsonl'?" in capsys.readouterr().err


def test_close_names_cutoff():
    formats = ["csv", "gsm8k", "jsonl", "mmlu"]
    assert close_names("xml", formats) == []
    assert close_names("json", formats) == ["jsonl"]
    assert close_names("CVS", formats) == ["csv"]
    assert close_names("gsm", formats) == ["gsm8k"]
    assert close_names("ngarm", ["ngram", "minhash", "semantic"]) == ["ngram"]
    registry = Registry("widget")
    registry.register("alpha")(object())
    with pytest.raises(InputError, match=r"unknown widget 'zzz'\. Known: alpha\.$"):
        registry.get("zzz")


# ---- 5. no credentials in outputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("url,expected", [
    (SECRET_URL, "http://<redacted>@127.0.0.1:9/v1?api_key=<redacted>"),
    ("https://api.example.com/v1?key=abc&model=x", "https://api.example.com/v1?key=<redacted>&model=x"),
    ("https://h/v1?token=t1&access_token=t2", "https://h/v1?token=<redacted>&access_token=<redacted>"),
    ("https://acct.blob.core.windows.net/c/f.jsonl?sv=2022&sig=abc%2Bdef",
     "https://acct.blob.core.windows.net/c/f.jsonl?sv=2022&sig=<redacted>"),
    ("s3://b/k.jsonl?X-Amz-Credential=AKIA&X-Amz-Signature=ff", "s3://b/k.jsonl?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>"),
    ("https://ghp_TOKEN@example.com/repo", "https://<redacted>@example.com/repo"),
    ("https://h/cb#access_token=zz", "https://h/cb#access_token=<redacted>"),
    ("http://localhost:8000/v1", "http://localhost:8000/v1"),
    ("not a url at all", "not a url at all"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_text_and_url_secrets():
    assert "sekret" not in redact_text(f"request to {SECRET_URL} failed")
    # an endpoint's 404 quotes a part of the URL: only the known secrets can be taken out of it
    message = "HTTP 404: no route /v1/?api_key=sekret2chat/completions"
    assert "sekret" not in redact_text(message, url_secrets(SECRET_URL))
    assert url_secrets("http://localhost:8000/v1") == []


def test_manifest_redacts_url_credentials_in_config_and_inputs():
    from itd.corpus.scan import ScanConfig

    config = ScanConfig(detectors=("semantic",), detector_options={"semantic": {"judge_base_url": SECRET_URL}}).to_dict()
    manifest = build_manifest(command="scan", config={**config, "nested": [{"url": SECRET_URL}]}, inputs=[])
    text = json.dumps(manifest)
    assert "sekret" not in text and "127.0.0.1:9/v1" in text


def test_json_outputs_evidence_and_errors_hide_url_credentials(files, tmp_path, capsys):
    from itd.core.io import write_json
    from itd.corpus.readers import Document

    write_json(tmp_path / "meta.json", {"skipped_errors": [f"{SECRET_URL}:3: bad line"], "n": (1, 2)})
    assert "sekret" not in (tmp_path / "meta.json").read_text("utf-8")
    assert Document(SECRET_URL, 7, "text").id == "http://<redacted>@127.0.0.1:9/v1?api_key=<redacted>:7"
    assert Document("corpus/a.jsonl", 7, "text").id == "corpus/a.jsonl:7"
    bench, _ = files
    assert main(["scan", str(bench), "-q", "-c", SECRET_URL]) == 2  # an error quoting a corpus URL
    assert "sekret" not in capsys.readouterr().err


def test_llm_config_repr_and_errors_hide_url_credentials():
    from itd.llm import LLMConfig

    config = LLMConfig(model="m", base_url=SECRET_URL)
    assert "sekret" not in repr(config) and config.base_url == SECRET_URL  # the client still gets the real URL
    with pytest.raises(InputError) as info:
        LLMConfig(model="m", base_url="ftp://user:sekret@host/v1")
    assert "sekret" not in str(info.value)


def _files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_rewrite_writes_no_url_credentials(files, tmp_path):
    pytest.importorskip("openai")
    bench, _ = files
    out = tmp_path / "out" / "rewritten.jsonl"
    res = run_cli("rewrite", str(bench), "--method", "llm", "--model", "m", "--base-url", SECRET_URL,
                  "--max-retries", "0", "--timeout", "5", "--rounds", "1", "--out", str(out),
                  "--cache-dir", str(tmp_path / "cache"), "--json")
    assert res.returncode == 2, res.stderr  # port 9 refuses: the endpoint check stops the run before any work
    assert "cannot connect to http://<redacted>@127.0.0.1:9/v1" in res.stderr and not out.exists()
    assert "sekret" not in res.stdout + res.stderr
    assert _files_holding(tmp_path, "sekret") == []


def test_run_writes_no_url_credentials(files, tmp_path):
    """A whole `itd run` with credentials in both endpoint URLs, against a local server that echoes the
    request path (and so the URL's query) in its 404: no file of the run directory holds them."""
    pytest.importorskip("openai")
    sys.path.insert(0, str(ROOT / "tests"))
    from openai_server import OpenAIServer, rewrite_responder

    bench, _ = files
    with OpenAIServer() as server:
        server.responder = rewrite_responder
        port = server.url.split("//")[1].split("/")[0].split(":")[1]
        url = SECRET_URL.replace(":9/", f":{port}/")
        res = run_cli("run", "--benchmark", str(bench), "--method", "llm", "--out", str(tmp_path / "run"), "--json",
                      "--set", "rewrite.llm_model=m", "--set", f'rewrite.llm_base_url="{url}"',
                      "--set", "rewrite.only_flagged=false", "--set", "rewrite.rounds=1",
                      "--set", "model.name=m", "--set", f'model.base_url="{url}"', "--set", "detect.probes=false",
                      "--set", "evaluate.enabled=false", "--set", "report.lm_eval=false")
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    assert {"config.toml", "manifest.json", "summary.json", "items.jsonl", "rewrite.jsonl"} <= {p.name for p in run_dir.iterdir()}
    assert "sekret" not in res.stdout + res.stderr
    assert _files_holding(tmp_path, "sekret") == []
    assert f"127.0.0.1:{port}/v1" in (run_dir / "config.toml").read_text("utf-8")


# ---- 6. environment variables ------------------------------------------------------------------------------------
def _expected_envvar(path: tuple[str, ...], option: click.Option) -> str:
    flag = next(o for o in option.opts if o.startswith("--"))
    return ("ITD_" + "_".join(path) + "_" + flag[2:]).upper().replace("-", "_")


def test_every_option_has_the_documented_envvar_shown_in_help():
    names = []
    for path, _, option in _options():
        assert option.envvar == _expected_envvar(path, option), (path, option.opts)
        assert option.show_envvar
        names.append(option.envvar)
    assert len(names) == len(set(names)) > 100
    assert "ITD_CHECK_INDEX" in names and "ITD_SCAN_JSON" in names and "ITD_INDEX_BUILD_OUT" in names
    res = run_cli("check", "--help")
    assert "ITD_CHECK_INDEX" in res.stdout and "ITD_CHECK_INDEX_PATH" not in res.stdout


def _env_value(option: click.Option) -> tuple[str, object]:
    """A raw environment value for `option` (not its default) and the value click should make of it."""
    t = option.type
    if option.is_flag:
        return "1", True
    if isinstance(t, click.Choice):
        raw = next(c for c in t.choices if c != option.default)
        value = raw
    elif isinstance(t, click.IntRange) or t is click.INT:
        low = t.min if isinstance(t, click.IntRange) and t.min is not None else 0
        value = next(v for v in (low + 1, low + 2) if v != option.default
                     and (not isinstance(t, click.IntRange) or t.max is None or v <= t.max))
        raw = str(value)
    elif isinstance(t, click.types.FloatParamType):
        low = t.min if t.min is not None else -1.0
        high = t.max if t.max is not None else low + 2.0
        value = next(v for v in (low + (high - low) / 3, low + (high - low) / 2) if v != option.default)
        raw = repr(value)
    elif isinstance(t, itd_cli._BadLineLimit):
        raw, value = "250", 250.0
    else:
        raw = value = f"from-env-{option.name}"
    return raw, ((value,) if option.multiple else value)


def test_every_option_reads_its_envvar(monkeypatch):
    for path, command in _commands():
        options = [p for p in command.params if isinstance(p, click.Option) and p.expose_value]
        expected = {}
        for option in options:
            raw, value = _env_value(option)
            monkeypatch.setenv(option.envvar, raw)
            expected[option.name] = value
        ctx = command.make_context(" ".join(path), _arguments(command))  # parses, converts; does not run
        for option in options:
            assert ctx.get_parameter_source(option.name) is ParameterSource.ENVIRONMENT, (path, option.envvar)
            assert ctx.params[option.name] == expected[option.name], (path, option.envvar)
        for option in options:
            monkeypatch.delenv(option.envvar)


def test_repeatable_option_takes_several_values_and_a_flag_wins_over_its_envvar(monkeypatch):
    monkeypatch.setenv("ITD_SCAN_CORPUS", "a.jsonl b.jsonl")
    monkeypatch.setenv("ITD_SCAN_N", "9")
    scan = itd_cli.cli.commands["scan"]
    ctx = scan.make_context("scan", ["bench.jsonl", "--n", "11"])
    assert ctx.params["corpus"] == ("a.jsonl", "b.jsonl") and ctx.params["n"] == 11


def test_check_index_from_the_environment_end_to_end(files, tmp_path, monkeypatch, capsys):
    bench, corpus = files
    assert main(["index", "build", "-c", str(corpus), "--out", str(tmp_path / "idx"), "-q"]) == 0
    monkeypatch.setenv("ITD_CHECK_INDEX", str(tmp_path / "idx"))
    monkeypatch.setenv("ITD_CHECK_JSON", "1")
    capsys.readouterr()
    assert main(["check", str(bench)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == [str(bench)] and summary["contaminated"] == []
    assert summary["index"]["path"] == str(tmp_path / "idx") and summary["index"]["documents"] == 1


def test_every_itd_variable_in_the_readme_exists():
    documented = set(re.findall(r"\bITD_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / "README.md").read_text("utf-8")))
    options = {option.envvar for _, _, option in _options()}
    sources = [p.read_text("utf-8") for p in [*(ROOT / "itd").rglob("*.py"), *(ROOT / "tests").glob("conftest.py"),
                                             ROOT / ".ci" / "run"] if p.is_file()]
    read_by_code = {name for name in documented
                    if any(f'"{name}"' in text or f"export {name}=" in text for text in sources)}
    assert documented, "the README documents environment variables"
    assert documented - options - read_by_code == set()
    assert {"ITD_SCAN_JSON", "ITD_CHECK_INDEX", "ITD_INDEX_BUILD_OUT"} <= documented


def test_an_internal_error_is_exit_3_not_a_verdict(monkeypatch, capsys, tmp_path):
    """A bug inside a command must not read as "contamination found" (1) or "clean" (0)."""
    def broken(*args, **kwargs):
        raise IndexError("index 0 is out of bounds")

    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}) + "\n", "utf-8")
    monkeypatch.setattr(itd_cli, "_load", broken)
    monkeypatch.delenv("ITD_DEBUG", raising=False)
    capsys.readouterr()
    assert main(["rewrite", str(bench), "--method", "numeric", "--out", str(tmp_path / "out.jsonl"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "internal error: IndexError" in err and "Traceback" not in err
    monkeypatch.setenv("ITD_DEBUG", "1")
    assert main(["rewrite", str(bench), "--method", "numeric", "--out", str(tmp_path / "out.jsonl"), "-q"]) == 3
    assert "Traceback" in capsys.readouterr().err
