"""Fuzzy near-duplicates: MinHash-LSH over item-sized sliding windows of each document.

Document-level Jaccard cannot see a short item inside a long document, so each document is cut into windows
about the size of the benchmark items and every window is compared with an LSH index (datasketch `MinHashLSH`)
of the items. Window signatures are computed for all windows at once with numpy: every shingle is permuted once,
then signatures are minima over blocks of shingles (datasketch's "affine32" scheme, bit for bit). The LSH is
datasketch's banding (its `b` bands of `r` rows for the threshold), looked up with numpy: a window is a candidate
of an item when one whole band of their signatures is equal. Most windows never get a full signature: a
prefilter (`MinHashDetector.prefilter_windows`) first computes each window's signature over the shingles it
shares with the benchmark only, and only in documents that hold every such shingle of some band of an item; it is
exact about every band match (see there), and the full signature is computed only for windows that pass. Every
candidate is verified with rapidfuzz on a bounded window.

An item longer than `MAX_MATCH_TOKENS` tokens is compared by its opening, the first `MAX_MATCH_TOKENS` tokens of
its question (the "question" entry), and by its ending, the last `MAX_MATCH_TOKENS` tokens of question + answer
(the "question+answer" entry: the answer with what comes right before it). A near-copy of the whole item holds
both, so it is found; a copy of only its middle is left to the n-gram detector's coverage. Item-sized windows,
signatures and alignments therefore stay bounded whatever the items' lengths.

A match must also hold what tells the item apart from the rest of the benchmark: its own shingles, those no other
item holds. Items that quote one source passage, or share a template or their option texts, differ only in the
rest; a copy of one of them scores high against all of them, but holds the own shingles of that one only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from itd.core import Sample
from itd.core.errors import require
from itd.core.text import HashFilter, byte_to_char, expand_ranges, mix64, ngram_hashes, normalize, tokenize
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
from itd.detectors.ngram import items_per_ngram, neighbour_explains

__all__ = ["MinHashConfig", "MinHashDetector", "MinHashPartial", "shingle_hashes32", "fmix32", "permute", "clip_tokens"]

PARTS = ("question", "question+answer")
_CHUNK = 1 << 15  # shingles per signature chunk (bounds memory: chunk x num_perm x 4 bytes per table level)
_FIT_CHARS = 1 << 21  # benchmark characters tokenised at once when fitting
_U32 = np.uint32
_OWN_SHARE = 0.5  # a match holds an item's own shingles at least half as well as all of its shingles


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (the pre-mix of datasketch's affine32 scheme)."""
    h = h.astype(_U32, copy=True)
    with np.errstate(over="ignore"):
        h ^= h >> _U32(16)
        h *= _U32(0x85EBCA6B)
        h ^= h >> _U32(13)
        h *= _U32(0xC2B2AE35)
        h ^= h >> _U32(16)
    return h


