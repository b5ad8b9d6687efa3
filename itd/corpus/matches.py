"""Every corpus match of a scan, uncapped (`itd scan --write-matches FILE`).

While the corpus is read, each shard's matches are spooled to a file of their own beside the output; once the
scan has labelled the items, the matches of contaminated items (by a detector that flagged the item) are
streamed from the spool, in corpus order, into the output, which is replaced atomically. A match record:

    {"item": "test:12", "benchmark": "gsm8k", "label": "input_and_label_contaminated", "detector": "ngram",
     "match": "raw", "part": "question+answer", "doc": "corpus/a.jsonl:7", "file": "corpus/a.jsonl", "line": 7,
     "start": 120, "end": 873, "score": 98.4, "text": "..."}

`start`/`end` are character offsets in the document as read (a record of several texts: its texts joined, see
`itd.corpus.layouts`).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from itd.core.io import atomic_write, redact_text
from itd.detectors.base import Evidence

__all__ = ["MatchSpool", "match_record", "iter_matches", "read_matches"]


def match_record(result: Any, ev: Evidence) -> dict[str, Any]:
    """The JSON record of one match of `result`'s item (a `SampleResult`)."""
    file, _, line = ev.doc.rpartition(":")
    return {
        "item": result.sample.id,
        "benchmark": result.sample.benchmark,
        "source": result.sample.source.file if result.sample.source else None,
        "label": result.label,
        "detector": ev.detector,
        "match": ev.match,
        "part": ev.part,
        "doc": redact_text(ev.doc),
        "file": redact_text(file),
        "line": int(line),
        "start": ev.start,
        "end": ev.end,
        "score": round(float(ev.score), 2),
        "text": ev.text,
    }


class MatchSpool:
    """Spools per-shard matches to disk and writes the matches of contaminated items to `out` at the end.
    Does nothing when `out` is None."""

    def __init__(self, out: str | os.PathLike | None):
        self.out = None if out is None else Path(out)
        self._dir: Path | None = None

    def __enter__(self) -> "MatchSpool":
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".spool", dir=self.out.parent))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def put(self, shard_index: int, matches: list[tuple[int, int, Evidence]]) -> None:
        """Spool the matches of shard `shard_index` ((detector position, item index, evidence), in document
        order)."""
        if self._dir is None or not matches:
            return
        with open(self._dir / f"{shard_index:08d}.pkl", "wb") as f:
            pickle.dump(matches, f, protocol=pickle.HIGHEST_PROTOCOL)

    def finish(self, results: Sequence[Sequence[Any]], owner: Sequence[int], n_shards: int,
               unrecorded: Sequence[set[str]] = ()) -> int | None:
        """Write the matches of contaminated items (by a detector that flagged the item) to `out`, shard by
        shard. `results[g]`: the `SampleResult`s of benchmark g; `owner[i]`: the benchmark of detector position i;
        detectors named in `unrecorded[g]` (whose evidence is chosen only at the end, e.g. semantic's top-k)
        contribute their final evidence. Returns the number of matches written (None without `out`)."""
        if self.out is None or self._dir is None:
            return None
        flagged = [[set(r.detected_by) if r.label != "clean" else set() for r in rs] for rs in results]
        written = 0
        with atomic_write(self.out) as f:
            for index in range(n_shards):
                part = self._dir / f"{index:08d}.pkl"
                if not part.exists():
                    continue
                with open(part, "rb") as g:
                    matches = pickle.load(g)
                for position, sample, ev in matches:
                    g = owner[position]
                    if ev.detector in flagged[g][sample]:
                        f.write(json.dumps(match_record(results[g][sample], ev), ensure_ascii=False) + "\n")
                        written += 1
                part.unlink()
            for g, names in enumerate(unrecorded):
                for r, detectors in zip(results[g], flagged[g]):
                    for ev in r.evidence:
                        if ev.detector in names and ev.detector in detectors:
                            f.write(json.dumps(match_record(r, ev), ensure_ascii=False) + "\n")
                            written += 1
        return written


def iter_matches(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The match records of a `--write-matches` file, streamed."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_matches(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The match records of a `--write-matches` file."""
    return list(iter_matches(path))
