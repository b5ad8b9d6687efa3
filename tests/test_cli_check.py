"""`itd` command line: exit codes, stdout/stderr separation, env vars, reports with manifests, the pre-commit
check against a persistent index, and the pre-commit hook definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itd.cli import main
from itd.data import load_benchmark
from itd.index import build_index

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "itd.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def leaked_setup(shared_data, tmp_path_factory):
    """A corpus of MMLU dev items, filler and 5 leaked GSM8K test items, its index, a leaked and a clean eval file.

    (GSM8K train is left out here: it holds genuine near-duplicates of some test items, tested in test_scan_real.)
    """
    import random

    from itd.demo import filler_text

    tmp = tmp_path_factory.mktemp("check")
    rng = random.Random(1)
    test_lines = (shared_data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
    docs = [s.prompt_text() for s in load_benchmark(shared_data / "mmlu" / "dev")]
    docs += [filler_text(rng, 400) for _ in range(500)]
    docs += [json.loads(test_lines[i])["question"] for i in (3, 50, 99, 400, 700)]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    index = tmp / "index"
    build_index([corpus], index)
    leaked = tmp / "leaked.jsonl"
    leaked.write_text("\n".join(test_lines[:120]) + "\n", encoding="utf-8")  # holds items 3, 50 and 99
    clean = tmp / "clean.jsonl"
    clean.write_text("\n".join(test_lines[800:900]) + "\n", encoding="utf-8")
    return corpus, index, leaked, clean


def test_check_exit_codes(leaked_setup, tmp_path):
    corpus, index, leaked, clean = leaked_setup
    bad = run_cli("check", str(leaked), "--index", str(index))
    assert bad.returncode == 1
    *lines, summary = [line for line in bad.stdout.splitlines() if line.strip()]
    assert {line.split(":")[1] for line in lines} == {"4", "51", "100"}  # file:line of each leaked item
    assert all("input_contaminated" in line for line in lines)
    assert summary.startswith("1 file: 3 items found; checked 120 items against an index of 760 documents")
    ok = run_cli("check", str(clean), "--index", str(index))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("1 file clean; checked 100 items against an index of 760 documents")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "a #### 1"}\n{"question": \n', encoding="utf-8")
    err = run_cli("check", str(broken), "--index", str(index))
    assert err.returncode == 2
    assert f"{broken}:2" in err.stderr and "Traceback" not in err.stderr
    missing = run_cli("check", str(clean), "--index", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "index" in missing.stderr and "Traceback" not in missing.stderr


def test_check_json(leaked_setup):
    _, index, leaked, _ = leaked_setup
    res = run_cli("check", str(leaked), "--index", str(index), "--json")
    data = json.loads(res.stdout)
    assert sorted(r["line"] for r in data["contaminated"]) == [4, 51, 100]


def test_scan_cli_json_out_and_manifest(leaked_setup, tmp_path):
    corpus, _, leaked, _ = leaked_setup
    out = tmp_path / "report.jsonl"
    res = run_cli("scan", str(leaked), "--corpus", str(corpus), "--json", "--out", str(out), "--detector", "ngram")
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)  # stdout holds only the JSON; logs and progress went to stderr
    assert summary["labels"]["input_contaminated"] == 3
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(records) == 120
    flagged = [r for r in records if r["label"] != "clean"]
    assert sorted(r["source"]["line"] for r in flagged) == [4, 51, 100]
    for r in flagged:
        assert r["evidence"] and r["evidence"][0]["doc"].startswith(str(corpus))
        assert set(r["coverage"]) == {"raw", "numnorm"}
    manifest = json.loads((tmp_path / "report.jsonl.manifest.json").read_text("utf-8"))
    assert manifest["tool"] == "itd" and manifest["config"]["n"] == 13
    assert {Path(i["path"]).name for i in manifest["inputs"]} == {"leaked.jsonl", "corpus.jsonl"}
    assert all(len(i["sha256"]) == 64 for i in manifest["inputs"])


def test_scan_clean_exits_zero_and_env_vars(leaked_setup):
    corpus, _, _, clean = leaked_setup
    res = run_cli("scan", str(clean), "--json", "--detector", "ngram", env={"ITD_SCAN_CORPUS": str(corpus), "ITD_SCAN_N": "11"})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["labels"]["clean"] == 100


def test_usage_errors_exit_2_without_traceback(leaked_setup, tmp_path, capsys):
    corpus, _, leaked, _ = leaked_setup
    assert main(["scan", str(leaked), "--corpus", str(corpus), "--detector", "ngarm"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'ngram'" in err
    assert main(["scan", str(leaked), "--corpus", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["scan", str(leaked)]) == 2  # --corpus is required
    bad_corpus = tmp_path / "bad.jsonl"
    bad_corpus.write_text('{"text": "fine"}\n{"body": "no text field"}\n', encoding="utf-8")
    assert main(["scan", str(leaked), "--corpus", str(bad_corpus), "-q"]) == 2
    err = capsys.readouterr().err
    # the field is missing on one line while others have it: a malformed line, which may be skipped
    assert f"{bad_corpus}:2" in err and "--skip-bad-lines" in err


def test_planted_leak_demo_scan_matches_truth(tmp_path):
    """The generated benchmark with 21 planted leaks of seven kinds: the ngram + minhash scan labels every item
    as planted."""
    from itd.demo import EXPECTED_LABEL, build_demo
    from itd.scan import ScanConfig, scan

    data = build_demo(tmp_path / "demo")
    report = scan(load_benchmark(data.benchmark), [data.corpus], ScanConfig(detectors=("ngram", "minhash")))
    found = {r.sample.id: r.label for r in report.results}
    assert len(found) == 100 and sum(label == "clean" for label in found.values()) == 79
    assert {i: EXPECTED_LABEL[kind] for i, kind in data.truth.items()} == {i: found[i] for i in data.truth}


def test_precommit_hook_manifest_is_valid():
    clientlib = pytest.importorskip("pre_commit.clientlib", reason="pre-commit is in the dev extra")
    hooks = clientlib.load_manifest(str(ROOT / ".pre-commit-hooks.yaml"))
    (hook,) = hooks
    assert hook["id"] == "itd-check" and hook["entry"] == "itd check" and hook["require_serial"] is True
    import re

    pattern = re.compile(hook["files"])
    assert pattern.search("evals/gsm8k.jsonl") and pattern.search("mmlu/anatomy_test.csv")
    assert not pattern.search("README.md")


def test_check_api_on_real_items(leaked_setup):
    from itd.index import check

    _, index, leaked, _ = leaked_setup
    report = check(load_benchmark(leaked), index)
    assert sorted(r.sample.source.line for r in report.contaminated) == [4, 51, 100]


def test_bad_corpus_line_stops_with_its_location_or_is_skipped(leaked_setup, tmp_path):
    """A malformed line names file:line and exits 2; with --skip-bad-lines the scan goes on and reports it."""
    corpus, _, leaked, _ = leaked_setup
    lines = corpus.read_text("utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:7] + ['{"text": "unterminated', '{"body": "no text field"}'] + lines[7:]) + "\n", "utf-8")
    stopped = run_cli("scan", str(leaked), "--corpus", str(bad), "--json", "-q")
    assert stopped.returncode == 2
    assert f"{bad}:8: invalid JSON" in stopped.stderr and "--skip-bad-lines" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    skipped = run_cli("scan", str(leaked), "--corpus", str(bad), "--json", "-q", "--skip-bad-lines")
    assert skipped.returncode == 1  # the leaked items after the bad lines are still found
    summary = json.loads(skipped.stdout)
    assert summary["stats"]["skipped_lines"] == 2
    assert summary["stats"]["skipped_errors"][1].startswith(f"{bad}:9: text field 'text' is missing")
    assert "skipped 2 malformed corpus line(s)" in skipped.stderr
    assert len(summary["contaminated_ids"]) == 3


def test_outputs_get_the_usual_file_mode(tmp_path):
    """Atomic writes go through a private temp file; the output itself must get the mode the umask gives."""
    from itd.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_scan_per_subject_and_write_clean(shared_data, leaked_setup, tmp_path):
    """The scan summary splits labels per subject and per file; --write-clean writes the benchmark without its
    contaminated items in the source layout (a directory for a directory), with a manifest, or marks them."""
    bench = tmp_path / "mmlu"
    bench.mkdir()
    for subject in ("anatomy", "business_ethics"):
        (bench / f"{subject}_test.csv").symlink_to(shared_data / "mmlu" / "test" / f"{subject}_test.csv")
    anatomy = load_benchmark(bench / "anatomy_test.csv")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": "Seen online:\n" + s.prompt_text()}) + "\n" for s in anatomy[10:13]), encoding="utf-8")
    out = tmp_path / "clean"
    res = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram", "--json", "--write-clean", str(out))
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    assert summary["by_subject"]["anatomy"]["labels"]["input_contaminated"] == 3
    assert summary["by_subject"]["anatomy"]["contaminated_share"] == round(3 / len(anatomy), 4)
    assert summary["by_subject"]["business_ethics"]["contaminated_share"] == 0
    assert {Path(f).name for f in summary["by_file"]} == {"anatomy_test.csv", "business_ethics_test.csv"}
    cleaned = load_benchmark(out / "anatomy_test.csv")
    assert [s.question for s in cleaned] == [s.question for s in anatomy[:10] + anatomy[13:]]
    assert (out / "business_ethics_test.csv").read_bytes() == (bench / "business_ethics_test.csv").read_bytes()
    manifest = json.loads((tmp_path / "clean.manifest.json").read_text("utf-8"))
    assert manifest["policy"] == "drop" and sorted(manifest["dropped_ids"]) == sorted(s.id for s in anatomy[10:13])
    # the set and its manifest commit as one unit (itd.io.atomic_group): its store holds one generation, no staging
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".clean")] == [".clean.itd"]
    assert not [p for p in (tmp_path / ".clean.itd").iterdir() if p.name.startswith("s-")]

    table = run_cli("scan", str(bench), "--corpus", str(corpus), "--detector", "ngram")
    assert "Contamination per subject" in table.stdout and "anatomy" in table.stdout

    _, _, leaked, _ = leaked_setup
    marked = tmp_path / "marked.jsonl"
    res = run_cli("scan", str(leaked), "--corpus", str(leaked_setup[0]), "--detector", "ngram", "-q",
                  "--write-clean", str(marked), "--write-clean-mode", "mark")
    assert res.returncode == 1, res.stderr
    records = [json.loads(line) for line in marked.read_text("utf-8").splitlines()]
    assert len(records) == 120 and sum(r["contamination"] != "clean" for r in records) == 3
    assert set(records[3]) == {"question", "answer", "contamination"}


def test_scan_hf_dataset_benchmark(shared_data, tmp_path, monkeypatch):
    """`itd scan hf://NAME[:SPLIT]` reads the benchmark through `datasets.load_dataset` (a local directory here,
    never the network): MMLU CSV rows become multiple-choice items, ids name the dataset and split."""
    pytest.importorskip("datasets")
    from itd.data import load_hf_dataset, parse_hf_spec

    ds = tmp_path / "mmlu_anatomy"
    ds.mkdir()
    lines = (shared_data / "mmlu" / "test" / "anatomy_test.csv").read_text("utf-8").splitlines(True)
    (ds / "test.csv").write_text("".join(lines[:31]), encoding="utf-8")  # the header and 30 items
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    samples = load_hf_dataset(str(ds), "test", cache_dir=str(tmp_path / "hf"))
    local = load_benchmark(ds / "test.csv")
    assert [(s.question, s.choices, s.answer) for s in samples] == [(s.question, s.choices, s.answer) for s in local]
    assert samples[0].is_mcq and samples[0].id == "mmlu_anatomy:test:1"
    assert parse_hf_spec("hf://openai/gsm8k:main:test") == ("openai/gsm8k", "main", "test")
    assert parse_hf_spec("hf://cais/mmlu") == ("cais/mmlu", None, "test")

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "notes\n" + local[4].prompt_text() + "\nAnswer: " + "ABCD"[local[4].answer]}) + "\n", encoding="utf-8")
    res = run_cli("scan", f"hf://{ds}:test", "--corpus", str(corpus), "--detector", "ngram", "--json", "--out", str(tmp_path / "r.jsonl"), env=env)
    assert res.returncode == 1, res.stderr
    summary = json.loads(res.stdout)
    assert summary["contaminated_ids"] == ["mmlu_anatomy:test:5"]
    assert summary["labels"]["input_and_label_contaminated"] == 1
    manifest = json.loads((tmp_path / "r.jsonl.manifest.json").read_text("utf-8"))
    assert {"path": f"hf://{ds}:test", "dataset": True} in manifest["inputs"]
    bad = run_cli("scan", "hf://a:b:c:d", "--corpus", str(corpus), env=env)
    assert bad.returncode == 2 and "hf://NAME" in bad.stderr and "Traceback" not in bad.stderr
