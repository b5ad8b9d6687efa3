"""itd.evaluation: answer extraction on real data, prompt formats, the Hugging Face backend on the lab twins, the
OpenAI-compatible backend against the local test server, resumable chunks and the comparison statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from itd.core import Sample, load_benchmark, strip_calculator_annotations
from itd.core.errors import InputError, MissingDependencyError
from itd.core.io import Journal
from itd.core.render import render
from itd.evaluation import (
    Backend,
    EvalConfig,
    EvalResult,
    GenOutput,
    HFBackend,
    ItemResult,
    OpenAIBackend,
    TwinOutcome,
    build_prompt,
    compare,
    evaluate,
    extract_flexible,
    extract_strict,
    fewshot_examples,
    gold_continuation,
    ground_truth,
    normalize_answer,
    parse_letter,
    resolve_prompt_style,
)

SECRET = "sk-itd-eval-SECRET-93be1d"


# -- helpers ---------------------------------------------------------------------------------------------------


class Scripted(Backend):
    """A backend that answers each prompt with `answer(request)` and counts its calls."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.calls = 0
        self.prompts: list[str] = []

    def fingerprint(self):
        return {"backend": "scripted"}

    def generate(self, requests):
        self.calls += 1
        self.prompts += [r.prompt for r in requests]
        return [GenOutput(self.answer(r)) for r in requests]


class Counting(Backend):
    """Wraps a backend and counts the calls that reach the model."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.model_path = inner.model_path
        self.supports_loglikelihood = inner.supports_loglikelihood
        self.calls = 0

    def fingerprint(self):
        return self.inner.fingerprint()

    def generate(self, requests):
        self.calls += 1
        return self.inner.generate(requests)

    def loglikelihood(self, requests):
        self.calls += 1
        return self.inner.loglikelihood(requests)


def math_item(i: int, question: str, answer: str) -> Sample:
    return Sample(id=f"m{i}", benchmark="gsm8k", question=question, answer=answer, solution=f"... #### {answer}")


# -- GSM8K extraction ------------------------------------------------------------------------------------------


def test_every_gold_solution_scores_correct_under_both_extractions(shared_data):
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")
    assert len(samples) == 1200
    for s in samples:
        gold = normalize_answer(s.answer)
        assert normalize_answer(extract_strict(s.solution)) == gold, s.id
        assert normalize_answer(extract_flexible(s.solution)) == gold, s.id
    # and through the runner: a backend that answers every prompt with the gold solution
    by_prompt = {build_prompt(s, "harness"): s.solution for s in samples}
    for metric in ("strict", "flexible"):
        result = evaluate(samples, Scripted(lambda r: by_prompt[r.prompt]), EvalConfig(metric=metric, chunk_size=500))
        assert result.accuracy == 1.0 and result.unparsed == []
        assert result.accuracy_by_metric == {"strict": 1.0, "flexible": 1.0}
        assert len(result.items) == 1200 and result.stats["chunks"] == 3


@pytest.mark.parametrize(
    "text, gold, strict, flexible, flexible_ok",
    [
        ("The total is $1,200.", "1200", None, "$1,200.", True),
        ("So she has -3 apples left", "-3", None, "-3", True),
        ("The answer is 18.", "18", None, "18.", True),
        ("I cannot tell.", "5", None, None, False),
        ("#### 5\nWait, 2 more: 7", "5", "5", "7", False),
        ("12 eggs * 3 = 36\n#### 36", "36", "36", "36", True),
        ("#### 1,000", "1000", "1,000", "1,000", True),
        ("it is 4.50 dollars", "4.5", None, "4.50", False),  # lm-eval compares strings: 4.50 != 4.5
    ],
)
def test_extraction_edge_cases(text, gold, strict, flexible, flexible_ok):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible
    assert (flexible is not None and normalize_answer(flexible) == normalize_answer(gold)) == flexible_ok


def test_scoring_agrees_with_lm_eval(shared_data):
    """Our strict/flexible scores are lm-eval's own filters and exact_match metric, item by item."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict_filter = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flexible_filter = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:300]
    texts = [s.solution for s in samples]
    texts += [s.solution.split("####")[0] for s in samples[:50]]  # no final line: strict fails, flexible guesses
    texts += ["The answer is $1,200.", "so -3", "#### 5\nno, 7", "nothing", "...", "#### .5", "$", "1.000.000"]
    golds = [s.solution for s in samples] + [s.solution for s in samples[:50]] + [samples[0].solution] * 8
    assert len(golds) == len(texts)
    for filt, ours in ((strict_filter, extract_strict), (flexible_filter, extract_flexible)):
        theirs = [x[0] for x in filt.apply([[t] for t in texts], None)]
        assert [o if o is not None else "[invalid]" for o in map(ours, texts)] == theirs
        for t, their, gold in zip(texts, theirs, golds):
            em = exact_match_hf_evaluate([their], [gold], regexes_to_ignore=ignore, ignore_case=True)["exact_match"]
            mine = ours(t) is not None and normalize_answer(ours(t)) == normalize_answer(gsm_final(gold))
            assert mine == bool(em), (t, gold)


