"""Persistent corpus n-gram index and the fast eval-set check that uses it (the pre-commit hook).

An index is a directory: one sorted, unique `uint64` array of n-gram hashes per (pass, n) saved as `.npy`
(memory-mapped when checking, so a check touches only the pages its lookups hit), and `index.json` with the
normalisation settings and a manifest. Membership is `np.searchsorted`.

`build_index` streams the corpus in this process (`engine="local"`), or on Ray (`engine="ray"`): one task per
shard returns the shard's sorted unique hashes per (pass, n), which are unioned here, so the index is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from itd.corpus import Shard, ShardReader, plan_shards, resolve_layout
from itd.data import Sample
from itd.detectors.ngram import PASSES, NGramDetector
from itd.engines import make_engine
from itd.errors import InputError
from itd.io import atomic_write, build_manifest, write_json
from itd.report import SampleResult, ScanReport, label_of
from itd.scan import DEFAULT_MAX_BAD_LINES, ShardTally, batches, check_max_bad_lines, make_batch, reader_skip_limit
from itd.text import ngram_hashes

__all__ = ["INDEX_FORMAT", "NGramIndex", "build_index", "check"]

INDEX_FORMAT = 1
_SPILL = 8_000_000  # hashes held per (pass, n) before they are sorted and spilled to a run file


class NGramIndex:
    """A loaded index: `contains(pass_name, n, hashes) -> bool array`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "index.json"
        if not meta_file.is_file():
            raise InputError("not an itd index (no index.json); build one with `itd index build`", path=str(self.path))
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text("utf-8"))
        except ValueError as exc:
            raise InputError(f"index.json is not valid JSON ({exc})", path=str(meta_file)) from None
        if self.meta.get("format") != INDEX_FORMAT:
            raise InputError(f"index format {self.meta.get('format')!r} is not supported (want {INDEX_FORMAT}); rebuild it", path=str(meta_file))
        documents = self.meta.get("documents")
        if not isinstance(documents, int) or documents < 1:
            raise InputError(
                f"the index holds {documents} documents: it was built from a corpus of which nothing was read, and "
                "an empty index is no basis for calling anything clean; rebuild it from the corpus (set --text-field "
                "to the field that holds the text)", path=str(meta_file),
            )
        self.n: int = self.meta["n"]
        self.n_short: int = self.meta["n_short"]
        self._arrays: dict[tuple[str, int], np.ndarray] = {}

    def corpus(self) -> dict[str, Any]:
        """What a check against this index stands on: the indexed corpus's documents, bytes, files and skipped
        lines, from index.json."""
        m = self.meta
        files = m.get("files")
        if files is None:  # an index built before the file count was recorded
            files = len((m.get("manifest") or {}).get("inputs") or [])
        return {"path": str(self.path), "documents": m["documents"], "bytes": m.get("bytes"), "files": files,
                "skipped_lines": m.get("skipped_lines", 0)}

    def array(self, pass_name: str, n: int) -> np.ndarray:
        key = (pass_name, n)
        if key not in self._arrays:
            f = self.path / f"{pass_name}_{n}.npy"
            if not f.is_file():
                raise InputError(f"index is missing {f.name}; rebuild it", path=str(self.path))
            self._arrays[key] = np.load(f, mmap_mode="r")
        return self._arrays[key]

    def contains(self, pass_name: str, n: int, hashes: np.ndarray) -> np.ndarray:
        """Which of `hashes` occur in the corpus (for n-grams of length n in pass `pass_name`)."""
        arr = self.array(pass_name, n)
        if not arr.size or not hashes.size:
            return np.zeros(hashes.shape, dtype=bool)
        idx = np.searchsorted(arr, hashes)
        idx[idx == arr.size] = 0
        return np.asarray(arr[idx] == hashes)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. (numpy 2's `np.unique` hashes uint64 and is ~100x slower than this sort.)"""
    values = np.sort(values)
    if values.size < 2:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def _index_shard(
    shared: tuple[list[int], str, int, bool, int | None, str], shard: Shard, on_bytes: Callable[[int], None] | None
) -> tuple[dict[tuple[str, int], np.ndarray], ShardTally]:
    """The n-gram hashes of one shard: sorted unique per (pass, n), and what was read (an engine task)."""
    ns, text_field, batch_chars, skip_bad_lines, max_skipped, layout = shared
    runs: dict[tuple[str, int], list[np.ndarray]] = {(p, k): [] for p in PASSES for k in ns}
    reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines, max_skipped=max_skipped, layout=layout)
    seen = 0
    for batch_docs in batches(reader, batch_chars):
        tb = make_batch(batch_docs).tokens
        for p, hashes in zip(PASSES, (tb.hashes, tb.number_hashes())):
            for k, (h, _) in ngram_hashes(hashes, tb.doc, ns).items():
                runs[(p, k)].append(_sorted_unique(h))
        if on_bytes is not None and reader.consumed > seen:
            on_bytes(reader.consumed - seen)
            seen = reader.consumed
    if on_bytes is not None and shard.size > seen:
        on_bytes(shard.size - seen)
    out = {key: _sorted_unique(np.concatenate(r)) if r else np.zeros(0, np.uint64) for key, r in runs.items()}
    return out, ShardTally.of_reader(reader)


