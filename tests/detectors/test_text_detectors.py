"""Tokenisation and hashing invariants, corpus readers, MinHash equivalence with datasketch, and the registry."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itd.core.errors import InputError
from itd.core.registry import Registry
from itd.core.text import ngram_hashes, normalize, tokenize
from itd.corpus.readers import Document, ShardReader, iter_documents, plan_shards
from itd.detectors import DETECTORS
from itd.detectors.minhash import permute, shingle_hashes32


def _hashes(text: str) -> list[int]:
    return tokenize([text]).hashes.tolist()


def test_markup_and_latex_spacing_do_not_change_tokens(shared_data):
    """A copy re-wrapped, pasted as HTML (tags, character references), or with its LaTeX re-spaced has the tokens
    of the plain text; offsets of ASCII text are kept (markup is blanked to spaces of the same length)."""
    from itd.core import load_benchmark

    item = next(s for s in load_benchmark(shared_data / "mmlu" / "test" / "high_school_mathematics_test.csv")
                if "$" in s.question and "(" in s.question and len(s.question) > 80)
    plain = item.question
    rewrapped = "\n".join(plain[i : i + 23] for i in range(0, len(plain), 23))  # cuts inside words too
    html = "<p class=\"q\">" + plain.replace("&", "&amp;").replace("'", "&#39;").replace(" ", " <b></b>", 2) + "</p><br/>"
    latex = plain.replace(" ", "\\, ", 3).replace("(", "\\left(").replace("=", " = ").replace("$", "$\\quad ", 1)
    assert _hashes(html) == _hashes(plain)
    assert _hashes(latex) == _hashes(plain)
    assert _hashes(rewrapped) != _hashes(plain)  # a wrap inside a word splits it: the corpus reader never does that
    assert _hashes(plain.replace(" ", "\n")) == _hashes(plain)
    assert _hashes("5x + 2\\,y") == _hashes("5 x+2y") and len(_hashes("10am 3.5kg")) == 4  # number|letter boundary
    assert normalize("a<b and c>d &amp; <br/>x") == "a<b and c>d" + " " * 12 + "x"
    assert _hashes("a<b and c>d") == _hashes("a < b and c > d")  # comparisons are not tags


def test_normalisation_folds_case_punctuation_whitespace_and_annotations():
    assert _hashes("Janet's ducks, lay 16 eggs!") == _hashes("JANET S   ducks lay\n16 eggs")
    assert _hashes("makes 9 * 2 = $<<9*2=18>>18 a day") == _hashes("makes 9 * 2 = $18 a day")
    # the annotation of a solution pasted as HTML ("&lt;&lt;9*2=18&gt;&gt;") is blanked as well
    assert _hashes("makes 9 * 2 = $&lt;&lt;9*2=18&gt;&gt;18 a day") == _hashes("makes 9 * 2 = $18 a day")
    assert _hashes("Ｆｕｌｌｗｉｄｔｈ café") == _hashes("fullwidth CAFÉ")  # NFKC
    assert len(_hashes("1,000 and 3.5")) == 3  # numbers with separators stay one token
    tb = tokenize(["a 12 b"])
    assert tb.is_number.tolist() == [False, True, False]
    # one non-ASCII character elsewhere in a text must not change how its ASCII part tokenises
    assert _hashes("It costs 3.5 dollars, Janet's") == _hashes("It costs 3.5 dollars, Janet’s")


def test_option_markers_are_layout_not_content():
    """Lettered choices ("B. mutualism") and bare choices tokenise alike; prose letters stay."""
    lettered = "Which one?\nA. parasitism.\nB. mutualism.\n(c) commensalism\nAnswer: B"
    bare = "Which one?\nparasitism.\nmutualism.\ncommensalism\nAnswer: B"
    assert _hashes(lettered) == _hashes(bare)
    assert len(_hashes("a cat and a dog")) == 5
    assert _hashes("Vitamin A is ... plan B.") == _hashes("vitamin a is plan")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=6), st.integers(0, 5))
def test_token_hashes_do_not_depend_on_the_batch(texts, k):
    """A text's token hashes and offsets are the same alone or inside any batch (indexes rely on it)."""
    k = min(k, len(texts) - 1)
    batch = tokenize(texts)
    alone = tokenize([texts[k]])
    sl = slice(batch.doc_token_offsets[k], batch.doc_token_offsets[k + 1])
    assert batch.hashes[sl].tolist() == alone.hashes.tolist()
    assert batch.starts[sl].tolist() == alone.starts.tolist()


def test_ngrams_never_span_documents():
    tb = tokenize(["a b c", "d e f"])
    (h, pos), = ngram_hashes(tb.hashes, tb.doc, [2]).values()
    assert pos.tolist() == [0, 1, 3, 4]
    joined = tokenize(["a b c d e f"])
    (hj, _), = ngram_hashes(joined.hashes, joined.doc, [2]).values()
    assert h.tolist() == [hj[0], hj[1], hj[3], hj[4]]


def test_offsets_map_to_original_text():
    text = "Some TEXT, with   punctuation."
    tb = tokenize([text])
    words = [text[a:b] for a, b in zip(tb.starts, tb.ends)]
    assert words == ["Some", "TEXT", "with", "punctuation"]
    assert normalize("ÀB") == "àb"


def test_minhash_signatures_equal_datasketch():
    datasketch = pytest.importorskip("datasketch")
    tb = tokenize(["the quick brown fox jumps over the lazy dog again and again"])
    h32, _ = shingle_hashes32(tb.hashes, tb.doc, 3)
    ref = datasketch.MinHash(num_perm=64, seed=1, scheme="affine32", hashfunc=lambda x: x)
    ref.update_batch([int(v) for v in h32])
    a, b = ref.permutations
    ours = permute(h32, np.asarray(a, np.uint32), np.asarray(b, np.uint32)).min(axis=0)
    assert ours.tolist() == ref.hashvalues.tolist()


