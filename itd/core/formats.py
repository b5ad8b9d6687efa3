"""Benchmark formats and layouts: the `FORMATS` registry, each layout's reading of one record and writing of one
sample, and the checks of a record's fields (a bad one raises `BadRecord`; the reader adds file and line)."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from itd.core.errors import InputError
from itd.core.registry import Registry
from itd.core.sample import Sample, Source, gsm8k_final_answer
from itd.core.validate import is_int

_FIELDS = ("id", "question", "answer", "choices", "solution", "subject")
_DEFAULT_FIELDS: dict[str, Any] = {name: name for name in _FIELDS}
MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
LETTERS = "ABCD"
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DIR_SUFFIXES = (".csv", ".jsonl")
_SPLIT_SUFFIX = re.compile(r"_(?:test|dev|val|train)$")
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
JSON_SPACE = " \t\r\n"
CSV_FIELD_LIMIT = 1 << 30  # the csv module's default limit (128 KiB per field) rejects long items
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


@dataclass(frozen=True)
class BenchmarkFormat:
    """A benchmark file format: its name, a one-line description and its layouts (the first is written by default)."""

    name: str
    description: str
    layouts: tuple[str, ...]


FORMATS: Registry[BenchmarkFormat] = Registry("benchmark format")
for _format in (
    BenchmarkFormat("gsm8k", "GSM8K JSONL: question and worked solution ending '#### N'", ("gsm8k",)),
    BenchmarkFormat(
        "mmlu",
        "MMLU: CSV with index or letter answers, with or without header, or cais/mmlu JSONL records",
        ("mmlu-index", "mmlu-letter", "mmlu-hf", "mmlu-index-noheader", "mmlu-letter-header"),
    ),
    BenchmarkFormat("jsonl", "generic JSON Lines; columns chosen with a field map", ("jsonl",)),
    BenchmarkFormat("csv", "generic CSV with a header row; columns chosen with a field map", ("csv",)),
):
    FORMATS.register(_format.name)(_format)
del _format


class BadRecord(ValueError):
    """A problem with one record or row; the caller adds the file and line."""


def json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(rec: Mapping[str, Any], key: str) -> Any:
    try:
        return rec[key]
    except KeyError:
        raise BadRecord(f"missing field {key!r}") from None


def _text(rec: Mapping[str, Any], key: str) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise BadRecord(f"field {key!r} must be a string, got {json_type(value)}")
    return value


def _optional_text(rec: Mapping[str, Any], key: str | None, blank_is_none: bool = False) -> str | None:
    value = rec.get(key) if key else None
    if value is None or (blank_is_none and value == ""):
        return None
    if not isinstance(value, str):
        raise BadRecord(f"field {key!r} must be a string, got {json_type(value)}")
    return value


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadRecord(f"field {key!r} must be a list of strings, got {json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRecord(f"field {key!r} must be a list of strings; item {i} is {json_type(item)}")
    return tuple(value)


def _record_id(rec: Mapping[str, Any], key: str | None, default: str) -> str:
    value = rec.get(key) if key else None
    if value is None or value == "":
        return default
    if isinstance(value, str) or is_int(value):
        return str(value)
    raise BadRecord(f"field {key!r} (the id) must be a string or an integer, got {json_type(value)}")


def mmlu_answer(value: Any) -> int:
    """An MMLU answer as a 0-based index, from an index (int or digits) or a letter A-D."""
    if isinstance(value, str):
        text = value.strip().upper()
        if len(text) == 1 and text in LETTERS:
            return LETTERS.index(text)
        if not (text.isascii() and text.isdigit() and len(text) < 10):
            raise BadRecord(f"answer must be a choice index 0-3 or a letter A-D, got {short_repr(value)}")
        value = int(text)
    elif not is_int(value):
        raise BadRecord(f"answer must be a choice index 0-3 or a letter A-D, got {json_type(value)}")
    if not 0 <= value < len(LETTERS):
        raise BadRecord(f"answer index {value} out of range 0-3")
    return value


def _mmlu_item(sample: Sample) -> tuple[tuple[str, ...], int]:
    choices, answer = sample.choices, sample.answer
    if choices is None or len(choices) != 4 or not is_int(answer) or not 0 <= answer < 4:
        raise BadRecord("an MMLU layout needs 4 choices and an answer index 0-3")
    return choices, answer


def _rest(rec: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in known}


def _unique_columns(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRecord(f"duplicate column {short_repr(name)}")
        seen.add(name)
    return names


def _explicit_id(sample: Sample) -> str | None:
    """The sample's id, or None when it is the positional id (`stem:line`) its source gives it anyway."""
    if sample.source is not None and sample.id == f"{PurePath(sample.source.file).stem}:{sample.source.line}":
        return None
    return sample.id


