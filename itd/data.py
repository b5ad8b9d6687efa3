"""Benchmark data layer: the `Sample` record that travels through every stage, loaders and writers.

Loaders (GSM8K JSONL, MMLU CSV in three layouts, generic JSONL/CSV with a field map, HF datasets) and writers
that emit samples back in their source layout live here too.

Every sample records its `layout`, the exact shape it was read from:

- ``gsm8k``: JSONL ``{"question", "answer"}``, the answer a worked solution ending ``#### N``;
- ``mmlu-index``: CSV with header ``question,choice0,choice1,choice2,choice3,answer``, 0-based index answers;
- ``mmlu-letter``: the original headerless MMLU CSV ``question,A,B,C,D,answer`` with letter answers;
- ``mmlu-index-noheader`` / ``mmlu-letter-header``: the two rarer mixes of the above;
- ``mmlu-hf``: JSONL records of Hugging Face ``cais/mmlu``: ``question, subject, choices[4], answer`` (int);
- ``jsonl`` / ``csv``: generic files; with a field map the layout is ``jsonl:{...}`` / ``csv:{...}``, the map's
  non-default entries as compact JSON.

Records without an id field get the positional id ``<file stem>:<line>``. Positional ids are not written back:
they are derived again from the output file. The same goes for the subject of an MMLU CSV file (its name).
"""

from __future__ import annotations

import abc
import codecs
import contextlib
import csv
import itertools
import json
import re
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from itd.errors import InputError, require
from itd.io import atomic_write
from itd.paths import check_input
from itd.registry import Registry
from itd.validate import is_int

__all__ = [
    "Source",
    "Sample",
    "strip_calculator_annotations",
    "gsm8k_final_answer",
    "BenchmarkFormat",
    "FORMATS",
    "detect_format",
    "not_a_benchmark",
    "load_benchmark",
    "load_hf_dataset",
    "parse_hf_spec",
    "write_benchmark",
]

BENCHMARKS = ("gsm8k", "mmlu", "generic")

