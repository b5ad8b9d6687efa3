"""Export a (decontaminated) benchmark as an lm-evaluation-harness task: data in the Hugging Face schema of the
stock tasks plus task YAML, so that ``lm_eval --include_path DIR --tasks NAME`` runs it unchanged and scores a
model as `itd.evaluation.evaluate` does, item for item.

Each record carries the exact prompt itd builds for it (`itd.evaluation.build_prompt` in the resolved prompt
style, its few-shot examples included) as the field ``itd_prompt``, which the task reads as its ``doc_to_text``;
generation stops at itd's stop sequences after at most itd's generation budget (``max_gen_toks``). The scoring
fields (output type, targets, choices, filters, metrics) are copies of lm-eval's stock ``gsm8k`` task
(``lm_eval/tasks/gsm8k/gsm8k.yaml``) and stock MMLU subject tasks
(``lm_eval/tasks/mmlu/default/_default_template_yaml`` and ``mmlu_<subject>.yaml``) as of lm-eval 0.4; the tests
compare them with the installed package's files, and run the stock ``lm_eval`` on an export.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itd.core import Sample, gsm8k_final_answer
from itd.core.errors import InputError
from itd.core.io import atomic_write
from itd.evaluation import build_prompt, fewshot_examples, stop_sequences

__all__ = ["LmEvalExport", "export_lm_eval", "KINDS"]

KINDS = ("gsm8k", "mmlu")
_SUFFIX = "_itd"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_LETTERS = ("A", "B", "C", "D")
_DEFAULT_FEWSHOT = 5
_DEFAULT_GEN_TOKS = 256  # lm-eval's and itd's default generation budget
PROMPT_FIELD = "itd_prompt"

# Copied from lm_eval/tasks/gsm8k/gsm8k.yaml (metadata version 3.0), but for the prompt (`doc_to_text`, the
# record's own itd prompt) and the generation's stop sequences and budget (itd's). Its `tag` is left out on
# purpose: a tag in an included directory would add the exported task to the stock `math_word_problems` tag.
_GSM8K_FIELDS: dict[str, Any] = {
    "output_type": "generate_until",
    "doc_to_text": PROMPT_FIELD,
    "doc_to_target": "{{answer}}",
    "target_delimiter": " ",
    "fewshot_delimiter": "\n\n",
    "metric_list": [
        {
            "metric": "exact_match",
            "aggregation": "mean",
            "higher_is_better": True,
            "ignore_case": True,
            "ignore_punctuation": False,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
        }
    ],
    "generation_kwargs": {"do_sample": False, "temperature": 0.0},
    "repeats": 1,
    "filter_list": [
        {
            "name": "strict-match",
            "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}],
        },
        {
            "name": "flexible-extract",
            "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"},
            ],
        },
    ],
}
_GSM8K_VERSION = 3.0

# Copied from lm_eval/tasks/mmlu/default/_default_template_yaml (metadata version 1.0) but for the prompt (the
# record's itd prompt, which begins with the subject's description in the harness style); `task_alias` follows
# mmlu_<subject>.yaml, whose `tag` is left out for the reason above.
_MMLU_FIELDS: dict[str, Any] = {
    "output_type": "multiple_choice",
    "doc_to_text": PROMPT_FIELD,
    "doc_to_choice": list(_LETTERS),
    "doc_to_target": "answer",
    "target_delimiter": " ",
    "fewshot_delimiter": "\n\n",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}
_MMLU_VERSION = 1.0
_MMLU_GROUP_VERSION = 2  # lm_eval/tasks/mmlu/default/_mmlu.yaml


@dataclass(frozen=True)
class LmEvalExport:
    """What `export_lm_eval` wrote.

    `task` is the name to pass to ``lm_eval --tasks`` (the task for GSM8K, the group for MMLU); `tasks` maps every
    leaf task to its number of test items; `yaml_files` and `data_files` are the paths written (absolute).
    """

    task: str
    kind: str
    out_dir: Path
    tasks: dict[str, int]
    num_fewshot: int
    yaml_files: tuple[Path, ...]
    data_files: tuple[Path, ...]
    prompt_style: str = "harness"
    max_gen_toks: int = _DEFAULT_GEN_TOKS
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """What a manifest or summary records of the export (paths relative to `out_dir`)."""
        return {"task": self.task, "kind": self.kind, "tasks": dict(self.tasks), "prompt_style": self.prompt_style,
                "num_fewshot": self.num_fewshot, "max_gen_toks": self.max_gen_toks, "stop": list(self.stop),
                "files": [str(p.relative_to(self.out_dir)) for p in self.files]}

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file written, data first."""
        return self.data_files + self.yaml_files


