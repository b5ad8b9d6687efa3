"""Benchmark loaders and writers: real GSM8K/MMLU files, every layout, round trips and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from itd.core import (
    FORMATS,
    Sample,
    Source,
    detect_format,
    load_benchmark,
    load_hf_dataset,
    write_benchmark,
)
from itd.core.errors import InputError

MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


# ---------------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def gsm8k_test(shared_data: Path) -> Path:
    return shared_data / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="session")
def mmlu_test(shared_data: Path) -> Path:
    return shared_data / "mmlu" / "test"


@pytest.fixture(scope="session")
def mmlu_items(mmlu_test: Path) -> list[Sample]:
    return load_benchmark(mmlu_test)


def write(path: Path, data: str | bytes) -> Path:
    """Write text (verbatim, no newline translation) or bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def csv_text(rows: list[list[object]]) -> str:
    out: list[str] = []

    class Sink:
        def write(self, s: str) -> None:
            out.append(s)

    csv.writer(Sink(), lineterminator="\n").writerows(rows)
    return "".join(out)


def gsm(question: str = "How many?", final: str = "3", **extra: object) -> dict[str, object]:
    return {"question": question, "answer": f"1 + 2 = <<1+2=3>>3\n#### {final}", **extra}


MMLU_ROW = ["What is 2+2?", "1", "2", "3", "4"]


def without_file(sample: Sample) -> Sample:
    """The sample with `source.file` blanked, to compare loads of different files."""
    return dataclasses.replace(sample, source=Source("", sample.source.line))


def mcq(sample: Sample) -> tuple[object, ...]:
    return sample.question, sample.choices, sample.answer, sample.subject


def hf_record(sample: Sample) -> dict[str, object]:
    """An MMLU sample as a Hugging Face cais/mmlu record."""
    s = sample
    return {"question": s.question, "subject": s.subject, "choices": list(s.choices), "answer": s.answer}


def raises_input_error(path: Path, line: int | None, fragment: str, **kwargs: object) -> InputError:
    with pytest.raises(InputError) as info:
        load_benchmark(path, **kwargs)
    err = info.value
    assert type(err) is InputError
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert fragment in err.message, err.message
    return err


# ---------------------------------------------------------------------------------------------------------------------
# real data


def test_gsm8k_test_file(gsm8k_test: Path) -> None:
    samples = load_benchmark(gsm8k_test)
    assert len(samples) == 1200
    first = samples[0]
    assert first.question.startswith("Janet")
    assert first.answer == "18"
    assert first.benchmark == "gsm8k" and first.layout == "gsm8k"
    assert first.source == Source(str(gsm8k_test), 1)
    assert first.id == "test:1"
    assert first.solution.endswith("#### 18") and "<<16-3-4=9>>" in first.solution
    assert first.choices is None and first.extra == {}
    assert samples[-1].source.line == 1200
    assert len({s.id for s in samples}) == 1200


def test_gsm8k_train_comma_answers(shared_data: Path) -> None:
    samples = load_benchmark(shared_data / "gsm8k" / "train.jsonl")
    assert len(samples) == 7473
    with_commas = [s for s in samples if "," in s.solution.rpartition("####")[2]]
    assert with_commas, "the real data has '#### 1,000'-style answers"
    assert all("," not in s.answer for s in samples)
    assert all(s.answer.replace(".", "").lstrip("-").isdigit() for s in with_commas)


def test_gsm8k_comma_answer(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm(final="1,000"), gsm(final=" 12,345,678 ")))
    assert [s.answer for s in load_benchmark(path)] == ["1000", "12345678"]


def test_mmlu_test_directory(mmlu_test: Path, mmlu_items: list[Sample]) -> None:
    assert len(mmlu_items) == 12812
    files = sorted(mmlu_test.glob("*_test.csv"))
    assert {s.subject for s in mmlu_items} == {f.name.removesuffix("_test.csv") for f in files}
    assert len({s.subject for s in mmlu_items}) == 51
    first = mmlu_items[0]
    assert first.subject == "abstract_algebra" and first.id == "abstract_algebra_test:1"
    assert first.source == Source(str(files[0]), 1)
    assert all(s.benchmark == "mmlu" and s.layout == "mmlu-index" for s in mmlu_items)
    assert all(len(s.choices) == 4 and s.answer in (0, 1, 2, 3) for s in mmlu_items)
    assert any("\n" in s.question for s in mmlu_items), "rows with embedded newlines are one record each"


