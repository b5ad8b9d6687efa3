"""Model-side contamination detection: the ITD detection stage with calibrated decisions.

Every benchmark item is rendered (`itd.core.render`) and scored under the evaluated model with every probe in one
batched pass (`itd.probes.models.score_texts`). A clean reference set, items the model cannot have seen in the same
format, is scored the same way; each item's score then gets a conformal p-value against the reference scores,
and items are flagged under Benjamini-Hochberg false-discovery-rate control. A one-sided Mann-Whitney test of
benchmark against reference scores, and a top-k test for a leak of a few items, answer whether the set as a whole
leaked. Several probes merge into one verdict by the Cauchy combination: per item with weights from the other
items' p-values, at set level with one share per kind of evidence (`evidence_weights`). Without a
reference set, the plain threshold of the ITD paper (`threshold`, on the decision method's score) flags items
instead.

For multiple-choice items the option-permutation test (Oren et al. 2023) needs no reference at all: a model
that memorised an item prefers its published option order over the other orders far more often than chance.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from itd.core import Sample, stats
from itd.core.errors import InputError
from itd.core.io import atomic_write, manifest_path, write_json
from itd.core.progress import StageProgress, prefixed, under
from itd.core.render import KEY_PREFIX, check_rendering, render, resolve_rendering
from itd.probes.methods import PROBES, uses_reference_model

if TYPE_CHECKING:  # itd.probes.models stays unimported until a model is scored
    from itd.probes.models import ItemScores, ModelRef, ScoringModel

__all__ = [
    "DetectConfig",
    "ItemDetection",
    "DetectionReport",
    "detect",
    "score_samples",
    "load_truth",
    "option_orders",
    "check_reference_model",
    "usable_reference",
    "probe_controlled_tests",
    "probe_pvalues",
    "probe_set_tests",
    "evidence_weights",
]

COMBINED = "combined"  # the decision by the Cauchy combination of every combined probe's p-value
# A controlled score's rank difference has variance 2 (1 - rho) times a plain rank's: above rho = 0.5 the control
# removes more noise than it adds, below it the plain set tests are the stronger ones.
CONTROL_MIN_CORRELATION = 0.5


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """Settings of model-side detection.

    `methods`: probes to compute (all reported). `decision`: the probe whose p-values (or threshold) make the
    per-item flags and whose set-level test decides the verdict. `fdr`: Benjamini-Hochberg level of the flags.
    `alpha`: significance level of the set-level test. `threshold`: plain-threshold mode (the ITD paper's
    epsilon) on the decision score, used when no reference set is given. `rendering`: what text is scored
    (see `itd.core.render.RENDERINGS`). `permutation_test`: run the MCQ option-order test with `permutations`
    orders per item (all orders when there are no more than that, else a seeded sample). `options`: the
    parameters of probes that have any (`itd.probes.methods`). `decision="combined"` flags and decides by the Cauchy
    combination of the p-values of the probes in `combine` (default: every probe). `recall_shots`: reference
    items joined into the ReCaLL / Con-ReCall non-member prefix (they leave the calibration set). `codec`: also
    run the dataset-level CoDeC test (`itd.probes.codec`, two more passes, one over `codec_shots` in-context items per
    item) on the benchmark and the reference set; it is reported beside the set-level tests and does not decide.
    `stratify`: the p-values of the probes that score the answer (`answer_acc`, `answer_logp`,
    `answer_reference`) of a multiple-choice item are calibrated against the reference items with the same gold
    letter (Mondrian conformal p-values), and their set-level tests compare scores within a letter (van Elteren's
    test; the top-k test permutes within letters), so the model's preference among the letters is no evidence; a
    letter with fewer than 20 reference items falls back to the whole reference set (pools with the other small
    letters in the set tests). `control`: with a reference model, also score the combined one-model probes under
    it, as a negative control: a shift between the benchmark and the reference set that a model which never saw
    the benchmark shows too (a chance draw, a reference from another source) is not taken for a leak, neither by
    the per-item combination's weights (`stats.cross_fit_cauchy`) nor by the set-level verdicts, which test those
    probes on `stats.controlled_scores`. Two more passes of the reference model (benchmark and reference set); it
    changes no probe's per-item p-value.
    """

    methods: tuple[str, ...] = ("loss", "zlib", "mink", "minkpp")
    decision: str = "minkpp"
    k: float = 0.2
    rendering: str = "auto"
    fdr: float = 0.05
    alpha: float = 0.05
    threshold: float | None = None
    batch_size: int | str = "auto"
    max_length: int | None = None
    permutation_test: bool = False
    permutations: int = 24
    seed: int = 0
    options: Any = None
    combine: tuple[str, ...] | None = None
    recall_shots: int = 4
    codec: bool = False
    codec_shots: int = 3
    stratify: bool = True
    control: bool = True

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(m.strip().lower() for m in self.methods if m.strip()))
        if not methods:
            raise InputError("at least one probe method is needed")
        object.__setattr__(self, "methods", methods)
        self.score_config()  # an unknown probe name is the error to report, before the decision that names one
        if self.decision not in methods and self.decision != COMBINED:
            raise InputError(f"the decision method {self.decision!r} must be one of the methods ({', '.join(methods)}) "
                             f"or {COMBINED!r}")
        if self.decision == COMBINED and self.threshold is not None:
            raise InputError("a threshold applies to one probe's score: give --decision a probe, not 'combined'")
        combine = methods if self.combine is None else tuple(dict.fromkeys(m.strip().lower() for m in self.combine))
        unknown = [m for m in combine if m not in methods]
        if unknown or not combine:
            raise InputError(f"the combined probes must be some of the methods ({', '.join(methods)}), got "
                             f"{', '.join(unknown) or 'none'}")
        object.__setattr__(self, "combine", combine)
        for name in ("recall_shots", "codec_shots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        try:
            check_rendering(self.rendering)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        for name in ("fdr", "alpha"):
            if not 0 < getattr(self, name) < 1:
                raise InputError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.permutations < 2:
            raise InputError(f"permutations must be >= 2, got {self.permutations}")

    def score_config(self):
        """The `itd.probes.models.ScoreConfig` of the scoring pass (raises InputError on a bad probe setting)."""
        from itd.probes.models import ScoreConfig

        try:
            return ScoreConfig(methods=self.methods, k=self.k, batch_size=self.batch_size, max_length=self.max_length,
                               options=self.options)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """The config, JSON-ready, with every chosen probe's parameters (defaults included), so a manifest says
        exactly how each score was computed."""
        return {**asdict(self), "options": {m: asdict(o) for m, o in self.score_config().options.items()}}

    def input_files(self) -> list[str]:
        """The files the chosen probes read (DC-PDD's token-frequency table), for a manifest's input hashes."""
        table = getattr(self.score_config().options.get("dcpdd"), "table", None)
        return [table] if table and "dcpdd" in self.methods else []


@dataclass(slots=True)
class ItemDetection:
    """One benchmark item's probe scores and, when calibrated, its p-values, q-value and flag."""

    sample: Sample
    rendering: str
    scores: dict[str, float]
    n_tokens: int
    nll: float
    p_values: dict[str, float] = field(default_factory=dict)
    control_p_values: dict[str, float] = field(default_factory=dict)
    combined_p: float | None = None
    q_value: float | None = None
    flag: bool | None = None
    permutation_p: float | None = None

    def to_dict(self, decision: str) -> dict[str, Any]:
        """The JSONL record: id, source, one field per probe (higher = more likely leaked), p-value and flag."""
        rec: dict[str, Any] = {
            "id": self.sample.id,
            "source": self.sample.source.to_dict() if self.sample.source else None,
            "rendering": self.rendering,
            "n_tokens": self.n_tokens,
            "nll": _finite(self.nll),
        }
        rec.update({m: _finite(v) for m, v in self.scores.items()})
        if self.p_values:
            rec["p_value"] = self.combined_p if decision == COMBINED else self.p_values.get(decision, 1.0)
            rec["p_values"] = dict(self.p_values)
            if self.control_p_values:
                rec["control_p_values"] = dict(self.control_p_values)
            if self.combined_p is not None:
                rec["combined_p"] = self.combined_p
            rec["q_value"] = self.q_value
        if self.flag is not None:
            rec["flag"] = self.flag
        if self.permutation_p is not None:
            rec["permutation_p"] = self.permutation_p
        return rec


@dataclass(slots=True)
class DetectionReport:
    """Results of `detect`: per-item detections in benchmark order, set-level tests, and (given the truth)
    how well each probe separates leaked from unseen items."""

    items: list[ItemDetection]
    config: DetectConfig
    model: str
    mode: str  # "fdr" (calibrated against a reference set), "threshold", or "scores" (no decision)
    reference_size: int = 0
    set_tests: dict[str, stats.SetTest] = field(default_factory=dict)
    sparse_tests: dict[str, stats.SparseSetTest] = field(default_factory=dict)
    """Per probe, the top-k test of a few items above the reference (`stats.sparse_set_test`), beside Mann-Whitney."""
    permutation: stats.PermutationSetTest | None = None
    combined_set: dict[str, Any] | None = None
    """The set-level Cauchy combination of the combined probes' Mann-Whitney and top-k p-values: p_value, `tests`
    (``"probe"`` for Mann-Whitney, ``"probe top-k"``), and `drivers`, the tests whose evidence made it (largest
    share of the combined statistic first)."""
    truth: dict[str, Any] | None = None
    reference_scores: dict[str, list[float]] = field(default_factory=dict)
    """Per probe, the finite scores of the reference set (what the p-values are calibrated against)."""
    codec: Any = None
    """The CoDeC test (`itd.probes.codec.CodecResult`) when `config.codec` ran it."""
    controlled_set_tests: dict[str, stats.SetTest] = field(default_factory=dict)
    controlled_sparse_tests: dict[str, stats.SparseSetTest] = field(default_factory=dict)
    """Per one-model probe with a negative control (`DetectConfig.control`): its Mann-Whitney and top-k tests on
    `stats.controlled_scores` (rank under the evaluated model minus rank under the reference model), where the two
    models rank the pooled items alike (`control_rank_correlation` above `CONTROL_MIN_CORRELATION`). They replace
    the probe's plain tests in the set-level verdicts."""
    control_rank_correlation: dict[str, float] = field(default_factory=dict)
    """Per probe with a negative control, the Spearman correlation of its scores under the two models over the
    benchmark and reference items pooled (label-free, so choosing the tests by it keeps their level)."""
    reference_overlap: int = 0
    """How many reference items were benchmark items too (the same scored text) and were left out."""

    @property
    def flagged(self) -> list[ItemDetection]:
        return [it for it in self.items if it.flag]

    @property
    def set_p_value(self) -> float | None:
        """The set-level p-value of the decision: the combined set test for "combined", else the Cauchy combination
        of the decision probe's Mann-Whitney and top-k tests (a leak of many items or of a few); None without a
        reference."""
        if self.config.decision == COMBINED:
            return None if self.combined_set is None else self.combined_set["p_value"]
        test, sparse = self.verdict_tests(self.config.decision)
        if test is None:
            return None
        return test.p_value if sparse is None else float(stats.cauchy_combination([test.p_value, sparse.p_value]))

    def verdict_tests(self, method: str) -> tuple[stats.SetTest | None, stats.SparseSetTest | None]:
        """The Mann-Whitney and top-k tests that decide for `method` at set level: its controlled tests where a
        negative control ran (`controlled_set_tests`), else its plain ones."""
        if method in self.controlled_set_tests:
            return self.controlled_set_tests[method], self.controlled_sparse_tests.get(method)
        return self.set_tests.get(method), self.sparse_tests.get(method)

    @property
    def set_contaminated(self) -> bool | None:
        """Whether the set-level p-value of the decision (`set_p_value`) is below `alpha` (None without a reference)."""
        p = self.set_p_value
        return None if p is None else p < self.config.alpha

    @property
    def untested(self) -> list[str]:
        """The probes that read nothing a test could use: no benchmark item scored (an answer probe on items without
        an answer; a text the rendering leaves empty), or with a reference set no benchmark score comparable with a
        reference score (none scored there; an answer probe, compared within gold letters, where no benchmark
        item's letter has reference items). They calibrate, test and decide nothing."""
        if self.mode == "fdr":
            return [m for m in self.config.methods if m not in self.set_tests]
        return [m for m in self.config.methods if not any(math.isfinite(it.scores.get(m, math.nan)) for it in self.items)]

    @property
    def undecided_reason(self) -> str | None:
        """Why nothing could decide, or None when something did: a reference set or a threshold with a decision
        probe that scored items, or an option-permutation test that ran (MCQ items). Scores alone decide nothing,
        and neither does a decision probe that read nothing."""
        if self.permutation is not None:
            return None
        if self.mode == "scores":
            no_mcq = " (the option-order test ran on no item: it needs multiple-choice items)" if \
                self.config.permutation_test else ""
            return ("scores alone are no verdict; give --reference-set (clean items the model cannot have seen) or "
                    f"--threshold to decide by{no_mcq}")
        combined = self.config.decision == COMBINED
        deciding = self.config.combine if combined else (self.config.decision,)
        names = f"the decision {'probes' if len(deciding) > 1 else 'probe'} ({', '.join(deciding)})"
        if any(m not in self.untested for m in deciding):
            if self.mode != "fdr" or self._can_detect(deciding):
                return None
            return (f"with {self.reference_size} reference items nothing {names} read could have been found: the "
                    f"smallest p-value an item can get, 1/{self.reference_size + 1}, is above the FDR level "
                    f"{self.config.fdr}, and no top-k test could reach p < {self.config.alpha} whatever the scores; "
                    "give more reference items")
        if self.mode == "fdr":
            why = (f"{names} scored no benchmark item that a reference item could be compared with (the answer "
                   "probes need items with an answer, and within gold letters reference items of the same letters)")
        else:
            why = f"{names} scored no benchmark item (the answer probes need items with an answer)"
        return f"{why}, so a verdict would rest on reading nothing; choose probes that read these items"

    def _can_detect(self, probes: Sequence[str]) -> bool:
        """Whether some scores could have made a verdict of contamination: an item's smallest conformal p-value
        within the FDR level, or a top-k test of one of `probes` able to reach alpha (`detectable`)."""
        if 1.0 / (self.reference_size + 1) <= self.config.fdr:
            return True
        tests = (self.verdict_tests(m)[1] for m in probes)
        return any(t is not None and t.detectable is not None for t in tests)

    @property
    def decided(self) -> bool:
        """Whether anything could decide (`undecided_reason` is None)."""
        return self.undecided_reason is None

    @property
    def contaminated(self) -> bool | None:
        """The verdict behind exit code 1: the set-level test is significant, an item is flagged, or the
        option-permutation test is significant. None when nothing could decide (`decided` is false): scores
        alone are never a "clean" verdict."""
        if not self.decided:
            return None
        perm = self.permutation is not None and self.permutation.p_value < self.config.alpha
        return bool(self.set_contaminated) or bool(self.flagged) or perm

    @property
    def verdict(self) -> str:
        """"contaminated", "not_detected" or "undecided" (no reference set, threshold or permutation test)."""
        contaminated = self.contaminated
        return "undecided" if contaminated is None else "contaminated" if contaminated else "not_detected"

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: verdict, flag counts, set-level tests and ground-truth metrics."""
        out: dict[str, Any] = {
            "model": self.model,
            "items": len(self.items),
            "mode": self.mode,
            "decision": self.config.decision,
            "reference_items": self.reference_size,
            "reference_overlap": self.reference_overlap,
            "flagged": len(self.flagged),
            "flagged_ids": [it.sample.id for it in self.flagged],
            "verdict": self.verdict,
            "contaminated": self.contaminated,
            "undecided_reason": self.undecided_reason,
            "untested": self.untested,
            "set_p_value": self.set_p_value,
            "set_tests": {m: _set_test_dict(t) for m, t in self.set_tests.items()},
            "sparse_set_tests": {m: asdict(t) for m, t in self.sparse_tests.items()},
            "controlled_set_tests": {m: _set_test_dict(t) for m, t in self.controlled_set_tests.items()},
            "controlled_sparse_set_tests": {m: asdict(t) for m, t in self.controlled_sparse_tests.items()},
            "control_rank_correlation": {m: round(r, 4) for m, r in self.control_rank_correlation.items()},
            "reference_scores": {m: [round(x, 6) for x in v] for m, v in self.reference_scores.items()},
        }
        if self.combined_set is not None:
            out["combined_set_test"] = dict(self.combined_set)
        if self.permutation is not None:
            out["permutation_test"] = asdict(self.permutation)
        if self.codec is not None:
            out["codec"] = self.codec.to_dict()
        if self.truth is not None:
            out["truth"] = self.truth
        return out

    def write_jsonl(self, path: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
        """One JSON record per item, written atomically; the manifest (with the summary) goes beside it."""
        with atomic_write(path) as f:
            for it in self.items:
                f.write(json.dumps(it.to_dict(self.config.decision), ensure_ascii=False) + "\n")
        if manifest is not None:
            write_json(manifest_path(path), {**manifest, "summary": self.summary()})


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _set_test_dict(t: stats.SetTest) -> dict[str, Any]:
    return {
        "p_value": t.p_value,
        "statistic": t.statistic,
        "auroc": round(t.auroc, 4),
        "auroc_ci": [round(x, 4) for x in t.auroc_ci],
        "n_benchmark": t.n_benchmark,
        "n_reference": t.n_reference,
    }


def score_samples(lm: ScoringModel, samples: Sequence[Sample], config: DetectConfig,
                  reference_model: ScoringModel | None = None, progress: StageProgress | None = None,
                  stage: str = "benchmark") -> list[ItemScores]:
    """`itd.probes.models.ItemScores` of `samples` rendered as `config.rendering`, one per sample, in order."""
    from itd.probes.models import score_texts

    texts = [scored_text(s, config.rendering) for s in samples]
    return score_texts(lm, texts, config.score_config(), reference=reference_model, progress=under(progress, stage))


def scored_text(sample: Sample, rendering: str) -> str:
    """`render(sample, rendering)`; for an answer rendering, an `itd.probes.models.AnsweredText` that knows where the
    answer starts (what the answer probes score): the worked solution or gold answer, or of a multiple-choice
    item's `Answer: C` line the key itself (the `Answer:` before it is the template's, the same for every item)."""
    from itd.probes.models import AnsweredText

    text = render(sample, rendering)
    mode = resolve_rendering(sample, rendering)
    if not mode.endswith("answer"):
        return text
    head = render(sample, mode.removesuffix("+answer"))
    if len(text) <= len(head) or not text.startswith(head + "\n"):
        return text
    start = len(head) + 1
    if mode == "options+answer" and text.startswith(KEY_PREFIX, start):
        start += len(KEY_PREFIX)
    return AnsweredText(text, start)


def option_orders(n_choices: int, limit: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Choice orders for the permutation test: the original first, then every other order when there are at
    most `limit` in all, else `limit - 1` distinct random ones."""
    identity = tuple(range(n_choices))
    if math.factorial(n_choices) <= limit:
        return [identity] + [p for p in itertools.permutations(identity) if p != identity]
    seen = {identity}
    orders = [identity]
    while len(orders) < limit:
        p = tuple(rng.sample(identity, n_choices))
        if p not in seen:
            seen.add(p)
            orders.append(p)
    return orders