def export_lm_eval(
    samples: Sequence[Sample],
    out_dir: str | os.PathLike,
    *,
    task: str,
    kind: str = "auto",
    fewshot: Sequence[Sample] | None = None,
    num_fewshot: int | None = None,
    prompt_style: str = "harness",
    max_gen_toks: int = _DEFAULT_GEN_TOKS,
) -> LmEvalExport:
    """Write `samples` as an lm-evaluation-harness task into `out_dir`; run it with
    ``lm_eval --include_path OUT_DIR --tasks <result.task>`` from any directory.

    - **Same as itd**: every record's prompt (field ``itd_prompt``, the task's ``doc_to_text``) is the one
      `itd.evaluation.evaluate` builds with `prompt_style` ("harness" or "plain": the style an evaluation
      resolved, `EvalResult.prompt_style`), `num_fewshot` shots from `fewshot` included (chosen as itd chooses
      them, `itd.evaluation.fewshot_examples`); GSM8K generation stops at itd's stop sequences of that style and
      after `max_gen_toks` tokens (`EvalResult.max_gen_toks`: for a short-context model less than the 256 that
      lm-eval would otherwise ask for, and more than its window allows). The task's own ``num_fewshot`` is 0: the
      shots are in the prompt, so do not pass ``--num_fewshot``.
    - **Names**: the task is called `task` + ``_itd`` (kept as is when `task` already ends so), so that it never
      collides with a stock task: lm-eval lets an included task of the same name silently replace the stock one.
    - **GSM8K** (`kind` ``gsm8k``): ``<name>.test.jsonl`` with ``{"question", "answer"}`` records (the answer the
      worked solution ending ``#### N``, as in ``openai/gsm8k``) and ``<name>.yaml`` with the stock gsm8k
      filters (strict-match, flexible-extract) and metric.
    - **MMLU** (`kind` ``mmlu``): like the stock ``mmlu`` group, one task per subject, ``<name>_<subject>`` (the
      subject folded to ``[a-z0-9_]``), scored as the stock template (log-likelihood of " A" ... " D"), reading
      ``<name>_<subject>.test.jsonl`` (``cais/mmlu`` records: ``question, subject, choices, answer``), and a group
      ``<name>`` (``<name>.yaml``) over them whose ``acc`` is weighted by subject size, as the stock group's is. One
      subject still gets a group, so the name to run is always `<name>`. Every sample needs a subject.
    - Records hold those Hugging Face fields and ``itd_prompt``, in the order of `samples` (lm-eval's ``doc_id``
      is the position); ids and other fields are not written. `num_fewshot` defaults to 5 with `fewshot`, else 0.
    - **Paths**: ``data_files`` are written as absolute paths, resolved at export time. lm-eval hands them to
      ``datasets.load_dataset("json", ...)``, which resolves relative paths against the current directory, not the
      YAML's; so moving the directory needs a new export.

    Every file is written atomically, data before the YAML that reads it; all input is checked before anything is
    written (`InputError`). Files of an earlier export into the same directory that this one does not rewrite are
    left as they are.
    """
    samples, fewshot = list(samples), None if fewshot is None else list(fewshot)
    if not samples:
        raise InputError("no samples to export")
    kind = _kind(samples, kind)
    name = _task_name(task)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise InputError("the lm-eval export target must be a directory", out)
    if prompt_style not in ("harness", "plain"):
        raise InputError(f"prompt_style must be 'harness' or 'plain' (resolve 'auto' with "
                         f"itd.evaluation.resolve_prompt_style), got {prompt_style!r}")
    if not isinstance(max_gen_toks, int) or isinstance(max_gen_toks, bool) or max_gen_toks < 1:
        raise InputError(f"max_gen_toks must be an integer >= 1, got {max_gen_toks!r}")
    check = _check_gsm8k if kind == "gsm8k" else _check_mmlu
    for sample in samples:
        check(sample, "sample")
    for sample in fewshot or ():
        check(sample, "few-shot sample")
    if num_fewshot is None:
        num_fewshot = _DEFAULT_FEWSHOT if fewshot else 0
    if not isinstance(num_fewshot, int) or isinstance(num_fewshot, bool) or num_fewshot < 0:
        raise InputError(f"num_fewshot must be an integer >= 0, got {num_fewshot!r}")
    if fewshot is not None and not fewshot:
        raise InputError("fewshot is empty; pass None for a zero-shot task")
    if num_fewshot and fewshot is None:
        raise InputError(f"num_fewshot={num_fewshot} needs few-shot samples (fewshot=...)")
    prompts = [build_prompt(s, prompt_style, fewshot_examples(s, fewshot or [], num_fewshot)) for s in samples]
    units = [(name, None, samples, prompts)] if kind == "gsm8k" else _mmlu_units(name, samples, prompts)
    stop = stop_sequences(prompt_style) if kind == "gsm8k" else ()

    data_files: list[Path] = []
    yaml_files: list[Path] = []
    for unit, subject, items, texts in units:
        path = _write_jsonl(out / f"{unit}.test.jsonl", items, texts, kind)
        data_files.append(path)
        config = _task_config(unit, kind, subject, path, stop, max_gen_toks)
        header = (f"prompt style {prompt_style}, {num_fewshot}-shot (the shots are in each record's {PROMPT_FIELD})"
                  + (f", at most {max_gen_toks} generated tokens" if kind == "gsm8k" else ""))
        yaml_files.append(_write_yaml(out / f"{unit}.yaml", config, header))
    if kind == "mmlu":
        group = {
            "group": name,
            "task": [unit for unit, _, _, _ in units],
            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
            "metadata": {"version": _MMLU_GROUP_VERSION},
        }
        yaml_files.append(_write_yaml(out / f"{name}.yaml", group, f"prompt style {prompt_style}, {num_fewshot}-shot"))
    return LmEvalExport(
        task=name,
        kind=kind,
        out_dir=out,
        tasks={unit: len(items) for unit, _, items, _ in units},
        num_fewshot=num_fewshot,
        yaml_files=tuple(yaml_files),
        data_files=tuple(data_files),
        prompt_style=prompt_style,
        max_gen_toks=max_gen_toks,
        stop=stop,
    )