def test_mmlu_loads_every_subject(mmlu_test: Path) -> None:
    samples = load_benchmark(mmlu_test)
    assert len(samples) == 12812 and len({s.subject for s in samples}) == 51


def test_mmlu_single_file(mmlu_test: Path) -> None:
    path = mmlu_test / "anatomy_test.csv"
    samples = load_benchmark(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(samples) == len(rows) - 1 == 135
    assert {s.subject for s in samples} == {"anatomy"}
    assert samples[2].id == "anatomy_test:3" and samples[2].source.line == 3
    assert samples[1].question == 'A "dished face" profile is often associated with'
    assert samples[1].answer == 1 and samples[1].choices == tuple(rows[2][1:5])


def test_mmlu_dev_directory(shared_data: Path) -> None:
    samples = load_benchmark(shared_data / "mmlu" / "dev")
    assert len(samples) == 51 * 5
    assert samples[0].id == "abstract_algebra_dev:1" and samples[0].subject == "abstract_algebra"


def test_mmlu_letter_and_hf_layouts_match_index_layout(tmp_path: Path, mmlu_items: list[Sample]) -> None:
    letters, hf = tmp_path / "letters", tmp_path / "hf.jsonl"
    by_subject: dict[str, list[Sample]] = {}
    for s in mmlu_items:
        by_subject.setdefault(s.subject, []).append(s)
    for subject, items in by_subject.items():  # the original release: headerless, letter answers
        write(letters / f"{subject}_test.csv", csv_text([[s.question, *s.choices, "ABCD"[s.answer]] for s in items]))
    write(hf, "".join(json.dumps(hf_record(s), ensure_ascii=False) + "\n" for s in mmlu_items))

    from_letters = load_benchmark(letters)
    from_hf = load_benchmark(hf)
    assert [mcq(s) for s in from_letters] == [mcq(s) for s in mmlu_items]
    assert [mcq(s) for s in from_hf] == [mcq(s) for s in mmlu_items]
    assert {s.layout for s in from_letters} == {"mmlu-letter"}
    assert {s.layout for s in from_hf} == {"mmlu-hf"}
    assert from_letters[0].id == "abstract_algebra_test:1" and from_hf[0].id == "hf:1"


# ---------------------------------------------------------------------------------------------------------------------
# generic formats and field maps


def test_generic_jsonl_with_field_map(tmp_path: Path) -> None:
    path = write(
        tmp_path / "custom.jsonl",
        jsonl(
            {"uid": "q-1", "prompt": "Pick one", "options": ["a", "b", "c"], "target": 2, "meta": {"src": "x"}},
            {"uid": 7, "prompt": "Free text", "target": "forty-two"},
        ),
    )
    fields = {"question": "prompt", "answer": "target", "choices": "options", "id": "uid"}
    first, second = load_benchmark(path, fields=fields)
    assert first == Sample(
        id="q-1",
        benchmark="generic",
        question="Pick one",
        answer=2,
        choices=("a", "b", "c"),
        source=Source(str(path), 1),
        extra={"meta": {"src": "x"}},
        layout=first.layout,
    )
    assert first.layout.startswith("jsonl:") and first.answer_text() == "c"
    assert (second.id, second.answer, second.choices) == ("7", "forty-two", None)
    assert load_benchmark(path, "jsonl", fields=fields) == [first, second]


def test_generic_defaults_and_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.jsonl", jsonl({"question": "Capital of France?", "answer": "Paris", "x": 1}))
    (sample,) = load_benchmark(path)
    assert (sample.benchmark, sample.layout, sample.answer, sample.extra) == ("generic", "jsonl", "Paris", {"x": 1})
    assert sample.id == "plain:1"


def test_generic_csv_with_field_map(tmp_path: Path) -> None:
    path = write(
        tmp_path / "items.csv",
        "uid,prompt,target,notes\nr1,\"Say hi, please\",hi,n1\nr2,Count,,\n",
    )
    samples = load_benchmark(path, fields={"question": "prompt", "answer": "target", "id": "uid"})
    assert [(s.id, s.question, s.answer, s.extra) for s in samples] == [
        ("r1", "Say hi, please", "hi", {"notes": "n1"}),
        ("r2", "Count", None, {"notes": ""}),
    ]
    assert samples[0].layout.startswith("csv:") and samples[0].source.line == 1


def test_generic_csv_choice_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "mc.csv", "q,A,B,C,gold\nWhich?,x,y,z,1\n")
    (sample,) = load_benchmark(path, fields={"question": "q", "choices": ["A", "B", "C"], "answer": "gold"})
    assert (sample.choices, sample.answer, sample.extra) == (("x", "y", "z"), 1, {})