def gsm_final(solution: str) -> str:
    from itd.core import gsm8k_final_answer

    return gsm8k_final_answer(solution)


def test_unparsed_items_count_as_wrong_and_are_listed():
    items = [
        math_item(0, "q0", "1200"),
        math_item(1, "q1", "-3"),
        math_item(2, "q2", "5"),
        math_item(3, "q3", "5"),
    ]
    replies = {"q0": "That is $1,200.", "q1": "-3", "q2": "no idea", "q3": "#### 5\nhmm, maybe 6"}
    backend = Scripted(lambda r: replies[r.prompt.split("Question: ")[-1].split("\n")[0]])
    flexible = evaluate(items, backend)
    assert [it.correct for it in flexible.items] == [True, True, False, False]
    assert flexible.unparsed == ["m2"] and flexible.accuracy == 0.5
    it2 = flexible.items[2]
    assert it2.prediction == "no idea" and it2.extracted == {"strict": None, "flexible": None} and not it2.parsed
    strict = evaluate(items, backend, EvalConfig(metric="strict"))
    assert [it.correct for it in strict.items] == [False, False, False, True]
    assert strict.unparsed == ["m0", "m1", "m2"]
    assert strict.accuracy_by_metric == flexible.accuracy_by_metric == {"strict": 0.25, "flexible": 0.5}
    assert strict.items[3].extracted == {"strict": "5", "flexible": "6"}


# -- MMLU letters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, letter",
    [
        (" B", "B"),
        (" C\n\nQuestion: next", "C"),
        ("Answer: D", "D"),
        ("The answer is (A).", "A"),
        ("the correct answer is: b", None),  # a bare lowercase letter is no answer
        ("(c) is right", "C"),
        ("A cat sits; so B.", "B"),  # the article "A" is skipped
        ("A is correct", "A"),
        ("**B**", "B"),
        ("I think E", None),  # not an option of a 4-choice item
        ("None of them", None),
        ("", None),
        ("Answer: B. Although A looks tempting", "B"),
    ],
)
def test_parse_letter(text, letter):
    assert parse_letter(text, 4) == letter


# -- prompts ---------------------------------------------------------------------------------------------------


def test_mmlu_harness_prompt_is_lm_eval_format(shared_data):
    dev = load_benchmark(shared_data / "mmlu" / "dev")
    test = load_benchmark(shared_data / "mmlu" / "test" / "high_school_geography_test.csv")
    item = test[0]
    shots = fewshot_examples(item, dev, 2)
    assert [s.id for s in shots] == ["high_school_geography_dev:1", "high_school_geography_dev:2"]
    expected = (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "The rate of natural increase of a population is found by subtracting the\n"
        "A. crude death rate from the crude birth date.\n"
        "B. crude birth rate from the crude death rate.\n"
        "C. doubling time from the crude birth rate.\n"
        "D. fertility rate from the crude death rate.\n"
        "Answer: A\n\n"
        "During the third stage of the demographic transition model, which of the following is true?\n"
        "A. Birth rates increase and population growth rate is less rapid.\n"
        "B. Birth rates decline and population growth rate is less rapid.\n"
        "C. Birth rates increase and population growth rate increases.\n"
        "D. Birth rates decrease and population growth rate increases.\n"
        "Answer: B\n\n"
        "The main factor preventing subsistence economies from advancing economically is the lack of\n"
        "A. a currency.\n"
        "B. a well-connected transportation infrastructure.\n"
        "C. government activity.\n"
        "D. a banking service.\n"
        "Answer:"
    )
    assert build_prompt(item, "harness", shots) == expected
    # the item itself is never its own shot, and other subjects only fill up after the subject's own items
    own = fewshot_examples(dev[0], dev, 5)
    assert dev[0] not in own and [s.subject for s in own] == ["abstract_algebra"] * 4 + ["anatomy"]


def test_gsm8k_harness_prompt_is_lm_eval_format(shared_data):
    train = load_benchmark(shared_data / "gsm8k" / "train.jsonl")
    item = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[1]
    expected = (
        "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?\n"
        "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72\n\n"
        "Question: A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does "
        "it take?\nAnswer:"
    )
    assert build_prompt(item, "harness", fewshot_examples(item, train, 1)) == expected
    assert build_prompt(item, "harness") == expected[expected.index("Question: A robe") :]


def test_plain_prompts_are_the_lab_rendering(shared_data):
    gsm = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:3]
    mmlu = load_benchmark(shared_data / "mmlu" / "dev" / "anatomy_dev.csv")[:3]
    for s in gsm:
        prompt = build_prompt(s, "plain")
        assert prompt + strip_calculator_annotations(s.solution).strip() == render(s)
        assert "<<" not in build_prompt(s, "plain", [gsm[(gsm.index(s) + 1) % 3]])
    for s in mmlu:
        assert build_prompt(s, "plain") + " " + "ABCD"[s.answer] == render(s, "options+answer")
    shots = fewshot_examples(gsm[0], gsm, 2)
    expected = render(shots[0]) + "\n\n" + render(shots[1]) + "\n\n" + build_prompt(gsm[0], "plain")
    assert build_prompt(gsm[0], "plain", shots) == expected


