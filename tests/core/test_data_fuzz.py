"""Property tests: random and corrupted input makes the loaders return samples or raise InputError, nothing else.

Every load either returns a list of `Sample` or raises exactly `InputError` with the file as `path` and a 1-based
`line` inside the file (None only for whole-file problems). Whatever loads also survives write -> load.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itd.core import Sample, gsm8k_final_answer, load_benchmark, write_benchmark
from itd.core.errors import InputError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WHOLE_FILE_PROBLEMS = ("no records found", "CSV header: ")
FORMATS = ("auto", "gsm8k", "mmlu", "jsonl", "csv")

texts = st.text(max_size=12)
ids = st.text(max_size=3) | st.integers(0, 5)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=8
)
odd_values = st.one_of(
    json_values,
    st.sampled_from(["#### 42", "x\n#### 1,000", "####", "A", "E", "7", "3", ""]),
    st.integers(-2, 6),
    st.lists(texts, min_size=3, max_size=5),
)
extras = st.dictionaries(st.sampled_from(["meta", "note", "subject"]), json_values, max_size=2) | st.fixed_dictionaries(
    {"id": ids}
)

# Records that are valid for one layout; `corrupt` breaks some of them.
record_kinds = {
    "gsm8k": st.builds(
        lambda q, n, more: {"question": q, "answer": f"work <<1+1=2>>\n#### {n}", **more},
        texts,
        st.integers() | st.sampled_from(["1,000", "3.5", " 7 "]),
        extras,
    ),
    "mmlu-hf": st.fixed_dictionaries(
        {"question": texts, "choices": st.lists(texts, min_size=4, max_size=4), "answer": st.integers(0, 3)},
        optional={"subject": texts, "id": ids, "more": json_values},
    ),
    "generic": st.fixed_dictionaries(
        {"question": texts},
        optional={"answer": st.none() | texts | st.integers(), "solution": texts, "id": ids, "x": json_values},
    ),
}
mmlu_rows = st.tuples(st.lists(texts, min_size=5, max_size=5), st.sampled_from("0123ABCD")).map(lambda t: [*t[0], t[1]])
generic_rows = st.lists(texts, min_size=3, max_size=3)
cells = st.one_of(texts, st.sampled_from(["A", "D", "E", "0", "3", "7", "", "question", '"', "a,b", "x\ny", "\r"]))


def corrupt(draw: st.DrawFn, record: dict | list) -> object:
    """Leave a record or row as is, or break it: change, drop or add a value, or swap it for any JSON value."""
    kind = draw(st.sampled_from(["keep", "keep", "keep", "change", "drop", "add", "replace"]))
    if kind == "keep" or not record and kind in ("change", "drop"):
        return record
    if kind == "replace":
        return draw(json_values if isinstance(record, dict) else st.lists(cells, max_size=8))
    record = record.copy()
    if isinstance(record, dict):
        key = draw(st.sampled_from(sorted(record))) if kind != "add" else draw(texts)
        if kind == "drop":
            del record[key]
        else:
            record[key] = draw(odd_values)
    else:
        at = draw(st.integers(0, len(record) - (kind != "add")))
        if kind == "drop":
            del record[at]
        elif kind == "add":
            record.insert(at, draw(cells))
        else:
            record[at] = draw(cells)
    return record


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def real_lines(shared_data: Path) -> dict[str, list[bytes]]:
    """The first lines of a real GSM8K file and a real MMLU CSV (with its header)."""
    return {
        "jsonl": (shared_data / "gsm8k" / "test.jsonl").read_bytes().splitlines(keepends=True)[:12],
        "csv": (shared_data / "mmlu" / "test" / "anatomy_test.csv").read_bytes().splitlines(keepends=True)[:20],
    }


def check_load(path: Path, data: bytes, **kwargs: object) -> list[Sample] | None:
    """Load `path` (holding `data`): a list of samples, or None after checking the InputError it raised."""
    try:
        samples = load_benchmark(path, **kwargs)
    except InputError as err:
        assert type(err) is InputError
        assert err.path == str(path)
        if err.line is None:
            assert err.message.startswith(WHOLE_FILE_PROBLEMS), err.message
        else:
            assert type(err.line) is int and 1 <= err.line <= data.count(b"\n") + 1, err
        assert len(err.message) < 400
        return None
    assert isinstance(samples, list) and samples
    assert all(isinstance(s, Sample) for s in samples)
    return samples


def key(sample: Sample) -> tuple[object, ...]:
    """What write -> load must keep (positional ids and line numbers move when blank lines go)."""
    positional = sample.id == f"{Path(sample.source.file).stem}:{sample.source.line}"
    return (None if positional else sample.id, sample.benchmark, sample.question, sample.answer, sample.choices,
            sample.solution, sample.subject, sample.extra, sample.layout)


def load_file(directory: Path, name: str, data: bytes, fmt: str) -> list[Sample] | None:
    """Write `data` to `name` and load it; whatever loads must come back the same after write -> load."""
    path = directory / name
    path.write_bytes(data)
    samples = check_load(path, data, format=fmt)
    if samples is not None:
        out = directory / "out" / name
        write_benchmark(samples, out)
        assert [key(s) for s in load_benchmark(out, format=fmt)] == [key(s) for s in samples]
    return samples


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(["jsonl", "csv"]), fmt=st.sampled_from(FORMATS))
def test_random_bytes(fuzz_dir: Path, data: bytes, suffix: str, fmt: str) -> None:
    load_file(fuzz_dir, f"bytes.{suffix}", data, fmt)


@FUZZ
@given(
    data=st.data(),
    kind=st.sampled_from(sorted(record_kinds)),
    blank=st.sampled_from(["", "\n", "  \r\n"]),
    bom=st.booleans(),
    fmt=st.sampled_from(("auto", "gsm8k", "mmlu", "jsonl")),
)
def test_random_json_lines(fuzz_dir: Path, data: st.DataObject, kind: str, blank: str, bom: bool, fmt: str) -> None:
    lines = [corrupt(data.draw, record) for record in data.draw(st.lists(record_kinds[kind], max_size=6))]
    text = ("\ufeff" if bom else "") + "".join(json.dumps(line) + "\n" + blank for line in lines)
    load_file(fuzz_dir, "records.jsonl", text.encode("utf-8"), fmt)


@FUZZ
@given(
    data=st.data(),
    header=st.sampled_from([None, "question,choice0,choice1,choice2,choice3,answer", "question,answer,id"]),
    crlf=st.booleans(),
    fmt=st.sampled_from(("auto", "mmlu", "csv")),
)
def test_random_csv_rows(fuzz_dir: Path, data: st.DataObject, header: str | None, crlf: bool, fmt: str) -> None:
    valid_rows = generic_rows if header and header.startswith("question,answer") else mmlu_rows
    rows = [corrupt(data.draw, row) for row in data.draw(st.lists(valid_rows, max_size=5))]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    if header:
        writer.writerow(header.split(","))
    writer.writerows(rows)
    load_file(fuzz_dir, "rows.csv", out.getvalue().encode("utf-8"), fmt)


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """One corruption of `data`: truncate, flip a byte, insert or delete bytes, or duplicate a line."""
    if not data:
        return draw(st.binary(max_size=8))
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate"]))
    at = draw(st.integers(0, len(data)))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "insert":
        noise = st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b",", b"\n", b"{", b"\xff", b"\r"])
        return data[:at] + draw(noise) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 40)) :]
    lines = data.splitlines(keepends=True)
    i = min(at, len(lines) - 1)
    return b"".join(lines[: i + 1] + lines[i:])


@FUZZ
@given(st.data(), st.sampled_from(["jsonl", "csv"]), st.integers(1, 3))
def test_mutated_real_lines(
    fuzz_dir: Path, real_lines: dict[str, list[bytes]], data: st.DataObject, suffix: str, rounds: int
) -> None:
    lines = real_lines[suffix]
    start = data.draw(st.integers(0, len(lines) - 1)) if suffix == "jsonl" else 0  # keep the CSV header
    chunk = b"".join(lines[start : start + data.draw(st.integers(1, 6))])
    for _ in range(rounds):
        chunk = mutate(chunk, data.draw)
    load_file(fuzz_dir, f"anatomy_test.{suffix}", chunk, data.draw(st.sampled_from(FORMATS)))


_REFERENCE_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("#, \n\t1a\u00a0\u2028") | st.characters(), max_size=30))
def test_final_answer_matches_the_regex_definition(text: str) -> None:
    m = _REFERENCE_FINAL.search(text)
    assert gsm8k_final_answer(text) == (m.group(1).replace(",", "").strip() if m else None)