def test_benchmark_label(tmp_path: Path, gsm8k_test: Path) -> None:
    path = write(tmp_path / "mc.jsonl", jsonl({"question": "q", "choices": ["a", "b"], "answer": "b"}))
    assert load_benchmark(path, benchmark="mmlu")[0].benchmark == "mmlu"
    with pytest.raises(InputError, match="gsm8k items"):
        load_benchmark(gsm8k_test, benchmark="mmlu")
    with pytest.raises(InputError, match="unknown benchmark"):
        load_benchmark(path, benchmark="math")


def test_field_map_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jsonl", jsonl({"q": "a"}))
    with pytest.raises(InputError, match="unknown field 'prompt'"):
        load_benchmark(path, fields={"prompt": "q"})
    with pytest.raises(InputError, match="both map to column"):
        load_benchmark(path, fields={"question": "q", "solution": "q"})
    with pytest.raises(InputError, match="not to 'gsm8k'"):
        load_benchmark(path, "gsm8k", fields={"question": "q"})
    with pytest.raises(InputError, match="no column 'prompt' for field 'question'") as info:
        load_benchmark(write(tmp_path / "x.csv", "q,a\n1,2\n"), fields={"question": "prompt"})
    assert info.value.line is None


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (local files through the "json" builder; never the network)


def test_load_hf_dataset(tmp_path: Path, gsm8k_test: Path, mmlu_test: Path) -> None:
    pytest.importorskip("datasets", reason="optional dependency 'datasets' not installed (pip install 'itd[hf]')")
    gsm_file = write(tmp_path / "gsm.jsonl", "".join(gsm8k_test.read_text(encoding="utf-8").splitlines(True)[:20]))
    mmlu = load_benchmark(mmlu_test / "anatomy_test.csv")[:20]
    mmlu_file = write(tmp_path / "mmlu.jsonl", jsonl(*map(hf_record, mmlu)))
    cache = str(tmp_path / "hf-cache")

    gsm_samples = load_hf_dataset("json", split="train", data_files=str(gsm_file), cache_dir=cache)
    assert [s.layout for s in gsm_samples] == ["gsm8k"] * 20
    assert [s.source for s in gsm_samples] == [Source("json:train", i) for i in range(1, 21)]
    expected = load_benchmark(gsm_file)
    assert [(s.question, s.answer, s.solution) for s in gsm_samples] == [
        (s.question, s.answer, s.solution) for s in expected
    ]
    assert gsm_samples[0].id == "json:train:1"  # positional ids name the dataset and split

    mmlu_samples = load_hf_dataset("json", split="train", data_files=str(mmlu_file), cache_dir=cache)
    assert {s.layout for s in mmlu_samples} == {"mmlu-hf"}
    assert [mcq(s) for s in mmlu_samples] == [mcq(s) for s in mmlu]

    fields = {"question": "question", "solution": "subject"}
    generic = load_hf_dataset("json", split="train", data_files=str(mmlu_file), cache_dir=cache, fields=fields)
    assert generic[0].benchmark == "generic" and generic[0].solution == "anatomy"

    with pytest.raises(InputError, match="Hugging Face") as info:
        load_hf_dataset("json", split="train", data_files=str(tmp_path / "missing.jsonl"), cache_dir=cache)
    assert info.value.path == "json"

    bad = write(tmp_path / "bad.jsonl", jsonl(gsm(), {"question": 5, "answer": "#### 1"}))
    with pytest.raises(InputError, match="'question' must be a string") as info:
        load_hf_dataset("json", split="train", data_files=str(bad), cache_dir=cache, format="gsm8k")
    assert (info.value.path, info.value.line) == ("json:train", 2)