def test_config_validation():
    with pytest.raises(InputError, match="num_fewshot"):
        EvalConfig(num_fewshot=-1)
    with pytest.raises(InputError, match="needs few-shot items"):
        EvalConfig(num_fewshot=2)
    with pytest.raises(InputError, match="prompt_style"):
        EvalConfig(prompt_style="chat")
    with pytest.raises(InputError, match="metric"):
        EvalConfig(metric="exact")
    with pytest.raises(InputError, match="mcq_mode"):
        EvalConfig(mcq_mode="logprobs")
    with pytest.raises(InputError, match="max_new_tokens"):
        EvalConfig(max_new_tokens=0)
    with pytest.raises(InputError, match="batch_size"):
        EvalConfig(batch_size="big")
    with pytest.raises(InputError, match="chunk_size"):
        EvalConfig(chunk_size=0)
    cfg = EvalConfig(num_fewshot=1, fewshot=[math_item(0, "q", "1")])
    assert isinstance(cfg.fewshot, tuple)
    assert json.loads(json.dumps(cfg.to_dict()))["fewshot"] == {"samples": ["m0"]}
    with pytest.raises(InputError, match="only 0 suitable"):
        evaluate([math_item(0, "q", "1")], Scripted(lambda r: "1"), cfg)  # the item cannot be its own shot
    with pytest.raises(InputError, match="duplicate item id"):
        evaluate([math_item(0, "q", "1"), math_item(0, "r", "2")], Scripted(lambda r: "1"))


def test_optional_dependencies_are_imported_lazily(tmp_path, monkeypatch):
    code = "import sys, itd.evaluation; assert not {'torch', 'transformers', 'openai'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'itd\[probes\]'"):
        evaluate([math_item(0, "q", "1")], str(tmp_path))
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'itd\[llm\]'"):
        OpenAIBackend.create("m", base_url="http://127.0.0.1:9/v1")