def _permutation_test(lm, samples: Sequence[Sample], config: DetectConfig, progress) -> tuple[dict[int, float], stats.PermutationSetTest | None]:
    """Per-item p-values of the option-order test for the MCQ items, and the set-level binomial test."""
    from itd.probes.models import ScoreConfig, score_texts

    rng = random.Random(config.seed)
    mcq = [i for i, s in enumerate(samples) if s.is_mcq and len(s.choices) >= 2 and isinstance(s.answer, int)]
    if not mcq:
        return {}, None
    mode = "options+answer" if resolve_rendering(samples[mcq[0]], config.rendering).endswith("answer") else "options"
    by_size: dict[int, list[int]] = {}
    for i in mcq:
        by_size.setdefault(len(samples[i].choices), []).append(i)
    pvalues: dict[int, float] = {}
    tests = []
    for size, items in sorted(by_size.items()):
        orders = [option_orders(size, config.permutations, rng) for _ in items]
        texts = [render(samples[i], mode, order) for i, per in zip(items, orders) for order in per]
        scored = score_texts(
            lm,
            texts,
            ScoreConfig(methods=("loss",), batch_size=config.batch_size, max_length=config.max_length),
            progress=under(progress, "option orders"),
        )
        n_orders = len(orders[0])
        ll = np.array([float(s.token_logprobs.sum()) for s in scored]).reshape(len(items), n_orders)
        p = stats.permutation_rank_pvalues(ll[:, 0], ll[:, 1:])
        pvalues.update(zip(items, p.tolist()))
        tests.append(stats.permutation_set_test(p, n_orders))
    if len(tests) == 1:
        return pvalues, tests[0]
    # items with different numbers of choices: combine their binomial tests by Bonferroni
    worst = min(tests, key=lambda t: t.p_value)
    return pvalues, stats.PermutationSetTest(
        count=sum(t.count for t in tests),
        n_items=sum(t.n_items for t in tests),
        expected=sum(t.expected for t in tests),
        p_value=min(1.0, worst.p_value * len(tests)),
    )


