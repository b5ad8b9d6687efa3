"""The registry of model-side probes, the parameters of each, and the token-frequency table DC-PDD needs.

Every probe `itd.probes.models.score_texts` computes is registered in `PROBES` with what it costs (the one forward pass,
or extra passes) and the dataclass holding its own parameters (None when it has none). A probe's parameters go
in `ScoreConfig.options[name]`; a name that is not registered gets a "did you mean" error.

The newer probes (all oriented HIGHER = MORE LIKELY LEAKED; `logp_t` is log p(x_t | x_<t), `top_t` the largest
log-probability at position t, `mu_t` / `sigma_t` the mean and standard deviation of log p under the model's own
next-token distribution, as in Min-K%++):

* `gapk` (Gap-K%, 2026): g_t = (logp_t - top_t) / sigma_t, smoothed by a moving average over `window` tokens
  (left as is when the text is shorter than the window); the mean of the lowest k-fraction of the smoothed values.
* `answer_acc` (BenBench-style n-gram accuracy): the share of the answer's tokens that are the model's top-1
  prediction given everything before them (teacher forcing), on the question+answer rendering. NaN without an
  answer.
* `answer_logp`: the mean log-probability of the answer's tokens given everything before them (teacher forcing),
  on the question+answer rendering: minus the loss supervised fine-tuning minimises, which trains exactly these
  tokens and not the question's. A fine-tuning leak with the loss on the answer leaves the question's tokens as
  unfamiliar as an unseen item's (every whole-text probe misses it) and this score high. NaN without an answer.
* `answer_reference`: answer_logp minus the same mean under a reference model (each model under its own
  tokenisation): the likelihood-ratio form of `answer_logp` (Carlini et al. 2021's reference-model calibration,
  on the answer only). How easy an answer is shows under both models and cancels; what only the evaluated model
  was trained on stays, and the question's tokens, which a fine-tuning leak does not train, add nothing to it.
  One pass of the reference model (the one `reference` reads). NaN without an answer.
* `dcpdd` (DC-PDD, Zhang et al. 2024): for the first occurrence of each token id in the text,
  alpha_t = p_t * -log f(x_t), f the token's Laplace-smoothed frequency in a reference corpus (`FrequencyTable`);
  the score is the mean of min(alpha_t, max_alpha).
* `recall` (ReCaLL, Xie et al. 2024): LL(x | P) / LL(x), LL the mean log-likelihood of the text's tokens and P a
  prefix of known non-member text. One more pass.
* `conrecall` (Con-ReCall, Wang et al. 2024): (LL(x | P_nonmember) - gamma * LL(x | P_member)) / LL(x). Two
  more passes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from itd.core.errors import InputError
from itd.core.registry import Registry

__all__ = [
    "Probe",
    "EVIDENCE",
    "PROBES",
    "GapKConfig",
    "ReferenceConfig",
    "REFERENCE_SCORES",
    "DCPDDConfig",
    "ReCaLLConfig",
    "ConReCaLLConfig",
    "FrequencyTable",
    "build_frequency_table",
    "corpus_frequency_table",
    "tokenizer_hash",
    "probe_options",
    "uses_reference_model",
]


EVIDENCE = (
    "likelihood",  # the item's own token log-probabilities under the evaluated model
    "answer",  # the answer's tokens given the question
    "context",  # how the likelihood moves behind a prefix of other text
    "reference model",  # the evaluated model against a model that did not see the benchmark
)


@dataclass(frozen=True, slots=True)
class Probe:
    """A registered probe: its name, the dataclass of its parameters (None: it has none), what it costs, the
    per-token statistics of the one forward pass it reads (`itd.probes.models` computes only those asked for), and
    whether it scores the answer given the question (`of_answer`: then a multiple-choice item's score carries the
    model's preference among the letters, and detection calibrates it among items with the same gold letter), and
    whether it compares the evaluated model with a second, reference model (`reference_model`). `evidence` is the
    kind of evidence it reads (one of `EVIDENCE`): probes of one kind read the same quantities and agree, so the
    set-level combination gives each kind one share rather than each probe (`itd.probes.detection`)."""

    name: str
    config: type | None
    cost: str
    token_stats: tuple[str, ...] = ()
    of_answer: bool = False
    reference_model: bool = False
    evidence: str = "likelihood"

    def __post_init__(self) -> None:
        if self.evidence not in EVIDENCE:
            raise ValueError(f"probe {self.name!r}: evidence must be one of {EVIDENCE}, got {self.evidence!r}")


REFERENCE_SCORES = ("difference", "ratio")


@dataclass(frozen=True, slots=True)
class ReferenceConfig:
    """The `reference` probe's `score`: "difference" (the default), nll_ref - nll, the log-likelihood ratio of the
    text between the evaluated and the reference model per token of the evaluated model (MIMIR's reference attack,
    Duan et al. 2024; Watson et al. 2022's difficulty calibration); or "ratio", -nll / nll_ref (Carlini et al.
    2021). The difference found more leaked items at low false-positive rates on the contamination lab's
    single-exposure pretraining leaks (benchmarks/RESULTS.md)."""

    score: str = "difference"

    def __post_init__(self) -> None:
        if self.score not in REFERENCE_SCORES:
            raise ValueError(f"reference score must be one of {', '.join(REFERENCE_SCORES)}, got {self.score!r}")


@dataclass(frozen=True, slots=True)
class GapKConfig:
    """Gap-K%: `k`, the fraction of lowest smoothed gaps averaged, in (0, 1]; `window`, the moving-average width
    in tokens (the reference implementation's default, 3)."""

    k: float = 0.2
    window: int = 3

    def __post_init__(self) -> None:
        _fraction(self.k, "gapk k")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"gapk window must be a positive integer, got {self.window!r}")


@dataclass(frozen=True, slots=True)
class DCPDDConfig:
    """DC-PDD: `table`, a token-frequency table file (`build_frequency_table`, saved with `FrequencyTable.save`)
    made with the scored model's tokenizer; `max_alpha`, the upper bound of each token's term (the paper's a,
    0.01)."""

    table: str | None = None
    max_alpha: float = 0.01

    def __post_init__(self) -> None:
        if self.table is not None:
            object.__setattr__(self, "table", os.fspath(self.table))
        if isinstance(self.max_alpha, bool) or not isinstance(self.max_alpha, (int, float)) or not self.max_alpha > 0:
            raise ValueError(f"dcpdd max_alpha must be > 0, got {self.max_alpha!r}")


@dataclass(frozen=True, slots=True)
class ReCaLLConfig:
    """ReCaLL: `prefix`, known non-member text put before every item (`itd.probes.detection` joins reference items).
    When prefix and item do not fit the context together, the prefix's oldest tokens are dropped."""

    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class ConReCaLLConfig:
    """Con-ReCall: a non-member and a member prefix, and `gamma`, the weight of the member term."""

    nonmember_prefix: str | None = None
    member_prefix: str | None = None
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not math.isfinite(self.gamma):
            raise ValueError(f"conrecall gamma must be a finite number, got {self.gamma!r}")


PROBES: Registry[Probe] = Registry("probe method")
for _probe in (
    Probe("loss", None, "one pass"),
    Probe("zlib", None, "one pass"),
    Probe("mink", None, "one pass"),
    Probe("minkpp", None, "one pass", ("minkpp",)),
    Probe("lowercase", None, "one more pass (the lowercased text)"),
    Probe("reference", ReferenceConfig, "one pass of a reference model", reference_model=True,
          evidence="reference model"),
    Probe("gapk", GapKConfig, "one pass", ("gap", "sigma")),
    Probe("answer_acc", None, "one pass", ("gap",), of_answer=True, evidence="answer"),
    Probe("answer_logp", None, "one pass", of_answer=True, evidence="answer"),
    Probe("answer_reference", None, "one pass of a reference model", of_answer=True, reference_model=True,
          evidence="reference model"),
    Probe("dcpdd", DCPDDConfig, "one pass and a token-frequency table"),
    Probe("recall", ReCaLLConfig, "one more pass (prefix + text)", evidence="context"),
    Probe("conrecall", ConReCaLLConfig, "two more passes (each prefix + text)", evidence="context"),
):
    PROBES.register(_probe.name)(_probe)


def uses_reference_model(methods: Iterable[str]) -> bool:
    """Whether any of `methods` compares the evaluated model with a reference model (`Probe.reference_model`)."""
    return any(PROBES.get(m).reference_model for m in methods)


def probe_options(methods: tuple[str, ...], options: Any) -> dict[str, Any]:
    """Each chosen probe's parameters (its config dataclass; defaults where `options` has none). `options` maps
    a probe name to its config or to a dict of its fields; a name that is no probe, or a probe without
    parameters, is a ValueError."""
    given = dict(options or {})
    out: dict[str, Any] = {}
    for name, value in given.items():
        try:
            probe = PROBES.get(str(name))
        except InputError as exc:
            raise ValueError(str(exc)) from None
        if probe.config is None:
            raise ValueError(f"the probe {probe.name!r} has no parameters")
        if isinstance(value, dict):
            known = {f.name for f in fields(probe.config)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown {probe.name} parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            value = probe.config(**value)
        if not isinstance(value, probe.config):
            raise ValueError(f"the parameters of {probe.name!r} are a {probe.config.__name__}, got {type(value).__name__}")
        out[probe.name] = value
    for m in methods:
        probe = PROBES.get(m)
        if probe.config is not None and m not in out:
            out[m] = probe.config()
    return {m: out[m] for m in sorted(out)}


def _fraction(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1] (a fraction of the tokens), got {value!r}")


# ---- the token-frequency table of DC-PDD ---------------------------------------------------------------------
def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of what maps text to token ids: a fast tokenizer's whole serialisation (vocabulary, merges,
    normaliser, added tokens) in canonical JSON, else the class name and the sorted vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = json.dumps(json.loads(backend.to_str()), sort_keys=True, ensure_ascii=False)
    else:
        blob = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class FrequencyTable:
    """How often each token id occurs in a reference corpus under one tokenizer (`tokenizer_hash`); `read` says
    what was read to make it (`corpus_frequency_table`: documents, bytes, files, layouts, skipped lines)."""

    counts: np.ndarray
    tokenizer_hash: str
    n_documents: int
    source: str = ""
    read: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.counts.sum())

    def frequencies(self) -> np.ndarray:
        """Laplace-smoothed relative frequencies (count + 1) / (total + vocabulary), as DC-PDD uses them."""
        return (self.counts.astype(np.float64) + 1.0) / (float(self.counts.sum()) + self.counts.size)

    def check(self, tokenizer: Any, path: str | None = None) -> None:
        """Raise `InputError` unless the table was made with `tokenizer`."""
        if tokenizer_hash(tokenizer) != self.tokenizer_hash:
            raise InputError(
                "the token-frequency table was built with another tokenizer than the scored model's (tokenizer "
                f"hash {self.tokenizer_hash[:12]}, the model's {tokenizer_hash(tokenizer)[:12]}); build one with "
                "this model's tokenizer (itd dcpdd-table)", path=path)
        if self.counts.size < len(tokenizer):
            raise InputError(f"the token-frequency table has {self.counts.size} entries, the tokenizer "
                             f"{len(tokenizer)} ids", path=path)

    def save(self, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        """Write the table atomically as a `.npz` file (counts and metadata); with a `manifest`, the table and the
        manifest beside it commit as one unit (`itd.core.io.atomic_group`)."""
        from itd.core.io import atomic_group, atomic_write, manifest_path, redact_urls, write_json

        meta = redact_urls({"tokenizer_hash": self.tokenizer_hash, "n_documents": self.n_documents,
                            "source": self.source, "read": self.read, "format": "itd-token-frequencies/1"})
        if manifest is None:
            with atomic_write(path, "wb", encoding=None) as f:
                np.savez(f, counts=self.counts, meta=np.array(json.dumps(meta)))
            return
        with atomic_group([path, manifest_path(path)]) as staged:
            with open(staged.path(path), "wb") as f:
                np.savez(f, counts=self.counts, meta=np.array(json.dumps(meta)))
            write_json(staged.path(manifest_path(path)), {**manifest, "table": {**meta, "n_tokens": self.n_tokens}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> FrequencyTable:
        """Read a table written by `save`; anything else is an `InputError` naming the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                counts = np.asarray(data["counts"], dtype=np.int64)
                meta = json.loads(str(data["meta"]))
        except FileNotFoundError:
            raise InputError("no such token-frequency table", path=str(path)) from None
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"not a token-frequency table written by itd ({exc})", path=str(path)) from None
        if meta.get("format") != "itd-token-frequencies/1" or counts.ndim != 1:
            raise InputError("not a token-frequency table written by itd", path=str(path))
        return cls(counts, str(meta["tokenizer_hash"]), int(meta["n_documents"]), str(meta.get("source", "")),
                   dict(meta.get("read") or {}))


def build_frequency_table(tokenizer: Any, texts: Iterable[str], *, source: str = "", batch: int = 256) -> FrequencyTable:
    """Count every token id of `texts` (no special tokens added) under `tokenizer`. Reading nothing is an error."""
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    n_docs = 0
    chunk: list[str] = []

    def flush() -> None:
        _add_token_counts(counts, tokenizer, chunk)
        chunk.clear()

    for text in texts:
        n_docs += 1
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    if chunk:
        flush()
    if not counts.any():
        raise InputError(f"no tokens to count: the corpus{' ' + source if source else ''} has no text")
    return FrequencyTable(counts, tokenizer_hash(tokenizer), n_docs, source)


def corpus_frequency_table(tokenizer: Any, paths: Iterable[str | os.PathLike], *, text_field: str = "text",
                           layout: str = "auto", skip_bad_lines: bool = False, max_bad_lines: float = 0.01,
                           progress: Any = None, engine: str = "local", workers: int = 1,
                           ray_address: str | None = None, batch_chars: int = 1 << 20) -> FrequencyTable:
    """`build_frequency_table` over a corpus read as `itd scan` reads one (JSONL, text, parquet, Hugging Face
    datasets; files, directories, globs; records in `layout` or from the fields `text_field` names), in this
    process, a pool of `workers` processes or on Ray (`engine`). Malformed lines stop it, or with
    `skip_bad_lines` are skipped up to `max_bad_lines`; reading nothing is an `InputError`
    (`itd.corpus.scan.ShardTally.validate`). `progress(bytes done, bytes total)` follows the bytes read. The
    table's `read` says what was read. A document longer than `batch_chars` is tokenised in windows of about that
    size, so memory does not grow with it."""
    from itd.corpus.engines import make_engine
    from itd.corpus.readers import plan_shards, resolve_layout
    from itd.corpus.scan import ShardTally, check_max_bad_lines, reader_skip_limit

    paths = [os.fspath(p) for p in paths]
    check_max_bad_lines(max_bad_lines)
    resolve_layout(layout, text_field)  # a bad layout or field fails before anything is read
    runner = make_engine(engine.strip().lower(), workers=workers, address=ray_address)
    parallel = runner.name != "local" or workers > 1
    shards = plan_shards(paths, 32 << 20 if parallel else None)  # large files cut only where shards run in parallel
    shared = (tokenizer, text_field, layout, skip_bad_lines, reader_skip_limit(max_bad_lines), batch_chars)
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    tally = ShardTally()
    for _, (shard_counts, shard_tally) in runner.map_shards(_count_shard_tokens, shared, shards, progress):
        counts += shard_counts
        tally.add(shard_tally)
    tally.validate(max_bad_lines, text_field)
    if not counts.any():
        raise InputError(f"no tokens to count: the {tally.documents:,} documents read from {', '.join(paths)} "
                         "have no text")
    return FrequencyTable(counts, tokenizer_hash(tokenizer), tally.documents, ", ".join(paths), tally.stats())


def _count_shard_tokens(shared: tuple, shard: Any, on_bytes: Any) -> tuple[np.ndarray, Any]:
    """The token counts of one corpus shard and what was read (an engine task; `shared` as
    `corpus_frequency_table` builds it)."""
    from itd.corpus.readers import ShardReader
    from itd.corpus.scan import ShardTally, batches

    tokenizer, text_field, layout, skip_bad, max_skipped, batch_chars = shared
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    reader = ShardReader(shard, text_field, skip_bad=skip_bad, max_skipped=max_skipped, layout=layout)
    seen = 0
    for docs in batches(reader, batch_chars):
        _add_token_counts(counts, tokenizer, [d.text for d in docs])
        if on_bytes is not None and reader.consumed > seen:
            on_bytes(reader.consumed - seen)
            seen = reader.consumed
    if on_bytes is not None and shard.size > seen:
        on_bytes(shard.size - seen)
    return counts, ShardTally.of_reader(reader)


def _add_token_counts(counts: np.ndarray, tokenizer: Any, texts: list[str]) -> None:
    """Add the token ids of `texts` (no special tokens) to `counts`."""
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        if ids:
            np.add.at(counts, np.asarray(ids, dtype=np.int64), 1)