def shingle_hashes32(token_hashes: np.ndarray, doc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every k-token shingle inside one document, and each shingle's first token index."""
    h, pos = ngram_hashes(token_hashes, doc, [k])[k]
    return (h ^ (h >> np.uint64(32))).astype(_U32), pos


def permute(h32: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Permuted hash values, shape (len(h32), num_perm): `fmix32(h) * a + b mod 2^32` as datasketch does."""
    with np.errstate(over="ignore"):
        return fmix32(h32)[:, None] * a[None, :] + b[None, :]


def trailing_zeros32(a: np.ndarray) -> np.ndarray:
    """Trailing zero bits of each uint32 (32 for 0)."""
    v = a.astype(np.uint64)
    low = v & (~v + np.uint64(1))  # the lowest set bit
    out = np.full(v.shape, 32, dtype=np.int64)
    nz = low > 0
    out[nz] = np.log2(low[nz]).astype(np.int64)
    return out


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Row-wise minimum of `values[lo[i]:hi[i]]` for every i (sparse table; hi > lo)."""
    length = hi - lo
    level = np.floor(np.log2(length)).astype(np.int64)
    out = np.empty((lo.size, values.shape[1]), dtype=values.dtype)
    table = values
    for j in range(int(level.max()) + 1):
        if j:
            half = 1 << (j - 1)
            table = np.minimum(table[:-half], table[half:])
        sel = np.flatnonzero(level == j)
        if sel.size:
            out[sel] = np.minimum(table[lo[sel]], table[hi[sel] - (1 << j)])
    return out


def _window_counts(n_in_doc: np.ndarray, n_sh: int, stride: int) -> np.ndarray:
    """Windows of n_sh shingles at `stride` per document of `n_in_doc` shingles: one for a document shorter than a
    window, none for an empty one (the last window can end before its document does)."""
    return np.where(n_in_doc > 0, np.maximum(1, -(-(n_in_doc - n_sh + 1) // stride)), 0)


def _dedup_sorted(values: np.ndarray) -> np.ndarray:
    """A sorted array without its repeats."""
    if values.size < 2:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def clip_tokens(text: str, max_tokens: int, *, tail: bool = False) -> str:
    """The first (or, with `tail`, the last) `max_tokens` tokens of a normalised `text`, cut between tokens; the
    text itself when it is that short. Reads at most 32 characters per token of `text`, however long it is."""
    if len(text) <= max_tokens:  # fewer characters than tokens allowed: nothing to clip (the usual case)
        return text
    limit = 32 * max_tokens
    clipped = len(text) > limit
    piece = (text[-limit:] if tail else text[:limit]) if clipped else text
    tb = tokenize([piece], normalized=True)
    cut = int(clipped)  # the token at the cut of a clipped piece may be partial: it is dropped
    if tail:
        first = max(tb.n_tokens - max_tokens, cut)
        if first == 0:
            return text
        if first >= tb.n_tokens:
            return ""
        return piece[int(byte_to_char(piece, tb.starts[first : first + 1])[0]) :]
    keep = min(tb.n_tokens - cut, max_tokens)
    if keep == tb.n_tokens:
        return text
    if keep <= 0:
        return ""
    return piece[: int(byte_to_char(piece, tb.ends[keep - 1 : keep])[0])]


def _text_groups(texts: Sequence[str], max_chars: int) -> list[tuple[int, int]]:
    """Consecutive ranges [e0, e1) of `texts` of at most `max_chars` characters each (or one longer text)."""
    groups, start, size = [], 0, 0
    for i, t in enumerate(texts):
        if size and size + len(t) > max_chars:
            groups.append((start, i))
            start, size = i, 0
        size += len(t)
    if start < len(texts):
        groups.append((start, len(texts)))
    return groups


def _window_sizes(lengths: np.ndarray, ratio: float = 1.25) -> np.ndarray:
    """Geometric buckets of item lengths: every item gets a window within a factor `ratio` of its length."""
    lo, hi = int(lengths.min()), int(lengths.max())
    sizes = [lo]
    while sizes[-1] * ratio < hi:
        sizes.append(int(np.ceil(sizes[-1] * ratio)))
    sizes.append(hi)
    return np.unique(sizes)


@dataclass(slots=True)
class MinHashPartial:
    """Best verified similarity per (sample, part) and evidence; mergeable."""

    best: np.ndarray  # shape (n_samples, 2), rapidfuzz score, 0 when nothing verified
    evidence: EvidenceBook


@dataclass(frozen=True)
class MinHashConfig:
    """Settings of the `minhash` detector (the pipeline's `[scan.minhash]` table; see `MinHashDetector`), checked
    when made."""

    threshold: float = 0.5
    min_score: float = 85.0
    num_perm: int = 64
    shingle: int = 3
    min_tokens: int = 10
    seed: int = 1
    prefilter: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.min_score <= 100.0:
            raise ValueError(f"min_score must be in [0, 100], got {self.min_score}")
        if self.num_perm < 8 or self.shingle < 1 or self.min_tokens < self.shingle:
            raise ValueError("need num_perm >= 8, shingle >= 1 and min_tokens >= shingle")


@DETECTORS.register("minhash")
class MinHashDetector(CorpusDetector):
    """MinHash-LSH near-duplicate detector.

    threshold: Jaccard threshold of the LSH index; min_score: rapidfuzz partial-ratio a candidate must reach;
    num_perm: permutations; shingle: tokens per shingle; min_tokens: items shorter than this are not indexed;
    prefilter: skip windows that provably match no LSH band before computing their signatures
    (`prefilter_windows`; the findings are the same without it, only slower).
    A verified match must also hold the entry's own shingles (held by no other item of the benchmark) at least half
    as well as all of its shingles; an entry with none (an item duplicated in the benchmark, or made of pieces of
    several neighbours) is matched on its score unless one neighbour holds every shingle of it that was found.
    """

    name = "minhash"

    Config: ClassVar[type] = MinHashConfig

    def __init__(
        self,
        threshold: float = 0.5,
        min_score: float = 85.0,
        num_perm: int = 64,
        shingle: int = 3,
        min_tokens: int = 10,
        seed: int = 1,
        evidence_limit: int = 5,
        prefilter: bool = True,
    ):
        super().__init__(evidence_limit)
        MinHashConfig(threshold, min_score, num_perm, shingle, min_tokens, seed, prefilter)  # validates
        self.threshold, self.min_score, self.num_perm = threshold, min_score, num_perm
        self.shingle, self.min_tokens, self.seed = shingle, min_tokens, seed
        self.prefilter = prefilter

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """The (a, b) of every row's permutation, datasketch's "affine32" ones for `num_perm` and `seed`."""
        datasketch = require("datasketch", "minhash", "The minhash detector")
        a, b = datasketch.MinHash(num_perm=self.num_perm, seed=self.seed, scheme="affine32").permutations
        return np.asarray(a, dtype=_U32), np.asarray(b, dtype=_U32)

    def fit(self, samples: Sequence[Sample]) -> "MinHashDetector":
        datasketch = require("datasketch", "minhash", "The minhash detector")
        self.samples = list(samples)
        self._a, self._b = self._permutations()
        # entry e: sample e // 2, part e % 2 (0 = question, 1 = question + answer)
        texts, answers = [], []
        cap = MAX_MATCH_TOKENS
        for s in self.samples:
            q, ans = normalize(s.prompt_text()), normalize(label_text(s))
            qa = clip_tokens(q + "\n" + ans, cap, tail=True) if ans.strip() else ""
            texts += [clip_tokens(q, cap), qa]
            answers.append(clip_tokens(ans, cap, tail=True))
        self._texts, self._answers = texts, answers
        sigs = np.full((len(texts), self.num_perm), np.iinfo(_U32).max, dtype=_U32)
        lengths = np.zeros(len(texts), dtype=np.int64)
        all_h32, all_entry = [], []
        # entries a few MB at a time, shingles 32K at a time: memory does not grow with the benchmark's length
        for e0, e1 in _text_groups(texts, _FIT_CHARS):
            tb = tokenize(texts[e0:e1], normalized=True)
            lengths[e0:e1] = np.diff(tb.doc_token_offsets)
            h32, pos = shingle_hashes32(tb.hashes, tb.doc, self.shingle)
            entry = tb.doc[pos].astype(np.int64) + e0
            all_h32.append(h32)
            all_entry.append(entry)
            kept = np.flatnonzero(lengths[entry] >= self.min_tokens)
            for c0 in range(0, kept.size, _CHUNK):
                sel = kept[c0 : c0 + _CHUNK]
                ent = entry[sel]  # shingles come in entry order
                first = np.flatnonzero(np.r_[True, ent[1:] != ent[:-1]])
                mins = np.minimum.reduceat(permute(h32[sel], self._a, self._b), first, axis=0)
                np.minimum(sigs[ent[first]], mins, out=mins)
                sigs[ent[first]] = mins
        all_h32, all_entry = np.concatenate(all_h32), np.concatenate(all_entry)
        self._fit_own_shingles(all_h32, all_entry, len(texts))
        indexed = np.flatnonzero(lengths >= self.min_tokens)
        indexed = indexed[(indexed % 2 == 0) | (lengths[indexed] > lengths[indexed - 1])]  # drop Q+A == Q
        # datasketch's banding for the threshold (b bands of r rows); its index is looked up with numpy instead
        lsh = datasketch.MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._n_bands, self._rows = int(lsh.b), int(lsh.r)
        self._sigs = sigs
        rng = np.random.default_rng(self.seed)
        self._band_mult = rng.integers(1, 1 << 63, size=self._rows, dtype=np.uint64) | np.uint64(1)
        self._band_index = []  # per band: sorted band hashes of the indexed entries, and those entries
        hashes = self._band_hashes(sigs[indexed])
        for band in range(self._n_bands):
            order = np.argsort(hashes[:, band], kind="stable")
            self._band_index.append((hashes[order, band], indexed[order]))
        self._band_filter = HashFilter(hashes.ravel())
        self._fit_members(*self._band_argmins(all_h32, all_entry, indexed))
        self._sizes = _window_sizes(lengths[indexed]) if indexed.size else np.zeros(0, dtype=np.int64)
        # a near-copy of the longest entry, even with as many tokens again inserted, lies whole in one window
        self.context_tokens = 2 * int(self._sizes.max()) + self.shingle if self._sizes.size else 0
        return self

    def _fit_own_shingles(self, h32: np.ndarray, entry: np.ndarray, n_entries: int) -> None:
        """Per entry, the sorted shingles that no other item holds (`self._own[self._own_ptr[e] : ...[e + 1]]`)."""
        # an item's two entries overlap: a shingle is counted once per item
        items = items_per_ngram(h32, entry // 2)
        own_h, own_e = h32[items == 1], entry[items == 1]
        order = np.lexsort((own_h, own_e))
        own_h, own_e = own_h[order], own_e[order]
        keep = np.ones(own_h.size, dtype=bool)  # unique per entry
        keep[1:] = (own_h[1:] != own_h[:-1]) | (own_e[1:] != own_e[:-1])
        self._own, own_e = own_h[keep], own_e[keep]
        self._own_ptr = np.searchsorted(own_e, np.arange(n_entries + 1))
        # entries with no own shingle keep all of theirs, and who else holds them (`neighbour_explains`)
        none_own = np.flatnonzero(np.diff(self._own_ptr) == 0)
        sel = np.isin(entry, none_own)
        pairs = np.unique(np.stack([entry[sel], h32[sel].astype(np.int64)]), axis=1)
        self._plain, self._plain_ptr = pairs[1].astype(h32.dtype), np.searchsorted(pairs[0], np.arange(n_entries + 1))
        sel = np.isin(h32, self._plain)
        pairs = np.unique(np.stack([h32[sel].astype(np.int64), entry[sel] // 2]), axis=1)
        self._holder_h, self._holder_item = pairs[0].astype(h32.dtype), pairs[1]

    def holds_own(self, e: int, text: str) -> bool:
        """Whether `text` (a verified match of entry `e`) holds the entry's own shingles (those no other item
        holds) at least `_OWN_SHARE` as well as it holds all of the entry's shingles. An edited copy loses own and
        shared shingles alike; a copy of a neighbour holds the shared ones only. An entry with no own shingle
        needs a match that no single neighbour explains (`neighbour_explains`)."""
        own = self._own[self._own_ptr[e] : self._own_ptr[e + 1]]
        plain = self._plain[self._plain_ptr[e] : self._plain_ptr[e + 1]]
        if not own.size and not plain.size:
            return True
        tb = tokenize([normalize(text), self._texts[e]], normalized=True)
        h32, pos = shingle_hashes32(tb.hashes, tb.doc, self.shingle)
        in_text, entry = h32[tb.doc[pos] == 0], np.unique(h32[tb.doc[pos] == 1])
        if not own.size:  # made of its neighbours' shingles: one neighbour must not explain the match
            found = plain[np.isin(plain, in_text)].tolist()
            return not neighbour_explains(e // 2, plain.tolist(), found, self._holders)
        return float(np.isin(own, in_text).mean()) >= _OWN_SHARE * float(np.isin(entry, in_text).mean())

    def _holders(self, shingle: int) -> set[int]:
        """The items that hold `shingle` (a shingle of an entry with no own shingle)."""
        lo = np.searchsorted(self._holder_h, shingle, side="left")
        hi = np.searchsorted(self._holder_h, shingle, side="right")
        return set(self._holder_item[lo:hi].tolist())

    def _band_argmins(self, h32: np.ndarray, entry: np.ndarray, indexed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (entry, band) of the `indexed` entries with each shingle that holds the entry's least permuted value
        on a row of that band, as (entry * bands + band, shingle) arrays: only those shingles can give a window an
        entry's value on a band's row (`prefilter_windows`)."""
        banded = self._n_bands * self._rows
        a, b = self._a[:banded], self._b[:banded]
        kept = np.flatnonzero(np.isin(entry, indexed))
        pairs, shingles = [np.zeros(0, np.int64)], [np.zeros(0, _U32)]
        for c0 in range(0, kept.size, _CHUNK):
            sel = kept[c0 : c0 + _CHUNK]
            i, row = np.nonzero(permute(h32[sel], a, b) == self._sigs[entry[sel], :banded])
            pairs.append(entry[sel][i] * self._n_bands + row // self._rows)
            shingles.append(h32[sel][i])
        return np.concatenate(pairs), np.concatenate(shingles)

    def _fit_members(self, pair: np.ndarray, shingle: np.ndarray) -> None:
        """The tables of `_is_member` and `_band_members`: the member keys of the argmin shingles of every (entry,
        band) pair, and per pair one of them as its anchor (the key that anchors fewest pairs), indexed by anchor.

        A row j whose multiplier a_j has k_j trailing zero bits maps two shingles to one permuted value exactly
        when fmix32 of both agree in their low 32 - k_j bits, so a member key is those bits (k = the largest k_j);
        a multiplier 0 maps every shingle to one value: no prefilter."""
        self._member_shift = int(trailing_zeros32(self._a).max())
        self._member_filter = None
        if self._member_shift >= 32:
            return
        code = _dedup_sorted(np.sort((pair.astype(np.int64) << 32) | self._member_keys(shingle).astype(np.int64)))
        pair, key = code >> 32, (code & 0xFFFFFFFF).astype(_U32)
        self._band_keys, kid = np.unique(key, return_inverse=True)
        self._member_filter = HashFilter(self._band_keys)
        start = np.flatnonzero(np.diff(pair, prepend=-1))  # pairs are sorted: where each begins
        size = np.diff(np.append(start, pair.size))
        self._pair_key_start, self._pair_key_count, self._pair_keys = start, size, kid
        pidx = np.repeat(np.arange(start.size), size)
        pairs_of_key = np.bincount(kid, minlength=self._band_keys.size)
        order = np.lexsort((pairs_of_key[kid], pidx))  # per pair, its keys from the least shared on
        anchor = kid[order[start]]
        self._anchored = np.argsort(anchor, kind="stable")
        self._anchor_ptr = np.searchsorted(anchor[self._anchored], np.arange(self._band_keys.size + 1))

    def _member_keys(self, h32: np.ndarray) -> np.ndarray:
        keys = fmix32(h32)
        if self._member_shift:
            keys <<= _U32(self._member_shift)
        return keys

    def _is_member(self, h32: np.ndarray) -> np.ndarray | None:
        """Per shingle: whether it may share a permuted value with an argmin shingle of an indexed entry on some
        banded row (true for every shingle that does, and for a few others: a filter sized to stay in the CPU
        cache, whose false hits `_band_members` drops); None when every shingle may."""
        if self._member_filter is None:
            return None
        return self._member_filter.maybe(self._member_keys(h32))

    def _band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """64-bit hash of every band of every signature, shape (len(sigs), bands); band i is rows i*r .. i*r+r-1."""
        bands = np.ascontiguousarray(sigs[:, : self._n_bands * self._rows], dtype=_U32)
        bands = bands.reshape(sigs.shape[0], self._n_bands, self._rows)
        # two 32-bit rows make one 64-bit word (an even r): half the multiplies, no conversion
        words = bands.view(np.uint64) if self._rows % 2 == 0 else bands.astype(np.uint64)
        with np.errstate(over="ignore"):
            h = words[:, :, 0] * self._band_mult[0]
            for q in range(1, words.shape[2]):
                h += words[:, :, q] * self._band_mult[q]
        return mix64(h, inplace=True)

    def empty(self) -> MinHashPartial:
        return MinHashPartial(np.zeros((len(self.samples), 2)), self.new_book())

    def scan_batch(self, batch: DocBatch) -> MinHashPartial:
        part = self.empty()
        tb = batch.tokens
        if not self._sizes.size or tb.n_tokens < self.shingle:
            return part
        h32, pos = shingle_hashes32(tb.hashes, tb.doc, self.shingle)
        if not h32.size:
            return part
        run_start = np.searchsorted(tb.doc[pos], np.arange(len(batch.docs) + 1))
        lo, hi = self.prefilter_windows(h32, run_start) if self.prefilter else self._windows(run_start)
        candidates: list[tuple[int, int, int, int]] = []
        for sel, sigs in self._signatures(h32, lo, hi):
            hit = self._band_hit(sigs)
            sel = sel[hit]
            w, e = self._band_matches(sigs[hit])
            first = pos[lo[sel[w]]]
            last = pos[hi[sel[w]] - 1] + self.shingle - 1
            candidates += zip(tb.doc[first].tolist(), e.tolist(), first.tolist(), last.tolist())
        self._verify(batch, candidates, part)
        return part

    def prefilter_windows(self, h32: np.ndarray, run_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows (`_windows`: [lo, hi) shingle ranges of `h32`, item-sized, inside one document) that may
        match an item in an LSH band; each window left out provably matches none, so it could never have become a
        candidate.

        Why nothing is lost. A window matches item B in a band when, on every row j of the band, the window's
        least permuted value m_j equals B's, M_j. M_j = perm_j(x) for the shingle x of B that holds B's least value
        on row j (an argmin shingle, `_band_argmins`) and m_j = perm_j(y) for a shingle y of the window;
        perm_j(h) = fmix32(h) * a_j + b_j mod 2^32 gives two shingles one value only when fmix32 of both agree in
        their low 32 - k_j bits (a_j = 2^k_j * odd). So y is a member (`_is_member`, true for every shingle that
        agrees so with an argmin shingle of the benchmark). The least value over the window's members
        alone, m'_j, then satisfies m_j <= m'_j <= perm_j(y) = m_j: on every row of a matching band m' equals m,
        and the member-only signature m' matches that band too. Windows with no member match nothing; windows with
        the same members share one m', computed once (members are rare outside a leak, so most windows do).

        Members are narrowed per document (`_band_members`). The key of y (fmix32's low 32 - max k_j bits) is
        that of x, so a window matching B in band b holds a shingle of every key in K(B, b), the keys of B's
        argmin shingles on the band's rows, and so does its document. A member whose key lies in no K(B, b) that
        its document holds whole is dropped: every y above lies in one, so the bound still holds with the members
        left. Few documents hold all the keys of some K(B, b) outside a leak.

        The windows are never listed. For one window size (n shingles, stride s) the windows of a document are
        k = 0 .. K-1, covering [start + k*s, min(start + k*s + n, end)). A member at p is in windows
        k_in <= k < k_out, k_in = floor((p - n - start) / s) + 1 (clipped to 0), k_out = floor((p - start) / s) + 1
        (clipped to K). The member range of window k changes only at those k, so the runs between consecutive
        such k (over all members of the document) hold one member range each: its signature is computed once per
        distinct range, and only the runs of ranges that match a band become windows again.

        The cut-off is not derived from the Jaccard threshold t (a window needs ceil(t * |A|) of its |A| shingles
        in the benchmark to reach J >= t with any item): the LSH also matches pairs below t, with a probability
        that falls with their similarity, and such a candidate is a finding whenever rapidfuzz verifies it (a
        character ratio of 85 bounds no shingle overlap: one changed character per word keeps the ratio near 85
        with no 3-shingle left in common). A count cut-off could therefore drop findings; this one drops only
        windows no band can match.
        """
        member = self._is_member(h32)
        if member is None:
            return self._windows(run_start)
        member = self._band_members(h32, member, run_start)
        before = np.concatenate([[0], np.cumsum(member)])
        n_members = int(before[-1])
        at = np.flatnonzero(member)
        doc_of = np.searchsorted(run_start, at, side="right") - 1
        lo, hi, end, n_sh, stride, k0, k1 = self._member_runs(at, doc_of, run_start, before)
        if not lo.size:
            return lo, hi
        key = before[lo] * (n_members + 1) + before[hi]
        # each size's keys are sorted already (runs in document order): a stable sort merges them
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
        ranges = ordered[new]
        first = np.empty(key.size, dtype=np.int64)
        first[order] = np.cumsum(new) - 1
        hit = np.zeros(ranges.size, dtype=bool)
        for sel, sigs in self._signatures(h32[member], ranges // (n_members + 1), ranges % (n_members + 1)):
            hit[sel] = self._band_hit(sigs)
        keep = np.flatnonzero(hit[first])
        # every window of a kept run: window k of the run starts at lo + (k - k0) * stride
        count = k1[keep] - k0[keep]
        run_lo = np.repeat(lo[keep], count) + expand_ranges(0, count) * np.repeat(stride[keep], count)
        return run_lo, np.minimum(run_lo + np.repeat(n_sh[keep], count), np.repeat(end[keep], count))

    def _band_members(self, h32: np.ndarray, member: np.ndarray, run_start: np.ndarray) -> np.ndarray:
        """The members of `member` whose document holds, for some (entry, band) pair, a shingle of every member key
        of that pair's argmin shingles; the others can give no window a band match."""
        at = np.flatnonzero(member)
        keys = self._member_keys(h32[at])
        n_keys = self._band_keys.size
        kid = np.searchsorted(self._band_keys, keys)
        kid[kid == n_keys] = 0
        exact = self._band_keys[kid] == keys
        at, kid = at[exact], kid[exact].astype(np.int64)
        code = (np.searchsorted(run_start, at, side="right") - 1) * n_keys + kid
        present = np.unique(code)
        # candidate (document, pair): each pair anchored at a key the document holds
        doc, key = present // n_keys, present % n_keys
        count = self._anchor_ptr[key + 1] - self._anchor_ptr[key]
        cand_doc = np.repeat(doc, count)
        cand_pair = self._anchored[expand_ranges(self._anchor_ptr[key], count)]
        size = self._pair_key_count[cand_pair]
        keys_needed = self._pair_keys[expand_ranges(self._pair_key_start[cand_pair], size)]
        need = np.repeat(cand_doc, size) * n_keys + keys_needed
        where = np.searchsorted(present, need)
        where[where == present.size] = 0
        held = present[where] == need
        whole = np.add.reduceat(held, np.cumsum(size) - size) == size if size.size else np.zeros(0, dtype=bool)
        needed = np.unique(need[np.repeat(whole, size)])
        out = np.zeros(member.size, dtype=bool)
        out[at[np.isin(code, needed)]] = True
        return out

    def _member_runs(self, at: np.ndarray, doc_of: np.ndarray, run_start: np.ndarray,
                     before: np.ndarray) -> tuple[np.ndarray, ...]:
        """The runs of consecutive windows (of one size, in one document) that hold the same members, at least one,
        as (first window's lo, its hi, its document's end, shingles per window, stride, first k, end k) per run,
        every size at once."""
        shape = np.array([self._window_shape(size) for size in self._sizes], dtype=np.int64).reshape(-1, 2)
        n_sh, stride = shape[:, :1], shape[:, 1:]  # (sizes, 1): broadcast over members
        n_docs = run_start.size - 1
        n_windows = _window_counts(np.diff(run_start)[None, :], n_sh, stride)  # (sizes, documents)
        start = run_start[doc_of]
        k_in = np.maximum(0, (at - n_sh - start) // stride + 1)
        k_out = np.minimum((at - start) // stride + 1, n_windows[:, doc_of])
        inside = k_in < k_out  # the last window of a size can end before its document does
        group = (np.arange(n_sh.size)[:, None] * n_docs + doc_of)[inside] << 32  # (size, document), in order
        # both are sorted already (sizes, then members in order; k non-decreasing in p): a stable sort merges them
        events = _dedup_sorted(np.sort(np.concatenate([_dedup_sorted(group + k_in[inside]),
                                                       _dedup_sorted(group + k_out[inside])]), kind="stable"))
        g, k = events >> 32, events & ((1 << 32) - 1)
        s, d = g // n_docs, g % n_docs
        n_win = n_windows[s, d]
        nxt = np.append(np.where(g[1:] == g[:-1], k[1:], n_win[:-1]), n_win[-1:]) if g.size else k
        real = k < n_win  # an event at the end of a document's windows starts no run
        s, d, k, nxt = s[real], d[real], k[real], nxt[real]
        size_sh, size_stride = n_sh[s, 0], stride[s, 0]
        lo = run_start[d] + k * size_stride
        end = run_start[d + 1]
        hi = np.minimum(lo + size_sh, end)
        has = before[hi] > before[lo]
        return lo[has], hi[has], end[has], size_sh[has], size_stride[has], k[has], nxt[has]

    def _signatures(self, h32: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        """MinHash signatures of the shingle ranges [lo, hi) of `h32` (hi > lo), as (indices, signatures) of the
        windows starting within `_CHUNK` covered shingles at a time (bounded memory); only shingles some range
        covers are permuted, and only on the rows the LSH bands use (the rows past the last band decide no match)."""
        if not lo.size:
            return
        banded = self._n_bands * self._rows
        a, b = self._a[:banded], self._b[:banded]
        n = h32.size
        covered = np.cumsum(np.bincount(lo, minlength=n + 1) - np.bincount(hi, minlength=n + 1))[:n] > 0
        before = np.concatenate([[0], np.cumsum(covered)])
        values = h32[covered]
        order = np.argsort(lo, kind="stable")
        lo, hi = before[lo[order]], before[hi[order]]
        i = 0
        while i < lo.size:
            c0 = int(lo[i])
            j = int(np.searchsorted(lo, c0 + _CHUNK))
            c1 = int(hi[i:j].max())
            yield order[i:j], _range_min(permute(values[c0:c1], a, b), lo[i:j] - c0, hi[i:j] - c0)
            i = j

    def _band_hit(self, sigs: np.ndarray) -> np.ndarray:
        """Per signature: whether some band hashes like an indexed entry's band (a superset of the band matches)."""
        hashes = self._band_hashes(sigs)
        maybe = self._band_filter.maybe(hashes)
        rows, bands = np.nonzero(maybe)  # few: the filter rejects almost every band first
        found = np.zeros(rows.size, dtype=bool)
        for band, (keys, _) in enumerate(self._band_index):
            at = np.flatnonzero(bands == band)
            if at.size and keys.size:
                k = np.searchsorted(keys, hashes[rows[at], band])
                k[k == keys.size] = 0
                found[at] = keys[k] == hashes[rows[at], band]
        hit = np.zeros(sigs.shape[0], dtype=bool)
        hit[rows[found]] = True
        return hit

    def _band_matches(self, sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The LSH query of every signature at once: unique (signature row, entry) pairs that agree on every row of
        some band (what `datasketch.MinHashLSH.query` returns, for the same banding)."""
        hashes = self._band_hashes(sigs)
        rows, entries = [], []
        for band, (keys, ents) in enumerate(self._band_index):
            bh = hashes[:, band]
            left, right = np.searchsorted(keys, bh, "left"), np.searchsorted(keys, bh, "right")
            count = right - left
            if not count.any():
                continue
            w = np.repeat(np.arange(bh.size), count)
            e = ents[expand_ranges(left, count)]
            s, t = band * self._rows, (band + 1) * self._rows
            same = (sigs[w, s:t] == self._sigs[e, s:t]).all(axis=1)  # the band itself, not just its hash
            rows.append(w[same])
            entries.append(e[same])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        n_entries = self._sigs.shape[0]
        pair = np.unique(np.concatenate(rows).astype(np.int64) * n_entries + np.concatenate(entries))
        return pair // n_entries, pair % n_entries

    def _window_shape(self, size: int) -> tuple[int, int]:
        """(shingles per window, stride) of the windows of an item size in tokens: the stride is 1/8 of a window."""
        n_sh = max(1, int(size) - self.shingle + 1)
        return n_sh, max(1, n_sh // 8)

    def _windows(self, run_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The [lo, hi) shingle ranges of every item-sized window, stride 1/8 of its size, inside one document."""
        los, his = [], []
        for size in self._sizes:
            n_sh, stride = self._window_shape(size)
            per_doc = _window_counts(np.diff(run_start), n_sh, stride)
            d = np.repeat(np.arange(per_doc.size), per_doc)
            k = expand_ranges(0, per_doc)
            lo = run_start[d] + k * stride
            los.append(lo)
            his.append(np.minimum(lo + n_sh, run_start[d + 1]))
        return np.concatenate(los), np.concatenate(his)

    def _verify(self, batch: DocBatch, candidates: list[tuple[int, int, int, int]], part: MinHashPartial) -> None:
        """Verify each (document, item) candidate once per stretch of overlapping candidate windows (two copies far
        apart in a long document are verified apart, each over a bounded span)."""
        spans: dict[tuple[int, int], list[list[int]]] = {}
        for d, e, first, last in sorted(candidates, key=lambda c: (c[0], c[1], c[2])):
            runs = spans.setdefault((d, e), [])
            if runs and first <= runs[-1][1] + 1:
                runs[-1][1] = max(runs[-1][1], last)
            else:
                runs.append([first, last])
        tb = batch.tokens
        for (d, e), runs in spans.items():
            for first, last in runs:
                self._verify_span(batch, tb, d, e, first, min(last, first + 2 * MAX_MATCH_TOKENS), part)

    def _verify_span(self, batch: DocBatch, tb, d: int, e: int, first: int, last: int, part: MinHashPartial) -> None:
        """Align entry `e` with document `d` around tokens first..last; record it if it scores `min_score`."""
        document = batch.docs[d]
        lo, hi = (int(x) for x in byte_to_char(batch.normalized[d], np.array([tb.starts[first], tb.ends[last]])))
        sample, which = divmod(e, 2)
        needle = self._texts[e]
        score, a, b = align(needle, document.text, lo, hi, margin=max(32, len(needle) // 4))
        if which == 1 and score >= self.min_score:
            # the whole item matched: the answer must also be there, not just a long question
            score = min(score, align(self._answers[sample], document.text, a, b, margin=0)[0])
        # what the item shares with its neighbours (a quoted passage, a template, option texts) matches them all:
        # the copy must hold what tells this item apart
        if score < self.min_score or not self.holds_own(e, document.text[max(0, a - 32) : b + 32]):
            return
        key_end = answer_key_end(self.samples[sample], document.text, b, slack=16 + len(needle) // 8,
                                 output_starts=document.output_starts())
        if key_end is not None:  # an MCQ item followed by its key: the label is there too
            b, which = key_end, 1
        part.best[sample, which] = max(part.best[sample, which], score)
        at = document.offset  # a window's offsets are turned into the whole document's
        ev = Evidence(score, self.name, "fuzzy", PARTS[which], document.id, at + a, at + b, document.text[a:b])
        part.evidence.add(sample, ev)

    def merge(self, a: MinHashPartial, b: MinHashPartial) -> MinHashPartial:
        np.maximum(a.best, b.best, out=a.best)
        a.evidence.merge(b.evidence)
        return a

    def finish(self, partial: MinHashPartial) -> list[Finding]:
        findings = []
        for i in range(len(self.samples)):
            q, qa = partial.best[i]
            findings.append(
                Finding(
                    self.name,
                    input_hit=bool(max(q, qa) >= self.min_score),
                    label_hit=bool(qa >= self.min_score),
                    details={"fuzzy": {"question": round(float(q), 2), "question+answer": round(float(qa), 2)}},
                    evidence=partial.evidence.get(i),
                )
            )
        return findings
