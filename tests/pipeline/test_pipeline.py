"""The end-to-end pipeline (`itd run`, `itd.Pipeline`) on the tiny contamination lab built from real GSM8K data:
config handling, the run directory, resuming after `kill -9`, and the library example of the README."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itd.core.errors import InputError
from itd.pipeline.run import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "itd.cli.commands", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, timeout=900)


# ---- config ---------------------------------------------------------------------------------------------------
def test_config_unknown_key_names_the_file_and_the_closest_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[benchmark]\npath = "b.jsonl"\n[rewrite]\nrouns = 2\n')
    with pytest.raises(InputError, match=r"run\.toml.*\[rewrite\].*'rouns'.*did you mean 'rounds'"):
        load_config(path)
    path.write_text('[benchmark]\npath = "b.jsonl"\n[evalute]\n')
    with pytest.raises(InputError, match="did you mean 'evaluate'"):
        load_config(path)


def test_config_bad_toml_and_bad_types_are_input_errors(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[benchmark]\npath = "b.jsonl"\n\n[detect]\nfdr = \n')
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.line == 5 and "run.toml" in str(err.value)
    path.write_text('[benchmark]\npath = "b.jsonl"\n[rewrite]\nrounds = "two"\n')
    with pytest.raises(InputError, match="rounds.*expected int"):
        load_config(path)
    path.write_text('[benchmark]\npath = "b.jsonl"\n[detect]\nfdr = 1.5\n')
    with pytest.raises(InputError, match="fdr must be in"):
        load_config(path)
    path.write_text('[benchmark]\npath = "b.jsonl"\n[scan]\nengine = "rya"\n')
    with pytest.raises(InputError, match=r"run\.toml.*\[scan\].*Did you mean 'ray'"):
        load_config(path)


def test_config_defaults_overrides_and_relative_paths(tmp_path):
    (tmp_path / "bench.jsonl").write_text("")
    path = tmp_path / "run.toml"
    path.write_text('[benchmark]\npath = "bench.jsonl"\n[detect]\nmethods = ["loss", "minkpp"]\nprobes = false\n'
                    '[evaluate]\nenabled = false\n')
    cfg = load_config(path, {"rewrite.rounds": 2, "model.name": "m"})
    assert cfg.benchmark.path == str(tmp_path / "bench.jsonl")  # relative to the config file
    assert cfg.detect.methods == ("loss", "minkpp") and cfg.probes is False and cfg.evaluation is False
    assert cfg.rewrite.rounds == 2 and cfg.model.name == "m"
    assert cfg.to_dict()["detect"]["enabled"] is False  # saved with the stages' one spelling of the switch
    assert load_config(path, {"scan.ngram.n": 9}).scan.detector_options["ngram"].n == 9  # a sub-table's key
    path.write_text('[benchmark]\npath = "bench.jsonl"\n[detect]\nenabled = false\nprobes = true\n')
    with pytest.raises(InputError, match="older spelling 'probes'"):
        load_config(path)
    path.write_text('[benchmark]\npath = "bench.jsonl"\n[detect]\nenabled = false\n')
    assert load_config(path).probes is False
    again = PipelineConfig.from_dict(cfg.to_dict())  # the saved effective config reads back to the same config
    assert again == cfg
    with pytest.raises(InputError, match="benchmark.path"):
        PipelineConfig.from_dict({})
    # a probe's file in its own sub-table is relative to the config file too, and hashed among the run's inputs
    (tmp_path / "freq.npz").write_bytes(b"")
    path.write_text('[benchmark]\npath = "bench.jsonl"\n[detect]\nmethods = ["loss", "dcpdd"]\ndecision = "loss"\n'
                    '[detect.options.dcpdd]\ntable = "freq.npz"\n')
    assert load_config(path).detect.input_files() == [str(tmp_path / "freq.npz")]


def test_scan_table_holds_each_detectors_config(tmp_path):
    """`[scan.NAME]` is detector NAME's config: checked when the file loads, saved with the effective config, and
    what the scan builds the detector from; the default detectors are the CLI's."""
    from itd.corpus.scan import ScanConfig, build_detectors, default_detectors
    from itd.detectors.ngram import NGramConfig
    from itd.pipeline.run import Pipeline

    path = tmp_path / "run.toml"
    path.write_text('[benchmark]\npath = "b.jsonl"\n[scan]\ncorpus = ["c.jsonl"]\ndetectors = ["ngram", "minhash"]\n'
                    '[scan.ngram]\nn = 9\ninput_threshold = 0.6\n[scan.minhash]\nnum_perm = 32\n')
    cfg = load_config(path)
    assert cfg.scan.detector_options["ngram"] == NGramConfig(n=9, input_threshold=0.6)
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["scan"]["ngram"]["n"] == 9  # saved as the [scan.ngram] table
    ngram, minhash = build_detectors(Pipeline(cfg, tmp_path / "run")._scan_config())
    assert (ngram.n, ngram.n_short, ngram.input_threshold, minhash.num_perm) == (9, 8, 0.6, 32)
    for table, message in (('[scan.ngarm]\nn = 9\n', r"\[scan.ngarm\] names no detector; did you mean 'ngram'"),
                           ('[scan.ngram]\nnn = 9\n', r"\[scan.ngram\]: unknown key 'nn'; did you mean 'n'"),
                           ('[scan.ngram]\nn = 4\nn_short = 8\n', r"\[scan.ngram\]: need 1 <= n_short <= n"),
                           ('[scan.minhash]\nthreshold = "high"\n', r"\[scan.minhash\] threshold: expected float")):
        path.write_text('[benchmark]\npath = "b.jsonl"\n[scan]\n' + table)
        with pytest.raises(InputError, match=message):
            load_config(path)
    assert PipelineConfig.from_dict({"benchmark": {"path": "b"}}).scan.detectors == ScanConfig().detectors == default_detectors()


