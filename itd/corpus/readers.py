"""Streaming corpus readers: JSONL (plain, .gz, .zst), plain text, parquet; files, directories and globs.

Nothing is loaded whole: documents are yielded one by one with an id (`file:line`) that evidence points to.
Large uncompressed files are split into byte-range shards (cut at line starts) so several processes can read
one file; each shard knows the line number it starts at, so ids are the same however the corpus is split.

Object-store and other remote corpora are named by fsspec URLs (`s3://bucket/shards/*.jsonl.zst`,
`gs://...`, `file:///...`, `memory://...`) when fsspec is installed (`pip install 'itd[remote]'`, plus the
protocol's own package such as s3fs or gcsfs). A remote file is one shard: splitting it at line starts would
need a sequential pass over it, i.e. downloading it twice.

One module of about 600 lines because every reader (JSONL, parquet, text, compressed, remote) shares the shard and
bad-line accounting that a verdict's "what was read" depends on.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
import stat
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Iterator

from itd.core.document import Document
from itd.core.errors import InputError, require
from itd.core.paths import check_input
from itd.core.urls import CORPUS_SUFFIXES, HF_PREFIX, expand_url, is_url, url_file_info, url_fs
from itd.corpus.layouts import AUTO, LAYOUTS, Layout, detect_layout, fields_layout, get_layout, join_texts

__all__ = [
    "Document", "Shard", "expand_paths", "plan_shards", "ShardReader", "iter_documents", "is_url", "url_file_info",
    "CORPUS_SUFFIXES", "resolve_layout", "HF_PREFIX", "file_kind", "ZstdFrames",
]

_READ_BLOCK = 1 << 24
try:  # optional: a faster JSON parser (`pip install orjson`)
    import orjson as _orjson
except ImportError:
    _orjson = None
_HF_DISK_MARKERS = ("state.json", "dataset_dict.json")  # a directory written by `Dataset.save_to_disk`


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of corpus work: a whole file, or a byte range [start, end) of an uncompressed line file."""

    path: str
    kind: str  # "jsonl", "txt", "parquet" or "hf" (a `datasets` dataset)
    compression: str | None  # None, "gz" or "zst"
    start: int = 0
    end: int | None = None
    first_line: int = 1
    size: int = 0  # bytes on disk covered by the shard, for progress


def _loads(line: bytes) -> Any:
    """One JSON value: orjson's parser where it is installed (about 3x faster), the standard library's for what
    orjson refuses and the standard library reads (NaN, lone surrogates, integers past 64 bits) and for the error
    message, so a record reads the same either way."""
    if _orjson is not None:
        with contextlib.suppress(ValueError):  # what orjson refuses goes on to the standard library
            return _orjson.loads(line)
    return json.loads(line)


def _open_binary(path: str) -> IO[bytes]:
    """A binary file object for a local path or an fsspec URL."""
    if is_url(path):
        fs, inner = url_fs(path)
        return fs.open(inner, "rb")
    return open(path, "rb")


def resolve_layout(layout: str = AUTO, text_field: str = "text") -> Layout | None:
    """The layout records are read with: the one `layout` names, the fields `text_field` names (when not the
    default "text"), or None to detect it per file from its first records."""
    custom = text_field.strip() != "text"
    if layout.strip().lower() != AUTO:
        if custom:
            raise InputError(f"--layout {layout} and --text-field {text_field} both say where the text is: give one")
        return get_layout(layout)
    return fields_layout(text_field) if custom else None


def is_hf_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` names a `datasets` dataset: `hf://NAME[:split]`, or a directory written by `save_to_disk`."""
    if isinstance(path, str) and path.startswith(HF_PREFIX):
        return True
    p = Path(path)
    return not is_url(path) and p.is_dir() and any((p / m).is_file() for m in _HF_DISK_MARKERS)