def _kind(samples: list[Sample], kind: str) -> str:
    if kind == "auto":
        found = sorted({s.benchmark for s in samples})
        if len(found) != 1 or found[0] not in KINDS:
            raise InputError(f"cannot tell the lm-eval task kind from samples of benchmark(s) {', '.join(found)}; "
                             f"pass kind= one of {', '.join(KINDS)}")
        return found[0]
    if kind not in KINDS:
        raise InputError(f"kind must be 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _task_name(task: str) -> str:
    if not isinstance(task, str) or not _NAME.fullmatch(task):
        raise InputError(f"task name must start with a letter and hold only letters, digits, '_' and '-', got {task!r}")
    return task if task.endswith(_SUFFIX) else task + _SUFFIX


def _check_gsm8k(sample: Sample, what: str) -> None:
    if sample.choices is not None:
        raise InputError(f"{what} {sample.id!r} is multiple-choice; a gsm8k task needs a question and a solution")
    if sample.solution is None:
        if sample.answer is None or str(sample.answer).strip() == "":
            raise InputError(f"{what} {sample.id!r} has neither a worked solution nor an answer")
        return
    final = gsm8k_final_answer(sample.solution)
    if not final:
        raise InputError(f"{what} {sample.id!r}: the solution has no final answer line '#### N'")
    if sample.answer is not None and str(sample.answer).replace(",", "").strip() != final:
        raise InputError(f"{what} {sample.id!r}: answer {sample.answer!r} differs from the solution's final "
                         f"answer {final!r}")


def _check_mmlu(sample: Sample, what: str) -> None:
    choices, answer = sample.choices, sample.answer
    if choices is None or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        got = "no choices" if choices is None else f"{len(choices)} choices"
        raise InputError(f"{what} {sample.id!r}: an mmlu task needs 4 choices (strings), got {got}")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < 4:
        raise InputError(f"{what} {sample.id!r}: an mmlu task needs the answer as a choice index 0-3, got {answer!r}")
    if not isinstance(sample.subject, str) or not sample.subject.strip():
        raise InputError(f"{what} {sample.id!r} has no subject; an mmlu export makes one task per subject")


def _mmlu_units(name: str, samples: list[Sample], prompts: list[str]):
    """(task name, subject, test items, their prompts) per subject, subjects sorted."""
    by_subject: dict[str, tuple[list[Sample], list[str]]] = {}
    for sample, prompt in zip(samples, prompts):
        items, texts = by_subject.setdefault(sample.subject, ([], []))
        items.append(sample)
        texts.append(prompt)
    units, seen = [], {}
    for subject in sorted(by_subject):
        slug = re.sub(r"[^a-z0-9]+", "_", subject.lower()).strip("_") or "subject"
        if slug in seen:
            raise InputError(f"subjects {seen[slug]!r} and {subject!r} would both be the task {name}_{slug}")
        seen[slug] = subject
        units.append((f"{name}_{slug}", subject, *by_subject[subject]))
    return units


def _record(sample: Sample, prompt: str, kind: str) -> dict[str, Any]:
    if kind == "gsm8k":
        record = {"question": sample.question, "answer": sample.solution or f"#### {sample.answer}"}
    else:
        record = {"question": sample.question, "subject": sample.subject, "choices": list(sample.choices),
                  "answer": sample.answer}
    record[PROMPT_FIELD] = prompt
    return record


def _write_jsonl(path: Path, samples: list[Sample], prompts: list[str], kind: str) -> Path:
    with atomic_write(path) as f:
        f.writelines(json.dumps(_record(s, p, kind), ensure_ascii=False) + "\n" for s, p in zip(samples, prompts))
    return path


def _task_config(name: str, kind: str, subject: str | None, data: Path, stop: tuple[str, ...],
                 max_gen_toks: int) -> dict[str, Any]:
    config: dict[str, Any] = {"task": name}
    if subject is not None:
        config["task_alias"] = subject.replace("_", " ")
    config["dataset_path"] = "json"
    config["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    config["test_split"] = "test"
    config["num_fewshot"] = 0  # the shots are in the prompt
    if kind == "gsm8k":
        config.update(_GSM8K_FIELDS)
        config["generation_kwargs"] = {"until": list(stop), **_GSM8K_FIELDS["generation_kwargs"],
                                       "max_gen_toks": max_gen_toks}
        config["metadata"] = {"version": _GSM8K_VERSION}
    else:
        config.update(_MMLU_FIELDS)
        config["metadata"] = {"version": _MMLU_VERSION}
    return config


def _write_yaml(path: Path, config: Mapping[str, Any], about: str) -> Path:
    with atomic_write(path) as f:
        f.write("# Written by itd (export_lm_eval). Run: lm_eval --include_path <this directory> --tasks NAME\n")
        f.write(f"# Scores as itd's evaluation did: {about}.\n")
        f.write("\n".join(_yaml_lines(config, 0)) + "\n")
    return path


# A minimal YAML emitter for the plain configs above (block mappings and sequences of plain keys and scalars), so
# that exporting needs no YAML library; strings are double-quoted and all-ASCII, so any text survives.
def _yaml_lines(value: Mapping[str, Any] | list[Any], indent: int) -> list[str]:
    pad, lines = " " * indent, []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_yaml_scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, (Mapping, list)) and item:
            sub = _yaml_lines(item, indent + 2)
            lines.append(f"{pad}- {sub[0][indent + 2:]}")
            lines.extend(sub[1:])
        else:
            lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list):
        return "[]"
    out = []
    for ch in str(value):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