def _record(sample: Sample, known: dict[str, Any], id_key: str | None = "id", id_first: bool = True) -> dict[str, Any]:
    """The `known` fields of a record plus the sample's explicit id and its extra fields."""
    sid = _explicit_id(sample) if id_key else None
    out: dict[str, Any] = {id_key: sid} if sid is not None and id_first else {}
    out.update(known)
    if sid is not None and not id_first:
        out[id_key] = sid
    for key, value in sample.extra.items():
        out.setdefault(key, value)
    return out


@dataclass(frozen=True, slots=True)
class Origin:
    """What the records of one file (or dataset) share: its name (for `Source` and positional ids) and subject."""

    file: str
    stem: str
    subject: str | None

    @classmethod
    def of_file(cls, path: Path) -> Origin:
        return cls(str(path), path.stem, _SPLIT_SUFFIX.sub("", path.stem))

    def default_id(self, line: int) -> str:
        return f"{self.stem}:{line}"


class Layout(abc.ABC):
    """One exact source layout: how its records become samples (`parse`) and samples become records (`dump`)."""

    name: str
    format: str
    benchmark: str
    container: str  # "jsonl" or "csv"
    header = True  # CSV: the file starts with a header row
    columns: tuple[str, ...] = ()  # CSV: the record keys of a headerless file's columns

    def read_header(self, row: list[str]) -> list[str]:
        """Check a CSV header row; return the record keys of its columns (by default, the names as given)."""
        return list(row)

    @abc.abstractmethod
    def parse(self, rec: Mapping[str, Any], source: Source, origin: Origin) -> Sample:
        """One record of this layout as a Sample."""

    @abc.abstractmethod
    def dump(self, sample: Sample) -> dict[str, Any]:
        """A Sample as one record of this layout."""


class _Gsm8k(Layout):
    name = format = benchmark = "gsm8k"
    container = "jsonl"
    _known = frozenset({"id", "question", "answer"})

    def parse(self, rec: Mapping[str, Any], source: Source, origin: Origin) -> Sample:
        question = _text(rec, "question")
        solution = _text(rec, "answer")
        final = gsm8k_final_answer(solution)
        if not final:
            raise BadRecord("field 'answer' has no final answer line '#### N'")
        return Sample(
            id=_record_id(rec, "id", origin.default_id(source.line)),
            benchmark="gsm8k",
            question=question,
            answer=final,
            solution=solution,
            source=source,
            extra=_rest(rec, self._known),
            layout=self.name,
        )

    def dump(self, sample: Sample) -> dict[str, Any]:
        solution = sample.solution
        if solution is None:
            if sample.answer is None:
                raise BadRecord("a GSM8K record needs a solution or an answer")
            solution = f"#### {sample.answer}"
        return _record(sample, {"question": sample.question, "answer": solution})


class _MmluCsv(Layout):
    format = benchmark = "mmlu"
    container = "csv"
    columns = MMLU_COLUMNS
    _known = frozenset({"id", *MMLU_COLUMNS})

    def __init__(self, name: str, *, header: bool, letters: bool):
        self.name, self.header, self.letters = name, header, letters

    def read_header(self, row: list[str]) -> list[str]:
        if [cell.strip() for cell in row[:6]] != list(MMLU_COLUMNS):
            raise BadRecord(f"expected the MMLU header {','.join(MMLU_COLUMNS)!r}, got {short_repr(','.join(row))}")
        return _unique_columns([*MMLU_COLUMNS, *row[6:]])

    def parse(self, rec: Mapping[str, Any], source: Source, origin: Origin) -> Sample:
        return Sample(
            id=_record_id(rec, "id", origin.default_id(source.line)),
            benchmark="mmlu",
            question=_text(rec, "question"),
            choices=tuple(_text(rec, column) for column in MMLU_COLUMNS[1:5]),
            answer=mmlu_answer(_field(rec, "answer")),
            subject=origin.subject,
            source=source,
            extra=_rest(rec, self._known),
            layout=self.name,
        )

    def dump(self, sample: Sample) -> dict[str, Any]:
        choices, answer = _mmlu_item(sample)
        known = {"question": sample.question, **dict(zip(MMLU_COLUMNS[1:5], choices))}
        known["answer"] = LETTERS[answer] if self.letters else answer
        return _record(sample, known, id_first=False)  # the header must start with the six MMLU columns


