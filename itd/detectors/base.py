"""The corpus-detector interface, its registry, and the records detectors produce.

A corpus detector is fitted on the benchmark once, then streams document batches: `scan_batch` returns a
partial result, partial results from any number of batches or worker processes are combined with `merge`,
and `finish` turns the merged partial into one `Finding` per sample. Detectors are picklable so a process pool
or a cluster can run them.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from itd.core import Sample
from itd.core.document import Document
from itd.core.registry import Registry
from itd.core.text import TokenizedBatch, fold_for_alignment, strip_markup

__all__ = [
    "DETECTORS",
    "CorpusDetector",
    "DocBatch",
    "Evidence",
    "EvidenceBook",
    "Finding",
    "align",
    "answer_key_end",
    "label_text",
    "MAX_MATCH_TOKENS",
]

DETECTORS: Registry[type["CorpusDetector"]] = Registry("detector")

MAX_MATCH_TOKENS = 2048
"""The longest stretch of tokens one match is compared or shown as. A benchmark item longer than this (rare:
GSM8K items have at most ~320 tokens, MMLU items ~800) is fuzzily compared by its first (question) and last
(question + answer) `MAX_MATCH_TOKENS` tokens, a piece of evidence shows at most this many of its tokens, and
long documents are read in windows overlapping by at most twice this many tokens. This bounds memory and time by
design, whatever the lengths of the items and the documents."""


@dataclass(slots=True)
class DocBatch:
    """A batch of corpus documents with their normalised texts tokenised once for every detector."""

    docs: list[Document]
    normalized: list[str]
    tokens: TokenizedBatch


@dataclass(slots=True, order=True)
class Evidence:
    """A verified match: where in which corpus document a sample (or a part of it) was found."""

    score: float
    detector: str = field(compare=False)
    match: str = field(compare=False)  # "raw", "numnorm" (ngram) or "fuzzy" (minhash)
    part: str = field(compare=False)  # "question", "answer" or "question+answer"
    doc: str = field(compare=False)  # "file:line"
    start: int = field(compare=False)  # character offsets in the document text
    end: int = field(compare=False)
    text: str = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "match": self.match,
            "part": self.part,
            "doc": self.doc,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 2),
            "text": self.text,
        }


def _rank(ev: Evidence) -> tuple:
    """Total order of evidence, best first: higher score, then document, offsets and kind. Ties are broken the
    same way whatever order evidence arrives in, so merged books do not depend on the order shards finish in."""
    return (-ev.score, ev.doc, ev.start, ev.end, ev.detector, ev.part, ev.match, ev.text)


def _overlap_rank(ev: Evidence) -> tuple:
    """Which of two overlapping pieces of evidence of one kind stays: the higher score, then the longer span (a
    window boundary of a long document can cut a copy, whose part in that window also scores high)."""
    return (-ev.score, ev.start - ev.end, _rank(ev))


class EvidenceBook:
    """The best `limit` pieces of evidence per sample (highest score first), mergeable across workers in any
    order (ties are broken by `_rank`). With `keep_all`, every piece added (not merged) is also listed in
    `all`, uncapped, as (sample, evidence), for a caller to drain (`--write-matches`)."""

    def __init__(self, limit: int = 5, keep_all: bool = False):
        if limit < 1:
            raise ValueError("evidence limit must be >= 1")
        self.limit = limit
        self._heaps: dict[int, list[Evidence]] = {}
        self.all: list[tuple[int, Evidence]] | None = [] if keep_all else None

    def add(self, sample: int, ev: Evidence) -> None:
        """Keep `ev` if it is among the best; overlapping evidence of one kind in one document counts once."""
        if self.all is not None:
            self.all.append((sample, ev))
        self._keep(sample, ev)

    def _keep(self, sample: int, ev: Evidence) -> None:
        kept = self._heaps.setdefault(sample, [])  # at most `limit` pieces, in no particular order
        for i, e in enumerate(kept):
            if (e.doc, e.detector, e.part) == (ev.doc, ev.detector, ev.part) and e.start < ev.end and ev.start < e.end:
                if _overlap_rank(ev) < _overlap_rank(e):
                    kept[i] = ev
                return
        if len(kept) < self.limit:
            kept.append(ev)
            return
        worst = max(range(len(kept)), key=lambda i: _rank(kept[i]))
        if _rank(ev) < _rank(kept[worst]):
            kept[worst] = ev

    def merge(self, other: "EvidenceBook") -> "EvidenceBook":
        log, self.all = self.all, None  # merged evidence was listed when it was first added
        try:
            for sample, evs in other._heaps.items():
                for ev in evs:
                    self.add(sample, ev)
        finally:
            self.all = log
        return self

    def get(self, sample: int) -> list[Evidence]:
        return sorted(self._heaps.get(sample, ()), key=_rank)

    def shift_lines(self, file: str, offset: int) -> None:
        """Add `offset` to the line number of every evidence from `file` (used when merging file shards)."""
        prefix = file + ":"
        for evs in self._heaps.values():
            for ev in evs:
                if ev.doc.startswith(prefix):
                    ev.doc = f"{file}:{int(ev.doc[len(prefix):]) + offset}"


@dataclass(slots=True)
class Finding:
    """What one detector concluded about one sample.

    `input_hit`/`label_hit`: the detector found the question / the answer part in the corpus under its own
    thresholds. `details` holds the detector's numbers (coverage, best similarity) for the report.
    """

    detector: str
    input_hit: bool
    label_hit: bool
    details: dict[str, Any]
    evidence: list[Evidence]
    checked: bool = True


_KEY_PREFIX = re.compile(r"\b(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?[*_]*\s*[:=-]?[*_]*\s*", re.IGNORECASE)
_KEY_LETTER = re.compile(r"\(?([a-z])\)?(?![a-z0-9])", re.IGNORECASE)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_SPACES = re.compile(r"\s+")


def label_text(sample: Sample) -> str:
    """The label part a corpus detector looks for as text: the worked solution or the answer.

    Empty for a multiple-choice item: its correct choice is already among the choices in the question part, so
    finding that text says nothing about the key. The key of an MCQ item is found by `answer_key_end` instead.
    """
    return "" if sample.is_mcq else sample.answer_text()


def answer_key_end(sample: Sample, text: str, pos: int, slack: int = 16, output_starts: Sequence[int] = ()) -> int | None:
    """Where the answer key of an MCQ `sample` ends when `text` states it right after `pos`, else None.

    A key is "Answer" (or "The correct answer is") followed by the letter of the correct choice or by the
    correct choice's text, starting within `slack` characters of `pos` (the end of the matched item; fuzzy
    alignment can stop a few characters short of it). In a record of several texts (`output_starts`: where its
    responses, assistant turns or answers start) a response starting there is the answer whether it says
    "Answer" or not: "B", "(B) Paris", "Paris" and "The answer is B" all state the key.
    """
    if not sample.is_mcq or not isinstance(sample.answer, int):
        return None
    # markup and line breaks between the choices and the key (`</p>\n<p><b>Answer:</b> C`) do not count
    # towards `slack`: only other characters do (`strip_markup` keeps the text's length, so offsets hold)
    window = strip_markup(text[pos : pos + 512])
    m = _KEY_PREFIX.search(window)
    if m is not None and len(_SPACES.sub("", window[: m.start()])) <= slack:
        at = m.end()
    else:
        start = next((s - pos for s in output_starts if pos <= s <= pos + slack + 2), None)
        if start is None:
            return None
        m = _KEY_PREFIX.match(window, start)
        at = start if m is None else m.end()
    letter = _KEY_LETTER.match(window, at)
    if letter is not None and letter.group(1).lower() == _LETTERS[sample.answer]:
        return pos + letter.end()
    choice, _ = fold_for_alignment(sample.choices[sample.answer])
    folded, index = fold_for_alignment(window[at : at + 2 * len(choice) + 16])
    if choice and folded.startswith(choice) and folded[len(choice) : len(choice) + 1] in ("", " "):
        return pos + at + index[len(choice) - 1] + 1
    return None


@functools.lru_cache(maxsize=1 << 16)
def _folded_needle(needle: str) -> str:
    """A benchmark text folded for `align`, once per text: a corpus full of copies aligns the same texts again and
    again (the cache holds a benchmark's entries and answers; 65,536 texts, MMLU has about 38,000)."""
    return fold_for_alignment(needle)[0]


def align(needle: str, doc_text: str, lo: int, hi: int, margin: int) -> tuple[float, int, int]:
    """Best fuzzy alignment of `needle` inside `doc_text[lo-margin : hi+margin]`.

    Only that bounded window is compared, never the whole document. rapidfuzz's partial-ratio alignment finds
    the span; the score is the plain similarity ratio of the whole needle with that span (0-100), so a span
    that holds only part of the needle scores low. Case, punctuation and whitespace runs are folded first.
    Returns (score, start, end) in document character offsets.
    """
    from rapidfuzz import fuzz

    w0 = max(0, lo - margin)
    w1 = min(len(doc_text), hi + margin)
    folded_needle = _folded_needle(needle)
    window, index = fold_for_alignment(doc_text[w0:w1])
    if not folded_needle or not window:
        return 0.0, w0, w0
    res = fuzz.partial_ratio_alignment(folded_needle, window)
    if len(folded_needle) <= len(window):
        a, b = res.dest_start, res.dest_end
    else:  # the window is shorter than the needle: all of it is the match
        a, b = 0, len(window)
    score = fuzz.ratio(folded_needle, window[a:b])
    start = w0 + index[a]
    end = w0 + index[b - 1] + 1 if b > a else start
    return float(score), start, end


class CorpusDetector(abc.ABC):
    """Finds benchmark samples inside a streamed corpus."""

    name: ClassVar[str]
    Config: ClassVar[type]
    """The detector's config dataclass: what `DETECTORS.create(name, config)` and the pipeline's `[scan.NAME]`
    table build it from."""
    context_tokens: int = 0
    """Consecutive corpus tokens one match can span (set by `fit`): a long document is read in windows that
    overlap by at least this many tokens (`itd.corpus.scan.batches`), so no match is cut in two."""
    record_matches: bool = False  # set by a scan that writes every match: books keep all evidence added
    batch_chars: ClassVar[int | None] = None
    """The largest batch of corpus text this detector wants at a time, where a batch takes long (the semantic
    detector embeds it), so the scan's byte progress moves often enough; None: the scan's own batch size."""
    fit_progress: Callable[[int, int], None] | None = None
    """Set by the scan while `fit` runs: told `(done, total)` by a detector whose fit takes long (the semantic
    detector embedding the benchmark); never sent to worker processes."""

    def new_book(self) -> EvidenceBook:
        """An empty evidence book for a partial result."""
        return EvidenceBook(self.evidence_limit, keep_all=self.record_matches)

    def __init__(self, evidence_limit: int = 5):
        if evidence_limit < 1:
            raise ValueError("evidence_limit must be >= 1")
        self.evidence_limit = evidence_limit
        self.samples: list[Sample] = []

    @classmethod
    def from_config(cls, config: Any, *, evidence_limit: int = 5, workers: int = 1) -> "CorpusDetector":
        """Build the detector from its `Config` and the scan's settings it shares (the evidence kept per item;
        the scan's worker processes, for a detector that sizes its own work by them)."""
        return cls(**dataclasses.asdict(config), evidence_limit=evidence_limit)

    @abc.abstractmethod
    def fit(self, samples: Sequence[Sample]) -> "CorpusDetector":
        """Index the benchmark; returns self."""

    @abc.abstractmethod
    def empty(self) -> Any:
        """A partial result for no documents."""

    @abc.abstractmethod
    def scan_batch(self, batch: DocBatch) -> Any:
        """Scan one batch of documents; returns a partial result."""

    @abc.abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Combine two partial results (may modify and return `a`)."""

    @abc.abstractmethod
    def finish(self, partial: Any) -> list[Finding]:
        """One `Finding` per fitted sample, in sample order."""

    @staticmethod
    def evidence_of(partial: Any) -> EvidenceBook:
        """The evidence book inside a partial result (used to fix line numbers of sharded files)."""
        return partial.evidence