def detect(
    samples: Sequence[Sample],
    model: ModelRef,
    reference: Sequence[Sample] | None = None,
    config: DetectConfig | None = None,
    *,
    reference_model: ModelRef | None = None,
    truth: Mapping[str, Sequence[str]] | None = None,
    progress: StageProgress | None = None,
) -> DetectionReport:
    """Score `samples` under `model` (a loaded `itd.probes.models.ScoringModel`, or a name/path to load) and decide
    which leaked.

    `reference`: a clean reference set in the same format; enables conformal p-values, FDR flags and the
    set-level test. `reference_model`: a second model for the `reference` probe. `truth`: `{"leaked": ids,
    "unseen": ids}` (a contamination-lab manifest) to measure every probe's AUROC and TPR at low FPR.
    `progress(stage, done, total)` counts scored tokens.
    """
    from itd.probes.models import resolve_model, same_weights

    config = config or DetectConfig()
    if not samples:
        raise InputError("the benchmark has no samples")
    check_reference_model(config.methods, reference_model)
    overlap = 0
    if reference:
        reference, overlap = usable_reference(samples, reference, config.rendering)
    lm = resolve_model(model)
    ref_lm = None if reference_model is None else resolve_model(reference_model)
    if ref_lm is not None and same_weights(lm, ref_lm):
        raise InputError(f"the reference model ({ref_lm.name}) has the evaluated model's weights: the reference-model "
                         "probes and the negative control would compare the model with itself and find nothing; give "
                         "a model that cannot have seen the benchmark, such as the base of the fine-tune evaluated")
    config, reference = _with_recall_prefix(config, reference)
    scored = score_samples(lm, samples, config, ref_lm, progress, "benchmark")
    items = [
        ItemDetection(s, resolve_rendering(s, config.rendering), dict(sc.scores), sc.n_tokens, sc.nll)
        for s, sc in zip(samples, scored)
    ]
    report = DetectionReport(items, config, lm.name, mode="scores", reference_overlap=overlap)
    if reference:
        ref_scored = score_samples(lm, reference, config, ref_lm, progress, "reference set")
        report.mode, report.reference_size = "fdr", len(reference)
        for m in config.methods:
            bench = np.array([it.scores[m] for it in items])
            ref = np.array([s.scores[m] for s in ref_scored])
            report.reference_scores[m] = ref[np.isfinite(ref)].tolist()
            tests = probe_set_tests(m, bench, ref, samples, reference, config)
            if tests is None:  # `untested`
                continue
            p = probe_pvalues(m, bench, ref, samples, reference, config)
            for it, pv in zip(items, p.tolist()):
                it.p_values[m] = pv
            report.set_tests[m], report.sparse_tests[m] = tests
        if config.control and ref_lm is not None:
            _negative_control(report, lm, ref_lm, samples, reference, ref_scored, progress)
        _combine(report)
        if config.decision == COMBINED:
            p_decision = np.array([1.0 if it.combined_p is None else it.combined_p for it in items])
        else:
            p_decision = np.array([it.p_values.get(config.decision, 1.0) for it in items])
        rejected, q = stats.benjamini_hochberg(p_decision, config.fdr)
        for it, r, qv in zip(items, rejected.tolist(), q.tolist()):
            it.flag, it.q_value = bool(r), qv
    elif config.threshold is not None:
        report.mode = "threshold"
        for it in items:
            value = it.scores[config.decision]
            it.flag = bool(math.isfinite(value) and value > config.threshold)
    if config.codec:
        from itd.probes.codec import codec_test

        try:
            report.codec = codec_test(lm, samples, reference, shots=config.codec_shots, rendering=config.rendering,
                                      seed=config.seed, batch_size=config.batch_size, max_length=config.max_length,
                                      progress=prefixed(progress, "codec"))
        except ValueError as exc:
            raise InputError(f"CoDeC: {exc}") from None
    if config.permutation_test:
        pvalues, report.permutation = _permutation_test(lm, samples, config, progress)
        for i, pv in pvalues.items():
            items[i].permutation_p = pv
    if truth is not None:
        report.truth = truth_metrics(items, config, truth)
    return report


