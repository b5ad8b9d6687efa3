"""The corpus side: read a training corpus, find benchmark items in it, and report what was found.

    readers.py     streaming readers (JSONL, text, parquet; compressed, remote) and byte-range shards
    layouts.py     record layouts (text, Alpaca, prompt/completion, messages, ShareGPT, benchmark-shaped)
    engines.py     where shards run: this process, a process pool, or Ray
    scan.py        the scan: fit the detectors, scan shards, merge, label
    index.py       the persistent index and `check`
    report.py      labels, per-item results, the JSONL report
    matches.py     --write-matches: every matched document or span, streamed
    clean.py       --write-clean-corpus and --write-clean: the corpus or benchmark without what matched

The detectors themselves are plugins in `itd.detectors`. The readers' names are exported here too, so
`from itd.corpus import iter_documents` reads as it always did.
"""

from itd.corpus.readers import (
    CORPUS_SUFFIXES,
    HF_PREFIX,
    Document,
    Shard,
    ShardReader,
    ZstdFrames,
    expand_paths,
    file_kind,
    is_url,
    iter_documents,
    plan_shards,
    resolve_layout,
    url_file_info,
)

__all__ = [
    "Document",
    "Shard",
    "expand_paths",
    "plan_shards",
    "ShardReader",
    "iter_documents",
    "is_url",
    "url_file_info",
    "CORPUS_SUFFIXES",
    "resolve_layout",
    "HF_PREFIX",
    "file_kind",
    "ZstdFrames",
]