_ANNOTATION = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations `<<expr=result>>` from a worked solution."""
    return _ANNOTATION.sub("", text) if "<<" in text else text


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer after `####`, commas removed (`#### 1,000` -> `1000`); None when absent."""
    # Linear-time equivalent of `re.search(r"####\s*(.+?)\s*$", solution, re.S)`, which backtracks
    # quadratically on long whitespace runs after the marker.
    i = solution.find("####")
    if i < 0 or i + 4 == len(solution):
        return None
    return solution[i + 4 :].strip().replace(",", "").strip()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a sample came from: a file and the 1-based line (JSONL) or data row (CSV, header excluded)."""

    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line}


@dataclass(slots=True)
class Sample:
    """One benchmark item.

    `answer` is the gold answer: the final number as a string for GSM8K, the 0-based choice index for MCQ,
    free text otherwise. `layout` names the source layout so a writer can emit the sample back unchanged;
    `extra` keeps every field the loader did not map, so writing back loses nothing.
    """

    id: str
    benchmark: str
    question: str
    answer: str | int | None = None
    choices: tuple[str, ...] | None = None
    solution: str | None = None
    subject: str | None = None
    source: Source | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if not isinstance(self.question, str):
            raise TypeError("question must be a string")
        if self.choices is not None:
            self.choices = tuple(self.choices)
            if isinstance(self.answer, int) and not 0 <= self.answer < len(self.choices):
                raise ValueError(f"answer index {self.answer} out of range for {len(self.choices)} choices")

    @property
    def is_mcq(self) -> bool:
        return self.choices is not None

    def prompt_text(self) -> str:
        """The input part as it would appear in a corpus: the question, then every choice on its own line."""
        if self.choices:
            return self.question + "\n" + "\n".join(self.choices)
        return self.question

    def answer_text(self) -> str:
        """The label part: the worked solution (annotations stripped), the correct choice, or the answer text."""
        if self.solution:
            return strip_calculator_annotations(self.solution)
        if self.choices is not None and isinstance(self.answer, int):
            return self.choices[self.answer]
        return "" if self.answer is None else str(self.answer)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (used in reports and logs)."""
        return {
            "id": self.id,
            "benchmark": self.benchmark,
            "question": self.question,
            "answer": self.answer,
            "choices": list(self.choices) if self.choices is not None else None,
            "solution": self.solution,
            "subject": self.subject,
            "source": self.source.to_dict() if self.source else None,
            "extra": self.extra,
            "layout": self.layout,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Formats and layouts

_FIELDS = ("id", "question", "answer", "choices", "solution", "subject")
_DEFAULT_FIELDS: dict[str, Any] = {name: name for name in _FIELDS}
_MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
_LETTERS = "ABCD"
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_DIR_SUFFIXES = (".csv", ".jsonl")
_SPLIT_SUFFIX = re.compile(r"_(?:test|dev|val|train)$")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_JSON_SPACE = " \t\r\n"
_CSV_FIELD_LIMIT = 1 << 30  # the csv module's default limit (128 KiB per field) rejects long items
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


class _Bad(ValueError):
    """A problem with one record or row; the caller adds the file and line."""


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(rec: Mapping[str, Any], key: str) -> Any:
    try:
        return rec[key]
    except KeyError:
        raise _Bad(f"missing field {key!r}") from None


def _text(rec: Mapping[str, Any], key: str) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string, got {_json_type(value)}")
    return value


def _optional_text(rec: Mapping[str, Any], key: str | None, blank_is_none: bool = False) -> str | None:
    value = rec.get(key) if key else None
    if value is None or (blank_is_none and value == ""):
        return None
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string, got {_json_type(value)}")
    return value


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"field {key!r} must be a list of strings, got {_json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Bad(f"field {key!r} must be a list of strings; item {i} is {_json_type(item)}")
    return tuple(value)


def _record_id(rec: Mapping[str, Any], key: str | None, default: str) -> str:
    value = rec.get(key) if key else None
    if value is None or value == "":
        return default
    if isinstance(value, str) or is_int(value):
        return str(value)
    raise _Bad(f"field {key!r} (the id) must be a string or an integer, got {_json_type(value)}")


def _mmlu_answer(value: Any) -> int:
    """An MMLU answer as a 0-based index, from an index (int or digits) or a letter A-D."""
    if isinstance(value, str):
        text = value.strip().upper()
        if len(text) == 1 and text in _LETTERS:
            return _LETTERS.index(text)
        if not (text.isascii() and text.isdigit() and len(text) < 10):
            raise _Bad(f"answer must be a choice index 0-3 or a letter A-D, got {_short(value)}")
        value = int(text)
    elif not is_int(value):
        raise _Bad(f"answer must be a choice index 0-3 or a letter A-D, got {_json_type(value)}")
    if not 0 <= value < len(_LETTERS):
        raise _Bad(f"answer index {value} out of range 0-3")
    return value


def _mmlu_item(sample: Sample) -> tuple[tuple[str, ...], int]:
    choices, answer = sample.choices, sample.answer
    if choices is None or len(choices) != 4 or not is_int(answer) or not 0 <= answer < 4:
        raise _Bad("an MMLU layout needs 4 choices and an answer index 0-3")
    return choices, answer


def _rest(rec: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in known}


def _unique_columns(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _Bad(f"duplicate column {_short(name)}")
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
class _Origin:
    """What the records of one file (or dataset) share: its name (for `Source` and positional ids) and subject."""

    file: str
    stem: str
    subject: str | None

    @classmethod
    def of_file(cls, path: Path) -> _Origin:
        return cls(str(path), path.stem, _SPLIT_SUFFIX.sub("", path.stem))

    def default_id(self, line: int) -> str:
        return f"{self.stem}:{line}"


class _Layout(abc.ABC):
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
    def parse(self, rec: Mapping[str, Any], source: Source, origin: _Origin) -> Sample:
        """One record of this layout as a Sample."""

    @abc.abstractmethod
    def dump(self, sample: Sample) -> dict[str, Any]:
        """A Sample as one record of this layout."""


class _Gsm8k(_Layout):
    name = format = benchmark = "gsm8k"
    container = "jsonl"
    _known = frozenset({"id", "question", "answer"})

    def parse(self, rec: Mapping[str, Any], source: Source, origin: _Origin) -> Sample:
        question = _text(rec, "question")
        solution = _text(rec, "answer")
        final = gsm8k_final_answer(solution)
        if not final:
            raise _Bad("field 'answer' has no final answer line '#### N'")
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
                raise _Bad("a GSM8K record needs a solution or an answer")
            solution = f"#### {sample.answer}"
        return _record(sample, {"question": sample.question, "answer": solution})


class _MmluCsv(_Layout):
    format = benchmark = "mmlu"
    container = "csv"
    columns = _MMLU_COLUMNS
    _known = frozenset({"id", *_MMLU_COLUMNS})

    def __init__(self, name: str, *, header: bool, letters: bool):
        self.name, self.header, self.letters = name, header, letters

    def read_header(self, row: list[str]) -> list[str]:
        if [cell.strip() for cell in row[:6]] != list(_MMLU_COLUMNS):
            raise _Bad(f"expected the MMLU header {','.join(_MMLU_COLUMNS)!r}, got {_short(','.join(row))}")
        return _unique_columns([*_MMLU_COLUMNS, *row[6:]])

    def parse(self, rec: Mapping[str, Any], source: Source, origin: _Origin) -> Sample:
        return Sample(
            id=_record_id(rec, "id", origin.default_id(source.line)),
            benchmark="mmlu",
            question=_text(rec, "question"),
            choices=tuple(_text(rec, column) for column in _MMLU_COLUMNS[1:5]),
            answer=_mmlu_answer(_field(rec, "answer")),
            subject=origin.subject,
            source=source,
            extra=_rest(rec, self._known),
            layout=self.name,
        )

    def dump(self, sample: Sample) -> dict[str, Any]:
        choices, answer = _mmlu_item(sample)
        known = {"question": sample.question, **dict(zip(_MMLU_COLUMNS[1:5], choices))}
        known["answer"] = _LETTERS[answer] if self.letters else answer
        return _record(sample, known, id_first=False)  # the header must start with the six MMLU columns


class _MmluHf(_Layout):
    name = "mmlu-hf"
    format = benchmark = "mmlu"
    container = "jsonl"
    _known = frozenset({"id", "question", "subject", "choices", "answer"})

    def parse(self, rec: Mapping[str, Any], source: Source, origin: _Origin) -> Sample:
        question = _text(rec, "question")
        choices = _string_list(_field(rec, "choices"), "choices")
        if len(choices) != 4:
            raise _Bad(f"field 'choices' must hold 4 choices, got {len(choices)}")
        subject = _optional_text(rec, "subject")
        return Sample(
            id=_record_id(rec, "id", origin.default_id(source.line)),
            benchmark="mmlu",
            question=question,
            choices=choices,
            answer=_mmlu_answer(_field(rec, "answer")),
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


class _Generic(_Layout):
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
                raise _Bad(f"no column {column!r} for field {key!r}; columns: {_short(', '.join(columns), 200)}")
        return columns

    def parse(self, rec: Mapping[str, Any], source: Source, origin: _Origin) -> Sample:
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
                raise _Bad(f"column {spec!r} must hold a JSON list of strings, got {_short(value)}") from None
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
        raise _Bad(f"field {key!r} (the answer) must be a string, an integer or null, got {_json_type(value)}")

    def dump(self, sample: Sample) -> dict[str, Any]:
        fields = self.fields
        known: dict[str, Any] = {fields["question"]: sample.question}
        spec = fields["choices"]
        if spec and sample.choices is not None:
            if isinstance(spec, tuple):
                if len(spec) != len(sample.choices):
                    raise _Bad(f"{len(sample.choices)} choices do not fit the {len(spec)} choice columns")
                known.update(zip(spec, sample.choices))
            else:
                known[spec] = list(sample.choices)
        for key in ("answer", "solution", "subject"):
            value = getattr(sample, key)
            if fields[key] and value is not None:
                known[fields[key]] = value
        return _record(sample, known, fields["id"])


_LAYOUTS: Registry[_Layout] = Registry("benchmark layout")
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
    _LAYOUTS.register(_layout.name)(_layout)
del _layout

_MMLU_CSV_LAYOUTS = {  # (has header, letter answers) -> layout
    (True, False): "mmlu-index",
    (False, True): "mmlu-letter",
    (False, False): "mmlu-index-noheader",
    (True, True): "mmlu-letter-header",
}


def _field_map(fields: Mapping[str, Any]) -> dict[str, Any]:
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


def _generic(container: str, fields: dict[str, Any] | None) -> _Layout:
    if fields is None or fields == _DEFAULT_FIELDS:
        return _LAYOUTS.get(container)
    return _Generic(container, fields)


def _layout_named(name: str) -> _Layout:
    """A layout by name (`mmlu-letter`, `csv:{"question":"prompt"}`), or a format name for its default layout."""
    base, sep, spec = name.partition(":")
    base = base.strip().lower()
    if not sep:
        if base not in _LAYOUTS and base in FORMATS:
            base = FORMATS.get(base).layouts[0]
        return _LAYOUTS.get(base)
    layout = _LAYOUTS.get(base)
    if not isinstance(layout, _Generic):
        raise InputError(f"layout {base!r} takes no field map")
    try:
        fields = json.loads(spec)
    except ValueError:
        raise InputError(f"layout {name!r}: the field map after ':' is not valid JSON") from None
    return _generic(layout.container, _field_map(fields))


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", path) from None


def _decode(raw: bytes, first: bool) -> str:
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"invalid JSON: {exc.msg} at column {exc.pos + 1}") from None
    except RecursionError:
        raise _Bad("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise _Bad(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Bad(f"expected a JSON object, got {_json_type(value)}")
    if _SURROGATE_ESCAPE.search(text):  # "\ud800" parses but is no character: reject it here, not when writing
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(exc.object[exc.start])
            raise _Bad(f"invalid JSON: unpaired surrogate \\u{code:04x} is not a Unicode character") from None
    return value


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) for each non-blank line of a JSONL file; InputError at the first bad line."""
    found = False
    with _open(path) as f:
        for line, raw in enumerate(f, 1):
            try:
                text = _decode(raw, line == 1)
                if not text.strip(_JSON_SPACE):
                    continue
                record = _json_object(text)
            except _Bad as exc:
                array = not found and raw.lstrip(codecs.BOM_UTF8 + b" \t").startswith(b"[")
                hint = " (the file must hold JSON Lines: one object per line, not a JSON array)" if array else ""
                raise InputError(f"{exc}{hint}", path, line) from None
            found = True
            yield line, record


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV file, blank lines as []; `_Bad` on bytes that are not UTF-8 or on broken quoting."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    with _open(path) as f:
        try:
            yield from csv.reader((_decode(raw, i == 0) for i, raw in enumerate(f)), strict=True)
        except csv.Error as exc:
            raise _Bad(f"malformed CSV: {exc}") from None


def _csv_records(path: Path, layout: _Layout) -> Iterator[tuple[int, dict[str, str]]]:
    """(row, record) for each non-blank data row; rows count from 1 after the header, blank ones included.

    A CSV row is one record even when quoted fields span several lines. Problems in the header have no row.
    """
    rows = _csv_rows(path)
    columns = None if layout.header else list(layout.columns)
    count = 0
    while True:
        row_no = count + 1
        try:
            row = next(rows, None)
            if row is None:
                return
            if columns is None:
                if row:
                    columns = layout.read_header(row)
                continue
            count = row_no
            if row and len(row) != len(columns):
                raise _Bad(f"expected {len(columns)} columns, got {len(row)}")
        except _Bad as exc:
            if columns is None:
                raise InputError(f"CSV header: {exc}", path) from None
            raise InputError(str(exc), path, row_no) from None
        if row:
            yield row_no, dict(zip(columns, row))


def _peek(items: Generator[Any, None, None], n: int) -> list[Any]:
    """Up to `n` items from the start of a reader, fewer where it fails (the full load then reports why)."""
    out: list[Any] = []
    try:
        with contextlib.suppress(InputError, _Bad):
            for item in items:
                out.append(item)
                if len(out) == n:
                    break
    finally:
        items.close()
    return out


def _detect_record(rec: Mapping[str, Any] | None) -> str:
    """The layout of a JSON record: gsm8k, mmlu-hf or generic jsonl."""
    if rec and isinstance(rec.get("question"), str):
        answer = rec.get("answer")
        if isinstance(answer, str) and "####" in answer:
            return "gsm8k"
        if isinstance(rec.get("choices"), list) and is_int(answer):
            return "mmlu-hf"
    return "jsonl"


def _letter_answer(row: list[str]) -> bool | None:
    """Whether the MMLU answer cell of a row is a letter (True), an index (False), or neither (None)."""
    cell = row[5].strip().upper() if len(row) >= 6 else ""
    if len(cell) != 1:
        return None
    return True if cell in _LETTERS else False if cell in "0123" else None


def _detect_csv(rows: list[list[str]]) -> str | None:
    """The MMLU layout of a CSV file from its first two non-blank rows, or None when it is not MMLU."""
    if not rows:
        return None
    first = rows[0]
    if [cell.strip() for cell in first[:6]] == list(_MMLU_COLUMNS):
        return _MMLU_CSV_LAYOUTS[True, bool(len(rows) > 1 and _letter_answer(rows[1]))]
    letters = _letter_answer(first) if len(first) == 6 else None
    return None if letters is None else _MMLU_CSV_LAYOUTS[False, letters]


def _container(path: Path, fmt: str | None) -> str:
    if fmt in ("jsonl", "csv"):
        return fmt
    if fmt == "gsm8k":
        return "jsonl"
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return "jsonl"
    if suffix == ".csv" or fmt == "mmlu":
        return "csv"
    raise InputError(
        f"cannot tell the format from the extension {suffix or '(none)'!r}: use .jsonl or .csv, "
        f"or pass a format ({', '.join(FORMATS.names())})",
        path,
    )


def _pick_layout(fmt: str | None, fields: dict[str, Any] | None, container: str, peek: Callable[[], Any]) -> _Layout:
    """The layout to read with. `peek()` gives the first JSON record (jsonl) or first two CSV rows (csv)."""
    if fields is not None or fmt in ("jsonl", "csv"):
        return _generic(container, fields)
    if container == "jsonl":
        if fmt is not None:
            return _LAYOUTS.get("gsm8k" if fmt == "gsm8k" else "mmlu-hf")
        return _LAYOUTS.get(_detect_record(peek()))
    name = _detect_csv(peek())
    return _LAYOUTS.get(name or ("mmlu-letter" if fmt == "mmlu" else "csv"))


def _first_record(path: Path) -> dict[str, Any] | None:
    found = _peek(_jsonl_records(path), 1)
    return found[0][1] if found else None


def _first_rows(path: Path) -> list[list[str]]:
    return _peek((row for row in _csv_rows(path) if row), 2)


def _file_layout(path: Path, fmt: str | None, fields: dict[str, Any] | None) -> _Layout:
    container = _container(path, fmt)
    peek = _first_record if container == "jsonl" else _first_rows
    return _pick_layout(fmt, fields, container, lambda: peek(path))


def _input_files(path: Path) -> list[Path]:
    """The file itself, or the .csv/.jsonl files of a directory, sorted. A path that cannot be read (a FIFO or
    device, a symlink loop, no permission), given or among the directory's .csv/.jsonl files, is an InputError."""
    if not stat.S_ISDIR(check_input(path).st_mode):
        return [path]
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", path) from None
    named = [p for p in entries if p.suffix.lower() in _DIR_SUFFIXES and not p.name.startswith(".")]
    files = [p for p in named if not stat.S_ISDIR(check_input(p).st_mode)]
    if not files:
        subdirs = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
        hint = f" (it has subdirectories: {', '.join(subdirs[:5])})" if subdirs else ""
        raise InputError(f"no .csv or .jsonl files in this directory{hint}", path)
    return files


def _options(format: str | None, fields: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """Check the format name and field map a loader was given: (format or None for auto, complete field map)."""
    fmt = None if format is None or format.strip().lower() == "auto" else FORMATS.get(format, also=("auto",)).name
    mapping = None if fields is None else _field_map(fields)
    if mapping is not None and fmt in ("gsm8k", "mmlu"):
        raise InputError(f"a field map applies to the generic jsonl and csv formats, not to {fmt!r}")
    return fmt, mapping


def _collect(
    records: Iterable[tuple[int, Mapping[str, Any]]],
    layout: _Layout,
    origin: _Origin,
    seen: dict[str, Source],
    benchmark: str | None = None,
) -> list[Sample]:
    """Parse the records of one file; ids must be unique across `seen`, and the file must hold a record."""
    samples = []
    for line, rec in records:
        source = Source(origin.file, line)
        try:
            sample = layout.parse(rec, source, origin)
        except (ValueError, TypeError) as exc:
            raise InputError(str(exc), origin.file, line) from None
        first = seen.setdefault(sample.id, source)
        if first is not source:
            where = f"{first.file}:{first.line}"
            raise InputError(f"duplicate id {_short(sample.id)} (first at {where})", origin.file, line)
        if benchmark is not None:
            sample.benchmark = benchmark
        samples.append(sample)
    if not samples:
        raise InputError("no records found", origin.file)
    return samples


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def detect_format(path: str | Path) -> str:
    """The format (a `FORMATS` name) of a benchmark file from its extension and first record.

    For a directory, the format shared by all its .csv/.jsonl files (InputError when they differ).
    """
    found = {file.name: _file_layout(file, None, None).format for file in _input_files(Path(path))}
    formats = sorted(set(found.values()))
    if len(formats) > 1:
        detail = ", ".join(f"{name}: {fmt}" for name, fmt in found.items())
        raise InputError(f"the files have different formats ({_short(detail, 200)}); pass a single file", path)
    return formats[0]


def not_a_benchmark(path: str | Path, format: str = "auto") -> str | None:
    """Why the file at `path` is not shaped like a benchmark (another kind of JSONL or CSV, such as predictions
    or results), or None when it is one: its first record (first rows) fits a benchmark layout, or has a
    `question` field (column) for the generic one. Only the start of the file is read; a file that cannot be
    read or parsed there raises `InputError`, as loading it would. A directory is None (it is loaded whole)."""
    file = Path(path)
    if stat.S_ISDIR(check_input(file).st_mode):
        return None
    fmt, _ = _options(format, None)
    if fmt is None and file.suffix.lower() not in (*_JSON_SUFFIXES, ".csv"):
        return f"not a JSONL or CSV file ({file.suffix or 'no extension'})"
    container = _container(file, fmt)
    if container == "jsonl":
        records = _jsonl_records(file)
        try:
            first = next(records, None)
        finally:
            records.close()
        if first is None:
            return "it holds no records"
        record = first[1]
        layout = _pick_layout(fmt, None, container, lambda: record)
        if layout.benchmark != "generic" or isinstance(record.get("question"), str):
            return None
        return f"its first record has no 'question' text (fields: {_short(', '.join(map(str, record)), 120)})"
    rows: list[list[str]] = []
    try:
        with contextlib.closing(_csv_rows(file)) as reader:
            for row in reader:
                if row:
                    rows.append(row)
                    if len(rows) == 2:
                        break
    except _Bad as exc:
        raise InputError(str(exc), file, len(rows) + 1) from None
    if not rows:
        return "it holds no rows"
    layout = _pick_layout(fmt, None, container, lambda: rows)
    if layout.benchmark != "generic" or "question" in (cell.strip() for cell in rows[0]):
        return None
    return f"no MMLU rows and no 'question' column (first row: {_short(', '.join(rows[0]), 120)})"


def load_benchmark(
    path: str | Path,
    format: str = "auto",
    *,
    fields: Mapping[str, Any] | None = None,
    benchmark: str | None = None,
) -> list[Sample]:
    """Load a benchmark file, every .csv/.jsonl file of a directory (sorted), or a Hugging Face dataset split
    named `hf://NAME[:CONFIG][:SPLIT]` (`load_hf_dataset`), as samples.

    `format` is a `FORMATS` name or "auto" (detected per file). `fields` maps Sample fields to source columns
    for the generic jsonl/csv formats (e.g. ``{"question": "prompt", "answer": "target"}``); giving it selects
    them under "auto". `benchmark` labels generic samples ("gsm8k", "mmlu"), and for the other formats requires
    the files to be of that benchmark. Every problem with the input raises `InputError` with the file and line.
    """
    if isinstance(path, str) and path.startswith(HF_PREFIX):
        name, config, split = parse_hf_spec(path)
        samples = load_hf_dataset(name, split, config=config, format=format, fields=fields)
        if benchmark is not None:
            for s in samples:
                if s.benchmark not in ("generic", benchmark):
                    raise InputError(f"the dataset holds {s.benchmark} items, not {benchmark}", path)
                s.benchmark = benchmark
        return samples
    fmt, mapping = _options(format, fields)
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise InputError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    seen: dict[str, Source] = {}
    samples: list[Sample] = []
    for file in _input_files(Path(path)):
        layout = _file_layout(file, fmt, mapping)
        if benchmark is not None and layout.benchmark not in ("generic", benchmark):
            raise InputError(f"the file holds {layout.benchmark} items ({layout.name} layout), not {benchmark}", file)
        records = _jsonl_records(file) if layout.container == "jsonl" else _csv_records(file, layout)
        samples += _collect(records, layout, _Origin.of_file(file), seen, benchmark)
    return samples


HF_PREFIX = "hf://"


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf://NAME[:CONFIG][:SPLIT]` as (name, config, split); the split defaults to "test".

    NAME is a Hub dataset (`openai/gsm8k`), a `datasets` builder or a local directory that `load_dataset`
    reads; `hf://openai/gsm8k:main:test` names the config too.
    """
    if not spec.startswith(HF_PREFIX) or len(spec) == len(HF_PREFIX):
        raise InputError("a Hugging Face benchmark is named hf://NAME[:CONFIG][:SPLIT], e.g. hf://openai/gsm8k:main:test", spec)
    parts = spec[len(HF_PREFIX):].split(":")
    if len(parts) > 3 or not all(parts):
        raise InputError("a Hugging Face benchmark is named hf://NAME[:CONFIG][:SPLIT], e.g. hf://openai/gsm8k:main:test", spec)
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else "test"
    return name, config, split


_CHOICE_COLUMNS = (("choice0", "choice1", "choice2", "choice3"), ("A", "B", "C", "D"))


def _mcq_shape(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """An MMLU-shaped row with one column per choice (`choice0`..`choice3`, or `A`..`D`) as a `choices` list, so
    it loads as a multiple-choice item; any other row unchanged."""
    if not isinstance(rec, Mapping) or "choices" in rec or not isinstance(rec.get("question"), str):
        return rec
    for columns in _CHOICE_COLUMNS:
        if all(isinstance(rec.get(c), str) for c in columns) and rec.get("answer") is not None:
            out = {k: v for k, v in rec.items() if k not in columns}
            out["choices"] = [rec[c] for c in columns]
            answer = rec["answer"]
            out["answer"] = _mmlu_answer(answer) if isinstance(answer, str) else answer
            return out
    return rec


def load_hf_dataset(
    name: str,
    split: str = "test",
    *,
    config: str | None = None,
    format: str = "auto",
    fields: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> list[Sample]:
    """Load a Hugging Face dataset split with `datasets.load_dataset(name, config, split=split, **kwargs)`.

    Records are parsed like JSONL records of the same format: GSM8K-shaped ones become gsm8k samples, MMLU-shaped
    ones (a `choices` list, or one column per choice as in the MMLU CSV files) multiple-choice mmlu samples.
    Each sample's source is the dataset (`NAME[:CONFIG]:SPLIT`, a local directory by its name) and its 1-based
    row, and positional ids name it too (`openai/gsm8k:main:test:12`).
    """
    datasets = require("datasets", "hf", "Loading a Hugging Face dataset")
    fmt, mapping = _options(format, fields)
    try:
        dataset = datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as exc:  # datasets raises many kinds: missing dataset or config, network, unreadable files
        raise InputError(f"cannot load the Hugging Face dataset: {exc}", name) from exc
    if isinstance(dataset, Mapping):  # a DatasetDict: no split was chosen
        raise InputError(f"choose a split: {', '.join(map(str, dataset))}", name)
    rows = iter(dataset) if mapping is not None else map(_mcq_shape, dataset)
    first = next(rows, None)
    layout = _pick_layout(fmt, mapping, "jsonl", lambda: first)
    records = enumerate(itertools.chain([] if first is None else [first], rows), 1)
    label = ":".join(p for p in (PurePath(name).name if Path(name).exists() else name, config, split) if p)
    return _collect(records, layout, _Origin(label, label, config), {})


def write_benchmark(samples: Iterable[Sample], path: str | Path, *, format: str | None = None) -> list[Path]:
    """Write samples in their source layout (or `format`), atomically; return the files written.

    `format` is a layout name ("gsm8k", "mmlu-index", "mmlu-letter", "mmlu-hf", "jsonl", "csv", ...) or a format
    name for its default layout; by default each file takes the layout of its first sample. When `path` is an
    existing directory, samples are grouped by source file and each group goes to a file of the same name there,
    so a loaded directory round-trips. Positional ids and MMLU CSV subjects follow the output file name.
    """
    samples = list(samples)
    path = Path(path)
    if not samples:
        raise InputError("no samples to write", path)
    if not path.is_dir():
        return [_write_file(samples, path, _write_layout(samples, format, path))]
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.source is None:
            raise InputError(f"sample {_short(sample.id)} has no source file to name its output file after", path)
        groups.setdefault(sample.source.file, []).append(sample)
    targets: dict[Path, tuple[list[Sample], _Layout]] = {}
    for file, group in groups.items():
        layout = _write_layout(group, format, path)
        target = path / (_strip_suffix(PurePath(file).name) + "." + layout.container)
        if target in targets:
            raise InputError(f"two source files would both be written to {target.name}", path)
        targets[target] = (group, layout)
    return [_write_file(group, target, layout) for target, (group, layout) in targets.items()]


def _strip_suffix(name: str) -> str:
    suffix = PurePath(name).suffix
    return name[: -len(suffix)] if suffix.lower() in (".csv", *_JSON_SUFFIXES) else name


def _write_layout(samples: list[Sample], format: str | None, path: Path) -> _Layout:
    name = format or samples[0].layout
    if not name:
        raise InputError("the samples carry no layout; pass format= (e.g. 'gsm8k', 'mmlu-letter', 'jsonl')", path)
    return _layout_named(name)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_file(samples: list[Sample], path: Path, layout: _Layout) -> Path:
    records = []
    for sample in samples:
        try:
            if layout.benchmark not in ("generic", sample.benchmark):
                raise _Bad(f"a {sample.benchmark} item does not fit the {layout.name} layout")
            records.append(layout.dump(sample))
        except _Bad as exc:
            raise InputError(f"sample {_short(sample.id)}: {exc}", path) from None
    with atomic_write(path, newline="") as f:
        if layout.container == "jsonl":
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            columns = list(dict.fromkeys(k for r in records for k in r)) if layout.header else list(layout.columns)
            rows = [[_cell(record.get(c)) for c in columns] for record in records]
            _write_csv_rows(f, [columns, *rows] if layout.header else rows)
    return path


def _write_csv_rows(f: Any, rows: list[list[str]]) -> None:
    """Minimal quoting and "\n" line ends, like the MMLU files; a row with a "\r" in a cell is quoted in full,
    because the csv module only quotes the characters of its line terminator and a bare "\r" would split the row."""
    plain = csv.writer(f, lineterminator="\n")
    quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        (quoted if any("\r" in cell for cell in row) else plain).writerow(row)