def check_reference_model(methods: Sequence[str], reference_model: Any) -> None:
    """InputError unless `methods` hold a reference-model probe exactly when a reference model is given."""
    if uses_reference_model(methods) and reference_model is None:
        raise InputError("the reference-model probes (reference, answer_reference) need a reference model "
                         "(--reference-model)")
    if reference_model is not None and not uses_reference_model(methods):
        raise InputError("a reference model is used by the reference-model probes (reference, answer_reference), "
                         "which also run the one-model probes' negative control: add one to --methods, or leave "
                         "out --reference-model")


def _kinds(samples: Sequence[Sample]) -> set[str]:
    return {"multiple-choice" if s.is_mcq else "free-form" for s in samples}


def usable_reference(samples: Sequence[Sample], reference: Sequence[Sample], rendering: str
                     ) -> tuple[list[Sample], int]:
    """The reference items that can calibrate `samples`, and how many were left out as benchmark items.

    InputError (naming the reference file) when the reference holds other kinds of item than the benchmark
    (multiple-choice, free-form: rendered and scored differently, the sets would differ by form), or when every
    reference item is a benchmark item. A reference item whose scored text (as `rendering`, whitespace and case
    folded) is a benchmark item's is left out: an item compared with itself hides its own leak."""
    bench_kinds, ref_kinds = _kinds(samples), _kinds(reference)
    if bench_kinds != ref_kinds:
        raise InputError(f"the reference set's items are {' and '.join(sorted(ref_kinds))} and the benchmark's "
                         f"{' and '.join(sorted(bench_kinds))}: a reference set must hold clean items of the "
                         "benchmark's kind (the same format), or the comparison finds their difference in form, "
                         "not a leak", path=_single_file(reference))

    def key(sample: Sample) -> str:
        return " ".join(scored_text(sample, rendering).split()).casefold()

    in_benchmark = {key(s) for s in samples}
    kept = [r for r in reference if key(r) not in in_benchmark]
    if not kept:
        raise InputError("every reference item is also a benchmark item: the comparison would find nothing "
                         "whether or not the benchmark leaked; give clean items apart from the benchmark",
                         path=_single_file(reference))
    return kept, len(reference) - len(kept)


