"""Model-side detection on the tiny contamination lab: leaked items score higher under the contaminated twin
only, calibrated flags are rare on the clean twin, the set-level test separates the twins, and `itd detect`
writes one record per item with every probe, p-value and flag."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from itd.cli.commands import main
from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.core.stats import cauchy_combination, cross_fit_cauchy
from itd.probes.detection import DetectConfig, detect, evidence_weights, load_truth, option_orders
from itd.probes.models import load_model


@pytest.fixture(scope="module")
def lab_sets(tiny_lab, shared_data, tmp_path_factory):
    """The lab's items (leaked + unseen, benchmark order), a clean reference set of other GSM8K test items (seen
    by neither twin), both written as GSM8K files, and the truth."""
    tmp = tmp_path_factory.mktemp("detect")
    test = load_benchmark(shared_data / "gsm8k" / "test.jsonl")
    in_lab = set(tiny_lab.leaked) | set(tiny_lab.unseen)
    items = [s for s in test if s.id in in_lab]
    rest = [s for s in test if s.id not in in_lab]
    # per-item power needs a large reference: a conformal p-value is at least 1 / (n_reference + 1)
    reference = random.Random(0).sample(rest, 600)
    bench_file, ref_file = tmp / "lab_items.jsonl", tmp / "reference.jsonl"
    # explicit ids keep the data layer's ids of the original file, which the lab's truth refers to
    for path, samples in ((bench_file, items), (ref_file, reference)):
        lines = [json.dumps({"id": s.id, "question": s.question, "answer": s.solution}) for s in samples]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return items, reference, bench_file, ref_file


@pytest.fixture(scope="module")
def reports(tiny_lab, lab_sets):
    items, reference, _, _ = lab_sets
    truth = load_truth(tiny_lab.manifest)
    config = DetectConfig(batch_size=16)
    return {
        twin: detect(items, load_model(getattr(tiny_lab, twin), device="cpu"), reference, config, truth=truth)
        for twin in ("contaminated", "clean")
    }


def test_leaked_items_score_higher_under_the_contaminated_twin_only(reports):
    contaminated = reports["contaminated"].truth["methods"]
    clean = reports["clean"].truth["methods"]
    assert max(contaminated["mink"]["auroc"], contaminated["minkpp"]["auroc"]) >= 0.85
    for method in ("loss", "zlib", "mink", "minkpp"):
        assert abs(clean[method]["auroc"] - 0.5) < 0.2, (method, clean[method])


def test_fdr_flags_are_rare_on_the_clean_twin_and_find_leaks_in_the_contaminated_one(reports, tiny_lab):
    clean, contaminated = reports["clean"], reports["contaminated"]
    assert clean.mode == contaminated.mode == "fdr"
    assert len(clean.flagged) <= 0.05 * len(clean.items)
    flags = contaminated.truth["flags"]
    # the clean items' score tail (short, predictable problems) limits per-item power; the flags stay precise
    assert flags["true_positives"] >= 3
    assert flags["precision"] >= 0.8
    for it in contaminated.items:
        assert 0 < it.p_values["minkpp"] <= 1 and it.q_value >= it.p_values["minkpp"] - 1e-12


def test_set_level_test_separates_the_twins(reports):
    report = reports["contaminated"]
    # the reference distribution the p-values are calibrated against is kept (the report draws it)
    summary = report.summary()["reference_scores"]
    assert len(summary["minkpp"]) == report.reference_size and summary["minkpp"] == pytest.approx(
        report.reference_scores["minkpp"], abs=1e-6)
    assert reports["contaminated"].set_tests["minkpp"].p_value < 0.01
    assert reports["contaminated"].contaminated
    assert reports["clean"].set_tests["minkpp"].p_value > 0.01
    assert not reports["clean"].set_contaminated
    # the set verdict of one decision probe combines its Mann-Whitney and top-k tests
    for report in reports.values():
        mw, top = report.set_tests["minkpp"].p_value, report.sparse_tests["minkpp"].p_value
        assert report.set_p_value == pytest.approx(float(cauchy_combination([mw, top])))
        assert report.summary()["set_p_value"] == report.set_p_value
    assert reports["contaminated"].set_contaminated


def test_threshold_and_scores_only_modes(tiny_lab, lab_sets):
    items, _, _, _ = lab_sets
    model = load_model(tiny_lab.contaminated, device="cpu")
    scores_only = detect(items[:10], model, config=DetectConfig(methods=("loss", "mink"), decision="mink"))
    assert scores_only.mode == "scores" and all(it.flag is None for it in scores_only.items)
    assert not scores_only.contaminated
    cut = sorted(it.scores["mink"] for it in scores_only.items)[6]
    thresholded = detect(items[:10], model, config=DetectConfig(methods=("mink",), decision="mink", threshold=cut))
    assert thresholded.mode == "threshold"
    assert [it.flag for it in thresholded.items] == [it.scores["mink"] > cut for it in scores_only.items]
    assert len(thresholded.flagged) == 3


def test_cli_detect_writes_scores_and_exits_by_verdict(tiny_lab, lab_sets, tmp_path, capsys):
    _, _, bench_file, ref_file = lab_sets
    out = tmp_path / "scores.jsonl"
    args = ["detect", str(bench_file), "--reference-set", str(ref_file), "--truth", str(tiny_lab.manifest),
            "--device", "cpu", "--batch-size", "16", "--json", "-q"]
    rc = main([*args, "--model", str(tiny_lab.contaminated), "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and summary["contaminated"] and summary["flagged"] > 0
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert len(records) == len(tiny_lab.leaked) + len(tiny_lab.unseen)
    first = records[0]
    assert {"id", "source", "loss", "zlib", "mink", "minkpp", "p_value", "flag", "rendering"} <= set(first)
    assert first["source"]["line"] >= 1 and first["rendering"] == "question+answer"
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text("utf-8"))
    assert manifest["models"] == [str(tiny_lab.contaminated)] and manifest["summary"]["flagged"] == summary["flagged"]
    assert len(manifest["inputs"]) == 3
    # each top-k test says the smallest leak it could see with these set sizes
    assert all(isinstance(t["detectable"], int) and 1 <= t["detectable"] <= t["n_benchmark"]
               for t in summary["sparse_set_tests"].values())

    assert main([*args, "--model", str(tiny_lab.clean)]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["contaminated"] is False
    # as a table, "no contamination detected" says what could have stayed hidden
    assert main([a for a in args if a != "--json"] + ["--model", str(tiny_lab.clean)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    detectable = clean["sparse_set_tests"][clean["decision"]]["detectable"] if clean["decision"] != "combined" else \
        min(t["detectable"] for t in clean["sparse_set_tests"].values())
    assert f"a leak of {detectable} or more items scored above every reference item would have given p < 0.05" in text
    assert "no contamination detected" in text


def test_cli_detect_journal_resumes_without_scoring_again(tiny_lab, lab_sets, tmp_path, capsys):
    """`--journal`: every finished chunk of scoring (both models', the negative control's included) is kept; the
    same command after an interruption scores only the chunks that are missing and gives the same scores."""
    from itd.lab.result import load_lab_manifest

    _, _, bench_file, ref_file = lab_sets
    base = load_lab_manifest(tiny_lab.out)["base"]["cache"]
    journal = tmp_path / "detect.journal.jsonl"
    args = ["detect", str(bench_file), "--reference-set", str(ref_file), "--model", str(tiny_lab.contaminated),
            "--reference-model", base, "--methods", "minkpp,reference", "--decision", "combined", "--device", "cpu",
            "--batch-size", "16", "--json", "-q", "--journal", str(journal)]

    def run(name: str) -> list[dict]:
        out = tmp_path / name
        assert main([*args, "--out", str(out)]) == 1
        capsys.readouterr()
        return [json.loads(line) for line in out.read_text("utf-8").splitlines()]

    def keys() -> list[str]:
        return [json.loads(line)["k"] for line in journal.read_text("utf-8").splitlines() if line.endswith("}")]

    first = run("first.jsonl")
    chunks = keys()
    assert len(chunks) >= 4 and len(set(chunks)) == len(chunks)  # the benchmark, the reference, and the control's
    size = journal.stat().st_size
    assert run("again.jsonl") == first and journal.stat().st_size == size  # nothing scored again
    # an interruption: half the chunks kept, and a torn last line
    lines = journal.read_text("utf-8").splitlines(keepends=True)
    journal.write_text("".join(lines[: len(lines) // 2]) + lines[-1][:40], "utf-8")
    assert run("resumed.jsonl") == first
    assert sorted(keys()) == sorted(chunks)  # the missing chunks, each scored once


def test_detect_says_what_a_clean_verdict_leaves_open():
    """Under "no contamination detected": the smallest leak the decision's top-k test could see, the smallest of
    any probe's for the combined decision (with its caveat), or that none could be seen with so few references."""
    from types import SimpleNamespace

    from itd.cli.terminal import _detectable_line

    def report(decision, sizes):
        tests = {m: SimpleNamespace(detectable=d) for m, d in sizes.items()}
        return SimpleNamespace(config=SimpleNamespace(decision=decision, alpha=0.05), sparse_tests=tests,
                               reference_size=40)

    line = _detectable_line(report("minkpp", {"minkpp": 9, "loss": 4}))
    assert line.startswith("a leak of 9 or more items scored above every reference item would have given p < 0.05")
    assert "4 or more" in _detectable_line(report("combined", {"minkpp": 9, "loss": 4, "zlib": None}))
    assert "could not reach p < 0.05 with 40 reference items" in _detectable_line(report("loss", {"loss": None}))
    assert _detectable_line(report("minkpp", {"loss": 4})) is None


