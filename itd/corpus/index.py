"""Persistent corpus n-gram index and the fast eval-set check that uses it (the pre-commit hook).

An index is a directory:

    index.json                 the normalisation settings, a manifest, the build id and every part's size and SHA-256
    parts-<build id>/raw_13.npy, numnorm_13.npy, raw_8.npy, numnorm_8.npy

One sorted, unique `uint64` array of n-gram hashes per (pass, n) is saved as `.npy` (memory-mapped when checking,
so a check touches only the pages its lookups hit). Membership is `np.searchsorted`. The number-normalised
(`numnorm`) parts hold only the n-grams with a number token: any other hashes there as in the raw pass, so the
raw part answers for it (`NGramDetector.lookup`), and the index is about half the size.

Whole or absent. `build_index` writes everything into a staging directory beside the index,
`.<name>.build-<build id>`, and only a complete build is switched in. `index.json` is the commit point:
* a new index: the staging directory, `index.json` and parts inside, is renamed to `<name>` (one atomic rename);
* replacing an index: the new parts directory is renamed into the index directory, then `index.json` is replaced
  (an atomic file rename), then the old parts are deleted.
A kill at any moment therefore leaves either the old index or the new one, never a mix: `index.json` names its
parts by build id, and the old parts are deleted only after the new `index.json` is in place. What a killed
build leaves behind (a staging directory, a parts directory no `index.json` names) is ignored by `NGramIndex`
and deleted by the next build into the same directory: the parts an `index.json` records it replaced, and any
staging or parts directory whose build process is gone (its pid is part of the build id). A build that
fails (bad input, an exception, Ctrl-C) removes its staging directory and creates nothing; an existing index is
untouched.

`NGramIndex` refuses an index whose parts do not belong together: a part missing, of another size or shape than
`index.json` records, or outside this build's parts directory. That check costs a `stat` and an `.npy` header per
part, so it runs on every open; comparing the SHA-256 of every part reads the whole index (gigabytes for a large
corpus, seconds against the pre-commit check's milliseconds), so it runs only with `verify=True`
(`itd index verify`), to detect bit rot or hand-edited files.

`build_index` streams the corpus in this process (`engine="local"`), or on Ray (`engine="ray"`): one task per
shard returns the shard's sorted unique hashes per (pass, n), which are unioned here, so the index is the same.
Documents longer than `batch_chars` are read in windows that overlap by n tokens (`itd.corpus.scan.batches`), so every
n-gram of a document is indexed and memory does not grow with a document's length.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.io import build_manifest, sha256_file, write_json
from itd.core.processes import pid_alive
from itd.core.text import ngram_hashes, ngram_hashes_at
from itd.corpus.engines import make_engine
from itd.corpus.readers import Shard, ShardReader, plan_shards, resolve_layout
from itd.corpus.report import SampleResult, ScanReport, label_of
from itd.corpus.scan import (
    DEFAULT_MAX_BAD_LINES,
    ShardTally,
    batches,
    check_max_bad_lines,
    make_batch,
    reader_skip_limit,
)
from itd.detectors.ngram import PASSES, NGramDetector

__all__ = ["INDEX_FORMAT", "IndexIntegrityError", "NGramIndex", "build_index", "check"]

INDEX_FORMAT = 3  # 3: the numnorm parts hold only n-grams with a number token
_SPILL = 8_000_000  # hashes held per (pass, n) before they are sorted and spilled to a run file


class IndexIntegrityError(InputError):
    """An index whose parts do not belong to its index.json: missing, of another size, shape or SHA-256."""


_PART = re.compile(r"^(raw|numnorm)_(\d+)\.npy$")
_OPEN_TRIES = 3  # an index replaced while it is being opened is read again


def _part_key(pass_name: str, n: int) -> str:
    return f"{pass_name}_{n}"


def _read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "index.json"
    if not meta_file.is_file():
        raise InputError("not an itd index (no index.json); build one with `itd index build`", path=str(path))
    try:
        meta = json.loads(meta_file.read_text("utf-8"))
    except ValueError as exc:
        raise InputError(f"index.json is not valid JSON ({exc})", path=str(meta_file)) from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise InputError(f"index format {got!r} is not supported (want {INDEX_FORMAT}); rebuild it", path=str(meta_file))
    if not all(isinstance(meta.get(k), int) for k in ("n", "n_short")):
        raise InputError("index.json has no n-gram lengths n and n_short; rebuild the index", path=str(meta_file))
    return meta


class NGramIndex:
    """A loaded index: `contains(pass_name, n, hashes) -> bool array`.

    Opening checks that the parts belong to this `index.json` (see the module docstring) and raises `InputError`
    if not; `verify=True` also compares every part's SHA-256 (reads the whole index).
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        for attempt in range(_OPEN_TRIES):
            self.meta: dict[str, Any] = _read_meta(self.path)
            try:
                self._arrays = self._open_parts(verify)
                break
            except IndexIntegrityError:
                # a build may have replaced the index between reading index.json and opening its parts
                if attempt == _OPEN_TRIES - 1 or _read_meta(self.path).get("build") == self.meta.get("build"):
                    raise
        documents = self.meta.get("documents")
        if not isinstance(documents, int) or documents < 1:
            raise InputError(
                f"the index holds {documents} documents: it was built from a corpus of which nothing was read, and "
                "an empty index is no basis for calling anything clean; rebuild it from the corpus (set --text-field "
                "to the field that holds the text)", path=str(self.path / "index.json"),
            )
        self.n: int = self.meta["n"]
        self.n_short: int = self.meta["n_short"]
        self.build: str = self.meta["build"]

    def corpus(self) -> dict[str, Any]:
        """What a check against this index stands on: the indexed corpus's documents, bytes, files and skipped
        lines, from index.json."""
        m = self.meta
        files = m.get("files")
        if files is None:  # an index built before the file count was recorded
            files = len((m.get("manifest") or {}).get("inputs") or [])
        return {"path": str(self.path), "documents": m["documents"], "bytes": m.get("bytes"), "files": files,
                "skipped_lines": m.get("skipped_lines", 0)}

    def _open_parts(self, verify: bool) -> dict[tuple[str, int], np.ndarray]:
        meta = self.meta
        build, parts = meta.get("build"), meta.get("parts")
        if not isinstance(build, str) or not isinstance(parts, dict):
            raise IndexIntegrityError("index.json names no build id or parts; rebuild the index", path=str(self.path))
        ns = sorted({meta["n"], meta["n_short"]})
        arrays: dict[tuple[str, int], np.ndarray] = {}
        for p in PASSES:
            for k in ns:
                name = _part_key(p, k)
                rec = parts.get(name)
                if not isinstance(rec, dict):
                    raise IndexIntegrityError(f"index.json names no part {name}; rebuild the index",
                                              path=str(self.path))
                expected = f"parts-{build}/{name}.npy"
                if rec.get("file") != expected:
                    raise IndexIntegrityError(
                        f"part {name} is {rec.get('file')!r}, not {expected!r} of build {build}: the parts do not "
                        "belong together; rebuild the index", path=str(self.path))
                f = self.path / expected
                if not f.is_file():
                    raise IndexIntegrityError(f"index part {expected} is missing; rebuild the index",
                                              path=str(self.path))
                size = f.stat().st_size
                if size != rec.get("bytes"):
                    raise IndexIntegrityError(
                        f"index part {expected} has {size} bytes, index.json says {rec.get('bytes')}: the parts do "
                        "not belong together; rebuild the index", path=str(self.path))
                try:
                    arr = np.load(f, mmap_mode="r")
                except (ValueError, OSError) as exc:
                    raise IndexIntegrityError(
                        f"index part {expected} is not a readable .npy file ({exc}); rebuild the index",
                        path=str(self.path)) from None
                if arr.dtype != np.uint64 or arr.shape != (rec.get("count"),):
                    raise IndexIntegrityError(
                        f"index part {expected} holds {arr.shape} {arr.dtype}, index.json says ({rec.get('count')},) "
                        "uint64: the parts do not belong together; rebuild the index", path=str(self.path))
                if verify and sha256_file(f) != rec.get("sha256"):
                    raise IndexIntegrityError(
                        f"index part {expected} does not match its SHA-256 in index.json (corrupted or replaced); "
                        "rebuild the index", path=str(self.path))
                arrays[(p, k)] = arr
        return arrays

    def array(self, pass_name: str, n: int) -> np.ndarray:
        """The sorted n-gram hashes of one (pass, n), memory-mapped."""
        try:
            return self._arrays[(pass_name, n)]
        except KeyError:
            raise InputError(f"the index holds no {_part_key(pass_name, n)} n-grams", path=str(self.path)) from None

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


