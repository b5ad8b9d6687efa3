"""lm-evaluation-harness export: real GSM8K and MMLU items, loaded and run by lm-eval itself (no model download)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from itd.data import Sample, load_benchmark
from itd.errors import InputError
from itd.export import export_lm_eval

yaml = pytest.importorskip("yaml")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

STOCK = Path(lm_eval.__file__).parent / "tasks"
SUBJECTS = ("abstract_algebra", "anatomy")
COPIED = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "generation_kwargs",
          "filter_list", "repeats", "fewshot_config")


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
    result = export_lm_eval(test, tmp_path / "out", task="gsm8k", fewshot=train, num_fewshot=3)
    assert result.task == "gsm8k_itd" and result.tasks == {"gsm8k_itd": 8} and result.num_fewshot == 3
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gsm8k_itd.test.jsonl", "gsm8k_itd.train.jsonl", "gsm8k_itd.yaml"]
    # The data is openai/gsm8k's schema: here the very records of the source file.
    raw = Path(test[0].source.file).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in (out / "gsm8k_itd.test.jsonl").read_text().splitlines()] == [
        json.loads(raw[s.source.line - 1]) for s in test
    ]

    # The prompt and scoring fields are the stock task's; data paths are absolute.
    ours = yaml.safe_load((out / "gsm8k_itd.yaml").read_text(encoding="utf-8"))
    stock = _stock_yaml("gsm8k/gsm8k.yaml")
    for key in COPIED:
        if key in stock:
            assert ours[key] == stock[key], key
    assert ours["metadata"] == stock["metadata"] and "tag" not in ours
    assert ours["dataset_path"] == "json" and ours["test_split"] == "test" and ours["fewshot_split"] == "train"
    assert ours["dataset_kwargs"]["data_files"] == {
        "test": str(out / "gsm8k_itd.test.jsonl"), "train": str(out / "gsm8k_itd.train.jsonl")}

    tm = _manager(out)
    task = tm.load(["gsm8k_itd"])["tasks"]["gsm8k_itd"]
    docs = list(task.test_docs())
    assert len(docs) == 8
    assert task.doc_to_text(docs[0]) == f"Question: {test[0].question}\nAnswer:"
    assert task.doc_to_target(docs[0]) == test[0].solution and test[0].solution.endswith(f"#### {test[0].answer}")
    assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]

    results = lm_eval.simple_evaluate(model=Oracle(), tasks=["gsm8k_itd"], task_manager=tm, bootstrap_iters=0)
    scores = results["results"]["gsm8k_itd"]
    assert scores["exact_match,strict-match"] == 1.0 and scores["exact_match,flexible-extract"] == 1.0
    # first_n few-shot: exactly the first three given train items, in order, with the stock delimiters.
    context = results["samples"]["gsm8k_itd"][0]["arguments"][0][0]
    shots = "".join(f"Question: {s.question}\nAnswer: {s.solution}\n\n" for s in train[:3])
    assert context == shots + f"Question: {test[0].question}\nAnswer:"


def test_mmlu_export_is_a_size_weighted_group_of_subject_tasks(mmlu, tmp_path):
    test, dev = mmlu
    out = tmp_path / "out dir ü 😀"  # the absolute data paths must survive the YAML
    result = export_lm_eval(test, out, task="mmlu", fewshot=dev)
    names = {f"mmlu_itd_{s}": n for s, n in zip(SUBJECTS, (12, 7))}
    assert result.task == "mmlu_itd" and result.tasks == names and result.num_fewshot == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mmlu_itd.yaml"] + [f"{n}{ext}" for n in names for ext in (".yaml", ".test.jsonl", ".dev.jsonl")])
    records = [json.loads(line) for line in (out / "mmlu_itd_anatomy.test.jsonl").read_text().splitlines()]
    anatomy = [s for s in test if s.subject == "anatomy"]
    assert records[0] == {"question": anatomy[0].question, "subject": "anatomy", "choices": list(anatomy[0].choices),
                          "answer": anatomy[0].answer}
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
    assert ours["description"] == stock_subject["description"] and ours["task_alias"] == stock_subject["task_alias"]
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
    assert task.doc_to_text(docs[0]) == (
        f"{q.question.strip()}\nA. {q.choices[0]}\nB. {q.choices[1]}\nC. {q.choices[2]}\nD. {q.choices[3]}\nAnswer:")
    assert task.doc_to_target(docs[0]) == q.answer and task.doc_to_choice(docs[0]) == ["A", "B", "C", "D"]

    results = lm_eval.simple_evaluate(model=Oracle(), tasks=["mmlu_itd"], task_manager=tm, bootstrap_iters=0)
    assert {name: results["results"][name]["acc,none"] for name in [*names, "mmlu_itd"]} == {
        name: 1.0 for name in [*names, "mmlu_itd"]}
    # The stock five-shot prompt: the subject description, then the first five dev items.
    shots = [s for s in dev if s.subject == "anatomy"]
    expected = stock_subject["description"] + "".join(
        f"{s.question.strip()}\nA. {s.choices[0]}\nB. {s.choices[1]}\nC. {s.choices[2]}\nD. {s.choices[3]}\n"
        f"Answer: {'ABCD'[s.answer]}\n\n" for s in shots[:5]) + task.doc_to_text(docs[0])
    assert results["samples"]["mmlu_itd_anatomy"][0]["arguments"][0][0] == expected

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
    assert ours["description"] == f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    assert ours["num_fewshot"] == 0 and "fewshot_split" not in ours
    assert ours["dataset_kwargs"]["data_files"] == {"test": str(out / f"{name}.test.jsonl")}
    task = _manager(out).load([result.task])["tasks"][name]
    assert len(list(task.test_docs())) == 3 and task.config.description == ours["description"]


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
        ([_mcq()], {"fewshot": [_mcq(id="d1")], "num_fewshot": 2}, "only 1 few-shot"),
        ([_mcq()], {"fewshot": [_mcq(id="d1", subject="law")]}, "no few-shot samples for subject 'anatomy'"),
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
