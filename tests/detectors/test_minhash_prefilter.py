"""The MinHash prefilter drops no LSH candidate: the same findings with and without it, on real data, and the bound
behind it (a window's signature over its benchmark-like shingles alone matches every band its full one does)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from itd.core import load_benchmark
from itd.core.text import tokenize
from itd.corpus.readers import iter_documents
from itd.corpus.scan import make_batch
from itd.pipeline.demo import filler_text, plant

pytest.importorskip("datasketch")

from itd.detectors.minhash import MinHashDetector, permute, shingle_hashes32  # noqa: E402

_M32 = 0xFFFFFFFF


def _fmix32_inverse(h: int) -> int:
    """The shingle hash whose fmix32 is `h` (fmix32 is a bijection of 32-bit words)."""
    h ^= h >> 16
    h = (h * pow(0xC2B2AE35, -1, 1 << 32)) & _M32
    h ^= (h >> 13) ^ (h >> 26)
    h = (h * pow(0x85EBCA6B, -1, 1 << 32)) & _M32
    return h ^ (h >> 16)


@pytest.fixture(scope="module")
def leaked(shared_data, tmp_path_factory):
    """GSM8K and MMLU test items, and a corpus of GSM8K train problems and filler with verbatim and edited copies."""
    rng = random.Random(21)
    samples = load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:150]
    samples += load_benchmark(shared_data / "mmlu" / "test" / "high_school_biology_test.csv")[:100]
    train = [json.loads(line) for line in open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8")][:60]
    docs = [r["question"] + "\n" + r["answer"] for r in train] + [filler_text(rng, 150) for _ in range(20)]
    for k, i in enumerate(rng.sample(range(len(samples)), 16)):
        s = samples[i]
        copy = plant("verbatim" if k % 2 else "edited", s.question, s.solution if not s.is_mcq else s.prompt_text(), rng)
        docs.insert(rng.randrange(len(docs)), filler_text(rng, 30) + "\n" + copy + "\n" + filler_text(rng, 30))
    corpus = tmp_path_factory.mktemp("prefilter") / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return samples, list(iter_documents([corpus]))


def _findings(samples, docs, prefilter: bool):
    det = MinHashDetector(prefilter=prefilter).fit(samples)
    part = det.empty()
    for start in range(0, len(docs), 64):
        part = det.merge(part, det.scan_batch(make_batch(docs[start : start + 64])))
    return det.finish(part)


def test_same_findings_with_and_without_the_prefilter(leaked):
    samples, docs = leaked
    fast, full = _findings(samples, docs, True), _findings(samples, docs, False)
    assert fast == full
    found = [f for f in fast if f.input_hit]
    assert len(found) >= 10 and all(f.evidence for f in found)  # the comparison is about real findings


def _windows_of(det, texts):
    tb = tokenize(texts, normalized=True)
    h32, pos = shingle_hashes32(tb.hashes, tb.doc, det.shingle)
    run_start = np.searchsorted(tb.doc[pos], np.arange(len(texts) + 1))
    lo, hi = det._windows(run_start)
    return h32, lo, hi, run_start


def _kept(det, h32, lo, hi, run_start) -> np.ndarray:
    """Indices of the windows [lo, hi) the prefilter keeps (it returns the windows themselves: two window sizes
    can give the same window at a document's end, so each is kept as often as it is listed)."""
    klo, khi = det.prefilter_windows(h32, run_start)
    kept = sorted(zip(klo.tolist(), khi.tolist()))
    idx = np.array([i for i, w in enumerate(zip(lo.tolist(), hi.tolist())) if w in set(kept)], dtype=np.int64)
    assert sorted(zip(lo[idx].tolist(), hi[idx].tolist())) == kept
    return idx


def _band_key_sets(det) -> list[set[int]]:
    """Per (indexed entry, band), straight from the definition: the member keys of the entry's shingles that hold
    its least permuted value on a row of the band."""
    entries = sorted(set(np.concatenate([e for _, e in det._band_index]).tolist()))
    tb = tokenize([det._texts[e] for e in entries], normalized=True)
    h32, pos = shingle_hashes32(tb.hashes, tb.doc, det.shingle)
    out = []
    for j, e in enumerate(entries):
        mine = h32[tb.doc[pos] == j]
        perm = permute(mine, det._a, det._b)
        for band in range(det._n_bands):
            rows = range(band * det._rows, (band + 1) * det._rows)
            argmin = np.concatenate([mine[perm[:, r] == det._sigs[e, r]] for r in rows])
            out.append(set(det._member_keys(argmin).tolist()))
    return out


def _member_only_hits(det, h32, lo, hi, run_start) -> np.ndarray:
    """The slow, direct definition of what the prefilter keeps: every window listed, its signature over its member
    shingles only, kept when that signature matches a band. A member is a shingle whose key belongs to the key set
    of some (entry, band) whose every key its document holds."""
    keys = det._member_keys(h32)
    member = np.zeros(h32.size, dtype=bool)
    sets = _band_key_sets(det)
    for d in range(run_start.size - 1):
        held = set(keys[run_start[d] : run_start[d + 1]].tolist())
        needed = set().union(*(k for k in sets if k <= held))
        member[run_start[d] : run_start[d + 1]] = np.isin(keys[run_start[d] : run_start[d + 1]], list(needed))
    assert (member <= det._is_member(h32)).all()
    out = []
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
        values = h32[a:b][member[a:b]]
        if values.size and det._band_hit(permute(values, det._a, det._b).min(axis=0)[None, :])[0]:
            out.append(i)
    return np.array(out, dtype=np.int64)


def _band_matched(det, h32, lo, hi) -> np.ndarray:
    """Indices of the windows whose full signature matches some indexed entry in a band (the LSH's candidates)."""
    out = []
    for sel, sigs in det._signatures(h32, lo, hi):
        w, _ = det._band_matches(sigs)
        out.append(sel[w])
    return np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def test_prefilter_keeps_every_window_a_band_matches(leaked):
    samples, docs = leaked
    det = MinHashDetector().fit(samples)
    h32, lo, hi, run_start = _windows_of(det, [d.text.lower() for d in docs[:40]])
    matched = _band_matched(det, h32, lo, hi)
    kept = _kept(det, h32, lo, hi, run_start)
    assert matched.size > 0 and np.isin(matched, kept).all()
    assert kept.size < lo.size / 20  # and it drops nearly every window
    # exactly the windows whose member-only signature matches a band, found without listing the windows
    assert np.array_equal(kept, _member_only_hits(det, h32, lo, hi, run_start))
    member = det._is_member(h32)
    assert det._band_members(h32, member, run_start).sum() < member.sum() / 2  # members drop out


def test_even_multipliers_make_look_alike_shingles_members(leaked, monkeypatch):
    """With even multipliers a_j two shingles whose fmix32 differ in the top bit only share every permuted value,
    so a window of such look-alikes of an item has the item's signature: the prefilter must keep it."""
    samples, _ = leaked
    original = MinHashDetector._permutations

    def even(self):
        a, b = original(self)
        return (a << np.uint32(1)) | np.uint32(2), b  # every a_j = 2 * odd

    monkeypatch.setattr(MinHashDetector, "_permutations", even)
    det = MinHashDetector().fit(samples[:50])
    text = samples[3].prompt_text().lower()
    h32, lo, hi, run_start = _windows_of(det, [text])
    twins = np.array([_fmix32_inverse(int(_fmix32(v)) ^ 0x80000000) for v in h32], dtype=np.uint32)
    assert not np.isin(twins, h32).any()
    matched = _band_matched(det, twins, lo, hi)
    assert matched.size > 0 and np.isin(matched, _kept(det, twins, lo, hi, run_start)).all()


def _fmix32(v: int) -> int:
    from itd.detectors.minhash import fmix32

    return int(fmix32(np.array([v], dtype=np.uint32))[0])


def test_items_too_short_to_index_fit_and_match_nothing():
    """Items under `min_tokens` tokens give the LSH no entry and the prefilter no band: the scan still runs."""
    from itd.core import Sample

    samples = [Sample(id=str(i), benchmark="generic", question=f"what is {i} plus {i}", answer=str(2 * i))
               for i in range(3)]
    det = MinHashDetector().fit(samples)
    assert det._band_keys.size == 0
    part = det.scan_batch(make_batch(list(_documents(["what is 1 plus 1 the answer is 2"]))))
    assert not any(f.input_hit for f in det.finish(part))


def _documents(texts):
    from itd.corpus.readers import Document

    return (Document(file="c.jsonl", line=i + 1, text=t) for i, t in enumerate(texts))