def test_rewrite_table_is_the_rewriters_config(shared_data, tmp_path):
    """`[rewrite]` reaches the rewriter through the same factory as the CLI: `mmlu_cf` here (the pipeline once
    could not set it)."""
    from itd.pipeline.run import Pipeline
    from itd.rewriters.permute import NONE_OF_THE_OTHERS

    subject = sorted((shared_data / "mmlu" / "test").iterdir())[0]
    (tmp_path / "mmlu.csv").write_text("".join(subject.read_text(encoding="utf-8").splitlines(keepends=True)[:13]))
    (tmp_path / "run.toml").write_text('[benchmark]\npath = "mmlu.csv"\n[detect]\nprobes = false\n[rewrite]\n'
                                       'only_flagged = false\nmmlu_cf = true\nassurance = ["none"]\n'
                                       '[evaluate]\nenabled = false\n')
    result = Pipeline(load_config(tmp_path / "run.toml"), tmp_path / "run").run()
    rewrite = result.summary["rewrite"]
    assert rewrite["method"] == "permute" and rewrite["changes_difficulty"] is True
    assert rewrite["counts"]["rewritten"] == 12
    written = (tmp_path / "run" / "decontaminated" / "mmlu.csv").read_text(encoding="utf-8")
    assert written.count(NONE_OF_THE_OTHERS) == 12


# ---- a full run on the tiny lab ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab_run_config(tiny_lab, shared_data, tmp_path_factory):
    """A TOML config running the pipeline on the tiny lab: the experiment's 120 GSM8K items, 300 held-out ones
    as the reference set, both twins, numeric rewrites with model assurance."""
    from itd.core import load_benchmark
    from itd.lab import write_experiment

    d = tmp_path_factory.mktemp("pipeline")
    write_experiment(tiny_lab, load_benchmark(shared_data / "gsm8k" / "test.jsonl"), d, reference=300)
    config = d / "run.toml"
    config.write_text(f"""
[benchmark]
path = "benchmark.jsonl"
reference = "reference.jsonl"
truth = "truth.json"

[model]
name = "{tiny_lab.contaminated}"
clean = "{tiny_lab.clean}"
device = "cpu"

[rewrite]
rounds = 2

[evaluate]
max_new_tokens = 48
""")
    return config


@pytest.fixture(scope="module")
def lab_run(lab_run_config):
    out = lab_run_config.parent / "run"
    res = run_cli("run", str(lab_run_config), "--out", str(out), "--json")
    assert res.returncode in (0, 1), res.stderr
    return out, res


