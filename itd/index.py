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
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from itd.corpus import Shard, ShardReader, plan_shards
from itd.data import Sample
from itd.detectors.ngram import PASSES, NGramDetector
from itd.engines import make_engine
from itd.errors import InputError
from itd.io import atomic_write, build_manifest, write_json
from itd.report import SampleResult, ScanReport, label_of
from itd.scan import ShardTally, batches, make_batch
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
        self.n: int = self.meta["n"]
        self.n_short: int = self.meta["n_short"]
        self._arrays: dict[tuple[str, int], np.ndarray] = {}

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
    shared: tuple[list[int], str, int, bool], shard: Shard, on_bytes: Callable[[int], None] | None
) -> tuple[dict[tuple[str, int], np.ndarray], ShardTally]:
    """The n-gram hashes of one shard: sorted unique per (pass, n), and what was read (an engine task)."""
    ns, text_field, batch_chars, skip_bad_lines = shared
    runs: dict[tuple[str, int], list[np.ndarray]] = {(p, k): [] for p in PASSES for k in ns}
    reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines)
    seen = docs = 0
    for batch_docs in batches(reader, batch_chars):
        tb = make_batch(batch_docs).tokens
        docs += len(batch_docs)
        for p, hashes in zip(PASSES, (tb.hashes, tb.number_hashes())):
            for k, (h, _) in ngram_hashes(hashes, tb.doc, ns).items():
                runs[(p, k)].append(_sorted_unique(h))
        if on_bytes is not None and reader.consumed > seen:
            on_bytes(reader.consumed - seen)
            seen = reader.consumed
    if on_bytes is not None and shard.size > seen:
        on_bytes(shard.size - seen)
    out = {key: _sorted_unique(np.concatenate(r)) if r else np.zeros(0, np.uint64) for key, r in runs.items()}
    return out, ShardTally(docs, reader.n_skipped, reader.skipped)


def build_index(
    corpus: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    n: int = 13,
    n_short: int = 8,
    text_field: str = "text",
    batch_chars: int = 1 << 20,
    skip_bad_lines: bool = False,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int = 1,
    shard_bytes: int = 32 << 20,
) -> dict[str, Any]:
    """Stream `corpus` and write its n-gram index to directory `out`; returns the index metadata.

    `engine="ray"` reads the shards (large files cut into `shard_bytes` ranges) in parallel on Ray
    (`ray_address`, `workers`: see `itd.engines.RayEngine`), `workers` > 1 with the local engine in a process
    pool; the index is the same either way.
    """
    if not 1 <= n_short <= n:
        raise InputError(f"need 1 <= n_short <= n, got n={n}, n_short={n_short}")
    engine = engine.strip().lower()
    if ray_address is not None and engine != "ray":
        raise InputError(f"a Ray address ({ray_address!r}) needs the Ray engine (--engine ray)")
    runner = make_engine(engine, workers=workers, address=ray_address) if engine != "local" or workers > 1 else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(corpus, shard_bytes if runner is not None else None)
    total = sum(s.size for s in shards)
    t0 = time.perf_counter()
    ns = sorted({n, n_short})
    keys = [(p, k) for p in PASSES for k in ns]
    pending: dict[tuple[str, int], list[np.ndarray]] = {k: [] for k in keys}
    held = dict.fromkeys(keys, 0)
    runs: dict[tuple[str, int], list[Path]] = {k: [] for k in keys}
    done, docs, skipped, errors = 0, 0, 0, []
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
            tally = ShardTally()
            shared = (ns, text_field, batch_chars, skip_bad_lines)
            for _, (hashes_by_key, part) in runner.map_shards(_index_shard, shared, shards, progress):
                tally.add(part)
                for key, hashes in hashes_by_key.items():
                    add(key, hashes)
            docs, skipped, errors = tally.documents, tally.skipped, tally.errors
        for shard in shards if runner is None else ():
            reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines)
            seen = 0
            for batch_docs in batches(reader, batch_chars):
                tb = make_batch(batch_docs).tokens
                docs += len(batch_docs)
                for p, hashes in zip(PASSES, (tb.hashes, tb.number_hashes())):
                    for k, (h, _) in ngram_hashes(hashes, tb.doc, ns).items():
                        add((p, k), _sorted_unique(h))
                if progress is not None and reader.consumed > seen:
                    done += reader.consumed - seen
                    seen = reader.consumed
                    progress(done, total)
            done += shard.size - seen
            skipped += reader.n_skipped
            errors = (errors + reader.skipped)[:20]
            if progress is not None:
                progress(done, total)
        counts = {}
        for key in keys:
            spill(key)
            merged = _sorted_unique(np.concatenate([np.load(f) for f in runs[key]]))
            with atomic_write(out / f"{key[0]}_{key[1]}.npy", "wb", encoding=None) as f:
                np.save(f, merged)
            counts[f"{key[0]}_{key[1]}"] = int(merged.size)
    meta = {
        "format": INDEX_FORMAT,
        "n": n,
        "n_short": n_short,
        "passes": list(PASSES),
        "text_field": text_field,
        "documents": docs,
        "skipped_lines": skipped,
        "skipped_errors": errors,
        "bytes": total,
        "shards": len(shards),
        "engine": engine,
        "workers": runner.stats.workers if runner is not None else 1,
        "parallelism": runner.stats.parallelism if runner is not None else 1,
        "ngrams": counts,
        "seconds": round(time.perf_counter() - t0, 3),
        "manifest": build_manifest(
            command="index build",
            config={"n": n, "n_short": n_short, "text_field": text_field},
            inputs=list(dict.fromkeys(s.path for s in shards)),
        ),
    }
    write_json(out / "index.json", meta)
    return meta


def check(samples: Sequence[Sample], index: NGramIndex | str | os.PathLike, **thresholds: float) -> ScanReport:
    """Look every sample's n-grams up in a persistent index; returns a `ScanReport` (coverage, no evidence).

    `thresholds` may set `input_threshold` and `label_threshold` of the n-gram detector.
    """
    if not isinstance(index, NGramIndex):
        index = NGramIndex(index)
    t0 = time.perf_counter()
    # the index holds n and n_short grams only, so items shorter than n_short are reported unchecked
    det = NGramDetector(n=index.n, n_short=index.n_short, match_short_items=False, **thresholds).fit(samples)
    findings = det.finish(det.lookup(index.contains))
    results = [SampleResult(s, label_of([f]), [f]) for s, f in zip(samples, findings)]
    stats = {"index": str(index.path), "seconds": round(time.perf_counter() - t0, 3)}
    return ScanReport(results, {"index": str(index.path), "n": index.n, "n_short": index.n_short, **thresholds}, stats)