def test_cli_detect_with_the_base_model_as_reference_model(tiny_lab, lab_sets, tmp_path, capsys):
    """The reference-model probes, with the base model both twins continued from (it saw no benchmark item) as the
    reference: each item's likelihood ratio, whole and of the answer, finds the leaked items."""
    from itd.lab.result import load_lab_manifest

    _, _, bench_file, ref_file = lab_sets
    base = load_lab_manifest(tiny_lab.out)["base"]["cache"]
    out = tmp_path / "scores.jsonl"
    methods = ("minkpp", "reference", "answer_reference")
    args = ["detect", str(bench_file), "--reference-set", str(ref_file), "--truth", str(tiny_lab.manifest),
            "--methods", ",".join(methods), "--decision", "combined", "--device", "cpu", "--batch-size", "16",
            "--json", "-q"]
    rc = main([*args, "--model", str(tiny_lab.contaminated), "--reference-model", base, "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and summary["contaminated"]
    for m in ("reference", "answer_reference"):
        assert summary["truth"]["methods"][m]["auroc"] >= 0.9, (m, summary["truth"]["methods"][m])
    # one share per kind of evidence: the two reference-model probes split one half
    assert summary["combined_set_test"]["weights"]["reference"] == pytest.approx(0.125, abs=1e-4)
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert all(isinstance(r["answer_reference"], float) for r in records)
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text("utf-8"))
    assert manifest["models"] == [str(tiny_lab.contaminated), base]
    # the one-model probe under the reference model is the combination's negative control, kept per item
    assert summary["combined_set_test"]["controlled"] == ["minkpp"]
    assert all(set(r["control_p_values"]) == {"minkpp"} for r in records)
    p = np.array([[r["p_values"][m] for m in methods] for r in records])
    control = np.array([[r["control_p_values"].get(m, np.nan) for m in methods] for r in records])
    assert [r["combined_p"] for r in records] == pytest.approx(cross_fit_cauchy(
        p, control=control, prior=evidence_weights(methods))[0].tolist())
    # at set level the one-model probe is tested on its ranks under the model less those under the control
    assert summary["control_rank_correlation"]["minkpp"] > 0.5  # base and twin rank the items alike
    assert set(summary["controlled_set_tests"]) == set(summary["controlled_sparse_set_tests"]) == {"minkpp"}
    combined = summary["combined_set_test"]
    plain = {m: (summary["set_tests"][m]["p_value"], summary["sparse_set_tests"][m]["p_value"]) for m in methods}
    plain["minkpp"] = (summary["controlled_set_tests"]["minkpp"]["p_value"],
                       summary["controlled_sparse_set_tests"]["minkpp"]["p_value"])
    tested = [plain[t.removesuffix(" top-k")][t.endswith(" top-k")] for t in combined["tests"]]
    assert combined["p_value"] == pytest.approx(
        float(cauchy_combination(tested, [combined["weights"][t] for t in combined["tests"]])))
    # --no-control: the plain set tests decide, and no item carries control p-values; --reference-score ratio:
    # Carlini's -nll / nll_ref, where the default is nll_ref - nll (the twins and their base share a tokenizer)
    main([*args, "--model", str(tiny_lab.contaminated), "--reference-model", base, "--no-control", "--out", str(out),
          "--reference-score", "ratio"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["controlled_set_tests"] == summary["control_rank_correlation"] == {}
    assert summary["combined_set_test"]["controlled"] == []
    ratio = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert not any("control_p_values" in r for r in ratio)
    assert [r["reference"] for r in records] == pytest.approx([r["nll"] / -q["reference"] - r["nll"]
                                                               for r, q in zip(records, ratio)], abs=1e-5)
    # the reference-model probes and a reference model go together
    assert main([*args, "--model", str(tiny_lab.contaminated)]) == 2
    assert "need a reference model (--reference-model)" in capsys.readouterr().err
    one_model = [*args[:args.index("--methods") + 1], "minkpp", "--decision", "minkpp", "--json", "-q"]
    assert main([*one_model, "--model", str(tiny_lab.contaminated), "--reference-model", base]) == 2
    assert "add one to --methods, or leave out --reference-model" in capsys.readouterr().err


def test_cli_reference_score_choices_are_the_probes():
    """`--reference-score` offers exactly the `reference` probe's scores (the CLI spells them out to stay light)."""
    from itd.cli.commands import detect as detect_command
    from itd.probes.methods import REFERENCE_SCORES, ReferenceConfig

    option = next(p for p in detect_command.params if p.name == "reference_score")
    assert tuple(option.type.choices) == REFERENCE_SCORES and option.default == ReferenceConfig().score


def test_cli_detect_input_errors(lab_sets, tmp_path, capsys):
    _, _, bench_file, _ = lab_sets
    assert main(["detect", str(bench_file), "--model", str(tmp_path / "no-such-model")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["detect", str(bench_file), "--model", str(tmp_path), "--methods", "mink,minkk", "--decision", "mink"]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert main(["detect", str(bench_file), "--model", str(tmp_path), "--rendering", "question+answr"]) == 2
    assert "did you mean 'question+answer'" in capsys.readouterr().err.lower()
    bad_truth = tmp_path / "truth.json"
    bad_truth.write_text('{"leaked": []}', "utf-8")
    with pytest.raises(InputError, match="truth.json"):
        load_truth(bad_truth)


def test_option_permutation_test_mechanics(tiny_lab):
    """Orders: the original first, every order once; per-item p-values are valid and, for a model that never saw
    these MCQ items, the set-level test is not significant."""
    rng = random.Random(0)
    orders = option_orders(4, 24, rng)
    assert orders[0] == (0, 1, 2, 3) and len(set(orders)) == 24
    sampled = option_orders(6, 24, rng)
    assert sampled[0] == tuple(range(6)) and len(set(sampled)) == 24
    items = [
        Sample(f"q:{i}", "mmlu", f"Which number is the {w} one?", answer=i % 4, choices=("one", "two", "three", "four"))
        for i, w in enumerate(["first", "second", "third", "fourth", "last", "middle", "best", "odd"])
    ]
    model = load_model(tiny_lab.clean, device="cpu")
    report = detect(items, model, config=DetectConfig(methods=("loss",), decision="loss", permutation_test=True))
    assert all(1 / 24 <= it.permutation_p <= 1 for it in report.items)
    assert report.permutation.n_items == len(items) and report.permutation.p_value > 0.01


def test_newer_probes_and_the_combined_verdict_on_the_lab(tiny_lab, lab_sets, tmp_path):
    """Gap-K%, answer accuracy, DC-PDD (table from the lab's clean corpus) and ReCaLL (prefix from the reference
    set, which then leaves the calibration set) beside Min-K%++, decided by the Cauchy combination."""
    from itd.probes.methods import corpus_frequency_table

    items, reference, _, _ = lab_sets
    truth = load_truth(tiny_lab.manifest)
    models = {twin: load_model(getattr(tiny_lab, twin), device="cpu") for twin in ("contaminated", "clean")}
    table = tmp_path / "freq.npz"
    corpus_frequency_table(models["clean"].tokenizer, [tiny_lab.out / "corpus" / "clean.jsonl"]).save(table)
    methods = ("loss", "minkpp", "gapk", "answer_acc", "dcpdd", "recall")
    config = DetectConfig(methods=methods, decision="combined", batch_size=16, options={"dcpdd": {"table": str(table)}})
    reports = {twin: detect(items, lm, reference, config, truth=truth) for twin, lm in models.items()}
    con, cln = reports["contaminated"], reports["clean"]
    assert con.reference_size == cln.reference_size == len(reference) - config.recall_shots
    for it in con.items:
        assert set(it.p_values) == set(methods) and 0 < it.combined_p <= 1
        assert it.to_dict("combined")["p_value"] == it.combined_p
    assert con.combined_set["p_value"] < 1e-3 and con.combined_set["drivers"]
    # the set verdict combines each probe's Mann-Whitney and top-k tests, all of them in the summary
    assert con.combined_set["tests"] == [*methods, *(f"{m} top-k" for m in methods)]
    assert set(con.summary()["sparse_set_tests"]) == set(methods)
    # one share per kind of evidence: the four likelihood probes split a third, answer_acc and recall have one each
    tests, w = con.combined_set["tests"], con.combined_set["weights"]
    assert w["loss"] == w["dcpdd top-k"] == pytest.approx(1 / 24, abs=1e-4)
    assert w["answer_acc"] == w["recall top-k"] == pytest.approx(1 / 6, abs=1e-4)
    set_p = [con.set_tests[m].p_value for m in methods] + [con.sparse_tests[m].p_value for m in methods]
    probe_of = [t.removesuffix(" top-k") for t in tests]
    assert con.combined_set["p_value"] == cauchy_combination(set_p, evidence_weights(probe_of))
    # the per-item combination's weights, from the other items' evidence: on the leaked set, not spread evenly
    weights = con.combined_set["item_weights"]
    assert set(weights) == set(methods) and sum(weights.values()) == pytest.approx(1, abs=1e-3)
    assert max(weights.values()) > 1 / len(methods)
    assert all(0 < t.p_value <= 1 and t.n_reference == con.reference_size for t in con.sparse_tests.values())
    assert cln.combined_set["p_value"] > 0.01
    assert con.contaminated and not cln.contaminated
    assert len(cln.flagged) <= 0.05 * len(cln.items)
    assert con.truth["methods"]["combined"]["auroc"] >= 0.85
    for m in (*methods, "combined"):
        assert abs(cln.truth["methods"][m]["auroc"] - 0.5) < 0.2, (m, cln.truth["methods"][m])


def test_evidence_weights_give_each_kind_of_evidence_one_share():
    """Each kind of evidence (`Probe.evidence`) gets an equal share of the set-level combination, split among its
    probes and their tests; fixed by the probes alone, so the combination keeps its level."""
    tests = ["loss", "mink", "minkpp", "gapk", "answer_logp", "reference", "answer_reference",
             "loss top-k", "mink top-k", "minkpp top-k", "gapk top-k", "answer_logp top-k", "reference top-k"]
    w = dict(zip(tests, evidence_weights([t.removesuffix(" top-k") for t in tests])))
    assert sum(w.values()) == pytest.approx(1)
    assert w["loss"] == w["gapk top-k"] == pytest.approx(1 / 24)  # 4 likelihood probes x 2 tests share 1/3
    assert w["answer_logp"] == w["answer_logp top-k"] == pytest.approx(1 / 6)
    assert w["reference"] == w["reference top-k"] == pytest.approx(1 / 12)
    assert w["answer_reference"] == pytest.approx(1 / 6)  # its only test carries its probe's whole share
    # four likelihood probes that see nothing cannot outvote the one reference probe that sees a leak of a few
    probes = ["loss", "mink", "minkpp", "gapk", "reference"]
    set_p = [0.5, 0.6, 0.55, 0.5, 0.002]
    assert cauchy_combination(set_p, evidence_weights(probes)) < 0.01 < cauchy_combination(set_p)


def test_controlled_set_tests_only_where_the_control_ranks_the_items_alike():
    """A control that ranks the items as the evaluated model does removes a shift both see; one that ranks them
    otherwise (a base model that never learnt the answer format) is left out, and the plain tests decide."""
    from itd.probes.detection import probe_controlled_tests

    rng = np.random.default_rng(3)
    samples = [Sample(f"b{i}", "gsm8k", f"q{i}") for i in range(200)]
    reference = [Sample(f"r{i}", "gsm8k", f"r{i}") for i in range(300)]
    control = rng.normal(size=500)
    control[:200] += 0.4  # the benchmark sits apart from its reference, and any model sees it
    model = control + 0.3 * rng.normal(size=500)
    model[0] = np.nan  # an item without a score is left out of both
    config = DetectConfig()
    rho, tests = probe_controlled_tests("loss", (model[:200], model[200:]), (control[:200], control[200:]), samples,
                                        reference, config)
    assert rho > 0.9 and tests is not None
    assert tests[0].p_value > 0.05 and tests[0].n_benchmark == 199
    unrelated = rng.normal(size=500)
    rho, tests = probe_controlled_tests("loss", (model[:200], model[200:]), (unrelated[:200], unrelated[200:]), samples,
                                        reference, config)
    assert abs(rho) < 0.2 and tests is None
    assert probe_controlled_tests("loss", (np.full(200, np.nan), model[200:]), (control[:200], control[200:]), samples,
                                  reference, config) == (None, None)
    # an answer probe of multiple-choice items is compared within gold letters and keeps its plain tests
    mcq = [Sample(f"m{i}", "mmlu", f"q{i}", answer=i % 4, choices=("a", "b", "c", "d")) for i in range(500)]
    rho, tests = probe_controlled_tests("answer_logp", (model[:200], model[200:]), (control[:200], control[200:]),
                                        mcq[:200], mcq[200:], config)
    assert rho > 0.9 and tests is None


def test_the_negative_control_scores_the_one_model_probes_its_tokenizer_allows():
    """The control is the combined one-model probes under the reference model: not the reference-model probes,
    and not DC-PDD when the reference model's tokenizer is not the one its frequency table was built with."""
    from itd.probes.detection import _control_probes

    class Tokenizer:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    class Model:
        def __init__(self, vocab):
            self.tokenizer = Tokenizer(vocab)

    config = DetectConfig(methods=("loss", "dcpdd", "answer_logp", "reference"), decision="combined")
    assert _control_probes(config, Model({"a": 0}), Model({"a": 0})) == ["loss", "dcpdd", "answer_logp"]
    assert _control_probes(config, Model({"a": 0}), Model({"b": 0})) == ["loss", "answer_logp"]
    chosen = DetectConfig(methods=config.methods, decision="combined", combine=("loss", "reference"))
    assert _control_probes(chosen, Model({"a": 0}), Model({"a": 0})) == ["loss"]