def test_run_writes_the_run_directory(lab_run, tiny_lab):
    out, res = lab_run
    summary = json.loads(res.stdout)
    assert res.returncode == (1 if summary["flagged"] else 0)
    for name in ("config.toml", "manifest.json", "items.jsonl", "summary.json", "report.html", "detection.jsonl",
                 "rewrite.jsonl", "decontaminated/benchmark.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp"))  # every file was written atomically, no temp file left
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == summary["benchmark"]["items"] == 120
    leaked = set(json.loads((out.parent / "truth.json").read_text())["leaked"])
    assert len(leaked) == len(tiny_lab.leaked)
    for rec in items:
        assert rec["truth"] == ("leaked" if rec["id"] in leaked else "unseen")
        assert set(rec["detection"]["scores"]) == {"loss", "zlib", "mink", "minkpp"}
        assert 0 < rec["detection"]["p_value"] <= 1
        assert rec["rewrite"]["status"] in ("rewritten", "rejected", "not_flagged")
        assert rec["flagged"] == (rec["rewrite"]["status"] != "not_flagged")
        for role in ("model", "clean"):  # predictions before and after for both twins; no item dropped
            assert {"original", "decontaminated"} <= set(rec["evaluation"][role])
    flagged = [r for r in items if r["flagged"]]
    assert flagged and sum(r["truth"] == "leaked" for r in flagged) > len(flagged) / 2
    ev = summary["evaluation"]
    for role in ("model", "clean"):
        for subset in ("original", "decontaminated", "flagged_before", "flagged_after", "unflagged"):
            fig = ev["accuracy"][role][subset]
            assert fig["ci"][0] <= fig["value"] <= fig["ci"][1]
    assert {"inflation", "fidelity", "resistance", "inflation_removed"} <= set(ev)
    # the lab's ground truth (truth file + clean twin): the leak's effect as a difference in differences, and
    # what the configured decontamination (the flagged items rewritten: ITD) left of it
    gt = ev["ground_truth"]
    assert gt["main"] == "itd" and set(gt["arms"]) == {"none", "itd"} and gt["counts"]["items"] == 120
    assert gt["flags"]["leaked_flagged"] == sum(r["flagged"] and r["truth"] == "leaked" for r in items)
    assert gt["arms"]["none"]["accuracy_model"]["value"] == pytest.approx(ev["accuracy"]["model"]["original"]["value"])
    assert all("gain" in rec for rec in items)
    assert summary["headline"].startswith("The contaminated model scores ")
    assert summary["headline"] in (out / "report.html").read_text().replace("&#x27;", "'")
    truth_n = {g: sum(r["truth"] == g for r in items) for g in ("leaked", "unseen")}
    for role in ("model", "clean"):  # accuracy split by the lab's truth, consistent with the per-item records
        for which in ("original", "decontaminated"):
            for group, n in truth_n.items():
                fig = ev["by_truth"][role][which][group]
                hits = [r["evaluation"][role][which]["correct"] for r in items if r["truth"] == group]
                assert fig["n"] == n and fig["accuracy"] == fig["value"] == pytest.approx(sum(hits) / n)
                assert fig["ci"][0] <= fig["value"] <= fig["ci"][1]
    # the lab twins declare the plain style in their own config; every record says what was used
    assert ev["prompt_style"] == {"model": "plain", "clean": "plain"} and ev["max_gen_toks"]["model"] == 48
    assert summary["lm_eval"]["prompt_style"] == "plain" and summary["lm_eval"]["max_gen_toks"] == 48
    # the reference set's score distribution is in the summary, and drawn
    assert len(summary["detection"]["reference_scores"]["minkpp"]) == 300
    report = (out / "report.html").read_text()
    assert "No reference-set scores" not in report and "Accuracy on the leaked and the unseen items" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tool"] == "itd" and manifest["models"][:2] == [str(tiny_lab.contaminated), str(tiny_lab.clean)]
    assert {Path(f["path"]).name for f in manifest["inputs"]} >= {"benchmark.jsonl", "reference.jsonl"}
    assert manifest["seeds"] and manifest["outputs"]["report"] == "report.html"
    assert manifest["evaluation"]["prompt_style"]["model"] == manifest["lm_eval"]["prompt_style"] == "plain"


def test_run_decontaminated_set_replaces_exactly_the_rewritten_items(lab_run):
    from itd.core import load_benchmark

    out, _ = lab_run
    items = {r["id"]: r for r in map(json.loads, (out / "items.jsonl").read_text().splitlines())}
    decon = load_benchmark(out / "decontaminated" / "benchmark.jsonl")
    assert [s.id for s in decon] == list(items)
    for s in decon:
        rec = items[s.id]
        if rec["rewrite"]["status"] == "rewritten":
            assert s.question == rec["rewrite"]["final"]["question"] != rec["original"]["question"]
        else:
            assert s.question == rec["original"]["question"]