def _shard_hashes(reader: ShardReader, ns: list[int], batch_chars: int,
                  on_bytes: Callable[[int], None] | None) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """The sorted unique n-gram hashes of each batch `reader` reads, per (pass, n); `on_bytes(n)` is told the
    bytes read as they are."""
    seen = 0
    for batch_docs in batches(reader, batch_chars, overlap_tokens=max(ns)):
        tb = make_batch(batch_docs).tokens
        number_hashes = tb.number_hashes()
        for k, (h, pos) in ngram_hashes(tb.hashes, tb.doc, ns).items():
            yield (PASSES[0], k), _sorted_unique(h)
            # the number pass keeps the n-grams with a number: the others hash as in the raw pass
            numeric = pos[tb.holds_number(pos, k)]
            yield (PASSES[1], k), _sorted_unique(ngram_hashes_at(number_hashes, numeric, k))
        if on_bytes is not None and reader.consumed > seen:
            on_bytes(reader.consumed - seen)
            seen = reader.consumed
    if on_bytes is not None and reader.shard.size > seen:
        on_bytes(reader.shard.size - seen)


def _index_shard(
    shared: tuple[list[int], str, int, bool, int | None, str], shard: Shard, on_bytes: Callable[[int], None] | None
) -> tuple[dict[tuple[str, int], np.ndarray], ShardTally]:
    """The n-gram hashes of one shard: sorted unique per (pass, n), and what was read (an engine task)."""
    ns, text_field, batch_chars, skip_bad_lines, max_skipped, layout = shared
    runs: dict[tuple[str, int], list[np.ndarray]] = {(p, k): [] for p in PASSES for k in ns}
    reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines, max_skipped=max_skipped, layout=layout)
    for key, hashes in _shard_hashes(reader, ns, batch_chars, on_bytes):
        runs[key].append(hashes)
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
    """Stream `corpus` and write its n-gram index to directory `out` (new, or an index to replace); returns the
    index metadata. The index appears whole or not at all (see the module docstring).

    `engine="ray"` reads the shards (large files cut into `shard_bytes` ranges) in parallel on Ray
    (`ray_address`, `workers`: see `itd.corpus.engines.RayEngine`), `workers` > 1 with the local engine in a process
    pool; the index is the same either way. Records are read in `layout` (`itd.corpus.layouts`; "auto": detected per
    file) or from the fields `text_field` names. An index is only written when a verdict may rest on it
    (`itd.corpus.scan.ShardTally.validate`: documents were read, and no more lines were skipped than `max_bad_lines`
    allows); otherwise `InputError` is raised and `out` is left as it was.
    """
    if not 1 <= n_short <= n:
        raise InputError(f"need 1 <= n_short <= n, got n={n}, n_short={n_short}")
    check_max_bad_lines(max_bad_lines)
    engine = engine.strip().lower()
    if ray_address is not None and engine != "ray":
        raise InputError(f"a Ray address ({ray_address!r}) needs the Ray engine (--engine ray)")
    out = Path(out)
    _check_target(out)
    resolve_layout(layout, text_field)  # a bad --layout or --text-field fails before anything is read
    runner = make_engine(engine, workers=workers, address=ray_address) if engine != "local" or workers > 1 else None
    shards = plan_shards(corpus, shard_bytes if runner is not None else None)
    _remove_leftovers(out)
    build = f"{os.getpid()}-{secrets.token_hex(6)}"
    made = _make_parents(out.parent)
    stage = out.parent / f".{out.name}.build-{build}"
    stage.mkdir()
    _ACTIVE.add(build)
    try:
        t0 = time.perf_counter()
        parts, tally, total = _write_parts(stage, build, shards, sorted({n, n_short}), text_field, batch_chars,
                                           skip_bad_lines, max_bad_lines, progress, runner, layout)
        meta = {
            "format": INDEX_FORMAT,
            "build": build,
            "n": n,
            "n_short": n_short,
            "passes": list(PASSES),
            "text_field": text_field,
            "layout": layout,
            **tally.stats(),
            "shards": len(shards),
            "engine": engine,
            "workers": runner.stats.workers if runner is not None else 1,
            "parallelism": runner.stats.parallelism if runner is not None else 1,
            "ngrams": {name: rec["count"] for name, rec in parts.items()},
            "parts": parts,
            "replaces": None,
            "seconds": round(time.perf_counter() - t0, 3),
            "manifest": build_manifest(
                command="index build",
                config={"n": n, "n_short": n_short, "text_field": text_field, "layout": layout},
                inputs=list(dict.fromkeys(s.path for s in shards)),
            ),
        }
        _commit(stage, out, build, meta)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in made:  # parent directories this build created, innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        _ACTIVE.discard(build)
    return meta