def build_index(
    corpus: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    n: int = 13,
    n_short: int = 8,
    text_field: str = "text",
    layout: str = "auto",
    batch_chars: int = 1 << 20,
    skip_bad_lines: bool = False,
    max_bad_lines: float = DEFAULT_MAX_BAD_LINES,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int = 1,
    shard_bytes: int = 32 << 20,
) -> dict[str, Any]:
    """Stream `corpus` and write its n-gram index to directory `out`; returns the index metadata.

    `engine="ray"` reads the shards (large files cut into `shard_bytes` ranges) in parallel on Ray
    (`ray_address`, `workers`: see `itd.engines.RayEngine`), `workers` > 1 with the local engine in a process
    pool; the index is the same either way. Records are read in `layout` (`itd.layouts`; "auto": detected per
    file) or from the fields `text_field` names. An index is only written when a verdict may rest on it
    (`itd.scan.ShardTally.validate`: documents were read, and no more lines were skipped than `max_bad_lines`
    allows); otherwise `InputError` is raised and `out` is left as it was (removed if this call created it).
    """
    if not 1 <= n_short <= n:
        raise InputError(f"need 1 <= n_short <= n, got n={n}, n_short={n_short}")
    check_max_bad_lines(max_bad_lines)
    engine = engine.strip().lower()
    if ray_address is not None and engine != "ray":
        raise InputError(f"a Ray address ({ray_address!r}) needs the Ray engine (--engine ray)")
    runner = make_engine(engine, workers=workers, address=ray_address) if engine != "local" or workers > 1 else None
    out = Path(out)
    resolve_layout(layout, text_field)  # a bad --layout or --text-field fails before anything is read
    shards = plan_shards(corpus, shard_bytes if runner is not None else None)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        meta = _build(shards, out, runner, n, n_short, (text_field, layout), batch_chars, skip_bad_lines, max_bad_lines, progress)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    meta.update(engine=engine, workers=runner.stats.workers if runner is not None else 1,
                parallelism=runner.stats.parallelism if runner is not None else 1)
    meta["manifest"] = build_manifest(
        command="index build",
        config={"n": n, "n_short": n_short, "text_field": text_field, "layout": layout},
        inputs=list(dict.fromkeys(s.path for s in shards)),
    )
    write_json(out / "index.json", meta)
    return meta