# -- the Hugging Face backend on the lab twins -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """The lab's GPT-2 is tiny: one thread is faster than two and immune to a busy machine."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lab_items(tiny_lab, shared_data):
    by_id = {s.id: s for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")}
    return [by_id[i] for i in tiny_lab.leaked[:3] + tiny_lab.unseen[:2]]


@pytest.fixture(scope="module")
def contaminated(tiny_lab, one_thread):
    return HFBackend(str(tiny_lab.contaminated))


def test_hf_generation_runs_and_is_deterministic(contaminated, tiny_lab, lab_items, tmp_path):
    assert resolve_prompt_style("auto", tiny_lab.contaminated) == "plain"
    assert resolve_prompt_style("auto", tmp_path) == "harness"
    cfg = EvalConfig(max_new_tokens=24)
    first = evaluate(lab_items, contaminated, cfg)
    assert first.prompt_style == "plain" and first.n == 5 and first.model["name"] == str(tiny_lab.contaminated)
    assert all(isinstance(it.prediction, str) for it in first.items)
    assert all("\n\n" not in it.prediction for it in first.items)
    again = evaluate(lab_items, contaminated, cfg)
    assert [it.to_dict() for it in again.items] == [it.to_dict() for it in first.items]
    # batching does not change what is generated: one item at a time gives the same texts
    single = [evaluate([s], contaminated, cfg).items[0].prediction for s in lab_items[:3]]
    assert single == [it.prediction for it in first.items[:3]]
    # the fingerprint names the weights, not the path
    fp = contaminated.fingerprint()
    assert len(fp["weights"]["model.safetensors"]) == 64 and str(tiny_lab.out) not in json.dumps(fp)
    assert HFBackend(str(tiny_lab.clean)).fingerprint()["weights"] != fp["weights"]


def test_hf_loglikelihood_picks_the_argmax(contaminated, shared_data):
    from itd.probes.models import score_texts

    items = load_benchmark(shared_data / "mmlu" / "dev" / "anatomy_dev.csv")[:3]
    result = evaluate(items, contaminated, EvalConfig(prompt_style="harness"))
    assert result.mcq_mode == "loglikelihood"
    for s, it in zip(items, result.items):
        lls = np.array(it.loglikelihoods)
        assert lls.shape == (4,) and np.all(lls < 0)
        assert it.prediction == "ABCD"[int(np.argmax(lls))] == it.extracted["letter"]
        assert it.gold == "ABCD"[s.answer] and it.correct == (it.prediction == it.gold) and it.parsed
        # each letter's log-likelihood is the last-token log-prob of the prompt followed by that letter
        prompt = build_prompt(s, "harness")
        direct = [score_texts(contaminated.lm, [prompt + " " + c])[0].token_logprobs[-1] for c in "ABCD"]
        np.testing.assert_allclose(lls, direct, rtol=0, atol=1e-4)
    generated = evaluate(items, contaminated, EvalConfig(mcq_mode="generate", max_new_tokens=4))
    assert generated.mcq_mode == "generate" and all(it.loglikelihoods is None for it in generated.items)


def test_hf_chunks_resume_from_the_store(contaminated, lab_items, tmp_path):
    cfg = EvalConfig(max_new_tokens=16, chunk_size=2)  # 5 items: chunks of 2, 2, 1
    journal = tmp_path / "eval.journal"
    counted = Counting(contaminated)
    seen = []
    full = evaluate(lab_items, counted, cfg, store=Journal(journal), progress=lambda d, t: seen.append((d, t)))
    assert counted.calls == 3 and seen == [(2, 5), (4, 5), (5, 5)]
    assert full.stats == {"chunks": 3, "chunks_from_store": 0, "chunks_computed": 3, "chunks_not_stored": 0}
    lines = journal.read_text().splitlines()
    assert len(lines) == 3

    counted.calls = 0
    again = evaluate(lab_items, counted, cfg, store=Journal(journal))
    assert counted.calls == 0 and again.stats["chunks_from_store"] == 3
    assert json.dumps(again.to_dict()["items"]) == json.dumps(full.to_dict()["items"])

    # a run killed after its first chunk (and mid-way through writing the second) resumes to the same results
    partial = tmp_path / "partial.journal"
    partial.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    resumed = evaluate(lab_items, counted, cfg, store=Journal(partial))
    assert counted.calls == 2 and resumed.stats["chunks_from_store"] == 1
    assert json.dumps(resumed.to_dict()["items"]) == json.dumps(full.to_dict()["items"])
    assert len(Journal(partial)) == 3

    # other generation parameters are other chunks
    counted.calls = 0
    evaluate(lab_items[:2], counted, EvalConfig(max_new_tokens=8, chunk_size=2), store=Journal(journal))
    assert counted.calls == 1


def test_hf_model_given_by_path_or_loaded_model(tiny_lab, lab_items, one_thread):
    from itd.probes.models import load_model

    cfg = EvalConfig(max_new_tokens=8, batch_size=2)
    by_path = evaluate(lab_items[:2], str(tiny_lab.clean), cfg)
    loaded = evaluate(lab_items[:2], load_model(tiny_lab.clean), cfg)
    assert [it.prediction for it in by_path.items] == [it.prediction for it in loaded.items]
    assert by_path.model["fingerprint"] == loaded.model["fingerprint"]
    with pytest.raises(InputError, match="cannot evaluate"):
        evaluate(lab_items[:1], 42)


# -- the OpenAI-compatible backend -----------------------------------------------------------------------------


@pytest.fixture
def endpoint_env(monkeypatch):
    pytest.importorskip("openai")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ITD_API_KEY", SECRET)


def endpoint(server, tmp_path, api="chat", **kw) -> OpenAIBackend:
    kw.setdefault("max_retries", 2)
    return OpenAIBackend.create("eval-model", base_url=server.url, api=api, cache_dir=str(tmp_path / "cache"), **kw)


def gsm_items() -> list[Sample]:
    return [math_item(0, "Sam has 2 cats and 3 dogs. Pets?", "5"),
            math_item(1, "Ann reads 10 pages a day for 3 days. Pages?", "30"),
            math_item(2, "What is the colour of joy?", "7")]


def arithmetic_responder(request):
    from openai_server import Reply, last_user_message

    text = last_user_message(request)
    if "cats" in text:
        return Reply(content=" 2 + 3 = 5 pets.\n#### 5")
    if "pages" in text:
        return Reply(content="10 * 3 = 30\n#### 30\n\nQuestion: something else 99")
    return Reply(content="I would rather not say.")


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_openai_backend(llm_server, tmp_path, endpoint_env, api):
    from openai_server import Reply, Script

    llm_server.responder = Script({"pages": [Reply.error(500, "transient")]}, default=arithmetic_responder)
    backend = endpoint(llm_server, tmp_path, api=api)
    result = evaluate(gsm_items(), backend)
    assert result.prompt_style == "harness" and result.mcq_mode == "generate"
    assert [it.correct for it in result.items] == [True, True, False]
    assert result.unparsed == ["m2"] and result.items[2].prediction == "I would rather not say."
    assert result.items[1].prediction == "10 * 3 = 30\n#### 30"  # cut at the stop sequence
    assert llm_server.calls == 4  # three items, one 500 retried by the SDK
    sent = [r for r in llm_server.requests if r.json.get("prompt") or r.json.get("messages")]
    assert all(r.path.rstrip("/").endswith("/completions") for r in sent)
    assert all(r.path.startswith("/v1/chat/") == (api == "chat") for r in sent)
    body = sent[0].json
    assert body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert body["stop"] == ["Question:", "</s>", "<|im_end|>", "\n\n"]
    prompts = {r.json["messages"][0]["content"] if api == "chat" else r.json["prompt"] for r in sent}
    assert prompts == {build_prompt(s, "harness") for s in gsm_items()}

    # a re-run is served by the reply cache: no request reaches the endpoint
    llm_server.reset()
    again = evaluate(gsm_items(), endpoint(llm_server, tmp_path, api=api))
    assert llm_server.calls == 0
    assert [it.to_dict() for it in again.items] == [it.to_dict() for it in result.items]

    # the key is nowhere in what is kept
    kept = json.dumps(result.to_dict()) + "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert SECRET not in kept and SECRET not in repr(backend) and llm_server.url not in json.dumps(backend.fingerprint())


def test_openai_mcq_answers_are_parsed(llm_server, tmp_path, endpoint_env, shared_data):
    from openai_server import Reply, last_user_message

    items = load_benchmark(shared_data / "mmlu" / "dev" / "anatomy_dev.csv")[:3]
    right, wrong = "ABCD"[items[0].answer], "ABCD"[(items[1].answer + 1) % 4]
    answers = iter([f"The answer is {right}.", f"Answer: ({wrong})", "Hmm."])
    prompts = {}

    def responder(request):
        text = last_user_message(request)
        if text not in prompts:
            prompts[text] = next(answers)
        return Reply(content=prompts[text])

    llm_server.responder = responder
    result = evaluate(items, endpoint(llm_server, tmp_path, concurrency=1))
    assert result.mcq_mode == "generate"
    assert [it.correct for it in result.items] == [True, False, False]
    assert result.unparsed == [items[2].id] and result.items[2].extracted == {"letter": None}
    with pytest.raises(InputError, match="cannot score log-likelihoods"):
        evaluate(items, endpoint(llm_server, tmp_path), EvalConfig(mcq_mode="loglikelihood"))


def test_complete_text_keys_and_requests(llm_server, tmp_path, endpoint_env):
    from itd.llm import LLMClient, LLMConfig, TextRequest, text_cache_key

    llm_server.responder = arithmetic_responder
    chat = LLMConfig(model="m", base_url=llm_server.url, cache_dir=str(tmp_path / "c"), temperature=0.0)
    comp = LLMConfig(model="m", base_url=llm_server.url, cache_dir=str(tmp_path / "c"), temperature=0.0, api="completions")
    req = TextRequest("Sam has 2 cats", stop=("\n\n",), max_tokens=7)
    assert text_cache_key(chat, req, 0) != text_cache_key(comp, req, 0) != text_cache_key(comp, req, 1)
    [a] = LLMClient(chat).complete_text([req])
    [b] = LLMClient(comp).complete_text(["Sam has 2 cats"])
    assert a.ok and a.text == a.value == " 2 + 3 = 5 pets.\n#### 5" and b.text == a.text and not a.cached
    first, second = llm_server.requests
    assert first.path == "/v1/chat/completions" and first.json["stop"] == ["\n\n"] and first.json["max_tokens"] == 7
    assert second.path == "/v1/completions" and second.json["prompt"] == "Sam has 2 cats" and "stop" not in second.json
    assert "response_format" not in first.json and "response_format" not in second.json
    [again] = LLMClient(chat).complete_text([req])
    assert again.cached and again.text == a.text and llm_server.calls == 2
    with pytest.raises(InputError, match="at most 4 stop"):
        TextRequest("p", stop=("a", "b", "c", "d", "e"))
    with pytest.raises(InputError, match="unknown LLM API"):
        LLMConfig(model="m", api="responses")
    backend = OpenAIBackend(chat, api="completions")
    assert backend.config.api == "completions" and backend.fingerprint() == {
        "backend": "openai", "model": "m", "api": "completions", "temperature": 0.0}


def test_failed_endpoint_call_is_listed_and_not_stored(llm_server, tmp_path, endpoint_env):
    from openai_server import Reply, Script

    llm_server.responder = Script({"cats": [Reply.error(503, "down")] * 3}, default=arithmetic_responder)
    journal = Journal(tmp_path / "j.jsonl")
    result = evaluate(gsm_items(), endpoint(llm_server, tmp_path, max_retries=2), store=journal)
    failed = result.items[0]
    assert failed.prediction is None and not failed.correct and not failed.parsed
    assert failed.error.startswith("HTTP 503") and result.errors == {"m0": failed.error}
    assert result.unparsed == ["m0", "m2"] and result.stats["chunks_not_stored"] == 1 and len(journal) == 0
    retried = evaluate(gsm_items(), endpoint(llm_server, tmp_path), store=journal)  # the endpoint is back
    assert [it.correct for it in retried.items] == [True, True, False] and len(journal) == 1


# -- compare ---------------------------------------------------------------------------------------------------


def make_result(correct: list[int], keys: list[str] | None = None, prefix: str = "i") -> EvalResult:
    items = [
        ItemResult(id=f"{prefix}{k}", kind="math", gold="1", correct=bool(c), parsed=True,
                   sample_key=keys[k] if keys else f"k{k}")
        for k, c in enumerate(correct)
    ]
    return EvalResult(items=items, model={}, config={}, prompt_style="plain", mcq_mode="generate", metric="flexible")


def test_compare_hand_computed():
    flagged = {"i0", "i1", "i2", "i3"}
    after_keys = ["r0", "r1", "r2", "r3"] + [f"k{k}" for k in range(4, 10)]
    model_orig = make_result([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])  # 7/10; flagged 4/4
    model_decon = make_result([1, 0, 0, 0, 1, 1, 1, 0, 0, 0], after_keys)  # 4/10; flagged 1/4
    clean_orig = make_result([1, 0, 0, 0, 1, 1, 1, 0, 0, 0])  # 4/10
    clean_decon = make_result([0, 1, 0, 0, 1, 1, 1, 0, 0, 0], after_keys)  # 4/10
    c = compare(model_orig, model_decon, flagged, clean_original=clean_orig, clean_decontaminated=clean_decon,
                n_boot=500, seed=1)
    acc = {role: {k: e.value for k, e in subsets.items()} for role, subsets in c.accuracy.items()}
    assert acc["model"] == pytest.approx({"original": 0.7, "decontaminated": 0.4, "flagged_before": 1.0,
                                          "flagged_after": 0.25, "unflagged": 0.5})
    assert acc["clean"] == pytest.approx({"original": 0.4, "decontaminated": 0.4, "flagged_before": 0.25,
                                          "flagged_after": 0.25, "unflagged": 0.5})
    assert c.accuracy["model"]["flagged_before"].n == 4 and c.accuracy["model"]["unflagged"].n == 6
    assert c.inflation.value == pytest.approx(0.3) and c.inflation.n == 10
    assert c.true_inflation.value == pytest.approx(0.3)
    assert c.residual_inflation.value == pytest.approx(0.0)
    assert c.inflation_removed.value == pytest.approx(1.0) and c.inflation_removed.n == 10
    assert c.counts["rewritten"] == 4 and c.counts["flagged"] == 4
    # rewritten items: clean correctness before [1,0,0,0], after [0,1,0,0] -> same on 2 of 4
    assert c.fidelity.value == pytest.approx(0.5) and c.fidelity.n == 4
    # after rewriting: model [1,0,0,0], clean [0,1,0,0] -> same on 2 of 4
    assert c.resistance.value == pytest.approx(0.5) and c.resistance.n == 4
    for est in [*c.accuracy["model"].values(), *c.accuracy["clean"].values(), c.inflation, c.fidelity]:
        assert est.low <= est.value <= est.high and est.n_boot == 500
    # item-wise the model never does better after rewriting: every paired replicate of the drop is >= 0
    assert 0 <= c.inflation.low <= 0.3 <= c.inflation.high
    d = c.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["inflation"]["ci"] == [c.inflation.low, c.inflation.high] and d["bootstrap"]["n_boot"] == 500
    again = compare(model_orig, model_decon, flagged, clean_original=clean_orig, clean_decontaminated=clean_decon,
                    n_boot=500, seed=1)
    assert again.to_dict() == d


def test_compare_paired_difference_and_undefined_figures():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, size=200).tolist()
    # the same correctness on both sets: the paired difference is exactly 0 in every replicate
    c = compare(make_result(base), make_result(base), set(), n_boot=300)
    assert (c.inflation.value, c.inflation.low, c.inflation.high) == (0.0, 0.0, 0.0)
    unpaired_width = c.accuracy["model"]["original"].high - c.accuracy["model"]["original"].low
    assert unpaired_width > 0.05  # while each accuracy alone is uncertain
    # a clean model that beats the evaluated one: no inflation to remove
    clean = make_result([1] * 200)
    c = compare(make_result(base), make_result(base), {"i0"}, clean_original=clean, clean_decontaminated=clean, n_boot=200)
    assert c.true_inflation.value < 0
    assert c.inflation_removed.value is None and "not positive" in c.inflation_removed.reason
    assert c.fidelity.value is None and c.fidelity.n == 0 and "no rewritten item" in c.fidelity.reason
    # without clean results the clean figures are undefined, with the reason
    c = compare(make_result(base), make_result(base), set(), n_boot=50)
    assert "clean" not in c.accuracy
    for est in (c.true_inflation, c.residual_inflation, c.inflation_removed, c.fidelity, c.resistance):
        assert est.value is None and "clean" in est.reason
    assert math.isclose(c.accuracy["model"]["flagged_before"].n, 0) and c.accuracy["model"]["flagged_before"].value is None
    with pytest.raises(InputError):
        compare(make_result(base), make_result(base), set(), n_boot=0)


