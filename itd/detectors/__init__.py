"""Corpus-side contamination detectors, behind one interface and a registry (`DETECTORS`)."""

from itd.detectors import minhash as _minhash  # noqa: F401  (registers "minhash")
from itd.detectors import ngram as _ngram  # noqa: F401  (registers "ngram")
from itd.detectors import semantic as _semantic  # noqa: F401  (registers "semantic"; torch loads lazily)
from itd.detectors.base import DETECTORS, CorpusDetector, DocBatch, Evidence, EvidenceBook, Finding

__all__ = ["DETECTORS", "CorpusDetector", "DocBatch", "Evidence", "EvidenceBook", "Finding"]