def _check_target(out: Path) -> None:
    """Refuse an `out` that is a file, or a non-empty directory that is not an itd index (it would be mixed in)."""
    if out.exists() and not out.is_dir():
        raise InputError("the index path exists and is not a directory", path=str(out))
    if out.is_dir() and not (out / "index.json").is_file() and any(out.iterdir()):
        raise InputError("the index directory exists, is not empty and holds no index.json: not replacing it",
                         path=str(out))


def _make_parents(path: Path) -> list[Path]:
    """Create `path` and its missing parents; returns those created, innermost first (removed if the build fails)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing


_ACTIVE: set[str] = set()  # build ids of the builds running in this process


def _owner_gone(name: str) -> bool:
    """Whether the build that made a staging or parts directory (named `...-<pid>-<hex>`) is no longer running."""
    m = re.search(r"-((\d+)-[0-9a-f]+)$", name)
    if m is None:
        return False
    pid = int(m.group(2))
    return m.group(1) not in _ACTIVE if pid == os.getpid() else not pid_alive(pid)


def _remove_leftovers(out: Path) -> None:
    """Delete what killed builds into `out` left: staging directories beside it, and parts directories inside it
    that its `index.json` does not name: the ones it replaced, and any whose build process is gone."""
    if out.parent.is_dir():
        for d in out.parent.glob(f".{glob.escape(out.name)}.build-*"):
            if d.is_dir() and _owner_gone(d.name):
                shutil.rmtree(d, ignore_errors=True)
    if not out.is_dir():
        return
    try:
        meta = json.loads((out / "index.json").read_text("utf-8"))
        current, replaced = meta.get("build"), meta.get("replaces")
    except (OSError, ValueError, AttributeError):
        current = replaced = None
    for d in out.glob("parts-*"):
        if d.is_dir() and d.name != f"parts-{current}" and (d.name == f"parts-{replaced}" or _owner_gone(d.name)):
            shutil.rmtree(d, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(stage: Path, out: Path, build: str, meta: dict[str, Any]) -> None:
    """Switch the complete build in `stage` in as `out`; see the module docstring for why this is whole-or-absent."""
    parts = stage / f"parts-{build}"
    if not out.exists():
        write_json(stage / "index.json", meta)
        _fsync_dir(stage)
        try:
            os.rename(stage, out)  # one atomic step: before it there is no index, after it the whole new one
            _fsync_dir(out.parent)
            return
        except OSError:
            if not out.is_dir():  # not a concurrent creation of `out`: a real error
                raise
            (stage / "index.json").unlink()
    os.rename(parts, out / parts.name)  # not yet named by any index.json: invisible to readers
    _fsync_dir(out)
    old = out / "index.json"
    try:
        old_build = json.loads(old.read_text("utf-8")).get("build") if old.is_file() else None
    except (OSError, ValueError, AttributeError):
        old_build = None
    meta["replaces"] = old_build  # its parts are garbage from now on, whoever made them
    write_json(old, meta)  # the commit point: an atomic rename over the old index.json
    _fsync_dir(out)
    shutil.rmtree(stage, ignore_errors=True)
    # the old index's parts are unreferenced now; an index of format 1 kept its parts at the top level
    for d in out.glob("parts-*"):
        if d.is_dir() and d.name != parts.name and (d.name == f"parts-{old_build}" or _owner_gone(d.name)):
            shutil.rmtree(d, ignore_errors=True)
    for f in out.iterdir():
        if f.is_file() and _PART.match(f.name):
            f.unlink()
        elif f.is_dir() and f.name.startswith(".build-"):  # format 1 spill directories of killed builds
            shutil.rmtree(f, ignore_errors=True)


def _write_parts(
    stage: Path,
    build: str,
    shards: list[Shard],
    ns: list[int],
    text_field: str,
    batch_chars: int,
    skip_bad_lines: bool,
    max_bad_lines: float,
    progress: Callable[[int, int], None] | None,
    runner: Any,
    layout: str = "auto",
) -> tuple[dict[str, dict[str, Any]], ShardTally, int]:
    """Hash the corpus into `stage/parts-<build>/<pass>_<n>.npy` (sorted runs spilled to `stage/runs`);
    returns each part's record for index.json, what was read, and the corpus bytes. What was read is validated
    (`ShardTally.validate`) before any part is written."""
    max_skipped = reader_skip_limit(max_bad_lines)
    total = sum(s.size for s in shards)
    keys = [(p, k) for p in PASSES for k in ns]
    pending: dict[tuple[str, int], list[np.ndarray]] = {k: [] for k in keys}
    held = dict.fromkeys(keys, 0)
    runs: dict[tuple[str, int], list[Path]] = {k: [] for k in keys}
    tmp = stage / "runs"
    tmp.mkdir()

    def spill(key):
        arr = _sorted_unique(np.concatenate(pending[key])) if pending[key] else np.zeros(0, np.uint64)
        f = tmp / f"{key[0]}_{key[1]}_{len(runs[key])}.npy"
        np.save(f, arr)
        runs[key].append(f)
        pending[key], held[key] = [], 0

    def add(key, hashes):
        pending[key].append(hashes)
        held[key] += hashes.size
        if held[key] >= _SPILL:
            spill(key)

    tally = ShardTally()
    if runner is not None:
        shared = (ns, text_field, batch_chars, skip_bad_lines, max_skipped, layout)
        for _, (hashes_by_key, part) in runner.map_shards(_index_shard, shared, shards, progress):
            tally.add(part)
            for key, hashes in hashes_by_key.items():
                add(key, hashes)
    done = [0]

    def on_bytes(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    for shard in shards if runner is None else ():  # in this process, spilling as it goes (memory stays bounded)
        reader = ShardReader(shard, text_field, skip_bad=skip_bad_lines, max_skipped=max_skipped, layout=layout)
        for key, hashes in _shard_hashes(reader, ns, batch_chars, on_bytes):
            add(key, hashes)
        tally.add(ShardTally.of_reader(reader))
    tally.validate(max_bad_lines, text_field)  # before anything is written
    out = stage / f"parts-{build}"
    out.mkdir()
    parts = {}
    for key in keys:
        spill(key)
        merged = _sorted_unique(np.concatenate([np.load(f) for f in runs[key]]))
        for f in runs[key]:
            f.unlink()
        name = _part_key(*key)
        f = out / f"{name}.npy"
        with open(f, "wb") as fh:
            np.save(fh, merged)
            fh.flush()
            os.fsync(fh.fileno())
        parts[name] = {"file": f"{out.name}/{f.name}", "bytes": f.stat().st_size, "sha256": sha256_file(f),
                       "count": int(merged.size)}
    tmp.rmdir()
    return parts, tally, total


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