def test_compare_explicit_rewritten_and_result_round_trip(tmp_path):
    orig = make_result([1, 1, 0, 0])
    decon = make_result([0, 1, 0, 1])
    assert compare(orig, decon, {"i0"}).counts["rewritten"] == 0  # same sample keys: nothing rewritten
    c = compare(orig, decon, {"i0"}, clean_original=orig, clean_decontaminated=decon, rewritten={"i0", "i3"}, n_boot=100)
    assert c.counts["rewritten"] == 2 and c.fidelity.value == 0.0 and c.resistance.value == 1.0
    path = tmp_path / "r.json"
    path.write_text(json.dumps(orig.to_dict()))
    back = EvalResult.from_dict(json.loads(path.read_text()))
    assert back.to_dict() == orig.to_dict() and back.accuracy == 0.5


# -- ground truth on lab twins ------------------------------------------------------------------------------------
def _by_id(ids: list[str], correct) -> EvalResult:
    items = [ItemResult(id=i, kind="math", gold="1", correct=bool(c), parsed=True) for i, c in zip(ids, correct)]
    return EvalResult(items=items, model={}, config={}, prompt_style="plain", mcq_mode="generate", metric="flexible")


def test_ground_truth_difference_in_differences_hand_computed():
    """20 items, 5 leaked. The clean twin is right on items 0-9; the contaminated twin also on the 5 leaked
    items (0, 2, 4, 6, 8 right already; so its memory wins nothing there...) - spelled out below."""
    ids = [f"q{k}" for k in range(20)]
    leaked, unseen = ids[10:15], ids[:10] + ids[15:]
    clean = [1] * 10 + [0] * 10
    model = [1] * 9 + [0] + [1] * 5 + [0] * 5  # unseen: one fewer right (q9); leaked q10-q14: all right
    # ITD rewrote the 4 flagged leaked items (q10-q13): memory gone, both twins wrong on them; q14 was missed
    model_itd = [1] * 9 + [0] + [0] * 4 + [1] + [0] * 5
    clean_itd = clean
    results = {"model": {"original": _by_id(ids, model), "itd": _by_id(ids, model_itd)},
               "clean": {"original": _by_id(ids, clean), "itd": _by_id(ids, clean_itd)}}
    gt = ground_truth([TwinOutcome(leaked, unseen, results, {"itd": ids[10:14]}, flagged=ids[10:14] + ["q0"])],
                      n_boot=400)
    # leaked: contaminated 5/5, clean 0/5 -> +1.0; unseen: 9/15 vs 10/15 -> -1/15; DiD = 1 + 1/15
    assert gt.leaked_gain.value == pytest.approx(1.0) and gt.unseen_gap.value == pytest.approx(-1 / 15)
    assert gt.true_inflation.value == pytest.approx(1 + 1 / 15)
    itd = gt.arms["itd"]
    # after ITD: leaked 1/5 vs 0/5 -> +0.2; unseen unchanged -> -1/15; residual 0.2 + 1/15
    assert itd["residual_inflation"].value == pytest.approx(0.2 + 1 / 15)
    assert itd["inflation_removed"].value == pytest.approx(1 - (0.2 + 1 / 15) / (1 + 1 / 15))
    assert gt.arms["none"]["inflation_removed"].value == 0.0
    assert itd["fidelity"].value == 1.0 and itd["fidelity"].n == 4  # clean twin wrong before and after on q10-q13
    assert itd["difficulty"].value == 0.0
    assert gt.flags["leaked_flagged"] == 4 and gt.flags["unseen_flagged"] == 1 and gt.flags["recall"]["value"] == 0.8
    per_item = {row["id"]: row for row in gt.per_item}
    assert per_item["q10"]["gain"]["original"]["leaked"] == 1.0 and per_item["q10"]["gain"]["itd"]["leaked"] == 0.0
    assert per_item["q9"]["gain"]["original"] == {"leaked": None, "unseen": -1.0}
    for est in (gt.true_inflation, itd["residual_inflation"], itd["inflation_removed"]):
        assert est.low <= est.value <= est.high
    assert json.loads(json.dumps(gt.to_dict(), allow_nan=False))["counts"]["rewritten_itd"] == 4


