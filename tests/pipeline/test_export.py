"""lm-evaluation-harness export: real GSM8K and MMLU items, loaded and run by lm-eval itself (no model download),
and the stock lm-eval Hugging Face model on a tiny lab twin scoring the export item for item as itd does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from itd.core import Sample, load_benchmark
from itd.core.errors import InputError
from itd.evaluation import HARNESS_GSM8K_STOP, PLAIN_STOP, EvalConfig, build_prompt, evaluate
from itd.pipeline.export import export_lm_eval

yaml = pytest.importorskip("yaml")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import apply_template  # noqa: E402

STOCK = Path(lm_eval.__file__).parent / "tasks"
SUBJECTS = ("abstract_algebra", "anatomy")
COPIED = ("output_type", "doc_to_target", "doc_to_choice", "target_delimiter", "metric_list", "filter_list", "repeats")


class Oracle(LM):
    """A model that knows every gold answer: generates the doc's worked solution; for multiple choice, gives the
    gold letter the highest loglikelihood. With `letter`, always prefers that letter instead."""

    def __init__(self, letter: str | None = None):
        super().__init__()
        self.letter = letter

    def loglikelihood(self, requests):
        out = []
        for req in requests:
            _, continuation = req.args
            best = self.letter or "ABCD"[req.doc["answer"]]
            out.append((0.0 if continuation.strip() == best else -7.0, continuation.strip() == best))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("no task here scores rolling loglikelihood")

    def generate_until(self, requests):
        return [req.doc["answer"] for req in requests]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Keep the datasets cache of these tests out of ~/.cache, and run from a directory that is not the export's."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    gsm8k = shared_data / "gsm8k"
    return load_benchmark(gsm8k / "test.jsonl")[:8], load_benchmark(gsm8k / "train.jsonl")[:5]


@pytest.fixture(scope="module")
def mmlu(shared_data):
    """Two subjects of real MMLU items (12 and 7, so size weighting shows) and their dev items as few-shot."""
    test, dev = [], []
    for subject, n in zip(SUBJECTS, (12, 7)):
        test += load_benchmark(shared_data / "mmlu" / "test" / f"{subject}_test.csv")[:n]
        dev += load_benchmark(shared_data / "mmlu" / "dev" / f"{subject}_dev.csv")
    return test, dev


def _manager(out_dir: Path) -> TaskManager:
    # The stock tasks are left out only to keep the test fast (indexing them takes seconds); `lm_eval --include_path`
    # indexes both, and no stock YAML names anything *_itd (test_names_cannot_collide_with_stock_tasks).
    return TaskManager(include_path=str(out_dir), include_defaults=False)


def _stock_yaml(relative: str) -> dict:
    return yaml.safe_load((STOCK / relative).read_text(encoding="utf-8"))


def test_gsm8k_export_loads_and_runs_in_lm_eval(gsm8k, tmp_path):
    test, train = gsm8k
    result = export_lm_eval(test, tmp_path / "out", task="gsm8k", fewshot=train, num_fewshot=3, max_gen_toks=200)
    assert result.task == "gsm8k_itd" and result.tasks == {"gsm8k_itd": 8} and result.num_fewshot == 3
    assert result.prompt_style == "harness" and result.max_gen_toks == 200
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gsm8k_itd.test.jsonl", "gsm8k_itd.yaml"]
    # The data is openai/gsm8k's schema (here the very records of the source file) plus itd's prompt.
    raw = Path(test[0].source.file).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in (out / "gsm8k_itd.test.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "itd_prompt"} for r in records] == [
        json.loads(raw[s.source.line - 1]) for s in test
    ]

    # The scoring fields are the stock task's; the stop sequences and budget itd's; data paths are absolute.
    ours = yaml.safe_load((out / "gsm8k_itd.yaml").read_text(encoding="utf-8"))
    stock = _stock_yaml("gsm8k/gsm8k.yaml")
    for key in COPIED:
        if key in stock:
            assert ours[key] == stock[key], key
    assert ours["metadata"] == stock["metadata"] and "tag" not in ours
    assert ours["generation_kwargs"] == {**stock["generation_kwargs"], "until": list(HARNESS_GSM8K_STOP),
                                         "max_gen_toks": 200}
    assert set(stock["generation_kwargs"]["until"]) < set(HARNESS_GSM8K_STOP)
    assert ours["dataset_path"] == "json" and ours["test_split"] == "test" and ours["num_fewshot"] == 0
    assert ours["dataset_kwargs"]["data_files"] == {"test": str(out / "gsm8k_itd.test.jsonl")}

    tm = _manager(out)
    task = tm.load(["gsm8k_itd"])["tasks"]["gsm8k_itd"]
    docs = list(task.test_docs())
    assert len(docs) == 8
    # The harness prompt is the stock template's text, with itd's shots (the first three given) in front.
    shots = "".join(f"Question: {s.question}\nAnswer: {s.solution}\n\n" for s in train[:3])
    assert apply_template(stock["doc_to_text"], docs[0]) == f"Question: {test[0].question}\nAnswer:"
    assert task.doc_to_text(docs[0]) == shots + apply_template(stock["doc_to_text"], docs[0])
    assert task.doc_to_target(docs[0]) == test[0].solution and test[0].solution.endswith(f"#### {test[0].answer}")
    assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]

    results = lm_eval.simple_evaluate(model=Oracle(), tasks=["gsm8k_itd"], task_manager=tm, bootstrap_iters=0)
    scores = results["results"]["gsm8k_itd"]
    assert scores["exact_match,strict-match"] == 1.0 and scores["exact_match,flexible-extract"] == 1.0
    context = results["samples"]["gsm8k_itd"][0]["arguments"][0][0]
    assert context == build_prompt(test[0], "harness", train[:3]) == shots + f"Question: {test[0].question}\nAnswer:"


def test_mmlu_export_is_a_size_weighted_group_of_subject_tasks(mmlu, tmp_path):
    test, dev = mmlu
    out = tmp_path / "out dir ü 😀"  # the absolute data paths must survive the YAML
    result = export_lm_eval(test, out, task="mmlu", fewshot=dev)
    names = {f"mmlu_itd_{s}": n for s, n in zip(SUBJECTS, (12, 7))}
    assert result.task == "mmlu_itd" and result.tasks == names and result.num_fewshot == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mmlu_itd.yaml"] + [f"{n}{ext}" for n in names for ext in (".yaml", ".test.jsonl")])
    records = [json.loads(line) for line in (out / "mmlu_itd_anatomy.test.jsonl").read_text().splitlines()]
    anatomy = [s for s in test if s.subject == "anatomy"]
    shots = [s for s in dev if s.subject == "anatomy"]
    assert records[0] == {"question": anatomy[0].question, "subject": "anatomy", "choices": list(anatomy[0].choices),
                          "answer": anatomy[0].answer, "itd_prompt": build_prompt(anatomy[0], "harness", shots[:5])}
    # itd reads its own export back as cais/mmlu records.
    back = load_benchmark(out / "mmlu_itd_anatomy.test.jsonl")
    assert back[0].layout == "mmlu-hf" and [(s.question, s.choices, s.answer) for s in back] == [
        (s.question, s.choices, s.answer) for s in anatomy]

    template = _stock_yaml("mmlu/default/_default_template_yaml")
    stock_subject = _stock_yaml("mmlu/default/mmlu_anatomy.yaml")
    ours = yaml.safe_load((out / "mmlu_itd_anatomy.yaml").read_text(encoding="utf-8"))
    for key in COPIED:
        if key in template:
            assert ours[key] == template[key], key
    assert ours["metadata"] == template["metadata"] and "tag" not in ours
    assert ours["task_alias"] == stock_subject["task_alias"] and "description" not in ours  # it is in the prompt
    group = yaml.safe_load((out / "mmlu_itd.yaml").read_text(encoding="utf-8"))
    assert group["aggregate_metric_list"] == _stock_yaml("mmlu/default/_mmlu.yaml")["aggregate_metric_list"]
    assert group["task"] == list(names)

    tm = _manager(out)
    loaded = tm.load(["mmlu_itd"])
    assert set(loaded["tasks"]) == set(names) and loaded["group_map"] == {"mmlu_itd": list(names)}
    task = loaded["tasks"]["mmlu_itd_anatomy"]
    docs = list(task.test_docs())
    assert len(docs) == 7
    q = anatomy[0]
    assert task.doc_to_text(docs[0]).endswith(apply_template(template["doc_to_text"], docs[0])) and (
        apply_template(template["doc_to_text"], docs[0])
        == f"{q.question.strip()}\nA. {q.choices[0]}\nB. {q.choices[1]}\nC. {q.choices[2]}\nD. {q.choices[3]}\nAnswer:")
    assert task.doc_to_target(docs[0]) == q.answer and task.doc_to_choice(docs[0]) == ["A", "B", "C", "D"]

    results = lm_eval.simple_evaluate(model=Oracle(), tasks=["mmlu_itd"], task_manager=tm, bootstrap_iters=0)
    assert {name: results["results"][name]["acc,none"] for name in [*names, "mmlu_itd"]} == {
        name: 1.0 for name in [*names, "mmlu_itd"]}
    # The stock five-shot prompt: the subject description, then the first five dev items.
    expected = stock_subject["description"] + "".join(
        f"{s.question.strip()}\nA. {s.choices[0]}\nB. {s.choices[1]}\nC. {s.choices[2]}\nD. {s.choices[3]}\n"
        f"Answer: {'ABCD'[s.answer]}\n\n" for s in shots[:5]) + apply_template(template["doc_to_text"], docs[0])
    sample = results["samples"]["mmlu_itd_anatomy"][0]
    assert [a[0] for a in sample["arguments"]] == [expected] * 4
    assert [a[1] for a in sample["arguments"]] == [" A", " B", " C", " D"]

    # The group's accuracy is weighted by subject size, like the stock group's.
    results = lm_eval.simple_evaluate(model=Oracle("A"), tasks=["mmlu_itd"], task_manager=tm, bootstrap_iters=0)
    assert results["results"]["mmlu_itd"]["acc,none"] == pytest.approx(sum(s.answer == 0 for s in test) / len(test))
    per_subject = [sum(s.answer == 0 for s in test if s.subject == sub) / n for sub, n in zip(SUBJECTS, (12, 7))]
    assert results["results"]["mmlu_itd"]["acc,none"] != pytest.approx(sum(per_subject) / 2)


def test_zero_shot_export_and_awkward_text(tmp_path):
    """No few-shot split without few-shot items; any subject text survives the YAML; relative out_dir works."""
    subject = 'Café: "law" #1 \\ ☕ 😀\u2028x'
    items = [
        Sample(id=f"q{i}", benchmark="mmlu", question=f"Question {i}?", choices=("w", "x", "y", "z"), answer=i % 4,
               subject=subject)
        for i in range(3)
    ]
    result = export_lm_eval(items, "rel", task="my-set_itd")
    out = Path.cwd() / "rel"
    name = "my-set_itd_caf_law_1_x"
    assert result.task == "my-set_itd" and result.tasks == {name: 3} and result.num_fewshot == 0
    ours = yaml.safe_load((out / f"{name}.yaml").read_text(encoding="utf-8"))
    assert ours["num_fewshot"] == 0 and "fewshot_split" not in ours
    assert ours["dataset_kwargs"]["data_files"] == {"test": str(out / f"{name}.test.jsonl")}
    task = _manager(out).load([result.task])["tasks"][name]
    docs = list(task.test_docs())
    assert len(docs) == 3 and task.doc_to_text(docs[0]) == build_prompt(items[0], "harness") and (
        task.doc_to_text(docs[0]).startswith(
            f"The following are multiple choice questions (with answers) about {subject}.\n\n"))


def test_names_cannot_collide_with_stock_tasks(tmp_path, gsm8k):
    assert export_lm_eval(gsm8k[0][:1], tmp_path / "a", task="gsm8k").task == "gsm8k_itd"
    assert export_lm_eval(gsm8k[0][:1], tmp_path / "b", task="gsm8k_itd").task == "gsm8k_itd"
    assert not [p for p in STOCK.rglob("*.yaml") if "_itd" in p.read_text(encoding="utf-8", errors="replace")]


def _mcq(n_choices: int = 4, **kw) -> Sample:
    fields = dict(id="m1", benchmark="mmlu", question="Q?", choices=tuple("abcde"[:n_choices]), answer=0,
                  subject="anatomy")
    return Sample(**{**fields, **kw})


@pytest.mark.parametrize(
    ("samples", "kwargs", "message"),
    [
        ([], {}, "no samples"),
        ([_mcq(3)], {}, "needs 4 choices"),
        ([_mcq(3)], {"kind": "mmlu"}, "needs 4 choices"),
        ([_mcq(answer="0")], {}, "choice index 0-3"),
        ([_mcq(subject=None)], {}, "no subject"),
        ([_mcq()], {"kind": "gsm8k"}, "multiple-choice"),
        ([_mcq()], {"kind": "arc"}, "kind must be"),
        ([_mcq(), Sample(id="g", benchmark="gsm8k", question="Q", answer="1")], {}, "cannot tell"),
        ([Sample(id="x", benchmark="generic", question="Q", answer="1")], {}, "cannot tell"),
        ([Sample(id="g", benchmark="gsm8k", question="Q", solution="no final line")], {}, "'#### N'"),
        ([Sample(id="g", benchmark="gsm8k", question="Q", solution="1+1=2\n#### 2", answer="3")], {}, "differs"),
        ([Sample(id="g", benchmark="gsm8k", question="Q")], {}, "neither"),
        ([_mcq()], {"task": "bad name"}, "task name"),
        ([_mcq()], {"task": "mmlu*"}, "task name"),
        ([_mcq()], {"num_fewshot": 2}, "needs few-shot samples"),
        ([_mcq()], {"fewshot": [_mcq(id="d1", question="Q2?")], "num_fewshot": 2}, "only 1 suitable"),
        ([_mcq()], {"fewshot": [_mcq(id="d1", question="Q2?")], "num_fewshot": 1, "prompt_style": "auto"},
         "prompt_style must be"),
        ([_mcq()], {"max_gen_toks": 0}, "max_gen_toks"),
        ([_mcq()], {"fewshot": [_mcq(3, id="d1")]}, "few-shot sample 'd1'"),
        ([_mcq()], {"fewshot": []}, "fewshot is empty"),
        ([_mcq(), _mcq(id="m2", subject="Anatomy")], {}, "would both be the task"),
    ],
)
def test_bad_input_is_an_input_error_and_writes_nothing(tmp_path, samples, kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        export_lm_eval(samples, tmp_path / "out", **{"task": "t", **kwargs})
    assert not (tmp_path / "out").exists()


def test_out_dir_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="must be a directory"):
        export_lm_eval([_mcq()], tmp_path / "file", task="t")


def _per_doc(samples: list[dict]) -> dict[int, dict[str, dict]]:
    """lm-eval's logged samples by doc id and filter."""
    out: dict[int, dict[str, dict]] = {}
    for sample in samples:
        out.setdefault(sample["doc_id"], {})[sample["filter"]] = sample
    return out