# ---------------------------------------------------------------------------------------------------------------------
# writing: every layout round-trips


def assert_round_trip(samples: list[Sample], out: Path, **kwargs: object) -> list[Sample]:
    assert write_benchmark(samples, out) == [out]
    again = load_benchmark(out, **kwargs)
    assert [without_file(s) for s in again] == [without_file(s) for s in samples]
    return again


def test_round_trip_gsm8k(tmp_path: Path, gsm8k_test: Path) -> None:
    samples = load_benchmark(gsm8k_test)
    out = tmp_path / "test.jsonl"
    assert_round_trip(samples, out)
    original = gsm8k_test.read_text(encoding="utf-8").splitlines()
    written = out.read_text(encoding="utf-8").splitlines()
    assert len(written) == len(original)
    for a, b in zip(original, written):
        assert list(json.loads(a).items()) == list(json.loads(b).items())  # same fields, same key order
    assert "’" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    assert not list(tmp_path.glob(".*.tmp")), "atomic write leaves no temp file"


def test_round_trip_mmlu_index_is_byte_identical(tmp_path: Path, mmlu_test: Path) -> None:
    source = mmlu_test / "anatomy_test.csv"
    out = tmp_path / "anatomy_test.csv"
    assert_round_trip(load_benchmark(source), out)
    assert out.read_bytes() == source.read_bytes()


def test_round_trip_mmlu_directory(tmp_path: Path, mmlu_test: Path, mmlu_items: list[Sample]) -> None:
    written = write_benchmark(mmlu_items, tmp_path)
    assert len(written) == 51 and sorted(p.name for p in written) == sorted(p.name for p in mmlu_test.glob("*.csv"))
    assert [without_file(s) for s in load_benchmark(tmp_path)] == [without_file(s) for s in mmlu_items]


@pytest.mark.parametrize("layout", ["mmlu-letter", "mmlu-hf", "mmlu-index-noheader", "mmlu-letter-header"])
def test_round_trip_mmlu_layouts(tmp_path: Path, mmlu_test: Path, layout: str) -> None:
    samples = load_benchmark(mmlu_test / "high_school_physics_test.csv")
    suffix = "jsonl" if layout == "mmlu-hf" else "csv"
    converted = tmp_path / "a" / f"high_school_physics_test.{suffix}"
    converted.parent.mkdir()
    write_benchmark(samples, converted, format=layout)
    loaded = load_benchmark(converted)
    assert {s.layout for s in loaded} == {layout}
    assert [mcq(s) for s in loaded] == [mcq(s) for s in samples]
    assert_round_trip(loaded, tmp_path / f"high_school_physics_test.{suffix}")