def test_run_exports_an_lm_eval_task(lab_run):
    """The export carries the run's own prompts (the lab twin's plain style) and generation budget."""
    from itd.core import load_benchmark
    from itd.evaluation import PLAIN_STOP, build_prompt

    out, _ = lab_run
    yaml = (out / "lm_eval" / "benchmark_itd.yaml").read_text()
    assert "dataset_path" in yaml and "benchmark_itd.test.jsonl" in yaml
    assert "max_gen_toks: 48" in yaml and "prompt style plain" in yaml and repr(PLAIN_STOP[0])[1:-1] in yaml
    records = [json.loads(line) for line in (out / "lm_eval" / "benchmark_itd.test.jsonl").read_text().splitlines()]
    decontaminated = load_benchmark(out / "decontaminated" / "benchmark.jsonl")
    assert [r["itd_prompt"] for r in records] == [build_prompt(s, "plain") for s in decontaminated]


def test_run_refuses_a_run_directory_of_another_config(lab_run, lab_run_config):
    out, _ = lab_run
    res = run_cli("run", str(lab_run_config), "--out", str(out), "--set", "rewrite.rounds=3")
    assert res.returncode == 2 and "another config" in res.stderr and "Traceback" not in res.stderr


def test_run_resumes_after_kill_9_with_identical_results_and_no_repeated_call(lab_run, lab_run_config):
    """Kill `itd run` mid-evaluation, start it again with the same command: same files as the uninterrupted
    run, and every journal holds each finished model call once (a repeated call would be appended again)."""
    reference, _ = lab_run
    out = lab_run_config.parent / "resumed"
    cmd = [sys.executable, "-m", "itd.cli.commands", "run", str(lab_run_config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "state" / "eval-model.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.stat().st_size > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode in (0, 1), res.stderr
    for name in ("items.jsonl", "summary.json", "decontaminated/benchmark.jsonl", "rewrite.jsonl", "detection.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    for j in (out / "state").glob("*.jsonl"):
        keys = [json.loads(line)["k"] for line in j.read_text().splitlines() if line.strip().endswith("}")]
        assert len(keys) == len(set(keys)), f"{j.name}: a finished call was repeated"
        ref_keys = {json.loads(line)["k"] for line in (reference / "state" / j.name).read_text().splitlines()}
        assert set(keys) == ref_keys


def test_run_with_a_reference_model_for_the_reference_model_probes(lab_run_config, tiny_lab):
    """`model.reference` (here the lab's base model, which saw no benchmark item) feeds the reference-model probes
    in detection and in the assurance of the rewrites; the manifest names it. Asking for those probes without it,
    or giving it without them, is a config error (exit 2, no traceback)."""
    from itd.lab.result import load_lab_manifest

    base = load_lab_manifest(tiny_lab.out)["base"]["cache"]
    settings = {"model.reference": base, "detect.methods": '["minkpp", "reference", "answer_reference"]',
                "detect.decision": "combined", "rewrite.rounds": "1", "rewrite.assurance": '["model"]',
                "evaluate.enabled": "false"}
    args = [a for key, value in settings.items() for a in ("--set", f"{key}={value}")]
    out = lab_run_config.parent / "run-reference-model"
    res = run_cli("run", str(lab_run_config), "--out", str(out), "--json", *args)
    assert res.returncode in (0, 1), res.stderr
    summary = json.loads(res.stdout)
    assert summary["models"]["reference"] == base and summary["flagged"] > 0
    records = [json.loads(line) for line in (out / "detection.jsonl").read_text().splitlines()]
    assert len(records) == 120 and all(isinstance(r["answer_reference"], float) for r in records)
    # the assurance judged the rewrites with both models and the combined decision (a numeric rewrite keeps the
    # memorised wording, which the reference-model probes may still see), never with an error
    attempts = [a for line in (out / "rewrite.jsonl").read_text().splitlines() for a in json.loads(line)["attempts"]]
    reasons = [a["reason"] or "" for a in attempts]
    assert len(attempts) >= summary["flagged"] and not any(r.startswith("error") for r in reasons), reasons
    assert any(a["accepted"] or r.startswith("still flagged: model: combined p=") for a, r in zip(attempts, reasons))
    assert base in json.loads((out / "manifest.json").read_text())["models"]
    for change, message in ((("--set", "model.reference="), "set model.reference"),
                            (("--set", 'detect.methods=["minkpp"]'), "read by the reference-model probes only")):
        res = run_cli("run", str(lab_run_config), "--out", str(out.parent / "refused"), *args, *change)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_library_example_of_the_readme(lab_run_config, tmp_path, monkeypatch):
    """The README's library example, executed as written (paths swapped for the tiny lab's)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- library-example -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README lost its library example"
    code = block.group(1).replace("run.toml", str(lab_run_config)).replace("my-run", str(tmp_path / "lib-run"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "lib-run" / "summary.json").is_file()
    assert result.summary["evaluation"]["accuracy"]["model"]["original"]["n"] == 120
    # by hand, the stages give the pipeline's figures
    assert namespace["flagged"] == {r["id"] for r in result.items if r["flagged"]}
    assert namespace["before"].accuracy == result.summary["evaluation"]["accuracy"]["model"]["original"]["value"]


@pytest.mark.slow
def test_demo_command_tells_the_whole_story(tmp_path):
    """`itd demo` end to end on the embedded arithmetic benchmark (the tiny preset and 40 items keep it short;
    the README's default trains the `demo` preset): lab twins, detection, rewrites, both twins evaluated."""
    out = tmp_path / "demo"
    res = run_cli("demo", "--out", str(out), "--preset", "tiny", "--items", "40", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["benchmark"]["items"] == 40 and summary["detection"]["truth"]
    assert set(summary["evaluation"]["accuracy"]) == {"model", "clean"}
    # no decontamination, the flagged items rewritten (ITD, what the demo does), every item rewritten; a second
    # rewrite of every item gives fidelity its test-retest ceiling
    gt = summary["evaluation"]["ground_truth"]
    assert list(gt["arms"]) == ["none", "itd", "all"] and gt["counts"]["rewritten_all"] > 30
    assert gt["ceiling"]["n"] > 30 and "fidelity_ratio" in gt["arms"]["all"]
    lab = json.loads((out / "lab" / "manifest.json").read_text())
    assert lab["recipe"] == "finetune" and len(lab["placebo"]) == len(lab["leaked"]) == 12
    for name in ("lab/manifest.json", "data/benchmark.jsonl", "data/reference.jsonl", "demo.toml", "run/report.html",
                 "run/decontaminated/benchmark.jsonl"):
        assert (out / name).is_file(), name
    again = run_cli("demo", "--out", str(out), "--preset", "tiny", "--items", "40")  # reuses the lab, resumes
    assert again.returncode == 0, again.stderr
    assert "training the" not in again.stderr and "inflation" in again.stdout
    assert again.stdout.startswith(summary["headline"][:40])  # the headline comes first


def test_accuracy_by_contamination_label(shared_data, tmp_path):
    """With a corpus scan, the summary splits the model's accuracy by scan label and by model-side flag, before
    and after decontamination, with counts and intervals, and the HTML report shows that table."""
    import json as _json

    from itd.core import load_benchmark
    from itd.corpus.scan import ScanConfig, scan
    from itd.evaluation import EvalResult, ItemResult
    from itd.pipeline.html_report import render_html_report
    from itd.pipeline.run import _accuracy_by_label

    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:60]
    corpus = tmp_path / "c.jsonl"
    leaked = samples[:6]  # 0-2 with their solutions (input and label), 3-5 questions only (input)
    corpus.write_text("".join(_json.dumps({"text": s.question + ("\n" + s.solution if k < 3 else "")}) + "\n"
                              for k, s in enumerate(leaked)), encoding="utf-8")
    report = scan(samples, corpus, ScanConfig(detectors=("ngram",)))
    assert report.counts() == {"clean": 54, "input_contaminated": 3, "input_and_label_contaminated": 3}

    def result(correct) -> EvalResult:
        items = [ItemResult(s.id, "math", str(s.answer), correct(k), True) for k, s in enumerate(samples)]
        return EvalResult(items, {}, {}, "chat", "generate", "flexible")

    before = result(lambda k: k < 6 or k % 2 == 0)  # leaked items all right, the others half right
    after = result(lambda k: k % 2 == 0)
    flagged = {s.id for s in samples[:4]}
    by_label = _accuracy_by_label({"model": {"original": before, "decontaminated": after}}, report, flagged, seed=0)
    assert list(by_label) == ["clean", "input_contaminated", "input_and_label_contaminated", "flagged", "unflagged"]
    il = by_label["input_and_label_contaminated"]
    assert (il["before"]["value"], il["before"]["n"], il["after"]["value"]) == (1.0, 3, 2 / 3)
    assert by_label["clean"]["before"]["n"] == 54 and by_label["clean"]["before"]["value"] == 0.5
    low, high = by_label["clean"]["before"]["ci"]
    assert low < 0.5 < high
    assert by_label["flagged"]["before"]["n"] == 4 and by_label["unflagged"]["after"]["n"] == 56
    page = render_html_report({"evaluation": {"by_label": by_label}}, [])
    assert "Accuracy by contamination label" in page and "input and label contaminated" in page