def _single_file(samples: Sequence[Sample]) -> str | None:
    """The file all `samples` came from, for an error to name; None when they came from several or none."""
    files = {s.source.file for s in samples if s.source is not None}
    return files.pop() if len(files) == 1 else None


def probe_pvalues(method: str, scores: np.ndarray, reference_scores: np.ndarray, samples: Sequence[Sample],
                  reference: Sequence[Sample], config: DetectConfig) -> np.ndarray:
    """Each sample's conformal p-value of its `method` score against the reference items' scores; within the
    sample's gold letter where `_answer_strata` gives letters. 1 where a score is NaN, and for every sample when
    no reference score is finite."""
    ok_b, ok_r = np.isfinite(scores), np.isfinite(reference_scores)
    p = np.ones(scores.size)
    if not ok_b.any() or not ok_r.any():
        return p
    strata = _answer_strata(method, samples, reference, config, ok_b, ok_r)
    if strata:
        p[ok_b] = stats.stratified_conformal_pvalues(scores[ok_b], reference_scores[ok_r], *strata)
    else:
        p[ok_b] = stats.conformal_pvalues(scores[ok_b], reference_scores[ok_r])
    return p


def probe_set_tests(method: str, scores: np.ndarray, reference_scores: np.ndarray, samples: Sequence[Sample],
                    reference: Sequence[Sample], config: DetectConfig
                    ) -> tuple[stats.SetTest, stats.SparseSetTest] | None:
    """The Mann-Whitney and top-k set tests of the finite `method` scores against the reference's; within gold
    letters (van Elteren's test, permutations within letters) where `_answer_strata` gives letters. None when no
    benchmark score can be compared with a reference score: none is finite on one side, or within letters no
    benchmark item's letter has reference items."""
    ok_b, ok_r = np.isfinite(scores), np.isfinite(reference_scores)
    if not ok_b.any() or not ok_r.any():
        return None
    strata = _answer_strata(method, samples, reference, config, ok_b, ok_r)
    if strata and not stats.comparable_in_strata(*strata).any():
        return None
    by = dict(zip(("strata", "reference_strata"), strata)) if strata else {}
    bench, ref = scores[ok_b], reference_scores[ok_r]
    return (stats.set_level_test(bench, ref, seed=config.seed, **by),
            stats.sparse_set_test(bench, ref, seed=config.seed, alpha=config.alpha, **by))