def test_corpus_formats_and_sharding(tmp_path):
    zstd = pytest.importorskip("zstandard")
    lines = [json.dumps({"text": f"document number {i}", "meta": i}) for i in range(500)]
    raw = ("\n".join(lines) + "\n").encode()
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(raw))
    (tmp_path / "d.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n", encoding="utf-8")
    docs = list(iter_documents([tmp_path]))
    assert len(docs) == 500 * 3 + 2
    assert docs[-1] == Document(str(tmp_path / "d.txt"), 4, "second paragraph\n")
    assert {d.line for d in docs if d.file.endswith("c.jsonl.zst")} == set(range(1, 501))
    shards = plan_shards([tmp_path / "a.jsonl"], shard_bytes=1 << 10)
    assert len(shards) > 5
    sharded = [d for s in shards for d in ShardReader(s)]
    assert [(d.line, d.text) for d in sharded] == [(i + 1, f"document number {i}") for i in range(500)]
    parquet = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    parquet.write_table(pa.table({"content": ["x y z", "u v w"]}), tmp_path / "e.parquet")
    assert [d.text for d in iter_documents([tmp_path / "e.parquet"], text_field="content")] == ["x y z", "u v w"]
    with pytest.raises(InputError, match="no column 'text'"):
        list(iter_documents([tmp_path / "e.parquet"]))


def test_corpus_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError) as exc:
        list(iter_documents([bad]))
    assert exc.value.path == str(bad) and exc.value.line == 2
    with pytest.raises(InputError, match="no such file"):
        list(iter_documents([tmp_path / "missing.jsonl"]))
    with pytest.raises(InputError, match="glob matches no files"):
        list(iter_documents([str(tmp_path / "*.parquet")]))


def test_registry_did_you_mean():
    assert set(DETECTORS.names()) >= {"ngram", "minhash"}
    with pytest.raises(InputError, match="Did you mean 'minhash'"):
        DETECTORS.get("minhsh")
    reg: Registry[int] = Registry("thing")
    reg.register("one")(1)
    with pytest.raises(ValueError):
        reg.register("one")(2)


def test_detectors_are_built_from_their_config_through_the_registry():
    from itd.corpus.scan import ScanConfig, build_detectors
    from itd.detectors.minhash import MinHashConfig, MinHashDetector
    from itd.detectors.ngram import NGramConfig

    minhash = DETECTORS.create("minhash", MinHashConfig(num_perm=32, min_score=90.0), evidence_limit=2)
    assert isinstance(minhash, MinHashDetector) and (minhash.num_perm, minhash.min_score, minhash.evidence_limit) == (32, 90.0, 2)
    with pytest.raises(InputError, match="configured by a MinHashConfig"):
        DETECTORS.create("minhash", NGramConfig())
    with pytest.raises(ValueError, match="n_short"):  # a config is checked when made, as the detector is
        NGramConfig(n=5, n_short=8)
    config = ScanConfig(detectors=("ngram", "minhash"), evidence_limit=3, detector_options={"ngram": {"n": 10}})
    ngram, minhash = build_detectors(config)
    assert (ngram.n, ngram.evidence_limit, minhash.num_perm, minhash.evidence_limit) == (10, 3, 64, 3)
    assert config.to_dict()["detector_options"]["minhash"]["num_perm"] == 64  # the manifest says what ran
    with pytest.raises(InputError, match="unknown key 'treshold'; did you mean 'threshold'"):
        ScanConfig(detector_options={"minhash": {"treshold": 0.6}})
    with pytest.raises(InputError, match="Did you mean 'semantic'"):
        ScanConfig(detector_options={"semantc": {}})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="<>=x1 \n+", max_size=60))
def test_annotation_blanking_matches_the_regex(text):
    """The vectorised `<<expr=result>>` blanking agrees with the regex definition on any input."""
    import re

    blanked = re.sub(r"<<[^<>\n]*>>", lambda m: " " * len(m.group()), text)
    assert _hashes(text) == _hashes(blanked)


def test_ngram_hashes_are_the_polynomial_of_their_tokens_for_every_n(shared_data):
    """The n-gram hashes (computed by splitting n into powers of two) against the direct formula: for every n, the
    polynomial sum_j t[i+j] * M^(n-1-j) mod 2^64 of the n tokens from i, mixed with n, for n-grams inside one text."""
    from itd.core import load_benchmark
    from itd.core.text import _NGRAM_MULT, mix64, ngram_hashes_at

    texts = [s.prompt_text() for s in load_benchmark(shared_data / "gsm8k" / "test.jsonl")[:40]] + ["one two", ""]
    tb = tokenize(texts)
    t = [int(x) for x in tb.hashes]
    doc = tb.doc.tolist()
    ns = [1, 2, 3, 5, 8, 12, 13, 21, 64]
    out = ngram_hashes(tb.hashes, tb.doc, ns)
    for n in ns:
        starts = [i for i in range(len(t) - n + 1) if doc[i] == doc[i + n - 1]]
        poly = [sum(t[i + j] * pow(int(_NGRAM_MULT), n - 1 - j, 1 << 64) for j in range(n)) % (1 << 64) for i in starts]
        expected = mix64(np.array(poly, dtype=np.uint64) ^ np.uint64(n))
        assert out[n][1].tolist() == starts, n
        assert np.array_equal(out[n][0], expected), n
        # the same hashes computed at a few positions only (the number pass of the n-gram detector)
        some = np.asarray(starts[::7], dtype=np.int64)
        assert np.array_equal(ngram_hashes_at(tb.hashes, some, n), expected[::7]), n