def file_kind(path: Path | PurePosixPath) -> tuple[str, str | None]:
    """The format ("jsonl", "parquet" or "txt") and compression ("gz", "zst" or None) a file's name says."""
    name = path.name.lower()
    compression = None
    for ext, comp in ((".gz", "gz"), (".zst", "zst")):
        if name.endswith(ext):
            name, compression = name[: -len(ext)], comp
    if name.endswith(".parquet"):
        return "parquet", compression
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", compression
    return "txt", compression


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path | str]:
    """Files named by `paths`: files as given, directories walked for corpus files, globs expanded. Local files
    come back as `Path`s, fsspec URLs (see the module docstring) as URL strings."""
    out: list[Path | str] = []
    for raw in paths:
        if is_hf_dataset(raw):  # read whole through `datasets`, one shard
            out.append(str(raw))
            continue
        if is_url(raw):
            out.extend(expand_url(str(raw)))
            continue
        p = Path(raw)
        if not os.path.lexists(p) and glob.has_magic(str(raw)):
            found = sorted(Path(f) for f in glob.glob(str(raw), recursive=True) if not Path(f).is_dir())
            if not found:
                raise InputError("glob matches no files", path=str(raw))
        elif stat.S_ISDIR(check_input(p).st_mode):
            found = sorted(f for f in p.rglob("*") if f.name.lower().endswith(CORPUS_SUFFIXES) and not f.is_dir())
            if not found:
                raise InputError("directory holds no corpus files (" + ", ".join(CORPUS_SUFFIXES) + ")", path=str(p))
        else:
            found = [p]
        for f in found:  # a FIFO, device, symlink loop or unreadable file among them is an error, not skipped
            check_input(f, allow_dir=False)
        out.extend(found)
    return out


def plan_shards(paths: Iterable[str | os.PathLike], shard_bytes: int | None = None) -> list[Shard]:
    """Split the corpus into shards. With `shard_bytes`, uncompressed line files larger than that are cut into
    byte ranges at line starts (one sequential pass counts lines so every shard knows its first line)."""
    shards: list[Shard] = []
    for path in expand_paths(paths):
        if is_hf_dataset(path):
            shards.append(Shard(str(path), "hf", None))
            continue
        if isinstance(path, str):  # a URL: one shard per file
            fs, inner = url_fs(path)
            kind, comp = file_kind(PurePosixPath(inner))
            try:
                size = int(fs.size(inner) or 0)
            except OSError as exc:
                raise InputError(f"cannot read corpus file: {exc}", path=path) from None
            shards.append(Shard(path, kind, comp, size=size))
            continue
        kind, comp = file_kind(path)
        size = path.stat().st_size
        if not shard_bytes or comp or kind == "parquet" or size <= shard_bytes:
            shards.append(Shard(str(path), kind, comp, size=size))
            continue
        with open(path, "rb") as f:
            start, line = 0, 1
            while start < size:
                # count newlines up to the next cut, then extend the cut to the end of its line
                f.seek(start)
                data = f.read(shard_bytes)
                end = start + len(data)
                if end < size:
                    rest = f.readline()
                    data += rest
                    end += len(rest)
                shards.append(Shard(str(path), kind, None, start, end, line, end - start))
                line += data.count(b"\n")
                start = end
    return shards