def test_round_trip_keeps_ids_and_extra_fields(tmp_path: Path) -> None:
    gsm_path = write(tmp_path / "in" / "g.jsonl", jsonl(gsm(id="a", note=[1, {"k": None}]), gsm(id=2, year=2024)))
    samples = assert_round_trip(load_benchmark(gsm_path), tmp_path / "g.jsonl")
    assert [s.id for s in samples] == ["a", "2"] and samples[0].extra == {"note": [1, {"k": None}]}

    hf_path = write(
        tmp_path / "in" / "h.jsonl",
        jsonl({"id": "x", "question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 3, "more": 1.5}),
    )
    assert assert_round_trip(load_benchmark(hf_path), tmp_path / "h.jsonl")[0].extra == {"more": 1.5}

    csv_path = write(tmp_path / "in" / "m.csv", csv_text([[*MMLU_HEADER, "id", "source"], [*MMLU_ROW, 3, "r1", "web"]]))
    (sample,) = assert_round_trip(load_benchmark(csv_path), tmp_path / "m.csv")
    assert (sample.id, sample.extra) == ("r1", {"source": "web"})


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_round_trip_generic_with_field_map(tmp_path: Path, suffix: str) -> None:
    fields = {"question": "prompt", "answer": "target", "choices": "options", "id": "uid", "solution": "why"}
    rows = [
        {"uid": "u1", "prompt": "Pick", "options": ["a", "b"], "target": 1, "why": "because", "tag": "t"},
        {"uid": "u2", "prompt": "Say, \"hi\"\nnow", "target": "hi", "tag": "t2"},
    ]
    path = tmp_path / "in" / f"items.{suffix}"
    if suffix == "jsonl":
        write(path, jsonl(*rows))
    else:
        columns = ["uid", "prompt", "options", "target", "why", "tag"]
        cells = [[json.dumps(r[c]) if c == "options" and c in r else r.get(c, "") for c in columns] for r in rows]
        write(path, csv_text([columns, *cells]))
    samples = load_benchmark(path, fields=fields)
    assert [s.answer for s in samples] == [1, "hi"] and samples[0].choices == ("a", "b")
    out = tmp_path / f"items.{suffix}"
    write_benchmark(samples, out)
    assert [without_file(s) for s in load_benchmark(out, fields=fields)] == [without_file(s) for s in samples]


def test_positional_ids_follow_the_output_file(tmp_path: Path) -> None:
    samples = load_benchmark(write(tmp_path / "in.jsonl", jsonl(gsm(), gsm("Other?"))))
    out = tmp_path / "renamed.jsonl"
    write_benchmark(samples[1:], out)
    assert json.loads(out.read_text(encoding="utf-8")) == gsm("Other?")  # no id field added
    assert load_benchmark(out)[0].id == "renamed:1"


def test_write_errors(tmp_path: Path, gsm8k_test: Path) -> None:
    samples = load_benchmark(gsm8k_test)[:2]
    with pytest.raises(InputError, match="does not fit the mmlu-index layout"):
        write_benchmark(samples, tmp_path / "x.csv", format="mmlu")
    with pytest.raises(InputError, match="Did you mean 'mmlu-letter'"):
        write_benchmark(samples, tmp_path / "x.csv", format="mmlu-lettr")
    with pytest.raises(InputError, match="no samples"):
        write_benchmark([], tmp_path / "x.jsonl")
    bare = Sample(id="b", benchmark="generic", question="q")
    with pytest.raises(InputError, match="no layout"):
        write_benchmark([bare], tmp_path / "x.jsonl")
    write_benchmark([bare], tmp_path / "x.jsonl", format="jsonl")
    assert load_benchmark(tmp_path / "x.jsonl")[0].id == "b"
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------------------------------------------------
# bad input: exactly InputError, with the file and 1-based line


def test_missing_field(tmp_path: Path) -> None:
    raises_input_error(write(tmp_path / "g.jsonl", jsonl(gsm(), {"question": "q"})), 2, "missing field 'answer'")


def test_question_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm(), gsm(), {"question": 5, "answer": "#### 5"}))
    raises_input_error(path, 3, "field 'question' must be a string, got integer")


def test_gsm8k_answer_without_final_line(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm(), {"question": "q", "answer": "no marker"}))
    raises_input_error(path, 2, "'#### N'")


def test_mmlu_answer_index_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", csv_text([MMLU_HEADER, [*MMLU_ROW, 3], [*MMLU_ROW, 7]]))
    raises_input_error(path, 2, "answer index 7 out of range")


