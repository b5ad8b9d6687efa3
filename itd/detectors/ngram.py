"""Exact n-gram containment (GPT-3 / Llama-2 / PaLM style), with a raw and a number-normalised pass.

The benchmark's n-grams are indexed (the benchmark is small) and the corpus is streamed past them. Per sample
the detector reports coverage, the fraction of its tokens covered by n-grams found in the corpus, separately for
the question part and the answer part. The number-normalised pass turns every number into one placeholder, so
a copy with the numbers changed is caught too; the finding says which pass matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from itd.core import Sample
from itd.core.text import HashFilter, byte_to_char, expand_ranges, ngram_hashes, ngram_hashes_at, normalize, tokenize
from itd.detectors.base import (
    DETECTORS,
    MAX_MATCH_TOKENS,
    CorpusDetector,
    DocBatch,
    Evidence,
    EvidenceBook,
    Finding,
    align,
    answer_key_end,
    label_text,
)

__all__ = ["NGramConfig", "NGramDetector", "NGramPartial", "byte_to_char", "items_per_ngram", "neighbour_explains"]

PASSES = ("raw", "numnorm")
_MIN_SHARED_LIMIT = 25  # n-grams in more items than this (or 0.5% of the benchmark) are boilerplate
_KEY_LETTERS = "abcdefghij"


def items_per_ngram(h: np.ndarray, item: np.ndarray) -> np.ndarray:
    """For each n-gram occurrence (`h[j]` found in benchmark item `item[j]`): how many distinct items hold it."""
    if not h.size:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((item, h))
    hs, its = h[order], item[order]
    new_pair = np.ones(hs.size, dtype=bool)
    new_pair[1:] = (hs[1:] != hs[:-1]) | (its[1:] != its[:-1])
    pair_h = hs[new_pair]
    starts = np.flatnonzero(np.concatenate([[True], pair_h[1:] != pair_h[:-1]]))
    keys, counts = pair_h[starts], np.diff(np.append(starts, pair_h.size))
    return counts[np.searchsorted(keys, h)]


def neighbour_explains(item: int, units: Sequence, found: Sequence, holders) -> bool:
    """Whether the `found` units (n-grams, shingles) of a benchmark `item` with no unit of its own are all held by
    one other item that lacks some of the item's `units`: a copy of that neighbour explains the match, which then
    says nothing about this item (an item made of one neighbour's stem and another's options). An item whose
    units another item holds all of (a duplicate) cannot be told apart, so a match is not explained away.
    `holders(unit)` is the set of items that hold a unit."""
    if not len(found):
        return False
    candidates = set.intersection(*(holders(k) for k in found)) - {item}
    return any(any(j not in holders(k) for k in units) for j in candidates)


def _previous_same(hashes: np.ndarray) -> np.ndarray:
    """For each token, the index of the last earlier token with the same hash, -1 if none."""
    order = np.lexsort((np.arange(hashes.size), hashes))
    prev = np.full(hashes.size, -1, dtype=np.int64)
    same = hashes[order[1:]] == hashes[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _distinct_words(prev: np.ndarray, is_number: np.ndarray | None, pos: np.ndarray, n: int) -> np.ndarray:
    """Distinct tokens in each n-gram starting at `pos` (`prev` from `_previous_same`), not counting numbers when
    `is_number` is given (the number-normalised pass, where every number is the same placeholder)."""
    counts = np.zeros(pos.size, dtype=np.int64)
    for k in range(n):
        at = pos + k
        new = prev[at] < pos
        if is_number is not None:
            new &= ~is_number[at]
        counts += new
    return counts


@dataclass(slots=True)
class _Table:
    """Sorted unique n-gram hashes of the benchmark for one (pass, n), with their occurrences."""

    keys: np.ndarray  # sorted unique uint64
    ptr: np.ndarray  # occurrences of keys[u] are occ[ptr[u]:ptr[u+1]]
    occ: np.ndarray  # global benchmark token index of each occurrence's first token
    distinct: np.ndarray  # keys[u] occurs in one benchmark item only (it tells that item apart)
    numeric: np.ndarray  # keys[u]'s n-gram holds a number token (else its number-pass hash is its raw one)


@dataclass(slots=True)
class NGramPartial:
    """Which benchmark n-grams were seen, per pass and n, plus evidence; mergeable."""

    found: dict[tuple[int, int], np.ndarray]
    evidence: EvidenceBook
    key_found: np.ndarray  # per sample: an MCQ key n-gram ("... last choice answer: C") was seen


@dataclass(frozen=True)
class NGramConfig:
    """Settings of the `ngram` detector (the pipeline's `[scan.ngram]` table; see `NGramDetector`), checked when
    made."""

    n: int = 13
    n_short: int = 8
    short_item_tokens: int = 26
    min_tokens: int = 5
    input_threshold: float = 0.4
    label_threshold: float = 0.4
    match_short_items: bool = True
    stem_min_tokens: int = 13
    stem_threshold: float = 0.6

    def __post_init__(self) -> None:
        if not 1 <= self.n_short <= self.n:
            raise ValueError(f"need 1 <= n_short <= n, got n={self.n}, n_short={self.n_short}")
        if not 1 <= self.min_tokens <= self.n_short:
            raise ValueError(f"need 1 <= min_tokens <= n_short, got {self.min_tokens}")
        for name in ("input_threshold", "label_threshold", "stem_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


@DETECTORS.register("ngram")
class NGramDetector(CorpusDetector):
    """Exact n-gram containment with coverage per part and a number-normalised pass.

    n: n-gram length; short items (fewer than `short_item_tokens` tokens, question and answer together) use
    `n_short`; items shorter than `n_short` are matched whole if they have at least `min_tokens` tokens and
    `match_short_items` is set, else reported unchecked. A question coverage >= `input_threshold` marks the input as contaminated, an answer
    coverage >= `label_threshold` the label. Coverage counts only n-grams that tell the item apart from the rest
    of the benchmark (see `coverage`). The stem of a multiple-choice item (its question without the options) is
    measured by itself too: a stem of at least `stem_min_tokens` tokens covered >= `stem_threshold` is an input
    leak even when the options are not there. The label of a multiple-choice item is its key stated after the
    choices; a worked solution found without its question counts only with the same numbers. The finding's `match` says which pass found it: "raw" (a copy with
    the same numbers) or "numnorm" (it matches clearly better once numbers are ignored: other numbers). An n-gram
    in which distinct words are not the majority of tokens (a numeric option list, "# + # = #") is not indexed.
    """

    name = "ngram"

    Config: ClassVar[type] = NGramConfig

    def __init__(
        self,
        n: int = 13,
        n_short: int = 8,
        short_item_tokens: int = 26,
        min_tokens: int = 5,
        input_threshold: float = 0.4,
        label_threshold: float = 0.4,
        evidence_limit: int = 5,
        match_short_items: bool = True,
        stem_min_tokens: int = 13,
        stem_threshold: float = 0.6,
    ):
        super().__init__(evidence_limit)
        NGramConfig(n, n_short, short_item_tokens, min_tokens, input_threshold, label_threshold,  # validates
                    match_short_items, stem_min_tokens, stem_threshold)
        self.n, self.n_short, self.short_item_tokens, self.min_tokens = n, n_short, short_item_tokens, min_tokens
        self.input_threshold, self.label_threshold = input_threshold, label_threshold
        self.match_short_items = match_short_items
        self.stem_min_tokens, self.stem_threshold = stem_min_tokens, stem_threshold

    # ---- benchmark side -------------------------------------------------------------------------------
    def fit(self, samples: Sequence[Sample]) -> "NGramDetector":
        self.samples = list(samples)
        texts: list[str] = []
        for s in self.samples:
            texts += [normalize(s.prompt_text()), normalize(label_text(s))]
        self._norm = texts
        tb = tokenize(texts, normalized=True)
        n_samples = len(self.samples)
        sample_of = (tb.doc // 2).astype(np.int64)
        self._is_answer = (tb.doc % 2).astype(bool)
        self._sample_start = tb.doc_token_offsets[0::2]  # length n_samples + 1 (offsets of even texts, then end)
        if self._sample_start.size < n_samples + 1:
            self._sample_start = np.append(self._sample_start, tb.n_tokens)
        lengths = np.diff(self._sample_start)
        self._length = lengths
        # a copy of the longest item (with as many tokens again inserted) lies whole in one window of a long document
        self.context_tokens = max(self.n, min(2 * int(lengths.max(initial=0)), 2 * MAX_MATCH_TOKENS))
        self._prompt_len = tb.doc_token_offsets[1::2][:n_samples] - self._sample_start[:n_samples]
        # an MCQ stem (the question without its choices) is the first tokens of the prompt
        mcq = [i for i, s in enumerate(self.samples) if s.is_mcq]
        self._stem_len = np.zeros(n_samples, dtype=np.int64)
        if mcq:
            stems = tokenize([normalize(self.samples[i].question) for i in mcq], normalized=True)
            self._stem_len[mcq] = np.diff(stems.doc_token_offsets)
        local = np.arange(tb.n_tokens) - self._sample_start[sample_of]
        self._is_stem = (~self._is_answer) & (local < self._stem_len[sample_of])
        n_eff = np.where(lengths >= self.short_item_tokens, self.n, self.n_short)
        n_eff = np.where(lengths < self.n_short, lengths if self.match_short_items else 0, n_eff)
        self._n_eff = np.where(lengths < self.min_tokens, 0, n_eff)
        self.ns = sorted(set(int(v) for v in self._n_eff if v > 0))
        # character offsets of each benchmark token inside its own normalised text (for evidence needles)
        self._tok_start = tb.starts.copy()
        self._tok_end = tb.ends.copy()
        for d in np.flatnonzero([not t.isascii() for t in texts]):
            sl = slice(tb.doc_token_offsets[d], tb.doc_token_offsets[d + 1])
            self._tok_start[sl] = byte_to_char(texts[d], tb.starts[sl])
            self._tok_end[sl] = byte_to_char(texts[d], tb.ends[sl])
        self._tok_doc = tb.doc
        self._tables: dict[tuple[int, int], _Table] = {}
        self._holders: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._shared_limit = max(_MIN_SHARED_LIMIT, int(np.ceil(0.005 * n_samples)))
        self._distinct_tok = np.zeros((len(PASSES), tb.n_tokens), dtype=bool)
        for p, hashes in enumerate((tb.hashes, tb.number_hashes())):
            delta = np.zeros(tb.n_tokens + 1, dtype=np.int64)
            prev = _previous_same(hashes)
            for n, (h, pos) in ngram_hashes(hashes, sample_of, self.ns).items():
                # in how many items each n-gram occurs, over every item long enough for it (whatever n the
                # item itself is matched with): a phrase two items share does not tell either of them apart
                items = items_per_ngram(h, sample_of[pos])
                keep = self._n_eff[sample_of[pos]] == n
                # an n-gram made of few distinct words ("# hours # hours # hours # hours", a numeric option list,
                # "# + # = #") matches any arithmetic or list in a corpus: most of its tokens must be distinct words
                # (numbers do not count in the number-normalised pass, where they are all one placeholder)
                mine = np.flatnonzero(keep)
                keep[mine] = _distinct_words(prev, tb.is_number if p == 1 else None, pos[mine], n) * 2 > n
                h, pos, items = h[keep], pos[keep], items[keep]
                order = np.argsort(h, kind="stable")
                h, pos, items = h[order], pos[order], items[order]
                del order
                starts = np.ones(h.size, dtype=bool)  # one sort: runs of equal keys, occurrences in order
                starts[1:] = h[1:] != h[:-1]
                count = np.diff(np.append(np.flatnonzero(starts), h.size))
                # an n-gram that many items share is benchmark boilerplate (a subject's fixed preamble):
                # finding it in a corpus says nothing about any one item, so it is not indexed
                common = np.repeat(count > self._shared_limit, count)
                if common.any():
                    h, pos, items, starts = h[~common], pos[~common], items[~common], starts[~common]
                first = np.flatnonzero(starts)
                distinct = items[first] == 1
                numeric = tb.holds_number(pos[first], n)
                self._tables[(p, n)] = _Table(h[first], np.append(first, h.size).astype(np.int64), pos, distinct,
                                              numeric)
                unique_pos = pos[items == 1]
                np.add.at(delta, unique_pos, 1)
                np.add.at(delta, unique_pos + n, -1)
            self._distinct_tok[p] = np.cumsum(delta[:-1]) > 0
            self._fit_holders(p, hashes, sample_of)
        self._fit_keys(tb)
        self._filter = HashFilter(np.concatenate([*(table.keys for table in self._tables.values()), self._key_hashes]))
        self._n_tokens = tb.n_tokens
        self._sample_of = sample_of
        return self

    def _fit_holders(self, p: int, hashes: np.ndarray, sample_of: np.ndarray) -> None:
        """For the items with a part that has no distinctive token in pass `p`: which items (whatever n they are
        matched with) hold each of their indexed n-grams, `self._holders[(p, n)]` = (sorted hashes, items)."""
        n_s = len(self.samples)
        plain = np.zeros(n_s, dtype=bool)
        for mask in (~self._is_answer, self._is_answer, self._is_stem):
            total = np.bincount(sample_of[mask], minlength=n_s)
            plain |= (total > 0) & (np.bincount(sample_of[mask & self._distinct_tok[p]], minlength=n_s) == 0)
        plain &= self._n_eff > 0
        if not plain.any():
            return
        for n, (h, pos) in ngram_hashes(hashes, sample_of, self.ns).items():
            table = self._tables.get((p, n))
            if table is None or not table.keys.size:
                continue
            wanted = np.unique(h[plain[sample_of[pos]] & (self._n_eff[sample_of[pos]] == n)])
            wanted = wanted[np.isin(wanted, table.keys)]
            sel = np.isin(h, wanted)
            hs, its = h[sel], sample_of[pos[sel]]
            order = np.lexsort((its, hs))
            self._holders[(p, n)] = (hs[order], its[order])

    def _fit_keys(self, tb) -> None:
        """Raw-pass `n_short`-grams that end an MCQ item with its key stated after the choices ("... <last choice>
        answer: c", "... answer is c", "... answer <correct choice>"), so a key is seen through a persistent index
        too, where no document text is at hand."""
        k = self.n_short
        words = tokenize(["answer is " + " ".join(_KEY_LETTERS)], normalized=True).hashes
        answer, is_, letters = words[0], words[1], words[2:]
        mcq = [i for i, s in enumerate(self.samples) if s.is_mcq and isinstance(s.answer, int) and self._n_eff[i] > 0]
        correct = tokenize([normalize(self.samples[i].choices[self.samples[i].answer]) for i in mcq], normalized=True)
        seqs: list[np.ndarray] = []
        owner: list[int] = []
        for j, i in enumerate(mcq):
            letter = letters[self.samples[i].answer] if self.samples[i].answer < len(letters) else None
            choice = correct.hashes[correct.doc_token_offsets[j] : correct.doc_token_offsets[j + 1]][:3]
            forms = [np.array([answer, *choice], dtype=np.uint64)] if choice.size else []
            if letter is not None:
                forms += [np.array([answer, letter], dtype=np.uint64), np.array([answer, is_, letter], dtype=np.uint64)]
            start = int(self._sample_start[i])
            prompt = tb.hashes[start : start + int(self._prompt_len[i])]
            for form in forms:
                tail = k - form.size
                if 1 <= tail <= prompt.size:
                    seqs.append(np.concatenate([prompt[prompt.size - tail :], form]))
                    owner.append(i)
        if seqs:
            (h, pos), = ngram_hashes(np.concatenate(seqs), np.repeat(np.arange(len(seqs)), k), [k]).values()
            sample = np.asarray(owner, dtype=np.int64)[pos // k]
            # items whose choices end alike ("... not wrong, not wrong answer: b") share a key n-gram, which then
            # names none of them
            own = items_per_ngram(h, sample) == 1
            h, sample = h[own], sample[own]
            order = np.argsort(h, kind="stable")
            self._key_hashes, self._key_sample = h[order], sample[order]
        else:
            self._key_hashes, self._key_sample = np.zeros(0, np.uint64), np.zeros(0, np.int64)

    def _keys_seen(self, hashes: np.ndarray) -> np.ndarray:
        """Per sample: whether any of its key n-grams is among `hashes` (raw-pass `n_short`-grams)."""
        out = np.zeros(len(self.samples), dtype=bool)
        if self._key_hashes.size and hashes.size:
            maybe = hashes[self._filter.maybe(hashes)]
            lo = np.searchsorted(self._key_hashes, maybe, side="left")
            hi = np.searchsorted(self._key_hashes, maybe, side="right")
            for a, b in zip(lo[hi > lo], hi[hi > lo]):  # few: a key n-gram found in the corpus
                out[self._key_sample[a:b]] = True
        return out

    def empty(self) -> NGramPartial:
        found = {k: np.zeros(t.keys.size, dtype=bool) for k, t in self._tables.items()}
        return NGramPartial(found, self.new_book(), np.zeros(len(self.samples), dtype=bool))

    # ---- corpus side ----------------------------------------------------------------------------------
    def scan_batch(self, batch: DocBatch) -> NGramPartial:
        part = self.empty()
        tb = batch.tokens
        if tb.n_tokens == 0 or not self._tables:
            return part
        groups: list[tuple[np.ndarray, ...]] = []  # per hit: corpus first token, benchmark first token, n, pass
        grams = ngram_hashes(tb.hashes, tb.doc, self.ns + ([self.n_short] if self._key_hashes.size else []))
        if self._key_hashes.size:
            part.key_found |= self._keys_seen(grams[self.n_short][0])
        number_hashes = tb.number_hashes()
        for n in self.ns:
            q, pos = grams[n]
            if not q.size:
                continue
            # the filter (of every table's keys) rejects almost every corpus n-gram before the binary search
            raw = np.flatnonzero(self._filter.maybe(q))
            # an n-gram without a number hashes in the number pass as in the raw one, where the filter has
            # already rejected it or not: only those with a number are hashed and looked up again
            ask = tb.holds_number(pos, n)
            ask[raw] = True
            ask = np.flatnonzero(ask)
            q_number = ngram_hashes_at(number_hashes, pos[ask], n)
            number = self._filter.maybe(q_number)
            for p, (maybe, hashes) in enumerate(((raw, q[raw]), (ask[number], q_number[number]))):
                table = self._tables[(p, n)]
                if not table.keys.size:
                    continue
                idx = np.searchsorted(table.keys, hashes)
                idx[idx == table.keys.size] = 0
                found = table.keys[idx] == hashes
                hit = maybe[found]
                if not hit.size:
                    continue
                u = idx[found]
                part.found[(p, n)][u] = True
                counts = table.ptr[u + 1] - table.ptr[u]
                cpos = pos[hit]
                # expand each hit to every benchmark occurrence of its n-gram
                rep = np.repeat(np.arange(u.size), counts)
                bpos = table.occ[expand_ranges(table.ptr[u], counts)]
                groups.append((cpos[rep], bpos, np.full(rep.size, n), np.full(rep.size, p)))
        if groups:
            self._collect_evidence(batch, *(np.concatenate(g) for g in zip(*groups)), book=part.evidence)
        return part

    def _collect_evidence(self, batch: DocBatch, cpos, bpos, ns, passes, book: EvidenceBook) -> None:
        """Group hits into copies, by (document, sample) and position, and verify each copy's span with rapidfuzz.

        Hits of one sample in one document start a new copy where they are more than the item's length (at most
        `MAX_MATCH_TOKENS`) apart, so two copies far apart in a long document are two pieces of evidence, each
        aligned over its own span; a copy is aligned over at most `MAX_MATCH_TOKENS` of the item's tokens.
        """
        tb = batch.tokens
        doc = tb.doc[cpos].astype(np.int64)
        sample = self._sample_of[bpos]
        key = doc * len(self.samples) + sample
        order = np.lexsort((cpos, key))
        key, cpos, bpos, ns, passes, doc, sample = (a[order] for a in (key, cpos, bpos, ns, passes, doc, sample))
        gap = np.minimum(self._length[sample], MAX_MATCH_TOKENS)
        cut = np.flatnonzero((np.diff(key) != 0) | (np.diff(cpos) > gap[1:])) + 1
        starts = np.concatenate([[0], cut])
        c_lo = np.minimum.reduceat(cpos, starts)
        c_hi = np.minimum(np.maximum.reduceat(cpos + ns - 1, starts), c_lo + 2 * MAX_MATCH_TOKENS)
        b_lo = np.minimum.reduceat(bpos, starts)
        b_hi = np.minimum(np.maximum.reduceat(bpos + ns - 1, starts), b_lo + MAX_MATCH_TOKENS - 1)
        pass_bits = np.bitwise_or.reduceat(1 << passes, starts)
        for g, first in enumerate(starts):
            d, s = int(doc[first]), int(sample[first])
            needle, part_name = self._needle(int(b_lo[g]), int(b_hi[g]))
            document = batch.docs[d]
            lo_b, hi_b = int(tb.starts[c_lo[g]]), int(tb.ends[c_hi[g]])
            lo, hi = (int(x) for x in byte_to_char(batch.normalized[d], np.array([lo_b, hi_b])))
            score, a, b = align(needle, document.text, lo, hi, margin=max(32, len(needle) // 4))
            match = "raw" if pass_bits[g] & 1 else "numnorm"
            key_end = answer_key_end(self.samples[s], document.text, b, slack=16 + len(needle) // 8,
                                     output_starts=document.output_starts())
            if key_end is not None:
                b, part_name = key_end, "question+answer"
            at = document.offset  # a window's offsets are turned into the whole document's
            book.add(s, Evidence(score, self.name, match, part_name, document.id, at + a, at + b, document.text[a:b]))

    def _needle(self, g0: int, g1: int) -> tuple[str, str]:
        """Normalised benchmark text spanning global benchmark tokens g0..g1, and which part it covers."""
        d0, d1 = int(self._tok_doc[g0]), int(self._tok_doc[g1])
        a, b = int(self._tok_start[g0]), int(self._tok_end[g1])
        if d0 == d1:
            return self._norm[d0][a:b], ("answer" if d0 % 2 else "question")
        return self._norm[d0][a:] + "\n" + self._norm[d1][:b], "question+answer"

    def lookup(self, contains) -> NGramPartial:
        """A partial result from a membership test `contains(pass_name, n, hashes) -> bool array` instead of a
        corpus stream (used with a persistent index). The number pass is asked only about n-grams with a number
        (`itd.corpus.index` keeps only those): one without hashes as in the raw pass, which is asked instead."""
        part = self.empty()
        for (p, n), table in self._tables.items():
            found = part.found[(p, n)]
            numeric = table.numeric if p == 1 else np.ones(table.keys.size, dtype=bool)
            found[numeric] = np.asarray(contains(PASSES[p], n, table.keys[numeric]), dtype=bool)
            found[~numeric] = np.asarray(contains(PASSES[0], n, table.keys[~numeric]), dtype=bool)
        if self._key_hashes.size:
            seen = np.asarray(contains(PASSES[0], self.n_short, self._key_hashes), dtype=bool)
            part.key_found[self._key_sample[seen]] = True
        return part

    def merge(self, a: NGramPartial, b: NGramPartial) -> NGramPartial:
        for k, v in b.found.items():
            a.found[k] |= v
        a.key_found |= b.key_found
        a.evidence.merge(b.evidence)
        return a

    # ---- results --------------------------------------------------------------------------------------
    def coverage(self, partial: NGramPartial) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Covered fractions of each part's distinctive tokens, and their counts, arrays [pass, sample, part]
        (part 0 = question, 1 = answer, 2 = MCQ stem, the question without its choices), and the distinctive
        token count of each part, [pass, sample, part].

        A token is distinctive when an n-gram of this item that no other benchmark item holds covers it, and
        only such n-grams count as found: a phrase the item shares with its neighbours (a quoted source passage,
        common option texts, generic solution phrasing) says nothing about this item. A part with no
        distinctive token (its text is duplicated in the benchmark, or made of pieces of several neighbours) is
        measured on all of its n-grams, unless one neighbour holds every n-gram found (`neighbour_explains`); in
        the number-normalised pass only when it has none in the raw pass either (else it differs from its
        neighbours only in its numbers, which that pass ignores).
        """
        n_s = len(self.samples)
        out = np.zeros((len(PASSES), n_s, 3))
        n_covered = np.zeros_like(out, dtype=np.int64)
        sizes = np.zeros((len(PASSES), n_s, 3), dtype=np.int64)
        sample_of = self._sample_of
        masks = (~self._is_answer, self._is_answer, self._is_stem)
        raw_distinct: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(masks)
        for p in range(len(PASSES)):
            delta_all = np.zeros(self._n_tokens + 1, dtype=np.int64)
            delta_distinct = np.zeros(self._n_tokens + 1, dtype=np.int64)
            for (pp, n), table in self._tables.items():
                if pp != p:
                    continue
                u = np.flatnonzero(partial.found[(pp, n)])
                if not u.size:
                    continue
                counts = table.ptr[u + 1] - table.ptr[u]
                rep = np.repeat(u, counts)
                first = table.occ[expand_ranges(table.ptr[u], counts)]
                for delta, sel in ((delta_all, slice(None)), (delta_distinct, table.distinct[rep])):
                    np.add.at(delta, first[sel], 1)
                    np.add.at(delta, first[sel] + n, -1)
            covered_all = np.cumsum(delta_all[:-1]) > 0
            covered_distinct = np.cumsum(delta_distinct[:-1]) > 0
            distinct = self._distinct_tok[p]
            counted = []
            for part, mask in enumerate(masks):
                total = np.bincount(sample_of[mask], minlength=n_s)
                total_d = np.bincount(sample_of[mask & distinct], minlength=n_s)
                hits_all = np.bincount(sample_of[mask & covered_all], minlength=n_s)
                hits_d = np.bincount(sample_of[mask & covered_distinct], minlength=n_s)
                use_d = total_d > 0
                if p == 0:
                    raw_distinct[part] = use_d
                else:
                    # a part that has distinctive tokens only with its numbers (a template its neighbours share
                    # with other numbers) cannot be told apart once numbers are ignored: it has no coverage then
                    hits_all = np.where(raw_distinct[part], 0, hits_all)
                counted.append((total, total_d, hits_all, hits_d, use_d))
            fallback = np.flatnonzero(np.any([(~c[4]) & (c[2] > 0) for c in counted], axis=0))
            explained = self._explained(p, partial, fallback) if fallback.size else fallback
            for part, (total, total_d, hits_all, hits_d, use_d) in enumerate(counted):
                hits_all[explained] = 0
                hits, size = np.where(use_d, hits_d, hits_all), np.where(use_d, total_d, total)
                out[p, :, part] = np.divide(hits, size, out=np.zeros(n_s), where=size > 0)
                n_covered[p, :, part] = hits
                sizes[p, :, part] = size
        return out, n_covered, sizes

    def _explained(self, p: int, partial: NGramPartial, items: np.ndarray) -> np.ndarray:
        """Those of `items` (with no distinctive n-gram in a part) whose n-grams found in pass `p` a copy of one
        neighbour explains (`neighbour_explains`)."""
        units: dict[int, list] = {int(i): [] for i in items}
        found: dict[int, list] = {int(i): [] for i in items}
        holders: dict[tuple[int, int], set[int]] = {}
        for (pp, n), table in self._tables.items():
            if pp != p or not table.keys.size:
                continue
            owner = self._sample_of[table.occ]
            sel = np.flatnonzero(np.isin(owner, items))
            key_of = np.searchsorted(table.ptr, sel, side="right") - 1  # occurrence -> key
            hs, its = self._holders.get((pp, n), (np.zeros(0, np.uint64), np.zeros(0, np.int64)))
            for u, i in zip(key_of.tolist(), owner[sel].tolist()):
                k = (n, u)
                units[i].append(k)
                if k not in holders:
                    key = table.keys[u]
                    lo, hi = np.searchsorted(hs, key, side="left"), np.searchsorted(hs, key, side="right")
                    holders[k] = set(its[lo:hi].tolist()) | set(owner[table.ptr[u] : table.ptr[u + 1]].tolist())
                if partial.found[(pp, n)][u]:
                    found[i].append(k)
        explained = [i for i in units if neighbour_explains(i, units[i], found[i], holders.__getitem__)]
        return np.array(explained, dtype=np.int64)

    def finish(self, partial: NGramPartial) -> list[Finding]:
        cov, counts, sizes = self.coverage(partial)
        # one shared n-gram is a phrase, not a copy: a part needs more covered tokens than one n-gram covers
        # (or all of its tokens, when it is that short)
        needed = np.minimum(sizes, self._n_eff[None, :, None] + 1)
        enough = (counts >= needed) & (sizes > 0)
        findings = []
        for i in range(len(self.samples)):
            q_hit = (cov[:, i, 0] >= self.input_threshold) & enough[:, i, 0]
            a_hit = (cov[:, i, 1] >= self.label_threshold) & enough[:, i, 1]
            stem = None
            if self.samples[i].is_mcq:
                # a copy of the stem alone (no options) is an input leak when the stem is long enough to be
                # distinctive; its coverage is measured on the stem by itself
                stem_needed = np.minimum(sizes[:, i, 2], self._n_eff[i] + 1)
                if self._stem_len[i] >= self.stem_min_tokens:
                    stem = (cov[:, i, 2] >= self.stem_threshold) & (counts[:, i, 2] >= stem_needed) & (sizes[:, i, 2] > 0)
                    q_hit = q_hit | stem
                # the label of an MCQ item is its key, stated right after the choices
                key = partial.key_found[i] or any(e.part == "question+answer" for e in partial.evidence.get(i))
                a_hit = q_hit & key
            elif not q_hit.any():
                # a worked solution found without its question counts only as a same-numbers copy: a
                # number-normalised match of a solution alone is generic arithmetic phrasing
                a_hit = a_hit & np.array([True, False])
            evidence = partial.evidence.get(i)
            crossed = q_hit | a_hit
            # "numnorm": the copy matches clearly better once numbers are ignored (same problem, other numbers)
            gain = cov[1, i, :2].sum() - cov[0, i, :2].sum()
            match = "numnorm" if crossed[1] and (gain > 0.1 or not crossed[0]) else ("raw" if crossed[0] else None)
            details = {
                "coverage": {
                    name: {"question": round(float(cov[p, i, 0]), 4), "answer": round(float(cov[p, i, 1]), 4)}
                    | ({"stem": round(float(cov[p, i, 2]), 4)} if self.samples[i].is_mcq else {})
                    for p, name in enumerate(PASSES)
                },
                "match": match,
                "n": int(self._n_eff[i]),
            }
            if stem is not None and stem.any() and not (cov[:, i, 0] >= self.input_threshold).any():
                details["stem_only"] = True
            findings.append(
                Finding(
                    self.name,
                    input_hit=bool(q_hit.any()),
                    label_hit=bool(a_hit.any()),
                    details=details,
                    evidence=evidence,
                    checked=bool(self._n_eff[i] > 0),
                )
            )
        return findings