class _MmluHf(Layout):
    name = "mmlu-hf"
    format = benchmark = "mmlu"
    container = "jsonl"
    _known = frozenset({"id", "question", "subject", "choices", "answer"})

    def parse(self, rec: Mapping[str, Any], source: Source, origin: Origin) -> Sample:
        question = _text(rec, "question")
        choices = _string_list(_field(rec, "choices"), "choices")
        if len(choices) != 4:
            raise BadRecord(f"field 'choices' must hold 4 choices, got {len(choices)}")
        subject = _optional_text(rec, "subject")
        return Sample(
            id=_record_id(rec, "id", origin.default_id(source.line)),
            benchmark="mmlu",
            question=question,
            choices=choices,
            answer=mmlu_answer(_field(rec, "answer")),
            subject=origin.subject if subject is None else subject,
            source=source,
            extra=_rest(rec, self._known),
            layout=self.name,
        )

    def dump(self, sample: Sample) -> dict[str, Any]:
        choices, answer = _mmlu_item(sample)
        known: dict[str, Any] = {"question": sample.question}
        if sample.subject is not None:
            known["subject"] = sample.subject
        known["choices"] = list(choices)
        known["answer"] = answer
        return _record(sample, known)


class _Generic(Layout):
    """Generic JSONL or CSV; `fields` maps each Sample field to a column (None: unmapped; choices: also a list)."""

    benchmark = "generic"

    def __init__(self, container: str, fields: dict[str, Any]):
        self.container = self.format = container
        self.fields = fields
        custom = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if v != k}
        self.name = container + (":" + json.dumps(custom, sort_keys=True, separators=(",", ":")) if custom else "")
        self._text_cells = container == "csv"  # CSV cells are strings: "" is a missing value, choices are JSON
        self._known = frozenset(c for v in fields.values() for c in (v if isinstance(v, tuple) else (v,)) if c)

    def read_header(self, row: list[str]) -> list[str]:
        columns = _unique_columns(row)
        choices = self.fields["choices"]
        required = [("question", self.fields["question"])]
        required += [("choices", column) for column in choices] if isinstance(choices, tuple) else []
        for key, column in required:
            if column not in columns:
                raise BadRecord(f"no column {column!r} for field {key!r}; columns: {short_repr(', '.join(columns), 200)}")
        return columns

    def parse(self, rec: Mapping[str, Any], source: Source, origin: Origin) -> Sample:
        fields, blank_is_none = self.fields, self._text_cells
        question = _text(rec, fields["question"])
        choices = self._choices(rec)
        return Sample(
            id=_record_id(rec, fields["id"], origin.default_id(source.line)),
            benchmark="generic",
            question=question,
            answer=self._answer(rec, choices),
            choices=choices,
            solution=_optional_text(rec, fields["solution"], blank_is_none),
            subject=_optional_text(rec, fields["subject"], blank_is_none),
            source=source,
            extra=_rest(rec, self._known),
            layout=self.name,
        )

    def _choices(self, rec: Mapping[str, Any]) -> tuple[str, ...] | None:
        spec = self.fields["choices"]
        if isinstance(spec, tuple):  # one column per choice
            if all(rec.get(column) in (None, "") for column in spec):
                return None
            return tuple(_text(rec, column) for column in spec)
        value = rec.get(spec) if spec else None
        if value is None or (self._text_cells and value == ""):
            return None
        if self._text_cells:
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise BadRecord(f"column {spec!r} must hold a JSON list of strings, got {short_repr(value)}") from None
        return _string_list(value, spec)

    def _answer(self, rec: Mapping[str, Any], choices: tuple[str, ...] | None) -> str | int | None:
        key = self.fields["answer"]
        value = rec.get(key) if key else None
        if self._text_cells:
            if not value:
                return None
            if choices is not None and value.isascii() and value.isdigit() and len(value) < 10:
                return int(value)  # an index into the choices
            return value
        if value is None or isinstance(value, str) or is_int(value):
            return value
        raise BadRecord(f"field {key!r} (the answer) must be a string, an integer or null, got {json_type(value)}")

    def dump(self, sample: Sample) -> dict[str, Any]:
        fields = self.fields
        known: dict[str, Any] = {fields["question"]: sample.question}
        spec = fields["choices"]
        if spec and sample.choices is not None:
            if isinstance(spec, tuple):
                if len(spec) != len(sample.choices):
                    raise BadRecord(f"{len(sample.choices)} choices do not fit the {len(spec)} choice columns")
                known.update(zip(spec, sample.choices))
            else:
                known[spec] = list(sample.choices)
        for key in ("answer", "solution", "subject"):
            value = getattr(sample, key)
            if fields[key] and value is not None:
                known[fields[key]] = value
        return _record(sample, known, fields["id"])