def test_ground_truth_over_replicas_recovers_a_known_effect():
    """Three replicas leak three different thirds of 300 items. The contaminated twin answers a leaked item
    right with probability 0.9, any other item like the clean twin (right with probability p_i on item i).
    The DiD is then 0.9 - mean(p) in expectation; the CI covers it, the unseen gap is 0, and rewriting every
    item removes all of the inflation (on a rewrite the memory is gone, the item as hard as before)."""
    rng = np.random.default_rng(11)
    ids = [f"i{k}" for k in range(300)]
    p_item = rng.uniform(0.2, 0.8, size=300)
    outcomes = []
    for r in range(3):
        leaked = set(ids[100 * r: 100 * (r + 1)])
        clean = rng.random(300) < p_item
        model = np.where([i in leaked for i in ids], rng.random(300) < 0.9, clean)
        clean_all, clean_rt = rng.random(300) < p_item, rng.random(300) < p_item
        # on a rewritten leaked item the memory is gone: right as often as the clean twin, not on the same draws
        model_all = np.where([i in leaked for i in ids], rng.random(300) < p_item, clean_all)
        results = {"model": {"original": _by_id(ids, model), "all": _by_id(ids, model_all)},
                   "clean": {"original": _by_id(ids, clean), "all": _by_id(ids, clean_all),
                             "retest": _by_id(ids, clean_rt)}}
        outcomes.append(TwinOutcome(sorted(leaked), [i for i in ids if i not in leaked], results,
                                    {"all": ids, "retest": ids}))
    gt = ground_truth(outcomes, n_boot=1000)
    expected = 0.9 - p_item.mean()
    assert gt.true_inflation.low < expected < gt.true_inflation.high
    assert abs(gt.true_inflation.value - expected) < 0.06 and gt.true_inflation.n == 300
    assert gt.unseen_gap.value == 0.0 and gt.counts == {**gt.counts, "replicas": 3, "items": 300, "cells": 900}
    every = gt.arms["all"]
    assert every["inflation_removed"].low < 1.0 < every["inflation_removed"].high
    assert abs(every["residual_inflation"].value) < 0.06
    # fidelity: the clean twin's agreement original vs rewritten, next to two rewrites (the same process); both
    # above chance (two independent answer sheets) because items differ in difficulty: E[p^2 + (1 - p)^2]
    agree = float(np.mean(p_item**2 + (1 - p_item) ** 2))
    assert abs(every["fidelity"].value - gt.ceiling.value) < 0.05 and abs(gt.ceiling.value - agree) < 0.04
    assert abs(gt.chance.value - 0.5) < 0.02 < gt.ceiling.value - gt.chance.value
    assert every["fidelity_ratio"].low < 1.0 < every["fidelity_ratio"].high
    assert every["difficulty"].low < 0 < every["difficulty"].high
    # an item leaked in one replica and unseen in the others has its effect measured against itself
    row = gt.per_item[0]
    assert row["leaked_in"] == 1 and row["unseen_in"] == 2 and row["gain"]["original"]["unseen"] == 0.0