def _answer_strata(method: str, samples: Sequence[Sample], reference: Sequence[Sample], config: DetectConfig,
                   ok: np.ndarray, ok_reference: np.ndarray) -> tuple[list[int | None], list[int | None]] | None:
    """The gold letters of the samples and of the reference items whose scores are finite (`ok`,
    `ok_reference`), when `method` scores the answer (`Probe.of_answer`), `config.stratify` is on and some item
    has one (a multiple-choice item's; others pool): a model prefers some letters, so an answer's score is
    exchangeable with a reference only within its letter. None otherwise."""
    if not (config.stratify and PROBES.get(method).of_answer):
        return None
    keys = [_answer_stratum(s) for s, keep in zip(samples, ok) if keep]
    ref_keys = [_answer_stratum(s) for s, keep in zip(reference, ok_reference) if keep]
    return (keys, ref_keys) if any(k is not None for k in (*keys, *ref_keys)) else None


def _answer_stratum(sample: Sample) -> int | None:
    """The stratum of a multiple-choice item for the answer probes: its gold choice (None for other items)."""
    return sample.answer if sample.is_mcq and isinstance(sample.answer, int) else None


def _with_recall_prefix(config: DetectConfig, reference: Sequence[Sample] | None
                        ) -> tuple[DetectConfig, Sequence[Sample] | None]:
    """For ReCaLL / Con-ReCall without a non-member prefix of the user's: the prefix made of `recall_shots`
    seeded reference items, which then leave the reference set (an item behind itself would not be exchangeable
    with the benchmark's)."""
    from dataclasses import replace

    from itd.probes.methods import probe_options

    wanted = [m for m in ("recall", "conrecall") if m in config.methods]
    if not wanted:
        return config, reference
    try:
        options = probe_options(config.methods, config.options)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    field_of = {"recall": "prefix", "conrecall": "nonmember_prefix"}
    if all(getattr(options[m], field_of[m]) for m in wanted):
        return config, reference
    if not reference or len(reference) <= config.recall_shots:
        raise InputError(f"ReCaLL needs a non-member prefix: give a reference set of more than {config.recall_shots} "
                         "items (recall_shots of them make the prefix) or the prefix itself")
    rng = random.Random(config.seed)
    picked = set(rng.sample(range(len(reference)), config.recall_shots))
    prefix = "".join(render(reference[i], config.rendering) + "\n\n" for i in sorted(picked))
    for m in wanted:
        if not getattr(options[m], field_of[m]):
            options[m] = replace(options[m], **{field_of[m]: prefix})
    rest = [s for i, s in enumerate(reference) if i not in picked]
    return replace(config, options=options), rest


def _control_probes(config: DetectConfig, lm: ScoringModel, reference_model: ScoringModel) -> list[str]:
    """The combined probes a reference model can serve as a negative control for: those of one model, less DC-PDD
    when the reference model has another tokenizer than the frequency table's (the evaluated model's)."""
    from itd.probes.methods import tokenizer_hash

    probes = [m for m in (config.combine or config.methods) if not PROBES.get(m).reference_model]
    if "dcpdd" in probes and tokenizer_hash(lm.tokenizer) != tokenizer_hash(reference_model.tokenizer):
        probes.remove("dcpdd")
    return probes