def test_mmlu_bad_letter(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", csv_text([[*MMLU_ROW, "D"], [*MMLU_ROW, "B"], [*MMLU_ROW, "E"]]))
    raises_input_error(path, 3, "letter A-D, got 'E'")


def test_mmlu_hf_bad_records(tmp_path: Path) -> None:
    good = {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 0}
    path = write(tmp_path / "h.jsonl", jsonl(good, {**good, "choices": ["a", "b", "c"]}))
    raises_input_error(path, 2, "4 choices")
    path = write(tmp_path / "h.jsonl", jsonl(good, {**good, "choices": ["a", "b", "c", 4]}))
    raises_input_error(path, 2, "item 3 is integer")
    path = write(tmp_path / "h.jsonl", jsonl(good, {**good, "answer": True}))
    raises_input_error(path, 2, "got boolean")


def test_malformed_json(tmp_path: Path) -> None:
    raises_input_error(write(tmp_path / "g.jsonl", jsonl(gsm()) + '{"question": "a", \n'), 2, "invalid JSON")


def test_json_line_not_an_object(tmp_path: Path) -> None:
    raises_input_error(write(tmp_path / "g.jsonl", jsonl(gsm(), [1, 2])), 2, "expected a JSON object, got array")
    raises_input_error(write(tmp_path / "h.jsonl", "null\n"), 1, "got null")


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    raises_input_error(write(tmp_path / "e.jsonl", content), None, "no records")


def test_csv_with_header_only(tmp_path: Path) -> None:
    raises_input_error(write(tmp_path / "e.csv", ",".join(MMLU_HEADER) + "\n"), None, "no records")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm()).encode() + b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    raises_input_error(path, 2, "not valid UTF-8: byte 0xe9")
    # CSV errors count data rows (header excluded; a quoted multi-line field is part of one row)
    rows = csv_text([MMLU_HEADER, ["multi\nline", "a", "b", "c", "d", 0], [*MMLU_ROW, 1]]).encode()
    path = write(tmp_path / "m.csv", rows + b"caf\xe9,a,b,c,d,2\n")
    raises_input_error(path, 3, "UTF-8")
    raises_input_error(write(tmp_path / "h.csv", b"qu\xffestion,answer\nq,a\n"), None, "CSV header: not valid UTF-8")


def test_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", csv_text([MMLU_HEADER, [*MMLU_ROW, 0], ["q", "a", "b", 0]]))
    raises_input_error(path, 2, "expected 6 columns, got 4")
    path = write(tmp_path / "l.csv", csv_text([[*MMLU_ROW, "A"], [*MMLU_ROW, "A", "extra"]]))
    raises_input_error(path, 2, "expected 6 columns, got 7")


def test_malformed_csv_quoting(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", csv_text([MMLU_HEADER, [*MMLU_ROW, 0]]) + '"unterminated,a,b,c,d,0\n')
    raises_input_error(path, 2, "malformed CSV")


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm(id=1)) + "\n" + jsonl(gsm(id="1")))
    err = raises_input_error(path, 3, "duplicate id '1'")
    assert f"{path}:1" in err.message
    path = write(tmp_path / "m.csv", csv_text([[*MMLU_HEADER, "id"], [*MMLU_ROW, 0, "x"], [*MMLU_ROW, 1, "x"]]))
    raises_input_error(path, 2, "duplicate id 'x'")


def test_duplicate_ids_across_files_of_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(gsm(id="same")))
    write(tmp_path / "b.jsonl", jsonl(gsm(id="other"), gsm(id="same")))
    with pytest.raises(InputError) as info:
        load_benchmark(tmp_path)
    assert (info.value.path, info.value.line) == (str(tmp_path / "b.jsonl"), 2)


def test_lone_surrogate(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm()) + '{"question": "\\ud800", "answer": "#### 1"}\n')
    raises_input_error(path, 2, "surrogate")
    assert load_benchmark(write(tmp_path / "ok.jsonl", jsonl(gsm("\U0001f600"))))[0].question == "\U0001f600"


def test_ten_megabyte_lines(tmp_path: Path) -> None:
    big = "x" * 10_000_000
    path = write(tmp_path / "big.jsonl", jsonl(gsm(), gsm(big)))
    assert load_benchmark(path)[1].question == big
    path = write(tmp_path / "bad.jsonl", jsonl(gsm()) + '{"question": "' + big + '", "answer": "#### 1"\n')
    err = raises_input_error(path, 2, "invalid JSON")
    assert len(str(err)) < 300
    # a 10 MB answer of whitespace must not make the final-answer search quadratic
    path = write(tmp_path / "ws.jsonl", jsonl(gsm(), {"question": "q", "answer": "#### 1" + " " * 10_000_000 + "2"}))
    assert load_benchmark(path)[1].answer.startswith("1") and load_benchmark(path)[1].answer.endswith("2")
    path = write(tmp_path / "big.csv", csv_text([MMLU_HEADER, [big, "a", "b", "c", "d", 0]]))
    assert load_benchmark(path)[0].question == big