def _build(shards, out: Path, runner, n, n_short, reading, batch_chars, skip_bad_lines, max_bad_lines, progress) -> dict[str, Any]:
    """Read `shards` (`reading`: text field and layout), check what was read, then write the index arrays into
    `out`; returns the metadata so far."""
    text_field, layout = reading
    total = sum(s.size for s in shards)
    t0 = time.perf_counter()
    ns = sorted({n, n_short})
    keys = [(p, k) for p in PASSES for k in ns]
    pending: dict[tuple[str, int], list[np.ndarray]] = {k: [] for k in keys}
    held = dict.fromkeys(keys, 0)
    runs: dict[tuple[str, int], list[Path]] = {k: [] for k in keys}
    max_skipped = reader_skip_limit(max_bad_lines)
    tally = ShardTally()
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:

        def spill(key):
            arr = _sorted_unique(np.concatenate(pending[key])) if pending[key] else np.zeros(0, np.uint64)
            f = Path(tmp) / f"{key[0]}_{key[1]}_{len(runs[key])}.npy"
            np.save(f, arr)
            runs[key].append(f)
            pending[key], held[key] = [], 0

        def add(key, hashes):
            pending[key].append(hashes)
            held[key] += hashes.size
            if held[key] >= _SPILL:
                spill(key)

        if runner is not None:
            shared = (ns, text_field, batch_chars, skip_bad_lines, max_skipped, layout)
            for _, (hashes_by_key, part) in runner.map_shards(_index_shard, shared, shards, progress):
                tally.add(part)
                for key, hashes in hashes_by_key.items():
                    add(key, hashes)
        done = 0
        for shard in shards if runner is None else ():
            reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines, max_skipped=max_skipped, layout=layout)
            seen = 0
            for batch_docs in batches(reader, batch_chars):
                tb = make_batch(batch_docs).tokens
                for p, hashes in zip(PASSES, (tb.hashes, tb.number_hashes())):
                    for k, (h, _) in ngram_hashes(hashes, tb.doc, ns).items():
                        add((p, k), _sorted_unique(h))
                if progress is not None and reader.consumed > seen:
                    done += reader.consumed - seen
                    seen = reader.consumed
                    progress(done, total)
            done += shard.size - seen
            tally.add(ShardTally.of_reader(reader))
            if progress is not None:
                progress(done, total)
        tally.validate(max_bad_lines, text_field)  # before anything is written
        counts = {}
        for key in keys:
            spill(key)
            merged = _sorted_unique(np.concatenate([np.load(f) for f in runs[key]]))
            with atomic_write(out / f"{key[0]}_{key[1]}.npy", "wb", encoding=None) as f:
                np.save(f, merged)
            counts[f"{key[0]}_{key[1]}"] = int(merged.size)
    return {
        "format": INDEX_FORMAT,
        "n": n,
        "n_short": n_short,
        "passes": list(PASSES),
        "text_field": text_field,
        "layout": layout,
        **tally.stats(),
        "shards": len(shards),
        "ngrams": counts,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def check(samples: Sequence[Sample], index: NGramIndex | str | os.PathLike, **thresholds: float) -> ScanReport:
    """Look every sample's n-grams up in a persistent index; returns a `ScanReport` (coverage, no evidence).

    `thresholds` may set `input_threshold` and `label_threshold` of the n-gram detector. The stats say what the
    verdict stands on: the index's corpus (`NGramIndex.corpus`), the items checked and those too short to check.
    An index of 0 documents is refused (`InputError`) when it is loaded.
    """
    if not isinstance(index, NGramIndex):
        index = NGramIndex(index)
    t0 = time.perf_counter()
    # the index holds n and n_short grams only, so items shorter than n_short are reported unchecked
    det = NGramDetector(n=index.n, n_short=index.n_short, match_short_items=False, **thresholds).fit(samples)
    findings = det.finish(det.lookup(index.contains))
    results = [SampleResult(s, label_of([f]), [f]) for s, f in zip(samples, findings)]
    stats = {"index": index.corpus(), "items": len(results), "unchecked": sum(not f.checked for f in findings),
             "seconds": round(time.perf_counter() - t0, 3)}
    return ScanReport(results, {"index": str(index.path), "n": index.n, "n_short": index.n_short, **thresholds}, stats)
