"""Writing samples back in their source layout, atomically (`write_benchmark`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any

from itd.core.errors import InputError
from itd.core.formats import JSON_SUFFIXES, BadRecord, Layout, layout_named, short_repr
from itd.core.io import atomic_write
from itd.core.sample import Sample


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
            raise InputError(f"sample {short_repr(sample.id)} has no source file to name its output file after", path)
        groups.setdefault(sample.source.file, []).append(sample)
    targets: dict[Path, tuple[list[Sample], Layout]] = {}
    for file, group in groups.items():
        layout = _write_layout(group, format, path)
        target = path / (_strip_suffix(PurePath(file).name) + "." + layout.container)
        if target in targets:
            raise InputError(f"two source files would both be written to {target.name}", path)
        targets[target] = (group, layout)
    return [_write_file(group, target, layout) for target, (group, layout) in targets.items()]


def _strip_suffix(name: str) -> str:
    suffix = PurePath(name).suffix
    return name[: -len(suffix)] if suffix.lower() in (".csv", *JSON_SUFFIXES) else name


def _write_layout(samples: list[Sample], format: str | None, path: Path) -> Layout:
    name = format or samples[0].layout
    if not name:
        raise InputError("the samples carry no layout; pass format= (e.g. 'gsm8k', 'mmlu-letter', 'jsonl')", path)
    return layout_named(name)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_file(samples: list[Sample], path: Path, layout: Layout) -> Path:
    records = []
    for sample in samples:
        try:
            if layout.benchmark not in ("generic", sample.benchmark):
                raise BadRecord(f"a {sample.benchmark} item does not fit the {layout.name} layout")
            records.append(layout.dump(sample))
        except BadRecord as exc:
            raise InputError(f"sample {short_repr(sample.id)}: {exc}", path) from None
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