def test_ground_truth_without_inflation_says_so():
    ids = [f"i{k}" for k in range(10)]
    same = _by_id(ids, [1, 0] * 5)
    gt = ground_truth([TwinOutcome(ids[:3], ids[3:], {"model": {"original": same}, "clean": {"original": same}})],
                      n_boot=100)
    assert gt.true_inflation.value == 0.0 and gt.arms["none"]["inflation_removed"].value is None
    assert "not positive" in gt.arms["none"]["inflation_removed"].reason and gt.flags is None
    assert gt.ceiling.value is None
    with pytest.raises(InputError):
        ground_truth([])


def test_gold_continuation_follows_the_prompt(shared_data):
    item = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[0]
    mcq = load_benchmark(shared_data / "mmlu" / "test")[0]
    for style in ("plain", "harness"):
        shot = build_prompt(item, style, [item]).split("\n\n")[0]  # the item as its own few-shot example
        assert shot == build_prompt(item, style) + gold_continuation(item, style)
    assert gold_continuation(item, "plain") == strip_calculator_annotations(item.solution).strip()
    assert gold_continuation(mcq, "plain") == " " + "ABCD"[mcq.answer]
    assert render(mcq, "options+answer") == build_prompt(mcq, "plain") + gold_continuation(mcq, "plain")