LAYOUTS: Registry[Layout] = Registry("benchmark layout")
for _layout in (
    _Gsm8k(),
    _MmluCsv("mmlu-index", header=True, letters=False),
    _MmluCsv("mmlu-letter", header=False, letters=True),
    _MmluCsv("mmlu-index-noheader", header=False, letters=False),
    _MmluCsv("mmlu-letter-header", header=True, letters=True),
    _MmluHf(),
    _Generic("jsonl", _DEFAULT_FIELDS),
    _Generic("csv", _DEFAULT_FIELDS),
):
    LAYOUTS.register(_layout.name)(_layout)
del _layout

MMLU_CSV_LAYOUTS = {  # (has header, letter answers) -> layout
    (True, False): "mmlu-index",
    (False, True): "mmlu-letter",
    (False, False): "mmlu-index-noheader",
    (True, True): "mmlu-letter-header",
}


def field_map(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A complete field map from a user's partial one: defaults to same-named columns, unless those are taken."""
    if not isinstance(fields, Mapping):
        raise InputError(f"a field map must be a dict of Sample field -> column name, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(_FIELDS), key=str)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} in the field map; fields are: {', '.join(_FIELDS)}")
    explicit: dict[str, Any] = {}
    for key, column in fields.items():
        if key == "choices" and isinstance(column, (list, tuple)) and column:
            column = tuple(column)
        if not all(isinstance(c, str) and c for c in (column if isinstance(column, tuple) else (column,))):
            if column is not None or key == "question":
                lists = " or a list of column names" if key == "choices" else ""
                raise InputError(f"field map: {key!r} must map to a column name{lists}, got {column!r}")
        explicit[key] = column
    used: dict[str, str] = {}
    for key, column in explicit.items():
        for c in column if isinstance(column, tuple) else (column,) if column else ():
            if c in used:
                raise InputError(f"field map: {used[c]!r} and {key!r} both map to column {c!r}")
            used[c] = key
    return {key: explicit[key] if key in explicit else None if key in used else key for key in _FIELDS}


def generic_layout(container: str, fields: dict[str, Any] | None) -> Layout:
    if fields is None or fields == _DEFAULT_FIELDS:
        return LAYOUTS.get(container)
    return _Generic(container, fields)


def layout_named(name: str) -> Layout:
    """A layout by name (`mmlu-letter`, `csv:{"question":"prompt"}`), or a format name for its default layout."""
    base, sep, spec = name.partition(":")
    base = base.strip().lower()
    if not sep:
        if base not in LAYOUTS and base in FORMATS:
            base = FORMATS.get(base).layouts[0]
        return LAYOUTS.get(base)
    layout = LAYOUTS.get(base)
    if not isinstance(layout, _Generic):
        raise InputError(f"layout {base!r} takes no field map")
    try:
        fields = json.loads(spec)
    except ValueError:
        raise InputError(f"layout {name!r}: the field map after ':' is not valid JSON") from None
    return generic_layout(layout.container, field_map(fields))


