"""`itd` command line: exit codes, stdout/stderr separation, env vars, reports with manifests, the pre-commit
check against a persistent index, and the pre-commit hook definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itd.cli.commands import main
from itd.core import load_benchmark
from itd.corpus.index import build_index

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "itd.cli.commands", *args],
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

    from itd.pipeline.demo import filler_text

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
    assert manifest["tool"] == "itd" and manifest["config"]["detector_options"]["ngram"]["n"] == 13
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
    from itd.corpus.scan import ScanConfig, scan
    from itd.pipeline.demo import EXPECTED_LABEL, build_demo

    data = build_demo(tmp_path / "demo")
    report = scan(load_benchmark(data.benchmark), [data.corpus], ScanConfig(detectors=("ngram", "minhash")))
    found = {r.sample.id: r.label for r in report.results}
    assert len(found) == 100 and sum(label == "clean" for label in found.values()) == 79
    assert {i: EXPECTED_LABEL[kind] for i, kind in data.truth.items()} == {i: found[i] for i in data.truth}


def test_precommit_hook_manifest_is_valid():
    clientlib = pytest.importorskip("pre_commit.clientlib", reason="pre-commit is in the dev extra")
    hooks = clientlib.load_manifest(str(ROOT / ".pre-commit-hooks.yaml"))
    (hook,) = hooks
    assert hook["id"] == "itd-check" and hook["entry"] == "itd check --skip-non-benchmark"
    assert hook["require_serial"] is True
    import re

    pattern = re.compile(hook["files"])
    assert pattern.search("evals/gsm8k.jsonl") and pattern.search("mmlu/anatomy_test.csv")
    assert not pattern.search("README.md")


def test_check_api_on_real_items(leaked_setup):
    from itd.corpus.index import check

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
    from itd.core.io import write_json

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
    # the set and its manifest commit as one unit (itd.core.io.atomic_group): its store holds one generation, no staging
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
    from itd.core import load_hf_dataset, parse_hf_spec

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


def _other_files(root: Path) -> list[Path]:
    """Files an eval-set repository keeps beside its benchmarks: predictions, results, an empty log."""
    preds, results, empty = root / "predictions.jsonl", root / "results.csv", root / "log.jsonl"
    preds.write_text('{"id": "gsm8k_test:1", "prediction": "18"}\n{"id": "gsm8k_test:2", "prediction": "3"}\n', encoding="utf-8")
    results.write_text("model,task,accuracy\nlab,gsm8k,0.41\n", encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    return [preds, results, empty]


def test_not_a_benchmark_tells_benchmarks_from_other_files(shared_data, tmp_path):
    from itd.core import not_a_benchmark
    from itd.core.errors import InputError

    assert not_a_benchmark(shared_data / "gsm8k" / "test.jsonl") is None
    mmlu = sorted((shared_data / "mmlu" / "test").glob("*.csv"))[0]
    assert not_a_benchmark(mmlu) is None and not_a_benchmark(mmlu.parent) is None
    generic = tmp_path / "generic.csv"
    generic.write_text("question,answer\nWhat is 2+2?,4\n", encoding="utf-8")
    assert not_a_benchmark(generic) is None
    preds, results, empty = _other_files(tmp_path)
    assert "no 'question' text" in not_a_benchmark(preds) and "prediction" in not_a_benchmark(preds)
    assert "no 'question' column" in not_a_benchmark(results) and "holds no records" in not_a_benchmark(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": \n', encoding="utf-8")
    with pytest.raises(InputError, match="broken.jsonl:1"):  # a broken file is no answer: it fails as a load would
        not_a_benchmark(broken)


def test_check_skips_files_that_are_not_benchmarks(leaked_setup, tmp_path):
    _, index, leaked, clean = leaked_setup
    others = [str(p) for p in _other_files(tmp_path)]
    found = run_cli("check", str(leaked), *others, "--index", str(index), "--skip-non-benchmark")
    assert found.returncode == 1, found.stderr
    assert [line.split(": skipped")[0] for line in found.stderr.splitlines() if ": skipped, not a benchmark" in line] == others
    summary = found.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 file: 3 items found; checked 120 items") and summary.endswith("3 other files skipped, not benchmarks")
    only_others = run_cli("check", *others, str(clean), "--index", str(index), "--skip-non-benchmark", "--json")
    assert only_others.returncode == 0, only_others.stderr
    data = json.loads(only_others.stdout)
    assert data["files"] == [str(clean)] and data["items"] == 100 and [s["file"] for s in data["skipped"]] == others
    strict = run_cli("check", others[0], "--index", str(index))  # without the flag a non-benchmark is an input error
    assert strict.returncode == 2 and "predictions.jsonl:1" in strict.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "a #### 1"}\n{"question": \n', encoding="utf-8")
    bad = run_cli("check", str(broken), "--index", str(index), "--skip-non-benchmark")
    assert bad.returncode == 2 and f"{broken}:2" in bad.stderr  # broken benchmarks still fail


def test_precommit_hook_in_an_eval_set_repository(leaked_setup, tmp_path):
    """The real `pre-commit` client runs the hook as the manifest defines it (entry, files) on a repository
    holding a benchmark, predictions and results: it fails on the leaked items only and skips the rest."""
    import shutil

    import yaml

    if shutil.which("git") is None or shutil.which("pre-commit") is None:
        pytest.skip("needs git and pre-commit (the dev extra)")
    _, index, leaked, clean = leaked_setup
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    repo = tmp_path / "evals"
    repo.mkdir()
    shutil.copy(clean, repo / "gsm8k_clean.jsonl")
    _other_files(repo)
    # the manifest's hook, run by this interpreter (a `language: python` hook would pip-install itd first:
    # that install is measured in benchmarks/bench_precommit.py)
    local = {**hook, "language": "system", "entry": hook["entry"].replace("itd", f"{sys.executable} -m itd", 1),
             "args": ["--index", str(index)]}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [local]}]}),
                                                  encoding="utf-8")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PYTHONPATH": str(ROOT),
           "GIT_CONFIG_GLOBAL": os.devnull, "NO_COLOR": "1"}

    def pre_commit() -> subprocess.CompletedProcess:
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
        return subprocess.run(["pre-commit", "run", "--all-files"], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=300)

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    passed = pre_commit()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    (repo / "README.md").write_text("not checked\n", encoding="utf-8")
    shutil.copy(leaked, repo / "gsm8k_leaked.jsonl")
    failed = pre_commit()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert {line.split(":")[1] for line in failed.stdout.splitlines() if line.startswith("gsm8k_leaked.jsonl:")} == {"4", "51", "100"}
    assert "predictions.jsonl: skipped, not a benchmark" in failed.stdout and "README.md" not in failed.stdout


def test_the_light_path_imports_no_model_library(leaked_setup):
    """`itd check` (the pre-commit hook) and an n-gram scan never import torch, transformers, openai, ray, or
    datasketch and scipy (not in the hook's install: `pip install itd` leaves them out)."""
    corpus, index, leaked, _ = leaked_setup
    code = (
        "import sys\n"
        "from itd.cli.commands import main\n"
        f"assert main(['check', {str(leaked)!r}, '--index', {str(index)!r}, '--skip-non-benchmark']) == 1\n"
        f"assert main(['scan', {str(leaked)!r}, '--corpus', {str(corpus)!r}, '--detector', 'ngram', '-q', '--json']) == 1\n"
        "heavy = {'torch', 'transformers', 'openai', 'ray', 'datasketch', 'scipy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_scan_default_detectors_without_the_minhash_extra(leaked_setup, monkeypatch, capsys):
    """The light install (no datasketch) still scans by default, with ngram, and says that minhash was skipped."""
    import importlib.util

    corpus, _, leaked, _ = leaked_setup
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasketch" else real(name, *a))
    assert main(["scan", str(leaked), "--corpus", str(corpus), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["labels"]["input_contaminated"] == 3
    assert "minhash skipped" in err and "itd[minhash]" in err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert main(["scan", str(leaked), "--corpus", str(corpus), "--json", "-q"]) == 1
    assert "minhash skipped" not in capsys.readouterr().err