def test_the_declared_prompt_style_and_the_generation_budget(tmp_path):
    """"auto" follows the style a model's own config.json declares, wherever the directory lives; the budget is
    capped at half of a short context window (lm-eval's rule needs budget < window)."""
    from itd.evaluation import MODEL_STYLE_KEY, generation_budget

    model = tmp_path / "anywhere" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", MODEL_STYLE_KEY: "plain"}))
    assert resolve_prompt_style("auto", model) == "plain" and resolve_prompt_style("harness", model) == "harness"
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert resolve_prompt_style("auto", model) == "harness" and resolve_prompt_style("auto", None) == "harness"
    (model / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        resolve_prompt_style("auto", model)
    assert generation_budget(256, 256) == 128 and generation_budget(256, 4096) == 256
    assert generation_budget(256, None) == 256 and generation_budget(8, 1) == 1


def test_backends_are_built_from_their_configs_through_the_registry(llm_server, tmp_path, endpoint_env, tiny_lab):
    from itd.evaluation import BACKENDS, HFBackend, HFBackendConfig
    from itd.llm import LLMConfig

    assert BACKENDS.names() == ["hf", "openai"]
    with pytest.raises(InputError, match="Did you mean 'openai'"):
        BACKENDS.get("opneai")
    with pytest.raises(InputError, match="configured by a LLMConfig, got a HFBackendConfig"):
        BACKENDS.create("openai", HFBackendConfig("m"))
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        HFBackendConfig(str(tiny_lab.clean), batch_size=0)

    hf = BACKENDS.create("hf", HFBackendConfig(str(tiny_lab.clean), batch_size=4, device="cpu"))
    assert isinstance(hf, HFBackend) and hf.batch_size == 4 and hf.model_path == str(tiny_lab.clean)
    # a model given by path evaluates through the same factory, and as the same model
    assert evaluate(gsm_items(), str(tiny_lab.clean)).model["fingerprint"] == hf.fingerprint()

    from openai_server import Script

    llm_server.responder = Script({}, default=arithmetic_responder)
    config = LLMConfig(model="eval-model", base_url=llm_server.url, api="completions", temperature=0.0,
                       response_format="none", cache_dir=str(tmp_path / "cache"), max_retries=2)
    backend = BACKENDS.create("openai", config)
    assert [it.correct for it in evaluate(gsm_items(), backend).items] == [True, True, False]
    assert all(r.path.startswith("/v1/completions") for r in llm_server.requests if r.json.get("prompt"))