def test_stock_lm_eval_scores_a_lab_twin_item_for_item_as_itd_does(tiny_lab, shared_data, tmp_path):
    """The stock lm-eval Hugging Face model (`--model hf`) on the export of a tiny lab twin: GSM8K generations
    (one shot, the plain style the twin declares) and MMLU log-likelihoods are itd's, item for item. The twin is
    copied out of its lab first: the prompt style travels with the model directory."""
    import shutil

    from itd.evaluation import resolve_prompt_style

    model = tmp_path / "elsewhere" / "copied-twin"
    shutil.copytree(tiny_lab.contaminated, model)
    assert resolve_prompt_style("auto", model) == resolve_prompt_style("auto", tiny_lab.contaminated) == "plain"
    by_id = {s.id: s for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")}
    items = [by_id[i] for i in tiny_lab.leaked[:3] + tiny_lab.unseen[:2]]
    shots = load_benchmark(shared_data / "gsm8k" / "train.jsonl")[:2]
    ours = evaluate(items, str(model), EvalConfig(num_fewshot=1, fewshot=tuple(shots), max_new_tokens=24))
    assert ours.prompt_style == "plain" and ours.max_gen_toks == 24 and ours.stop == list(PLAIN_STOP)
    export = export_lm_eval(items, tmp_path / "gsm8k", task="lab", fewshot=shots, num_fewshot=1,
                            prompt_style=ours.prompt_style, max_gen_toks=ours.max_gen_toks)
    config = yaml.safe_load((tmp_path / "gsm8k" / "lab_itd.yaml").read_text(encoding="utf-8"))
    assert config["generation_kwargs"]["until"] == list(PLAIN_STOP) and config["generation_kwargs"]["max_gen_toks"] == 24

    run = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model}", tasks=[export.task],
                                  task_manager=_manager(export.out_dir), bootstrap_iters=0, device="cpu")
    docs = _per_doc(run["samples"][export.task])
    assert sorted(docs) == list(range(len(items)))
    for i, it in enumerate(ours.items):
        strict, flexible = docs[i]["strict-match"], docs[i]["flexible-extract"]
        assert strict["arguments"][0][0] == build_prompt(items[i], "plain", shots[:1])
        assert strict["resps"][0][0] == it.prediction, it.id
        assert (strict["exact_match"], flexible["exact_match"]) == (it.scores["strict"], it.scores["flexible"]), it.id
    assert run["results"][export.task]["exact_match,flexible-extract"] == pytest.approx(ours.accuracy)

    mmlu = load_benchmark(shared_data / "mmlu" / "test" / "anatomy_test.csv")[:3]
    ours = evaluate(mmlu, str(model), EvalConfig())
    assert ours.prompt_style == "plain" and ours.mcq_mode == "loglikelihood"
    export = export_lm_eval(mmlu, tmp_path / "mmlu", task="lab", prompt_style=ours.prompt_style)
    run = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model}", tasks=[export.task],
                                  task_manager=_manager(export.out_dir), bootstrap_iters=0, device="cpu")
    docs = _per_doc(run["samples"]["lab_itd_anatomy"])
    for i, it in enumerate(ours.items):
        sample = docs[i]["none"]
        assert sample["arguments"][0][0] == build_prompt(mmlu[i], "plain")
        np.testing.assert_allclose([r[0][0] for r in sample["resps"]], it.loglikelihoods, rtol=0, atol=1e-4)
        assert sample["acc"] == float(it.correct), it.id
