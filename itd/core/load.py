"""Reading benchmark files: format detection, JSONL and CSV records with their line numbers, directories of
subject files, and the public loaders (`load_benchmark`, `load_hf_dataset`)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import itertools
import json
import stat
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from itd.core.errors import InputError, require
from itd.core.formats import (
    CSV_FIELD_LIMIT,
    DIR_SUFFIXES,
    FORMATS,
    JSON_SPACE,
    JSON_SUFFIXES,
    LAYOUTS,
    LETTERS,
    MMLU_COLUMNS,
    MMLU_CSV_LAYOUTS,
    SURROGATE_ESCAPE,
    BadRecord,
    Layout,
    Origin,
    field_map,
    generic_layout,
    json_type,
    mmlu_answer,
    short_repr,
)
from itd.core.paths import check_input
from itd.core.sample import BENCHMARKS, Sample, Source
from itd.core.validate import is_int


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
        raise BadRecord(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecord(f"invalid JSON: {exc.msg} at column {exc.pos + 1}") from None
    except RecursionError:
        raise BadRecord("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise BadRecord(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRecord(f"expected a JSON object, got {json_type(value)}")
    if SURROGATE_ESCAPE.search(text):  # "\ud800" parses but is no character: reject it here, not when writing
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(exc.object[exc.start])
            raise BadRecord(f"invalid JSON: unpaired surrogate \\u{code:04x} is not a Unicode character") from None
    return value


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) for each non-blank line of a JSONL file; InputError at the first bad line."""
    found = False
    with _open(path) as f:
        for line, raw in enumerate(f, 1):
            try:
                text = _decode(raw, line == 1)
                if not text.strip(JSON_SPACE):
                    continue
                record = _json_object(text)
            except BadRecord as exc:
                array = not found and raw.lstrip(codecs.BOM_UTF8 + b" \t").startswith(b"[")
                hint = " (the file must hold JSON Lines: one object per line, not a JSON array)" if array else ""
                raise InputError(f"{exc}{hint}", path, line) from None
            found = True
            yield line, record


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV file, blank lines as []; `BadRecord` on bytes that are not UTF-8 or on broken quoting."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with _open(path) as f:
        try:
            yield from csv.reader((_decode(raw, i == 0) for i, raw in enumerate(f)), strict=True)
        except csv.Error as exc:
            raise BadRecord(f"malformed CSV: {exc}") from None


def _csv_records(path: Path, layout: Layout) -> Iterator[tuple[int, dict[str, str]]]:
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
                raise BadRecord(f"expected {len(columns)} columns, got {len(row)}")
        except BadRecord as exc:
            if columns is None:
                raise InputError(f"CSV header: {exc}", path) from None
            raise InputError(str(exc), path, row_no) from None
        if row:
            yield row_no, dict(zip(columns, row))


def _peek(items: Generator[Any, None, None], n: int) -> list[Any]:
    """Up to `n` items from the start of a reader, fewer where it fails (the full load then reports why)."""
    out: list[Any] = []
    try:
        with contextlib.suppress(InputError, BadRecord):
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
    return True if cell in LETTERS else False if cell in "0123" else None


def _detect_csv(rows: list[list[str]]) -> str | None:
    """The MMLU layout of a CSV file from its first two non-blank rows, or None when it is not MMLU."""
    if not rows:
        return None
    first = rows[0]
    if [cell.strip() for cell in first[:6]] == list(MMLU_COLUMNS):
        return MMLU_CSV_LAYOUTS[True, bool(len(rows) > 1 and _letter_answer(rows[1]))]
    letters = _letter_answer(first) if len(first) == 6 else None
    return None if letters is None else MMLU_CSV_LAYOUTS[False, letters]


def _container(path: Path, fmt: str | None) -> str:
    if fmt in ("jsonl", "csv"):
        return fmt
    if fmt == "gsm8k":
        return "jsonl"
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    if suffix == ".csv" or fmt == "mmlu":
        return "csv"
    raise InputError(
        f"cannot tell the format from the extension {suffix or '(none)'!r}: use .jsonl or .csv, "
        f"or pass a format ({', '.join(FORMATS.names())})",
        path,
    )


def _pick_layout(fmt: str | None, fields: dict[str, Any] | None, container: str, peek: Callable[[], Any]) -> Layout:
    """The layout to read with. `peek()` gives the first JSON record (jsonl) or first two CSV rows (csv)."""
    if fields is not None or fmt in ("jsonl", "csv"):
        return generic_layout(container, fields)
    if container == "jsonl":
        if fmt is not None:
            return LAYOUTS.get("gsm8k" if fmt == "gsm8k" else "mmlu-hf")
        return LAYOUTS.get(_detect_record(peek()))
    name = _detect_csv(peek())
    return LAYOUTS.get(name or ("mmlu-letter" if fmt == "mmlu" else "csv"))


def _first_record(path: Path) -> dict[str, Any] | None:
    found = _peek(_jsonl_records(path), 1)
    return found[0][1] if found else None


def _first_rows(path: Path) -> list[list[str]]:
    return _peek((row for row in _csv_rows(path) if row), 2)


def _file_layout(path: Path, fmt: str | None, fields: dict[str, Any] | None) -> Layout:
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
    named = [p for p in entries if p.suffix.lower() in DIR_SUFFIXES and not p.name.startswith(".")]
    files = [p for p in named if not stat.S_ISDIR(check_input(p).st_mode)]
    if not files:
        subdirs = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
        hint = f" (it has subdirectories: {', '.join(subdirs[:5])})" if subdirs else ""
        raise InputError(f"no .csv or .jsonl files in this directory{hint}", path)
    return files


def _options(format: str | None, fields: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """Check the format name and field map a loader was given: (format or None for auto, complete field map)."""
    fmt = None if format is None or format.strip().lower() == "auto" else FORMATS.get(format, also=("auto",)).name
    mapping = None if fields is None else field_map(fields)
    if mapping is not None and fmt in ("gsm8k", "mmlu"):
        raise InputError(f"a field map applies to the generic jsonl and csv formats, not to {fmt!r}")
    return fmt, mapping


def _collect(
    records: Iterable[tuple[int, Mapping[str, Any]]],
    layout: Layout,
    origin: Origin,
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
            raise InputError(f"duplicate id {short_repr(sample.id)} (first at {where})", origin.file, line)
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
        raise InputError(f"the files have different formats ({short_repr(detail, 200)}); pass a single file", path)
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
    if fmt is None and file.suffix.lower() not in (*JSON_SUFFIXES, ".csv"):
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
        return f"its first record has no 'question' text (fields: {short_repr(', '.join(map(str, record)), 120)})"
    rows: list[list[str]] = []
    try:
        with contextlib.closing(_csv_rows(file)) as reader:
            for row in reader:
                if row:
                    rows.append(row)
                    if len(rows) == 2:
                        break
    except BadRecord as exc:
        raise InputError(str(exc), file, len(rows) + 1) from None
    if not rows:
        return "it holds no rows"
    layout = _pick_layout(fmt, None, container, lambda: rows)
    if layout.benchmark != "generic" or "question" in (cell.strip() for cell in rows[0]):
        return None
    return f"no MMLU rows and no 'question' column (first row: {short_repr(', '.join(rows[0]), 120)})"


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
        samples += _collect(records, layout, Origin.of_file(file), seen, benchmark)
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
            out["answer"] = mmlu_answer(answer) if isinstance(answer, str) else answer
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
    return _collect(records, layout, Origin(label, label, config), {})