def _negative_control(report: DetectionReport, lm: ScoringModel, reference_model: ScoringModel,
                      samples: Sequence[Sample], reference: Sequence[Sample], ref_scored: Sequence[Any],
                      progress: StageProgress | None) -> None:
    """The combined one-model probes scored under the reference model, which never saw the benchmark: each item's
    `control_p_values` (calibrated against the reference set under it, as the probes are under the evaluated
    model), and each probe's controlled set tests (`stats.controlled_scores` of its scores under both models, on
    the benchmark and the reference set `ref_scored` was scored on)."""
    from dataclasses import replace

    config = report.config
    probes = [m for m in _control_probes(config, lm, reference_model) if m in report.set_tests]
    if not probes:
        return
    control = replace(config, methods=tuple(probes), decision=probes[0], combine=None)
    bench = score_samples(reference_model, samples, control, None, progress, "control: benchmark")
    ref = score_samples(reference_model, reference, control, None, progress, "control: reference set")
    for m in probes:
        control_bench, control_ref = (np.array([sc.scores[m] for sc in scored]) for scored in (bench, ref))
        p = probe_pvalues(m, control_bench, control_ref, samples, reference, config)
        for it, pv in zip(report.items, p.tolist()):
            it.control_p_values[m] = pv
        model_bench = np.array([it.scores[m] for it in report.items])
        model_ref = np.array([sc.scores[m] for sc in ref_scored])
        rho, tests = probe_controlled_tests(m, (model_bench, model_ref), (control_bench, control_ref), samples,
                                            reference, config)
        if rho is not None:
            report.control_rank_correlation[m] = rho
        if tests is not None:
            report.controlled_set_tests[m], report.controlled_sparse_tests[m] = tests


def probe_controlled_tests(method: str, model: tuple[np.ndarray, np.ndarray], control: tuple[np.ndarray, np.ndarray],
                           samples: Sequence[Sample], reference: Sequence[Sample], config: DetectConfig
                           ) -> tuple[float | None, tuple[stats.SetTest, stats.SparseSetTest] | None]:
    """`method`'s set tests (as `probe_set_tests`) on its controlled scores: `model` and `control` are its
    (benchmark, reference set) scores under the evaluated model and under the control model. Returns the two
    models' rank correlation over the pooled items where both scores are finite (None without such items) and the
    tests, None where that correlation is not above `CONTROL_MIN_CORRELATION`, and for an answer probe compared
    within gold letters: there the letters' priors, which both models share, make the correlation over all items
    say little of how alike they rank the items of one letter (on the lab's MMLU fine-tuning twins 0.51 over all,
    and the controlled verdict lost the leak)."""
    (model_bench, model_ref), (control_bench, control_ref) = model, control
    ok_b = np.isfinite(model_bench) & np.isfinite(control_bench)
    ok_r = np.isfinite(model_ref) & np.isfinite(control_ref)
    if not ok_b.any() or not ok_r.any():
        return None, None
    rho = stats.rank_correlation(np.concatenate([model_bench[ok_b], model_ref[ok_r]]),
                                 np.concatenate([control_bench[ok_b], control_ref[ok_r]]))
    if not rho > CONTROL_MIN_CORRELATION:
        return rho, None  # the control ranks the items too differently: its noise would outweigh the shift it removes
    if _answer_strata(method, samples, reference, config, ok_b, ok_r) is not None:
        return rho, None
    d_bench, d_ref = np.full(len(model_bench), np.nan), np.full(len(model_ref), np.nan)
    d_bench[ok_b], d_ref[ok_r] = stats.controlled_scores(model_bench[ok_b], model_ref[ok_r], control_bench[ok_b],
                                                         control_ref[ok_r])
    return rho, probe_set_tests(method, d_bench, d_ref, samples, reference, config)


def _combine(report: DetectionReport) -> None:
    """Per item, the Cauchy combination of the combined probes' p-values, weighted by how often the other items'
    p-values lie in their tails (`stats.cross_fit_cauchy`; one share per kind of evidence where no probe's tail
    shows a leak); at set level, that of their Mann-Whitney and top-k
    p-values (a leak of many items and one of a few; controlled where a negative control ran, `verdict_tests`),
    one share per kind of evidence (`evidence_weights`), with the tests that drove it."""
    config = report.config
    probes = [m for m in config.combine if m in report.set_tests]
    if not probes:
        return
    matrix = np.array([[it.p_values.get(m, np.nan) for m in probes] for it in report.items])
    control = None
    if any(it.control_p_values for it in report.items):
        control = np.array([[it.control_p_values.get(m, np.nan) for m in probes] for it in report.items])
    combined_p, weights = stats.cross_fit_cauchy(matrix, control=control, seed=config.seed,
                                                 prior=evidence_weights(probes))
    for it, pv in zip(report.items, combined_p.tolist()):
        it.combined_p = None if math.isnan(pv) else pv
    decide = {m: report.verdict_tests(m) for m in probes}
    tested = [(m, m, decide[m][0].p_value) for m in probes]  # (test, its probe, p-value)
    tested += [(f"{m} top-k", m, decide[m][1].p_value) for m in probes if decide[m][1] is not None]
    tests = [t for t, _, _ in tested]
    set_p = np.array([pv for _, _, pv in tested])
    set_w = evidence_weights([m for _, m, _ in tested])
    combined = float(stats.cauchy_combination(set_p, set_w))
    terms = set_w * np.tan((0.5 - np.clip(set_p, 1e-300, 1 - 1e-15)) * np.pi)
    order = np.argsort(-terms, kind="stable")
    positive = terms.clip(min=0)
    share = positive / positive.sum() if positive.sum() > 0 else np.zeros_like(positive)
    drivers = [tests[j] for j in order if set_p[j] < config.alpha or share[j] >= 0.25]
    report.combined_set = {
        "method": "cauchy",
        "p_value": combined,
        "probes": probes,
        "tests": tests,
        "weights": {t: round(float(w), 4) for t, w in zip(tests, set_w)},
        "drivers": drivers,
        "shares": {tests[j]: round(float(share[j]), 4) for j in order},
        # the per-item combination's weights (`stats.cross_fit_cauchy`), averaged over the items
        "item_weights": {m: round(float(w), 4) for m, w in zip(probes, weights.mean(axis=0))},
        # the probes whose per-item weights were checked against a negative control (`DetectConfig.control`);
        # which of them the set tests controlled: the summary's `controlled_set_tests`
        "controlled": [] if control is None else [m for j, m in enumerate(probes) if np.isfinite(control[:, j]).any()],
    }