def test_missing_paths_and_unknown_extensions(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(InputError, match="no such file") as info:
        load_benchmark(tmp_path / "nope.jsonl")
    assert info.value.line is None
    with pytest.raises(InputError, match="subdirectories: dev, test"):
        load_benchmark(shared_data / "mmlu")
    with pytest.raises(InputError, match="extension '.txt'"):
        load_benchmark(write(tmp_path / "x.txt", jsonl(gsm())))
    assert load_benchmark(tmp_path / "x.txt", "gsm8k")[0].answer == "3"


# ---------------------------------------------------------------------------------------------------------------------
# accepted variations: BOM, CRLF, blank lines


def test_bom_and_crlf_jsonl(tmp_path: Path, gsm8k_test: Path) -> None:
    lines = gsm8k_test.read_text(encoding="utf-8").splitlines()[:5]
    path = write(tmp_path / "test.jsonl", "\ufeff" + "\r\n".join(lines) + "\r\n")
    samples = load_benchmark(path)
    assert [without_file(s) for s in samples] == [without_file(s) for s in load_benchmark(gsm8k_test)[:5]]
    assert detect_format(path) == "gsm8k"


def test_bom_and_crlf_csv(tmp_path: Path) -> None:
    rows = [MMLU_HEADER, ["two\r\nlines", "a", "b", "c", "d", 2], [*MMLU_ROW, 3]]
    text = csv_text(rows).replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    path = write(tmp_path / "bom_test.csv", "\ufeff" + text)
    first, second = load_benchmark(path)
    assert (first.question, first.answer, first.subject, first.layout) == ("two\r\nlines", 2, "bom", "mmlu-index")
    assert second.source.line == 2 and second.answer == 3


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", "\n" + jsonl(gsm()) + "   \n\n" + jsonl(gsm("Second?")))
    assert [(s.source.line, s.id) for s in load_benchmark(path)] == [(2, "g:2"), (5, "g:5")]


# ---------------------------------------------------------------------------------------------------------------------
# format detection and names


def test_detect_format(tmp_path: Path, gsm8k_test: Path, mmlu_test: Path) -> None:
    assert detect_format(gsm8k_test) == "gsm8k"
    assert detect_format(mmlu_test) == "mmlu"
    assert detect_format(mmlu_test / "anatomy_test.csv") == "mmlu"
    cases = {
        "letter.csv": csv_text([[*MMLU_ROW, "C"]]),
        "noheader.csv": csv_text([[*MMLU_ROW, 2]]),
        "hf.jsonl": jsonl({"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 1}),
        "plain.jsonl": jsonl({"question": "q", "answer": "a"}),
        "plain.csv": "question,answer\nq,a\n",
        "empty.jsonl": "",
    }
    expected = {
        "letter.csv": "mmlu",
        "noheader.csv": "mmlu",
        "hf.jsonl": "mmlu",
        "plain.jsonl": "jsonl",
        "plain.csv": "csv",
    }
    for name, content in cases.items():
        assert detect_format(write(tmp_path / name, content)) == expected.get(name, "jsonl"), name
    layouts = {name: load_benchmark(tmp_path / name)[0].layout for name in expected}
    assert layouts == {
        "letter.csv": "mmlu-letter",
        "noheader.csv": "mmlu-index-noheader",
        "hf.jsonl": "mmlu-hf",
        "plain.jsonl": "jsonl",
        "plain.csv": "csv",
    }
    with pytest.raises(InputError, match="different formats"):
        detect_format(tmp_path)


def test_unknown_format_suggests_a_name(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm()))
    with pytest.raises(InputError, match="Did you mean 'gsm8k'"):
        load_benchmark(path, format="gsm8")
    assert FORMATS.names() == ["csv", "gsm8k", "jsonl", "mmlu"]
    assert load_benchmark(path, format=" GSM8K ")[0].layout == "gsm8k"


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", jsonl(gsm()))
    (sample,) = load_benchmark(path, "jsonl")
    assert (sample.benchmark, sample.answer, sample.solution) == ("generic", gsm()["answer"], None)
    raises_input_error(write(tmp_path / "m.csv", "question,answer\nq,a\n"), 1, "expected 6 columns", format="mmlu")
