"""A decontaminated copy of a training corpus (`itd scan --write-clean-corpus DIR`).

From the matches of a scan (`itd.corpus.matches`), every corpus file is written again under DIR, at the same relative
path, in the same layout and compression: a matched document is dropped (`drop-document`), or its matched
character spans are cut out of the record's text fields (`cut-span`; a record whose match falls in a value that
cannot be cut, such as an MCQ answer index, is dropped). Lines the scan skipped as malformed are kept as they
are and counted. The directory is written whole into a temporary directory beside DIR and renamed into place, so
DIR is either the complete clean corpus or absent; its manifest goes beside it (`DIR.manifest.json`).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from itd.core.errors import InputError, require
from itd.corpus.layouts import AUTO, cut_spans
from itd.corpus.readers import Shard, ShardReader, ZstdFrames, expand_paths, file_kind, is_hf_dataset, is_url

__all__ = ["CLEAN_POLICIES", "write_clean_corpus"]

CLEAN_POLICIES = ("drop-document", "cut-span")


def _spans_by_doc(matches: Iterable[dict[str, Any]]) -> dict[str, dict[int, list[tuple[int, int]]]]:
    out: dict[str, dict[int, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for m in matches:
        out[m["file"]][int(m["line"])].append((int(m["start"]), int(m["end"])))
    return out


def _relative_names(files: list[Path]) -> list[Path]:
    """Each file's path relative to the deepest directory holding them all."""
    parents = [str(f.resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    return [f.resolve().relative_to(root) for f in files]


def write_clean_corpus(
    corpus: Iterable[str | os.PathLike],
    matches: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    policy: str = "drop-document",
    *,
    text_field: str = "text",
    layout: str = AUTO,
) -> dict[str, Any]:
    """Write `corpus` without the documents (or spans) of `matches` into directory `out`; returns per-file
    counts. `out` must not exist yet (or be an empty directory)."""
    if policy not in CLEAN_POLICIES:
        raise InputError(f"unknown clean policy {policy!r}; choose one of {', '.join(CLEAN_POLICIES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("the clean corpus directory exists and is not empty: name a new one", path=str(out))
    files = expand_paths(corpus)
    for f in files:
        if isinstance(f, str) or is_url(f) or is_hf_dataset(f):
            raise InputError("a clean corpus is written for local files only (not URLs or `datasets` corpora)", path=str(f))
    spans = _spans_by_doc(matches)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        per_file = []
        for src, rel in zip(files, _relative_names(files)):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            kind, comp = file_kind(src)
            counts = {"file": str(src), "out": str(rel), "documents": 0, "dropped": 0, "cut": 0, "kept_unread": 0}
            doc_spans = spans.get(str(src), {})
            reader = ShardReader(Shard(str(src), kind, comp), text_field, skip_bad=True, layout=layout)
            if kind == "parquet":
                _clean_parquet(src, dest, reader, doc_spans, policy, counts)
            else:
                _clean_lines(src, dest, kind, comp, reader, doc_spans, policy, counts)
            per_file.append(counts)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    totals = {k: sum(f[k] for f in per_file) for k in ("documents", "dropped", "cut", "kept_unread")}
    return {"policy": policy, **totals, "files": per_file}


def _read_lines(src: Path, comp: str | None) -> Iterator[bytes]:
    raw = open(src, "rb")
    with raw:
        if comp == "gz":
            stream: Any = gzip.GzipFile(fileobj=raw)
        elif comp == "zst":
            stream = io.BufferedReader(ZstdFrames(raw, require("zstandard", "core", "Reading .zst corpora")))
        else:
            stream = raw
        yield from stream


class _Writer:
    """A binary file written with the compression of its source."""

    def __init__(self, dest: Path, comp: str | None):
        self._raw = open(dest, "wb")
        if comp == "gz":
            self._f: Any = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        elif comp == "zst":
            zstd = require("zstandard", "core", "Writing .zst corpora")
            self._f = zstd.ZstdCompressor(write_checksum=True).stream_writer(self._raw, closefd=False)
        else:
            self._f = self._raw

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()


def _clean_lines(src, dest, kind, comp, reader: ShardReader, doc_spans, policy, counts) -> None:
    writer = _Writer(dest, comp)
    try:
        if kind == "jsonl":
            _clean_jsonl(_read_lines(src, comp), writer, reader, doc_spans, policy, counts)
        else:
            _clean_paragraphs(_read_lines(src, comp), writer, doc_spans, policy, counts)
    finally:
        writer.close()


def _record_fate(rec: dict | None, number: int, reader: ShardReader, doc_spans, policy: str, counts) -> str:
    """What becomes of record `number` (None: not a record): "kept" as it is (unmatched, or unread by the scan
    too), "cut" (its matched spans cut out of `rec`, in place) or "dropped"; counted in `counts`."""
    skipped = reader.n_skipped
    if rec is None or reader.document_of(rec, number) is None or reader.n_skipped > skipped:
        counts["kept_unread"] += 1  # the scan skipped it too: kept, not judged
        return "kept"
    counts["documents"] += 1
    spans = doc_spans.get(number)
    if not spans:
        return "kept"
    if policy == "cut-span" and reader.last_layout.cut(rec, spans):
        counts["cut"] += 1
        return "cut"
    counts["dropped"] += 1
    return "dropped"


def _clean_jsonl(lines, writer, reader: ShardReader, doc_spans, policy, counts) -> None:
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            writer.write(line)
            continue
        try:
            rec = json.loads(line.removeprefix(b"\xef\xbb\xbf") if line_no == 1 else line)
        except ValueError:
            rec = None
        fate = _record_fate(rec if isinstance(rec, dict) else None, line_no, reader, doc_spans, policy, counts)
        if fate == "cut":
            writer.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
        elif fate == "kept":
            writer.write(line)


def _clean_paragraphs(lines, writer, doc_spans, policy, counts) -> None:
    """Plain text: a document is a paragraph, named by its first line (as `ShardReader` reads it)."""
    buf: list[bytes] = []
    first = 0

    def flush() -> None:
        counts["documents"] += 1
        spans = doc_spans.get(first)
        if not spans:
            writer.write(b"".join(buf))
        elif policy == "cut-span":
            counts["cut"] += 1
            text = b"".join(buf).decode("utf-8", "replace")
            kept = cut_spans(text, spans)
            writer.write(kept.encode() + (b"" if kept.endswith("\n") else b"\n"))
        else:
            counts["dropped"] += 1

    for line_no, line in enumerate(lines, 1):
        if line.strip():
            if not buf:
                first = line_no
            buf.append(line)
            continue
        if buf:
            flush()
            buf = []
        writer.write(line)
    if buf:
        flush()


def _clean_parquet(src, dest, reader: ShardReader, doc_spans, policy, counts) -> None:
    pa = require("pyarrow", "parquet", "Writing parquet corpora")
    pq = require("pyarrow.parquet", "parquet", "Writing parquet corpora")
    source = pq.ParquetFile(src)
    row_no = 0
    with pq.ParquetWriter(dest, source.schema_arrow) as writer:
        for batch in source.iter_batches(batch_size=4096):
            kept = []
            for rec in batch.to_pylist():
                row_no += 1
                if _record_fate(rec, row_no, reader, doc_spans, policy, counts) != "dropped":
                    kept.append(rec)  # as it was, or with its matched spans cut out
            writer.write_table(pa.Table.from_pylist(kept, schema=source.schema_arrow))