def evidence_weights(test_probes: Sequence[str]) -> np.ndarray:
    """Weights of tests in a Cauchy combination, one per test, named by the probe it tests (a probe may have
    several, as its Mann-Whitney and top-k set tests): each kind of evidence among them (`Probe.evidence`) gets an
    equal share, split equally among its probes, and a probe's share equally among its tests.

    Fixed before any score is seen, so the combination keeps its level. Probes of one kind read the same quantities
    (Min-K%, Min-K%++, Gap-K% and the loss are all functions of one pass's token log-probabilities) and move
    together: weighted one per probe, six of them would outvote the one probe of another kind that sees the leak."""
    kinds = {m: PROBES.get(m).evidence for m in test_probes}
    per_probe = Counter(test_probes)
    probes_of_kind = Counter(kinds[m] for m in per_probe)
    n_kinds = len(probes_of_kind)
    return np.array([1.0 / (n_kinds * probes_of_kind[kinds[m]] * per_probe[m]) for m in test_probes])


def truth_metrics(items: Sequence[ItemDetection], config: DetectConfig, truth: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Per probe: AUROC (with bootstrap CI) and TPR at 1% and 5% FPR of leaked vs unseen items; and the
    precision and recall of the flags. Items in neither list are ignored.

    `within_letter`: the same figures of each answer probe whose p-values were calibrated within gold letters,
    ranked by those p-values. Its raw score mixes the letters' priors (a model may give one letter twice the
    probability of another), which the p-values, the flags and the combination do not see."""
    leaked, unseen = set(truth.get("leaked", ())), set(truth.get("unseen", ()))
    pos = [it for it in items if it.sample.id in leaked]
    neg = [it for it in items if it.sample.id in unseen]
    if not pos or not neg:
        raise InputError(
            f"the truth file matches {len(pos)} leaked and {len(neg)} unseen items of this benchmark; both must be > 0"
        )
    out: dict[str, Any] = {"leaked": len(pos), "unseen": len(neg), "methods": {}}
    for m in config.methods:
        a = np.array([it.scores[m] for it in pos])
        b = np.array([it.scores[m] for it in neg])
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if not a.size or not b.size:
            continue
        out["methods"][m] = _separation(a, b, config.seed)
    lettered = any(_answer_stratum(it.sample) is not None for it in pos + neg)
    for m in config.methods:
        if not (lettered and config.stratify and PROBES.get(m).of_answer):
            continue
        a, b = (np.array([-math.log10(max(it.p_values[m], 1e-300)) for it in group if m in it.p_values
                          and math.isfinite(it.scores[m])]) for group in (pos, neg))
        if a.size and b.size:
            out.setdefault("within_letter", {})[m] = _separation(a, b, config.seed)
    if any(it.combined_p is not None for it in pos + neg):
        a = np.array([-math.log10(max(it.combined_p, 1e-300)) for it in pos if it.combined_p is not None])
        b = np.array([-math.log10(max(it.combined_p, 1e-300)) for it in neg if it.combined_p is not None])
        if a.size and b.size:
            out["methods"][COMBINED] = _separation(a, b, config.seed)
    if any(it.flag is not None for it in pos + neg):
        tp = sum(bool(it.flag) for it in pos)
        fp = sum(bool(it.flag) for it in neg)
        out["flags"] = {
            "true_positives": tp,
            "false_positives": fp,
            "recall": round(tp / len(pos), 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        }
    return out


def _separation(leaked: np.ndarray, unseen: np.ndarray, seed: int) -> dict[str, Any]:
    """AUROC with its bootstrap CI and TPR at 1% and 5% FPR of leaked against unseen scores."""
    low, high = stats.bootstrap_auroc_ci(leaked, unseen, seed=seed)
    return {
        "auroc": round(stats.auroc(leaked, unseen), 4),
        "auroc_ci": [round(low, 4), round(high, 4)],
        "tpr_at_1pct_fpr": round(stats.tpr_at_fpr(leaked, unseen, 0.01), 4),
        "tpr_at_5pct_fpr": round(stats.tpr_at_fpr(leaked, unseen, 0.05), 4),
    }


def load_truth(path: str | os.PathLike) -> dict[str, list[str]]:
    """The `leaked` and `unseen` id lists of a contamination-lab manifest (or any JSON file holding them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such truth file", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the truth file: {exc}", path=str(path)) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("leaked", "unseen")):
        raise InputError('a truth file needs "leaked" and "unseen" lists of sample ids', path=str(path))
    return {"leaked": [str(x) for x in data["leaked"]], "unseen": [str(x) for x in data["unseen"]]}