_KEEP_SKIPPED = 20
_LAYOUT_PROBE = 1000  # records of a shard that all lack the text field: the layout is wrong, not the lines
_ZSTD_CHUNK = 1 << 16  # compressed bytes fed to the zstd decompressor at a time (bounds the output of one feed)


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst stream, frame after frame, that raises `EOFError` when the input ends
    inside a frame (zstandard's `stream_reader` ends there silently, so a cut file would read as a short one).
    `compressed` counts the compressed bytes consumed, for error messages."""

    def __init__(self, raw: IO[bytes], zstd: Any):
        self._raw = raw
        self._new = zstd.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._in_frame = False  # bytes of a frame were fed and its end was not reached yet
        self._out = memoryview(b"")
        self.compressed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._raw.read(_ZSTD_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame (the file is truncated)")
                if not self.compressed:
                    raise EOFError("the file is empty: a zstd stream has at least a frame header (truncated?)")
                return 0
            self.compressed += len(chunk)
            self._out = memoryview(self._feed(chunk))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _feed(self, data: bytes) -> bytes:
        """Decompress `data`, starting a new decompressor at every frame end (concatenated frames)."""
        out = []
        while data:
            self._in_frame = True
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._new()
            self._in_frame = False
        return b"".join(out)


class ShardReader:
    """Iterates the documents of one shard. `consumed` is the number of on-disk bytes read so far.

    Records are read through a layout (`itd.corpus.layouts`): the one `layout` names, the fields `text_field` names,
    or, by default, the first registered layout that one of the shard's first records fits; `layout_used` says
    which, and `field_counts` how many records each field gave text.

    A malformed line raises `InputError`; with `skip_bad=True` it is skipped instead, counted in `n_skipped`,
    and its error kept in `skipped` (the first `_KEEP_SKIPPED`), so one bad line in a huge corpus does not
    throw away a long scan. A record with none of its layout's fields is a malformed line. More than
    `max_skipped` skipped lines (None: no limit here) raise `InputError`, and so do every one of the shard's
    first `_LAYOUT_PROBE` records lacking the layout's fields (or fitting no layout): that is the corpus's
    layout, not bad lines. `n_documents` counts the documents yielded; a corrupt or truncated compressed stream
    or parquet file raises `InputError` naming the file, the line or row reached and, for compressed files,
    how many compressed bytes had been consumed.
    """

    def __init__(self, shard: Shard, text_field: str = "text", skip_bad: bool = False, max_skipped: int | None = None,
                 layout: str = AUTO):
        self.shard = shard
        self.text_field = text_field
        self.skip_bad = skip_bad
        self.max_skipped = max_skipped
        self.consumed = 0
        self.n_documents = 0
        self.n_skipped = 0
        self.n_missing_field = 0  # records skipped while no record had the layout's fields
        self.skipped: list[str] = []
        self.field_counts: Counter[str] = Counter()  # records that gave text, per field (chat turns: per role)
        self.layout_counts: Counter[str] = Counter()  # documents read per layout
        self._line = shard.first_line  # the line (or row) being read, for errors
        self._forced = resolve_layout(layout, text_field)
        self._layout = self._forced
        self.last_layout: Layout | None = None  # the layout of the last record read
        self._single = None if self._layout is None else self._layout.single_field

    @property
    def layout_used(self) -> str | None:
        """The name of the layout the shard was (first) read with (None before a record fitted one)."""
        if self.shard.kind == "txt":
            return "paragraphs"
        return None if self._layout is None else self._layout.name

    def documents_per_layout(self) -> dict[str, int]:
        """Documents read per layout (most files: one layout)."""
        if self.shard.kind == "txt" or (self.layout_used and not self.layout_counts and self.n_documents):
            return {self.layout_used: self.n_documents}  # paragraphs, or parquet's one text column
        return dict(self.layout_counts)

    def document_of(self, rec: dict, line: int) -> Document | None:
        """The document of record `rec` (line or row `line`), or None (after reporting it, as a bad line or a
        layout error) when it holds none of the layout's texts; `last_layout` is then the layout it was read in."""
        return self._document(rec, line)

    def _document(self, rec: dict, line: int) -> Document | None:
        """The document of record `rec`, or None (after reporting it) when it holds none of the layout's texts."""
        layout = self._layout
        if layout is None:
            layout = detect_layout(rec)
            if layout is None:
                self._no_layout(rec, line)
                return None
            self._layout = layout
            self._single = layout.single_field
        if self._single is not None:  # the light path: one plain text field
            text = rec.get(self._single)
            if isinstance(text, str):
                self.field_counts[self._single] += bool(text)
                self.layout_counts[layout.name] += 1
                self.last_layout = layout
                return Document(self.shard.path, line, text)
        texts = layout.texts(rec)
        if not texts and self._forced is None:  # a file of mixed layouts: this record may fit another one
            other = detect_layout(rec)
            if other is not None:
                layout, texts = other, other.texts(rec)
        if not texts:
            self._missing_field(rec, line)
            return None
        self.layout_counts[layout.name] += 1
        self.last_layout = layout
        for label in dict.fromkeys(label for label, _, text in texts if text):  # records, not turns; in order
            self.field_counts[label] += 1
        if len(texts) == 1:
            return Document(self.shard.path, line, texts[0][2])
        text, segments = join_texts(texts)
        return Document(self.shard.path, line, text, segments=segments)

    def _no_layout(self, rec: dict, line: int) -> None:
        """A record that fits no layout while none has yet: a layout error (after `_LAYOUT_PROBE` such records
        when skipping bad lines, so a few stray lines at the top do not stop a scan)."""
        fields = ", ".join(list(rec)[:8]) or "none"
        self.n_missing_field += 1
        message = (f"the record fits no known corpus layout (tried: {', '.join(LAYOUTS)}); fields here: {fields}. "
                   "Set --text-field to the field(s) that hold the text (e.g. body, or messages[*].content) "
                   "or --layout")
        if not self.skip_bad or self.n_missing_field >= _LAYOUT_PROBE:
            raise InputError(f"no record read so far fits a known corpus layout ({self.n_missing_field:,} read; tried: "
                             f"{', '.join(LAYOUTS)}); fields here: {fields}. This is the corpus's layout, not bad "
                             "lines: set --text-field to the field(s) that hold the text (e.g. body, or "
                             "messages[*].content) or --layout", path=self.shard.path, line=line)
        self._bad(message, line)

    def _bad(self, message: str, line: int) -> None:
        """Raise the error of a malformed line, or record it and go on when skipping bad lines."""
        error = InputError(message, path=self.shard.path, line=line)
        if not self.skip_bad:
            error.message += " (or pass --skip-bad-lines to skip such lines)"
            raise error
        self.n_skipped += 1
        if len(self.skipped) < _KEEP_SKIPPED:
            self.skipped.append(str(error))
        if self.max_skipped is not None and self.n_skipped > self.max_skipped:
            raise InputError(
                f"this file alone has more than {self.max_skipped:,} malformed line(s), the most --max-bad-lines "
                f"allows; the first: {self.skipped[0]}", path=self.shard.path, line=line,
            )

    def _missing_field(self, rec: dict, line: int) -> None:
        """A record without the layout's texts: a bad line, or, when no record of the shard had them and the
        layout was forced, a layout error."""
        layout = self._layout
        field = layout.single_field
        fields = ", ".join(list(rec)[:8]) or "none"
        if field is not None:
            what = "missing" if field not in rec else f"not a string ({type(rec[field]).__name__})"
            name, present = f"text field {field!r}", field in rec
        else:
            what = "missing"
            name = f"every text field of the {layout.name} layout ({layout.field_names})"
            present = any(spec.top in rec for spec in layout.fields)
        if self.n_documents:  # other records have it: this one is malformed
            self._bad(f"{name} is {what}; fields here: {fields}", line)
            return
        if present or self._forced is None:  # a detected layout: the record fitted it, so it is malformed
            self._bad(f"{name} is {what}; fields here: {fields} (set --text-field)", line)
            return
        self.n_missing_field += 1
        if not self.skip_bad or self.n_missing_field >= _LAYOUT_PROBE:
            raise InputError(
                f"no record read so far has {name} ({self.n_missing_field:,} read); fields here: "
                f"{fields}. This is the corpus's layout, not bad lines: set --text-field to the field(s) that hold "
                "the text, or --layout", path=self.shard.path, line=line,
            )
        self._bad(f"{name} is missing; fields here: {fields} (set --text-field)", line)

    def __iter__(self) -> Iterator[Document]:
        if self.shard.kind == "parquet":
            yield from self._parquet()
        elif self.shard.kind == "hf":
            yield from self._hf()
        else:
            yield from self._lines()

    def _lines(self) -> Iterator[Document]:
        s = self.shard
        try:
            raw = _open_binary(s.path)
        except OSError as exc:
            raise InputError(f"cannot read corpus file: {exc}", path=s.path) from None
        corrupt: tuple[type[BaseException], ...] = (OSError, EOFError)
        zst = None
        with raw:
            try:
                if s.compression == "gz":
                    corrupt += (zlib.error,)
                    stream = gzip.GzipFile(fileobj=raw)
                elif s.compression == "zst":
                    zstd = require("zstandard", "core", "Reading .zst corpora")
                    corrupt += (zstd.ZstdError,)
                    zst = ZstdFrames(raw, zstd)
                    stream = io.BufferedReader(zst, _READ_BLOCK)
                else:
                    raw.seek(s.start)
                    stream = raw
                parse = self._json_docs if s.kind == "jsonl" else self._text_docs
                for doc in parse(self._raw_lines(stream, raw)):
                    self.n_documents += 1
                    yield doc
                if s.compression == "gz" and not raw.tell():
                    raise EOFError("the file is empty: a gzip stream has at least a header (truncated?)")
            except corrupt as exc:
                if not s.compression:
                    raise InputError(f"cannot read corpus file: {exc}", path=s.path, line=self._line) from None
                at = zst.compressed if zst is not None else _tell(raw)
                where = f" within the first {at:,} compressed bytes" if at else ""
                raise InputError(
                    f"corrupt or truncated .{s.compression} data{where}, after {self._line - s.first_line:,} "
                    f"complete line(s): {exc}", path=s.path, line=self._line,
                ) from None
        self.consumed = s.size

    def _raw_lines(self, stream, raw) -> Iterator[tuple[int, bytes]]:
        s = self.shard
        limit = None if s.end is None else s.end - s.start
        pos = 0
        line_no = s.first_line
        for line in stream:
            if limit is not None and pos >= limit:
                break
            pos += len(line)
            yield line_no, line
            line_no += 1
            self._line = line_no
            if s.compression is None:  # exact to the line: a slow detector's batch moves the progress bar
                self.consumed = pos
            elif not line_no & 255:
                self.consumed = raw.tell()

    def _json_docs(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[Document]:
        for line_no, line in lines:
            if not line.strip():
                continue
            if line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            try:
                rec = _loads(line)
            except ValueError as exc:
                self._bad(f"invalid JSON ({exc})", line_no)
                continue
            if not isinstance(rec, dict):
                self._bad("a JSONL corpus line must be an object", line_no)
                continue
            doc = self._document(rec, line_no)
            if doc is not None:
                yield doc

    def _text_docs(self, lines: Iterator[tuple[int, bytes]]) -> Iterator[Document]:
        """Plain text: one document per paragraph (blank-line separated); id is its first line."""
        path = self.shard.path
        buf: list[str] = []
        first = 0
        for line_no, line in lines:
            text = line.decode("utf-8", "replace")
            if text.strip():
                if not buf:
                    first = line_no
                buf.append(text)
            elif buf:
                yield Document(path, first, "".join(buf))
                buf = []
        if buf:
            yield Document(path, first, "".join(buf))

    def _parquet(self) -> Iterator[Document]:
        pq = require("pyarrow.parquet", "parquet", "Reading parquet corpora")
        path = self.shard.path
        try:
            source = _open_binary(path)
        except OSError as exc:
            raise InputError(f"cannot read parquet file: {exc}", path=path) from None
        with source:
            yield from self._parquet_rows(pq, path, source)

    def _parquet_rows(self, pq: Any, path: str, source: IO[bytes]) -> Iterator[Document]:
        try:
            pf = pq.ParquetFile(source, page_checksum_verification=True)  # pages written with a CRC are checked
        except Exception as exc:  # pyarrow raises its own error types
            raise InputError(f"cannot read parquet file: {exc}", path=path) from None
        schema = pf.schema_arrow
        pa = require("pyarrow", "parquet", "Reading parquet corpora")
        layout = self._layout or detect_layout({name: True for name in schema.names})  # by its columns
        if layout is None:
            raise InputError(
                f"parquet file has no column 'text' and fits no known corpus layout (tried: {', '.join(LAYOUTS)}); "
                f"columns: {', '.join(schema.names)} (set --text-field or --layout)", path=path,
            )
        self._layout = layout
        columns = list(dict.fromkeys(spec.top for spec in layout.fields if spec.top in schema.names))
        if not columns:
            raise InputError(f"parquet file has no column {layout.fields[0].top!r}"
                             + ("" if layout.single_field else f" nor any other of the {layout.name} layout ({layout.field_names})")
                             + f"; columns: {', '.join(schema.names)} (set --text-field)", path=path)
        field = layout.single_field
        if field is not None:
            column_type = schema.field(field).type
            if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
                raise InputError(f"parquet column {field!r} holds {column_type}, not text (set --text-field)", path=path)
        row = 1
        total_rows = max(1, pf.metadata.num_rows)
        try:
            for batch in pf.iter_batches(columns=columns, batch_size=4096):
                if field is not None:  # one text column: no records to build
                    for text in batch.column(0).to_pylist():
                        if text is None:
                            self._bad(f"text column {field!r} is null in this row", row)
                        else:
                            self.n_documents += 1
                            self.field_counts[field] += bool(text)
                            yield Document(path, row, text)
                        row += 1
                else:
                    for rec in batch.to_pylist():
                        doc = self._document(rec, row)
                        if doc is not None:
                            self.n_documents += 1
                            yield doc
                        row += 1
                self.consumed = int(self.shard.size * (row - 1) / total_rows)
        except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: pyarrow's ArrowInvalid, bad UTF-8
            raise InputError(
                f"corrupt or truncated parquet data after {row - 1:,} of {pf.metadata.num_rows:,} row(s): {exc}",
                path=path, line=row,
            ) from None
        if row - 1 != pf.metadata.num_rows:
            raise InputError(f"parquet file yielded {row - 1:,} rows, its footer says {pf.metadata.num_rows:,}", path=path)


    def _hf(self) -> Iterator[Document]:
        """Rows of a `datasets` dataset (`hf://NAME[:split]`, or a `save_to_disk` directory), read like JSONL."""
        path = self.shard.path
        dataset = load_hf_corpus(path)
        self.consumed = 0
        for row, rec in enumerate(dataset, 1):
            self._line = row
            doc = self._document(rec, row)
            if doc is not None:
                self.n_documents += 1
                yield doc


def load_hf_corpus(path: str) -> Any:
    """The `datasets.Dataset` that `path` names: `hf://NAME[:split]` (`load_dataset(NAME, split=...)`, a hub name
    or a local directory or file), or a directory written by `save_to_disk`. A dataset with several splits needs
    the split named."""
    datasets = require("datasets", "hf", "Reading Hugging Face datasets corpora")
    name, split = path, None
    if path.startswith(HF_PREFIX):
        name = path[len(HF_PREFIX):]
        head, sep, tail = name.rpartition(":")
        if sep and head and tail and "/" not in tail and "\\" not in tail:
            name, split = head, tail
    if not name:
        raise InputError("name a dataset: hf://NAME[:split]", path=path)
    try:
        if Path(name).is_dir() and any((Path(name) / m).is_file() for m in _HF_DISK_MARKERS):
            dataset = datasets.load_from_disk(name)
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many kinds: no such dataset or split, network, unreadable files
        raise InputError(f"cannot load the dataset: {exc}", path=path) from None
    if isinstance(dataset, dict):  # a DatasetDict
        if split is not None:
            if split not in dataset:
                raise InputError(f"no split {split!r}; splits: {', '.join(map(str, dataset))}", path=path)
            dataset = dataset[split]
        elif len(dataset) == 1:
            dataset = next(iter(dataset.values()))
        else:
            raise InputError(f"choose a split (hf://NAME:SPLIT): {', '.join(map(str, dataset))}", path=path)
    return dataset


def _tell(f: IO[bytes]) -> int | None:
    """Position of `f`, or None when it cannot say."""
    try:
        return f.tell()
    except (OSError, ValueError):
        return None


def iter_documents(paths: Iterable[str | os.PathLike], text_field: str = "text", layout: str = AUTO) -> Iterator[Document]:
    """Every document of a corpus, in order, streamed."""
    for shard in plan_shards(paths):
        yield from ShardReader(shard, text_field, layout=layout)
