"""Corpus scan: stream a corpus past the fitted detectors, in one process, a local process pool or on Ray.

`scan(samples, corpus, config)` returns a `ScanReport` with one labelled result per sample. Work is split into
shards (files, or byte ranges of large uncompressed files); every shard is read, normalised and tokenised once,
in batches, and every detector sees each batch. Partial results merge in any order, so the report does not
depend on the number of workers or on the engine (`itd.corpus.engines`: `local` or `ray`) that ran the shards.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.io import redact_text
from itd.core.progress import Progress, StageProgress
from itd.core.registry import config_from_table
from itd.core.text import normalize, tokenize, window_spans
from itd.corpus.engines import ENGINES, make_engine
from itd.corpus.matches import MatchSpool
from itd.corpus.readers import Document, Shard, ShardReader, plan_shards, resolve_layout
from itd.corpus.report import SampleResult, ScanReport, label_of
from itd.detectors import DETECTORS
from itd.detectors.base import CorpusDetector, DocBatch, Evidence

__all__ = [
    "ScanConfig", "scan", "scan_shard", "build_detectors", "default_detectors", "resolve_detector_options", "make_batch", "batches", "Progress", "FitProgress", "ShardTally",
    "FileTally", "scan_many", "check_max_bad_lines", "reader_skip_limit", "DEFAULT_MAX_BAD_LINES",
]

FitProgress = StageProgress
"""`fit_progress(detector, done, total)` while a detector is fitted (the scan's `progress` counts bytes)."""

DEFAULT_MAX_BAD_LINES = 0.01  # with skip_bad_lines: 1% of the lines read may be skipped


def check_max_bad_lines(value: float) -> float:
    """`value` if it is a valid bad-line limit (a share in [0, 1), or a whole number of lines >= 1)."""
    if not value >= 0 or value == float("inf"):
        raise InputError(f"max_bad_lines must be >= 0, got {value}")
    if value >= 1 and value != int(value):
        raise InputError(f"max_bad_lines of 1 or more is a number of lines and must be whole, got {value}")
    return value


def reader_skip_limit(max_bad_lines: float) -> int | None:
    """The bad-line limit as a count when it is one (then a reader can stop as soon as it is passed), else None."""
    return int(max_bad_lines) if max_bad_lines >= 1 or max_bad_lines == 0 else None


@dataclass(slots=True)
class ScanConfig:
    """Settings of a corpus scan: the `detectors` to run (default: `default_detectors()`), how the corpus is read (`text_field`, `layout`,
    `skip_bad_lines`, `max_bad_lines`, batch and shard sizes), where (`engine`, `workers`, `ray_address`) and
    what is kept (`evidence_limit` per item). Each detector's own settings are its config in
    `detector_options`, keyed by detector name: the detector's `Config` dataclass (e.g.
    `itd.detectors.semantic.SemanticConfig`) or a mapping of its fields (checked, with a did-you-mean for a
    wrong key); a detector without an entry runs with its defaults. The CLI's options and their `ITD_*`
    variables map onto these fields."""

    detectors: tuple[str, ...] = field(default_factory=lambda: default_detectors())
    text_field: str = "text"  # one or more comma-separated fields or paths (`messages[*].content`)
    layout: str = "auto"  # a record layout of `itd.corpus.layouts` ("auto": detected per file)
    workers: int = 1
    batch_chars: int = 1 << 20  # characters per batch; a longer document is read in windows of this size
    shard_bytes: int = 32 << 20
    evidence_limit: int = 5
    skip_bad_lines: bool = False
    max_bad_lines: float = DEFAULT_MAX_BAD_LINES  # with skip_bad_lines: a share of the lines (< 1) or a count
    engine: str = "local"  # "local" (process pool) or "ray"
    ray_address: str | None = None  # ray.init address for engine "ray"; None starts a local Ray instance
    detector_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.detectors = tuple(d.strip().lower() for d in self.detectors if d.strip())
        if not self.detectors:
            raise InputError("at least one detector is needed")
        for d in self.detectors:
            DETECTORS.get(d)  # raises with a did-you-mean
        if self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.batch_chars < 1024:
            raise InputError("batch_chars must be >= 1024")
        if self.shard_bytes < 1 << 16:
            raise InputError("shard_bytes must be >= 65536")
        check_max_bad_lines(self.max_bad_lines)
        resolve_layout(self.layout, self.text_field)  # an unknown layout or a bad field path fails here
        self.engine = self.engine.strip().lower()
        ENGINES.get(self.engine)  # raises with a did-you-mean
        if self.ray_address is not None:
            self.ray_address = self.ray_address.strip() or None
        if self.ray_address is not None and self.engine != "ray":
            raise InputError(f"a Ray address ({self.ray_address!r}) needs the Ray engine (engine='ray', --engine ray)")
        self.detector_options = resolve_detector_options(self.detector_options)

    def detector_config(self, name: str) -> Any:
        """The config detector `name` runs with: its entry in `detector_options`, else its defaults."""
        return self.detector_options.get(name) or DETECTORS.get(name).Config()

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, with the config of every detector that runs (defaults included)."""
        data = asdict(self)
        data["detector_options"] = {name: asdict(self.detector_config(name)) for name in self.detectors}
        return data


def default_detectors() -> tuple[str, ...]:
    """The scan's default detectors, in the CLI, the library and the pipeline alike: exact n-grams and MinHash
    near-duplicates, or n-grams alone when the `minhash` extra (datasketch) is not installed, as in the light
    pre-commit environment."""
    import importlib.util

    return ("ngram", "minhash") if importlib.util.find_spec("datasketch") is not None else ("ngram",)


def resolve_detector_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Each detector's config, keyed by the detector's registered name, from `options`: per detector name its
    `Config`, or a mapping of that config's fields (InputError for an unknown detector or field, with a
    did-you-mean, or for a bad value)."""
    out: dict[str, Any] = {}
    for name, value in dict(options).items():
        detector = DETECTORS.get(name)
        if not isinstance(value, (detector.Config, Mapping)):
            raise InputError(f"the {detector.name} detector is configured by a {detector.Config.__name__} or a "
                             f"mapping of its fields, got {type(value).__name__}")
        out[detector.name] = value if isinstance(value, detector.Config) else config_from_table(
            detector.Config, value, f"detector_options[{detector.name!r}]")
    return out


def build_detectors(config: ScanConfig) -> list[CorpusDetector]:
    """Instantiate the configured detectors (not yet fitted), each from its config through the registry."""
    return [DETECTORS.create(name, config.detector_config(name), evidence_limit=config.evidence_limit,
                             workers=config.workers) for name in config.detectors]


def make_batch(docs: list[Document]) -> DocBatch:
    """Normalise and tokenise a list of documents once, for every detector."""
    normalized = [normalize(d.text) for d in docs]
    return DocBatch(docs, normalized, tokenize(normalized, normalized=True))


def batches(docs: Iterable[Document], batch_chars: int, overlap_tokens: int = 0) -> Iterable[list[Document]]:
    """Group documents into lists of about `batch_chars` characters.

    A document longer than `batch_chars` is read in windows of about that size (`itd.core.text.window_spans`), each a
    `Document` with its `offset` in the whole one, that overlap by `overlap_tokens` tokens: a match spanning at
    most that many tokens lies whole in one window, and memory does not grow with a document's length. Only the
    first window of a document has `offset == 0`, which is how documents are counted.
    """
    batch: list[Document] = []
    size = 0
    for d in docs:
        if len(d.text) > batch_chars:
            pieces: Iterable[Document] = (
                d.window(a, b)
                for a, b in window_spans(d.text, batch_chars, overlap_tokens)
            )
        else:
            pieces = (d,)
        for piece in pieces:
            batch.append(piece)
            size += len(piece.text)
            if size >= batch_chars:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


@dataclass(slots=True)
class FileTally:
    """What reading one corpus file came to: its bytes, documents, skipped lines, how many of those lacked the
    text field while no record of the file had it (a layout problem), the first skipped line's error, the
    layout(s) its records were read in (documents per layout) and how many records each field gave text."""

    bytes: int = 0
    documents: int = 0
    skipped: int = 0
    missing_field: int = 0
    first_error: str | None = None
    layouts: dict[str, int] = field(default_factory=dict)
    fields: dict[str, int] = field(default_factory=dict)

    def add(self, other: "FileTally") -> None:
        self.bytes += other.bytes
        self.documents += other.documents
        self.skipped += other.skipped
        self.missing_field += other.missing_field
        self.first_error = self.first_error or other.first_error
        for name, count in other.layouts.items():
            self.layouts[name] = self.layouts.get(name, 0) + count
        for name, count in other.fields.items():
            self.fields[name] = self.fields.get(name, 0) + count


_KEEP_ERRORS = 20
_KEEP_FILES = 100  # files listed one by one in the stats


@dataclass(slots=True)
class ShardTally:
    """What reading shards came to: documents read, malformed lines skipped, the first of their errors, and
    the same per file. Tallies merge in any order; `validate` says whether a verdict may rest on them."""

    documents: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    files: dict[str, FileTally] = field(default_factory=dict)
    matches: list[tuple[int, int, Evidence]] = field(default_factory=list)  # (detector, item, evidence), when recorded

    @classmethod
    def of_reader(cls, reader: ShardReader) -> "ShardTally":
        """The tally of a shard `reader` has read to its end."""
        file = FileTally(reader.shard.size, reader.n_documents, reader.n_skipped, reader.n_missing_field,
                         reader.skipped[0] if reader.skipped else None, reader.documents_per_layout(),
                         dict(reader.field_counts))
        return cls(reader.n_documents, reader.n_skipped, list(reader.skipped), {reader.shard.path: file})

    def add(self, other: "ShardTally") -> "ShardTally":
        self.documents += other.documents
        self.skipped += other.skipped
        self.errors = (self.errors + other.errors)[:_KEEP_ERRORS]
        for path, file in other.files.items():
            self.files.setdefault(path, FileTally()).add(file)
        return self

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    @property
    def empty_files(self) -> list[str]:
        """Files that held no record at all (nothing read, nothing skipped)."""
        return [p for p, f in self.files.items() if not f.documents and not f.skipped]

    def layout_stats(self) -> dict[str, dict[str, Any]]:
        """Per layout read: files, documents, and records per field (a file of mixed layouts counts in each; its
        fields are listed per file only)."""
        out: dict[str, dict[str, Any]] = {}
        for file in self.files.values():
            for name, docs in file.layouts.items():
                entry = out.setdefault(name, {"files": 0, "documents": 0, "fields": {}})
                entry["files"] += 1
                entry["documents"] += docs
                if len(file.layouts) == 1:
                    for f, count in file.fields.items():
                        entry["fields"][f] = entry["fields"].get(f, 0) + count
        return dict(sorted(out.items()))

    def file_layouts(self) -> list[dict[str, Any]]:
        """Per file (the first `_KEEP_FILES`): the layout(s) read, documents, and records per field."""
        return [
            {"file": redact_text(path), "layout": "+".join(sorted(f.layouts)) or None, "documents": f.documents,
             "fields": dict(f.fields)}
            for path, f in sorted(self.files.items())[:_KEEP_FILES]
        ]

    def stats(self) -> dict[str, Any]:
        """What the verdict stands on, for a report's stats: documents, bytes, files, skipped lines, and the
        layouts the records were read in (overall and per file)."""
        empty = self.empty_files
        return {
            "layouts": self.layout_stats(),
            "file_layouts": self.file_layouts(),
            "documents": self.documents,
            "bytes": self.bytes,
            "files": len(self.files),
            "skipped_lines": self.skipped,
            "skipped_errors": self.errors,
            "empty_files": len(empty),
            "empty_file_names": empty[:_KEEP_ERRORS],
        }

    def validate(self, max_bad_lines: float = DEFAULT_MAX_BAD_LINES, text_field: str = "text") -> None:
        """Raise `InputError` unless a "clean" verdict may rest on what was read: some documents; no file of
        which every record was skipped; no more skipped lines than `max_bad_lines` allows (a share of the
        lines read when below 1, else a count)."""
        check_max_bad_lines(max_bad_lines)
        layout = (f"the text field {text_field!r} is missing from every record: the corpus has another layout, "
                  "set --text-field to the field(s) that hold the text" if text_field != "text" else
                  "no record has the text fields of a known layout: set --text-field to the field(s) that hold "
                  "the text, or --layout")
        if not self.documents:
            if not self.skipped:
                names = ", ".join(redact_text(f) for f in sorted(self.files)[:3])
                more = f" and {len(self.files) - 3:,} more" if len(self.files) > 3 else ""
                raise InputError(
                    f"read 0 documents from {len(self.files)} file(s) ({self.bytes:,} bytes"
                    f"{': ' + names + more if names else ''}): the corpus holds no text, and a verdict cannot rest "
                    "on reading nothing"
                )
            missing = sum(f.missing_field for f in self.files.values())
            why = layout if missing == self.skipped else "every line was skipped as malformed"
            raise InputError(f"read 0 documents from {len(self.files)} file(s): {why}; the first error: {self.errors[0]}")
        for path, file in self.files.items():
            if not file.documents and file.skipped:
                why = layout if file.missing_field == file.skipped else "every line was skipped as malformed"
                raise InputError(f"0 documents read from this file, {file.skipped:,} line(s) skipped: {why}; the "
                                 f"first error: {file.first_error}", path=path)
        lines = self.documents + self.skipped
        allowed = int(max_bad_lines) if max_bad_lines >= 1 else math.floor(max_bad_lines * lines + 1e-9)
        if self.skipped > allowed:
            limit = f"{int(max_bad_lines):,} lines" if max_bad_lines >= 1 else f"{max_bad_lines:.2%} of the lines"
            raise InputError(
                f"{self.skipped:,} of {lines:,} corpus lines ({self.skipped / lines:.2%}) were malformed and skipped, "
                f"more than --max-bad-lines allows ({limit}); a verdict on the rest would not say what the corpus "
                "holds. First errors:\n  " + "\n  ".join(self.errors[:5])
            )


def _fit(detector: CorpusDetector, samples: Sequence[Sample], fit_progress: FitProgress | None) -> CorpusDetector:
    """`detector.fit(samples)`, telling `fit_progress` how it goes; the callback is gone before any pickling."""
    if fit_progress is not None:
        detector.fit_progress = lambda done, total: fit_progress(detector.name, done, total)
    try:
        return detector.fit(samples)
    finally:
        detector.fit_progress = None


def scan_shard(
    detectors: Sequence[CorpusDetector],
    shard: Shard,
    config: ScanConfig,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[list[Any], ShardTally]:
    """Scan one shard with every detector; returns (partial per detector, tally of what was read). With
    detectors that record matches, the tally lists them as (detector position, item index, evidence)."""
    partials = [d.empty() for d in detectors]
    reader = ShardReader(shard, config.text_field, skip_bad=config.skip_bad_lines,
                         max_skipped=reader_skip_limit(config.max_bad_lines), layout=config.layout)
    reported = 0
    matches: list[tuple[int, int, Evidence]] = []
    overlap = max((d.context_tokens for d in detectors), default=0)
    batch_chars = min([config.batch_chars, *(d.batch_chars for d in detectors if d.batch_chars)])
    for docs in batches(reader, batch_chars, overlap):
        batch = make_batch(docs)
        for i, det in enumerate(detectors):
            part = det.scan_batch(batch)
            listed = getattr(det.evidence_of(part), "all", None)
            if listed:
                matches.extend((i, sample, ev) for sample, ev in listed)
                listed.clear()
            partials[i] = det.merge(partials[i], part)
        if on_bytes is not None and reader.consumed > reported:
            on_bytes(reader.consumed - reported)
            reported = reader.consumed
    if on_bytes is not None and shard.size > reported:
        on_bytes(shard.size - reported)
    tally = ShardTally.of_reader(reader)
    # a shard's matches in document order, so the file of every match is the same however the corpus is split
    tally.matches = sorted(matches, key=lambda m: (_doc_line(m[2].doc), m[2].start, m[2].end, m[0], m[1]))
    return partials, tally


def _doc_line(doc_id: str) -> int:
    return int(doc_id.rpartition(":")[2])


def _scan_task(
    shared: tuple[list[CorpusDetector], ScanConfig], shard: Shard, on_bytes: Callable[[int], None] | None
) -> tuple[list[Any], ShardTally]:
    """What an engine runs per shard: `scan_shard` with the fitted detectors and the config."""
    detectors, config = shared
    return scan_shard(detectors, shard, config, on_bytes)


def scan(
    samples: Sequence[Sample],
    corpus: Sequence[str | os.PathLike] | str | os.PathLike,
    config: ScanConfig | None = None,
    progress: Progress | None = None,
    matches_out: str | os.PathLike | None = None,
    *,
    fit_progress: FitProgress | None = None,
) -> ScanReport:
    """Find `samples` in `corpus` (files, directories or globs) and return a labelled `ScanReport`.

    One benchmark of `scan_many`; see there for `progress`, `fit_progress`, `matches_out` and the errors raised.
    """
    return scan_many([samples], corpus, config, progress, matches_out, fit_progress=fit_progress)[0]


def scan_many(
    benchmarks: Sequence[Sequence[Sample]],
    corpus: Sequence[str | os.PathLike] | str | os.PathLike,
    config: ScanConfig | None = None,
    progress: Progress | None = None,
    matches_out: str | os.PathLike | None = None,
    *,
    fit_progress: FitProgress | None = None,
) -> list[ScanReport]:
    """Find the samples of several benchmarks in `corpus` in one read of it; one `ScanReport` per benchmark, as
    if each had been scanned alone (each has detectors of its own, fitted on it alone).

    `progress(bytes read, bytes total)` is told the total before the first byte is read, then as batches are
    done; `fit_progress(detector, done, total)` follows a detector whose fitting takes long (`semantic`: texts
    of the benchmark embedded).

    With `matches_out`, every match of a contaminated item in the corpus (`itd.corpus.matches`: item, detector, document,
    character offsets, score), uncapped, is written there as JSONL, atomically, once the scan is done; the matches
    wait in per-shard files beside it while the corpus is read.

    Raises `InputError` when the verdict could not rest on what was read (`ShardTally.validate`): no documents,
    a file whose every line was skipped, or more skipped lines than `config.max_bad_lines` allows. The report's
    stats say what was read: documents, bytes, files, skipped lines.
    """
    config = config or ScanConfig()
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    if not benchmarks:
        raise InputError("no benchmark to scan for")
    if not all(benchmarks):
        raise InputError("the benchmark has no samples")
    t0 = time.perf_counter()
    engine = make_engine(config.engine, workers=config.workers, address=config.ray_address)  # fails early
    groups = [[_fit(d, samples, fit_progress) for d in build_detectors(config)] for samples in benchmarks]
    detectors = [d for group in groups for d in group]
    owner = [g for g, group in enumerate(groups) for _ in group]  # the benchmark of each detector
    for d in detectors:
        d.record_matches = matches_out is not None
    split = config.workers > 1 or config.engine != "local"
    shards = plan_shards(corpus, config.shard_bytes if split else None)
    total = sum(s.size for s in shards)
    partials = [d.empty() for d in detectors]
    tally = ShardTally()
    if progress is not None:
        progress(0, total)  # the total from the start, not "?" until the first batch is done
    with MatchSpool(matches_out) as spool:
        for index, (parts, part_tally) in engine.map_shards(_scan_task, (detectors, config), shards, progress):
            spool.put(index, part_tally.matches)
            part_tally.matches = []
            tally.add(part_tally)
            partials = [d.merge(a, b) for d, a, b in zip(detectors, partials, parts)]
        tally.validate(config.max_bad_lines, config.text_field)
        per_detector = [d.finish(p) for d, p in zip(detectors, partials)]
        results: list[list[SampleResult]] = []
        for g, samples in enumerate(benchmarks):
            mine = [f for f, o in zip(per_detector, owner) if o == g]
            results.append([SampleResult(s, label_of([f[i] for f in mine]), [f[i] for f in mine]) for i, s in enumerate(samples)])
        unrecorded = [{d.name for d, p, o in zip(detectors, partials, owner) if o == g
                       and getattr(d.evidence_of(p), "all", None) is None} for g in range(len(groups))]
        matches_written = spool.finish(results, owner, len(shards), unrecorded)
    seconds = time.perf_counter() - t0
    stats = {
        **tally.stats(),
        "shards": len(shards),
        "workers": engine.stats.workers,
        "engine": engine.name,
        "nodes": engine.stats.nodes,
        "parallelism": engine.stats.parallelism,
        "retries": engine.stats.retries,
        "worker_peak_rss_mb": engine.stats.worker_peak_rss_mb,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total / 1e6 / seconds, 2) if seconds > 0 else None,
    }
    if matches_out is not None:
        stats["matches_written"] = matches_written
    if len(benchmarks) > 1:
        stats["benchmarks_in_pass"] = len(benchmarks)
    return [ScanReport(r, config.to_dict(), dict(stats)) for r in results]
