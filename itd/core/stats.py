"""Calibrated statistics for model-side contamination detection.

Every score is oriented so that HIGHER means MORE LIKELY LEAKED (negate a loss or a perplexity before passing it).
Per-item evidence becomes a p-value against a clean reference (`conformal_pvalues`) or against the item's own
option permutations (`permutation_rank_pvalues`); `benjamini_hochberg` turns many p-values into flagged items at a
controlled false discovery rate; `set_level_test` and `permutation_set_test` ask whether a whole set is
contaminated, `sparse_set_test` whether a few of its items are (the shape of a small leak), on raw scores or on
`controlled_scores` (a negative control's view taken out); `cauchy_combination`
merges several probes' p-values of one item (or one set) into one, valid under dependence; `auroc`, `tpr_at_fpr`
and `bootstrap_auroc_ci` measure how well a score separates known-leaked from known-clean items.
`bootstrap_means` is the project's one percentile bootstrap for figures made of means (accuracies, their
differences and ratios), resampling items, or items and replicas crossed.

NumPy only, except `set_level_test`, `sparse_set_test`, `controlled_scores` and `permutation_set_test`, which need
scipy (the `probes` extra).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from itd.core.errors import require

__all__ = [
    "BootstrapCI",
    "PermutationSetTest",
    "SetTest",
    "SparseSetTest",
    "auroc",
    "benjamini_hochberg",
    "bootstrap_means",
    "bootstrap_auroc_ci",
    "cauchy_combination",
    "comparable_in_strata",
    "cross_fit_cauchy",
    "conformal_pvalues",
    "controlled_scores",
    "stratified_conformal_pvalues",
    "permutation_rank_pvalues",
    "permutation_set_test",
    "rank_correlation",
    "set_level_test",
    "sparse_set_test",
    "tpr_at_fpr",
]

_PURPOSE = "Calibrated statistics"
_BOOT_CELLS = 1 << 22  # int64 cells per bootstrap chunk (32 MiB), so memory stays flat for large sets


def _scores(x: ArrayLike, name: str) -> np.ndarray:
    """`x` as a non-empty 1-D float array without NaN (infinities are allowed: they rank as extremes)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _unit_interval(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def _scipy_stats() -> Any:
    return require("scipy.stats", "probes", _PURPOSE)


def conformal_pvalues(scores: ArrayLike, reference: ArrayLike) -> np.ndarray:
    """Split-conformal p-value of each score against clean reference scores: (1 + #{ref >= s}) / (n_ref + 1).

    Valid (super-uniform) when the score and the reference are exchangeable under "not leaked"; ties count
    against the score, so discrete scores stay conservative.
    """
    s = _scores(scores, "scores")
    ref = np.sort(_scores(reference, "reference"))
    n_ge = ref.size - np.searchsorted(ref, s, side="left")
    return (1.0 + n_ge) / (ref.size + 1.0)


def stratified_conformal_pvalues(scores: ArrayLike, reference: ArrayLike, strata: Sequence[Any],
                                 reference_strata: Sequence[Any], min_reference: int = 20) -> np.ndarray:
    """Mondrian conformal p-values: each score against the reference scores of its own stratum (valid within each
    stratum, where scores and references are exchangeable), or against all of them where its stratum has fewer
    than `min_reference` reference scores (or its stratum is None)."""
    s = _scores(scores, "scores")
    ref = _scores(reference, "reference")
    if len(strata) != s.size or len(reference_strata) != ref.size:
        raise ValueError("strata and reference_strata must label every score and every reference score")
    out = conformal_pvalues(s, ref)
    ref_of = np.asarray(reference_strata, dtype=object)
    for key in {k for k in strata if k is not None}:
        own = ref[ref_of == key]
        if own.size >= min_reference:
            idx = np.array([i for i, k in enumerate(strata) if k == key])
            out[idx] = conformal_pvalues(s[idx], own)
    return out


def benjamini_hochberg(pvalues: ArrayLike, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg step-up FDR control: (rejected bool array, adjusted q-values), in input order.

    Rejects the k smallest p-values, k = max{i : p_(i) <= i alpha / m} (the same set as q <= alpha up to
    rounding); q_(i) = min_{j >= i} p_(j) m / j, clipped to 1, as `scipy.stats.false_discovery_control` gives.
    FDR <= alpha under independence or positive dependence of the p-values.
    """
    p = _scores(pvalues, "pvalues")
    alpha = _unit_interval(alpha, "alpha")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("pvalues must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    # Reject by the textbook comparison rather than q <= alpha, whose rounding (p * m / i) can flip a boundary case.
    passed = np.flatnonzero(p[order] <= alpha * np.arange(1, m + 1) / m)
    rejected = np.zeros(m, dtype=bool)
    if passed.size:
        rejected[order[: passed[-1] + 1]] = True
    return rejected, q


_CAUCHY_LOW, _CAUCHY_HIGH = 1e-300, 1 - 1e-15  # p-values are clipped into these: tan() is infinite at 0 and 1


def cauchy_combination(pvalues: ArrayLike, weights: ArrayLike | None = None) -> np.ndarray:
    """Cauchy combination test (Liu & Xie 2020) of each row of `pvalues` (items x tests; a 1-D array is one row).

    T = sum_j w_j tan((0.5 - p_j) pi) with weights summing to 1 (default equal; one per test, or a row of them
    per item); the combined p-value is 0.5 - arctan(T) / pi. Under the null, T is standard Cauchy whatever the
    dependence between the tests when each pair is bivariate normal after transformation, and approximately so
    otherwise; the tail is accurate exactly where decisions are made (small p). NaN entries (a test that did not
    apply) are left out of their row, the weights renormalised; a row with no p-value gets NaN. Very small
    p-values use tan(x) ~ 1/(p pi).

    In a row of d >= 2 p-values each is capped at 1 - 1/d, as the test's author advises for p-values at or near 1
    (ACAT's FAQ): tan((0.5 - p) pi) falls to minus infinity as p nears 1, so one such p-value (a discrete score tied
    with the whole reference, a permutation p-value of 1, a set scored well below the reference) would cancel
    any evidence of the others. A p-value above the cap is evidence of nothing either way.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    one = p.ndim == 1
    p = np.atleast_2d(p)
    if p.ndim != 2:
        raise ValueError(f"pvalues must be 1-D or 2-D, got shape {p.shape}")
    ok = np.isfinite(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("pvalues must lie in [0, 1]")
    w = np.ones(p.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape not in ((p.shape[1],), p.shape) or (w < 0).any() or not (np.atleast_2d(w).sum(axis=1) > 0).all():
        raise ValueError(f"weights must be {p.shape[1]} non-negative numbers, not all zero (or such a row per item)")
    wm = np.where(ok, np.broadcast_to(w, p.shape), 0.0)
    total = wm.sum(axis=1)
    d = ok.sum(axis=1, keepdims=True)
    cap = np.where(d >= 2, 1.0 - 1.0 / np.maximum(d, 1), _CAUCHY_HIGH)
    pc = np.clip(np.minimum(np.where(ok, p, 0.5), cap), _CAUCHY_LOW, _CAUCHY_HIGH)
    # for tiny p, tan((0.5 - p) pi) = 1 / tan(p pi) ~ 1 / (p pi) without the cancellation of 0.5 - p
    terms = np.where(pc < 1e-8, 1.0 / (pc * np.pi), np.tan((0.5 - pc) * np.pi))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (wm * terms).sum(axis=1) / total
        # for large T, 0.5 - arctan(T) / pi = arctan(1 / T) / pi without the cancellation
        combined = np.where(t > 1e8, np.arctan(1.0 / t) / np.pi, 0.5 - np.arctan(t) / np.pi)
    combined = np.where(total > 0, np.clip(combined, 0.0, 1.0), np.nan)
    return combined[0] if one else combined


_TAILS = (0.01, 0.02, 0.05, 0.1)  # where `cross_fit_cauchy` looks for an excess of small p-values


def cross_fit_cauchy(pvalues: ArrayLike, *, control: ArrayLike | None = None, folds: int | None = None, seed: int = 0,
                     min_items: int = 40, tails: Sequence[float] = _TAILS, threshold: float = 1.645,
                     prior: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per item (row), the Cauchy combination of its tests' p-values (`pvalues`, items x tests), each test weighted
    by the evidence of the *other* items that it sees a leak: all the others (leave-one-out, `folds` None) or
    those of the other `folds` seeded folds. Returns the combined p-values and each item's weights (items x tests,
    rows summing to 1).

    A test's evidence is z, the largest over `tails` (those with at least one expected item) of the one-sided z of
    the other items' share of p-values <= t against t, the share a valid p-value has at most without a leak; its
    weight is (z - `threshold`)^2, 0 below the threshold (`prior` weights, by default equal, when no test passes
    it: nothing then says which test sees a leak). Equal weights
    let the tests that see nothing dilute the one that does (a fine-tuning leak moves the answer probes only);
    items are flagged in the tail, where a probe that separates leaked items stands out, so the weights look
    there, and on the p-values, so a calibration the scores lack (per answer letter) counts. A strong probe lifts
    a small leak deep into the tail, a weaker one a larger leak less far: several tails see both. The threshold
    keeps the tests' chance excesses (with 20 leaked items of 400, as large as the real one's at one tail) from
    taking weight; above it a squared z is a test's share of the signal, as in a chi-square's noncentrality. No
    item's weights use its own p-values, so they are fixed for it and the combination stays about as valid as
    with fixed weights; leaving one out uses the most items to find the test that sees the leak. Fewer than
    `min_items` items: the `prior` weights.

    `control` (items x tests, NaN where a test has none): the same tests' p-values under a negative control, such
    as a model that cannot have seen the benchmark. A share of p-values <= t that the control shows too is a
    difference between the benchmark and its reference (chance, or a reference drawn from elsewhere), not a
    leak: the excess is then counted over t plus the control's own excess among the other items beyond one
    standard error (a control's chance excess would otherwise take weight from a probe that sees a leak and
    leave it to a weaker one), never below t."""
    p = np.atleast_2d(np.asarray(pvalues, dtype=np.float64))
    c = None if control is None else np.atleast_2d(np.asarray(control, dtype=np.float64))
    if c is not None and c.shape != p.shape:
        raise ValueError(f"control must have the p-values' shape {p.shape}, got {c.shape}")
    tails = np.asarray(tails, dtype=np.float64)
    if not tails.size or ((tails <= 0.0) | (tails >= 1.0)).any():
        raise ValueError(f"tails must be numbers in (0, 1), got {tails.tolist()}")
    n, k = p.shape
    if folds is not None and not 2 <= folds <= n:
        raise ValueError(f"folds must be None (leave one out) or 2..{n}, got {folds}")
    base = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, dtype=np.float64)
    if base.shape != (k,) or (base < 0).any() or not base.sum() > 0:
        raise ValueError(f"prior must hold {k} weights >= 0, not all 0; got {np.asarray(prior).tolist()}")
    base = np.tile(base / base.sum(), (n, 1))
    if n < min_items:
        return cauchy_combination(p, base), base
    fold = np.arange(n) if folds is None else np.random.default_rng(seed).permutation(n) % folds

    def others(indicator: np.ndarray) -> np.ndarray:
        """Per item and test: the count of `indicator` over the items outside the item's fold."""
        per_fold = np.zeros((fold.max() + 1, k))
        np.add.at(per_fold, fold, indicator)
        return indicator.sum(axis=0) - per_fold[fold]

    m = others(np.isfinite(p))  # the other items that have a p-value
    m_control = None if c is None else others(np.isfinite(c))
    z = np.zeros((n, k))
    for t in tails:
        share = others(p <= t) / np.maximum(m, 1)
        expected = t
        if c is not None:
            control_share = others(c <= t) / np.maximum(m_control, 1)
            beyond_noise = control_share - t - np.sqrt(t * (1.0 - t) / np.maximum(m_control, 1))
            expected = np.where(m_control > 0, t + np.clip(beyond_noise, 0.0, None), t)
        seen = m * t >= 1.0  # a tail no item is expected in says nothing yet
        z = np.where(seen, np.maximum(z, (share - expected) / np.sqrt(t * (1.0 - t) / np.maximum(m, 1))), z)
    w = np.clip(z - threshold, 0.0, None) ** 2
    total = w.sum(axis=1, keepdims=True)
    weights = np.divide(w, total, out=base, where=total > 0)
    return cauchy_combination(p, weights), weights


def _pair_counts(positive: np.ndarray, negative_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per positive: #negatives strictly below, and #negatives at or below."""
    return (
        np.searchsorted(negative_sorted, positive, side="left"),
        np.searchsorted(negative_sorted, positive, side="right"),
    )


def auroc(positive: ArrayLike, negative: ArrayLike) -> float:
    """Area under the ROC curve: P(pos > neg) + P(pos == neg) / 2, i.e. Mann–Whitney U / (n_pos * n_neg)."""
    pos = _scores(positive, "positive")
    neg = np.sort(_scores(negative, "negative"))
    below, at_or_below = _pair_counts(pos, neg)
    return float((below.sum() + at_or_below.sum()) / (2.0 * pos.size * neg.size))


def tpr_at_fpr(positive: ArrayLike, negative: ArrayLike, fpr: float) -> float:
    """True-positive rate at the most permissive threshold whose empirical false-positive rate is <= `fpr`.

    The rule is "flag when score > t". With k = floor(fpr * n_neg), t is the (k+1)-th largest negative, so at
    most k negatives are flagged; positives tied with t are not flagged, so ties never overstate the TPR. This is
    the highest ROC-curve point with FPR <= `fpr` (as read off `sklearn.metrics.roc_curve`). `fpr` = 1 gives 1.0.
    """
    pos = _scores(positive, "positive")
    neg = _scores(negative, "negative")
    fpr = float(fpr)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing an allowed false positive.
    k = int(np.floor(fpr * neg.size + 1e-9))
    if k >= neg.size:
        return 1.0
    threshold = np.partition(neg, neg.size - 1 - k)[neg.size - 1 - k]
    return float(np.count_nonzero(pos > threshold) / pos.size)


def _resampled_aurocs(
    positive: np.ndarray, negative_sorted: np.ndarray, pos_idx: np.ndarray, neg_idx: np.ndarray
) -> np.ndarray:
    """AUROC of each bootstrap resample: row b uses positive[pos_idx[b]] against negative_sorted[neg_idx[b]].

    Never forms the n_pos x n_neg comparison matrix: a prefix sum of the resampled negatives' multiplicities
    (in sorted order) gives, for every original positive, how many resampled negatives lie below / at or below it.
    """
    n_rows, n_neg = neg_idx.shape
    n_pos = pos_idx.shape[1]
    offsets = np.arange(n_rows)[:, None] * n_neg
    counts = np.bincount((neg_idx + offsets).ravel(), minlength=n_rows * n_neg).reshape(n_rows, n_neg)
    cum = np.zeros((n_rows, n_neg + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    below, at_or_below = _pair_counts(positive, negative_sorted)
    twice_wins = cum[:, below] + cum[:, at_or_below]  # 2 * (#below + #tied / 2), per original positive
    total = np.take_along_axis(twice_wins, pos_idx, axis=1).sum(axis=1)
    return total / (2.0 * n_pos * n_neg)


def bootstrap_auroc_ci(
    positive: ArrayLike,
    negative: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Percentile confidence interval for `auroc` from a stratified bootstrap (each class resampled on its own).

    Vectorised over resamples; deterministic for a given integer `seed`.
    """
    pos = _scores(positive, "positive")
    neg = np.sort(_scores(negative, "negative"))
    confidence = _unit_interval(confidence, "confidence")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CELLS // max(pos.size, neg.size + 1))
    parts = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        neg_idx = rng.integers(0, neg.size, size=(rows, neg.size))
        pos_idx = rng.integers(0, pos.size, size=(rows, pos.size))
        parts.append(_resampled_aurocs(pos, neg, pos_idx, neg_idx))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.concatenate(parts), [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True, slots=True)
class BootstrapCI:
    """A statistic of column means with its percentile interval: `value` (NaN when undefined on the data),
    [`low`, `high`] (None when no replicate defines it) and `n_boot`, the replicates that defined it."""

    value: float
    low: float | None
    high: float | None
    n_boot: int


def _resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows, n) multiplicities of n draws with replacement from n units, one row per replicate."""
    idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_means(
    values: ArrayLike,
    stat: Any,
    *,
    masks: ArrayLike | None = None,
    items: ArrayLike | None = None,
    replicas: ArrayLike | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: Any = 0,
) -> BootstrapCI:
    """`stat` of column means, with a percentile bootstrap interval.

    `values` (k, m): k columns over m cells (e.g. correctness per item, or per item and replica). `masks`
    (k, m), default "finite": the cells each column's mean is taken over. `stat` maps the means, shape
    (rows, k), to one figure per row; a row where it is not finite is left out of the interval. Each replicate
    draws the *items* (cells sharing a label in `items`, default every cell its own item) with replacement,
    and, when `replicas` labels more than one replica, the replicas too, independently (the bootstrap of a
    crossed design: a cell's weight is its item's multiplicity times its replica's). Columns over the same
    cells are therefore paired. Deterministic for a given `seed` (an int or a sequence of ints).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be 2-D (columns, cells), got shape {x.shape}")
    k, m = x.shape
    mask = np.isfinite(x) if masks is None else np.asarray(masks, dtype=bool) & np.isfinite(x)
    if mask.shape != x.shape:
        raise ValueError(f"masks must have the shape of values {x.shape}, got {mask.shape}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    confidence = _unit_interval(confidence, "confidence")
    item_of = np.unique(np.arange(m) if items is None else np.asarray(items), return_inverse=True)[1].reshape(-1)
    rep_of = np.unique(np.zeros(m) if replicas is None else np.asarray(replicas), return_inverse=True)[1].reshape(-1)
    if item_of.size != m or rep_of.size != m:
        raise ValueError(f"items and replicas must label each of the {m} cells")
    n_items, n_reps = int(item_of.max(initial=-1)) + 1, int(rep_of.max(initial=-1)) + 1
    xm = np.where(mask, x, 0.0)
    fm = mask.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(np.asarray(stat((xm.sum(axis=1) / fm.sum(axis=1))[None, :]), dtype=np.float64)[0])
    if m == 0 or not math.isfinite(point):
        return BootstrapCI(point if m else math.nan, None, None, 0)
    rng = np.random.default_rng(seed)
    parts = []
    chunk = max(1, _BOOT_CELLS // (4 * max(m, n_items)))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        weight = _resample_counts(rng, rows, n_items)[:, item_of]
        if n_reps > 1:
            weight *= _resample_counts(rng, rows, n_reps)[:, rep_of]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = (weight @ xm.T) / (weight @ fm.T)
            parts.append(np.asarray(stat(means), dtype=np.float64))
    reps = np.concatenate(parts)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return BootstrapCI(point, None, None, 0)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(reps, [tail, 1.0 - tail])
    return BootstrapCI(point, float(low), float(high), int(reps.size))


def controlled_scores(benchmark_scores: ArrayLike, reference_scores: ArrayLike, control_benchmark: ArrayLike,
                      control_reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's and the reference set's scores with a negative control's view taken out: each item's rank
    among all of them under the evaluated model, minus its rank under a control model that never saw the benchmark,
    over their number (so in (-1, 1); ties take their mean rank). Higher = ranked higher by the evaluated model than
    by the control.

    Each item's value depends on its own two scores and on the pooled set only, never on which side it stands, so
    items exchangeable between benchmark and reference stay exchangeable: `set_level_test` and `sparse_set_test`
    on these keep their level. A difference between the benchmark and its reference that the control model sees as
    well (a chance draw, a reference from another source or time) cancels, while what only the evaluated model
    learnt remains. The control arrays hold the same items' scores under the control model, in the same order."""
    bench, ref = _scores(benchmark_scores, "benchmark_scores"), _scores(reference_scores, "reference_scores")
    c_bench, c_ref = _scores(control_benchmark, "control_benchmark"), _scores(control_reference, "control_reference")
    if c_bench.shape != bench.shape or c_ref.shape != ref.shape:
        raise ValueError("the control's scores must be of the same benchmark and reference items "
                         f"({bench.size} and {ref.size}), got {c_bench.size} and {c_ref.size}")
    rankdata = _scipy_stats().rankdata
    n = bench.size + ref.size
    d = (rankdata(np.concatenate([bench, ref])) - rankdata(np.concatenate([c_bench, c_ref]))) / n
    return d[: bench.size], d[bench.size :]


def rank_correlation(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation of paired scores (ties take their mean rank); 0.0 when either side is constant."""
    a, b = _scores(x, "x"), _scores(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"x and y must pair up, got {a.size} and {b.size} scores")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(_scipy_stats().spearmanr(a, b).statistic)


@dataclass(frozen=True, slots=True)
class SetTest:
    """Result of `set_level_test`: is the benchmark set, as a whole, scored higher than clean reference text?"""

    statistic: float  # Mann–Whitney U of the benchmark sample
    p_value: float  # one-sided, alternative "benchmark scores greater"
    auroc: float  # U / (n_benchmark * n_reference)
    auroc_ci: tuple[float, float]
    n_benchmark: int
    n_reference: int


def set_level_test(
    benchmark_scores: ArrayLike,
    reference_scores: ArrayLike,
    *,
    strata: Sequence[Any] | None = None,
    reference_strata: Sequence[Any] | None = None,
    min_reference: int = 20,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> SetTest:
    """One-sided Mann–Whitney test that benchmark scores exceed clean reference scores, with AUROC and its CI.

    A small p-value says this model treats the benchmark as more familiar than comparable unseen text: evidence
    the set was in its training data. The reference must be drawn like the benchmark (same domain, length, format)
    and known to postdate the model's training cut-off, or the test measures the shift rather than leakage.

    With `strata` (and `reference_strata`), scores are exchangeable only within a stratum (an answer probe's
    scores within a gold letter: the model prefers some letters), and the test is van Elteren's: each stratum's
    rank sum over its size plus one, added up; the AUROC is that of those within-stratum rank quantiles. Strata
    with fewer than `min_reference` reference scores, and None, pool into one; benchmark scores whose stratum
    has no reference are left out (`n_benchmark` counts the ones tested).
    """
    bench = _scores(benchmark_scores, "benchmark_scores")
    ref = _scores(reference_scores, "reference_scores")
    if strata is None:
        result = _scipy_stats().mannwhitneyu(bench, ref, alternative="greater")
        statistic, p_value = float(result.statistic), float(result.pvalue)
    else:
        bench, ref, groups = _within_strata(bench, ref, strata, reference_strata, min_reference)
        statistic, p_value = _van_elteren(bench, ref, groups)
    return SetTest(
        statistic=statistic,
        p_value=p_value,
        auroc=auroc(bench, ref),
        auroc_ci=bootstrap_auroc_ci(bench, ref, n_boot=n_boot, confidence=confidence, seed=seed),
        n_benchmark=int(bench.size),
        n_reference=int(ref.size),
    )


def _within_strata(bench: np.ndarray, ref: np.ndarray, strata: Sequence[Any], reference_strata: Sequence[Any] | None,
                   min_reference: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Benchmark and reference scores as rank quantiles within their stratum (mid-rank / (size + 1) among the
    stratum's pooled scores), and the stratum code of each pooled score (benchmark first). Strata with fewer than
    `min_reference` references, and None, pool into one; benchmark scores of a stratum without references go."""
    if reference_strata is None or len(strata) != bench.size or len(reference_strata) != ref.size:
        raise ValueError("strata and reference_strata must label every score and every reference score")
    gb, gr = _stratum_codes(strata, reference_strata, min_reference)
    keep = np.isin(gb, gr)
    if not keep.any():
        raise ValueError("no benchmark score has a stratum with reference scores")
    pooled, groups = np.concatenate([bench[keep], ref]), np.concatenate([gb[keep], gr])
    quantiles = np.empty(pooled.size)
    rankdata = _scipy_stats().rankdata
    for g in np.unique(groups):
        at = groups == g
        quantiles[at] = rankdata(pooled[at]) / (at.sum() + 1.0)
    n = int(keep.sum())
    return quantiles[:n], quantiles[n:], groups


def comparable_in_strata(strata: Sequence[Any], reference_strata: Sequence[Any], min_reference: int = 20) -> np.ndarray:
    """Which benchmark scores the within-stratum tests (`set_level_test`, `sparse_set_test` with `strata`) compare:
    those whose stratum, as they group strata, holds reference scores. None of them: no such test can run."""
    gb, gr = _stratum_codes(strata, reference_strata, min_reference)
    return np.isin(gb, gr)


def _stratum_codes(strata: Sequence[Any], reference_strata: Sequence[Any], min_reference: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The stratum code of each benchmark and reference score: one per stratum with at least `min_reference`
    reference scores, and one more for None and the smaller strata, pooled."""
    ref_count = Counter(reference_strata)
    codes = {key: i for i, key in enumerate(k for k, c in ref_count.items() if k is not None and c >= min_reference)}
    rest = len(codes)
    return (np.array([codes.get(k, rest) for k in strata], dtype=np.int64),
            np.array([codes.get(k, rest) for k in reference_strata], dtype=np.int64))


def _van_elteren(bench: np.ndarray, ref: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Van Elteren's stratified rank-sum statistic (the benchmark's within-stratum rank quantiles, summed, as
    `_within_strata` returns them) and its one-sided normal p-value, each stratum's variance corrected for ties."""
    pooled, n = np.concatenate([bench, ref]), bench.size
    statistic = float(bench.sum())
    mean = var = 0.0
    for g in np.unique(groups):
        at = groups == g
        n_g, size = int(at[:n].sum()), int(at.sum())
        if n_g == 0:  # every stratum with benchmark scores has references (`_within_strata`)
            continue
        _, ties = np.unique(pooled[at], return_counts=True)
        tie_term = float((ties ** 3 - ties).sum()) / (size * (size - 1.0))
        mean += n_g / 2.0
        var += n_g * (size - n_g) / 12.0 * ((size + 1.0) - tie_term) / (size + 1.0) ** 2
    if var <= 0:
        return statistic, 1.0
    return statistic, float(_scipy_stats().norm.sf((statistic - mean) / math.sqrt(var)))


@dataclass(frozen=True, slots=True)
class SparseSetTest:
    """Result of `sparse_set_test`: are there more benchmark items among the highest scores than chance allows?"""

    statistic: float  # -log10 of the smallest top-k tail probability
    top_k: int  # the k where it was smallest
    excess: int  # benchmark items among those k, beyond the k * n / (n + m) expected
    p_value: float  # permutation p-value, (1 + #{null >= statistic}) / (1 + n_permutations), or the union bound below
    n_permutations: int
    n_benchmark: int
    n_reference: int
    # the fewest benchmark items that, scored above every reference item, would give p < alpha: the smallest leak
    # this test could see with these set sizes (None: no number of items would)
    detectable: int | None = None


def sparse_set_test(benchmark_scores: ArrayLike, reference_scores: ArrayLike, *, strata: Sequence[Any] | None = None,
                    reference_strata: Sequence[Any] | None = None, min_reference: int = 20, n_permutations: int = 4999,
                    max_k: int = 1000, alpha: float = 0.01,
                    seed: int | np.random.Generator | None = 0) -> SparseSetTest:
    """One-sided test that a few benchmark items score above clean reference text, the shape of a small leak.

    For every k up to half the pooled scores, at most `max_k` (at the ends of tie groups), the k highest hold some
    number of benchmark items; without a leak that number follows the hypergeometric law. The statistic is the
    smallest of those tail probabilities over k (a two-sample Berk-Jones statistic), calibrated by permuting which
    pooled scores are the benchmark's: exact when benchmark and reference scores are exchangeable.

    A statistic no permutation reaches gets the smaller of 1 / (1 + n_permutations) and the union bound over the
    thresholds tried, (number of k) * 10^-statistic: each k's tail probability is itself a p-value, so the bound
    holds without permutations, and using it only below the permutations' resolution keeps the level (a p-value
    at or above that resolution is the permutation one). So a blatant leak is not held at 1 / (1 + n_permutations),
    which a combination with other tests would dilute further.

    Mann-Whitney (`set_level_test`) weighs every item alike, so a leak of a few items moves it little: with 20
    leaked items among 400, against 600 references, its AUROC rises by 0.025 at most (every leaked item above
    every reference), z <= 1.34, p >= 0.09. Here the same 20 items at the top give p of about 4e-6 (the 500
    thresholds times 10^-statistic, about 0.4^20), below the 1e-3 that 999 permutations could resolve.

    With `strata` (as `set_level_test` takes them), the scores are the within-stratum rank quantiles and the
    permutations keep each stratum's benchmark count: exact when scores are exchangeable within each stratum.
    There the k highest hold a fixed number of each stratum's scores, so a k's count is a sum of independent
    hypergeometric counts, one per stratum, and its tail is that sum's (exact, by convolution, but for terms too
    small for double precision, which count as a little more), so the union bound holds within strata too.

    `detectable` says what a "not significant" means here: the fewest benchmark items that, placed above every
    reference item, would give p < `alpha` against the same permutations (b such items alone make the statistic
    at least -log10 P(all b highest are benchmark items)). A leak whose items a probe does not lift that far
    needs more of them.
    """
    bench = _scores(benchmark_scores, "benchmark_scores")
    ref = _scores(reference_scores, "reference_scores")
    if n_permutations < 1 or max_k < 1:
        raise ValueError(f"n_permutations and max_k must be >= 1, got {n_permutations} and {max_k}")
    _unit_interval(alpha, "alpha")
    groups = None
    if strata is not None:
        bench, ref, groups = _within_strata(bench, ref, strata, reference_strata, min_reference)
    n, m = bench.size, ref.size
    pooled = np.concatenate([bench, ref])
    order = np.argsort(-pooled, kind="stable")
    ranked = pooled[order]
    top = max(1, min(pooled.size // 2, max_k))  # bounds the (k, count) table: max_k^2 floats
    # only k that end a tie group: a tie is above or below a threshold as a whole
    ks = np.flatnonzero(ranked[1:top + 1] != ranked[:top]) + 1
    if not ks.size:  # the top half is one tie: no threshold there tells the sets apart
        return SparseSetTest(0.0, 0, 0, 1.0, n_permutations, n, m)
    is_bench = order < n  # in score order, as the permutations see it
    ranked_groups = np.zeros(pooled.size, dtype=np.int64) if groups is None else groups[order]
    # each stratum's rank positions, and its benchmark labels put first (any order: they are permuted)
    strata_columns = [(cols, np.arange(cols.size) < is_bench[cols].sum())
                      for cols in (np.flatnonzero(ranked_groups == g) for g in np.unique(ranked_groups))]
    # log10 P(at least b benchmark items among the k highest), per k in ks and b = 0..top
    log_pmf = _top_count_log_pmf([(cols, int(first.sum())) for cols, first in strata_columns], ks, top)
    with np.errstate(invalid="ignore"):  # -inf + -inf where b > k: the tail is empty there
        log_tail = np.logaddexp.accumulate(log_pmf[:, ::-1], axis=1)[:, ::-1] / np.log(10)
    observed_k = np.cumsum(is_bench)[ks - 1]
    observed_all = -log_tail[np.arange(ks.size), observed_k]
    best = int(np.argmax(observed_all))
    observed = float(observed_all[best])
    row_start = np.arange(ks.size) * (top + 1)
    rng = np.random.default_rng(seed)
    null_max = []
    done = 0
    rows = max(1, (1 << 22) // pooled.size)  # permutations at a time (a few MB of labels)
    while done < n_permutations:
        b = min(rows, n_permutations - done)
        labels = np.empty((b, pooled.size), dtype=bool)
        for cols, first in strata_columns:  # permuted within each stratum
            labels[:, cols] = rng.permuted(np.tile(first, (b, 1)), axis=1)
        in_top = np.cumsum(labels[:, :top], axis=1)[:, ks - 1]
        null_max.append((-log_tail.ravel()[row_start + in_top]).max(axis=1))
        done += b
    null_sorted = np.sort(np.concatenate(null_max))

    def p_of(statistic: np.ndarray) -> np.ndarray:
        """Permutation p-values of statistics: (1 + #{null >= statistic}) / (1 + n_permutations); below that
        resolution, the union bound over the thresholds (see the docstring)."""
        statistic = np.asarray(statistic, dtype=float)
        exceed = n_permutations - np.searchsorted(null_sorted, statistic - 1e-9, side="left")
        p = (1 + exceed) / (1 + n_permutations)
        bound = np.minimum(1.0, ks.size * 10.0 ** -statistic)
        return np.where(exceed == 0, np.minimum(p, bound), p)

    # b benchmark items above every reference item: the b highest all benchmark, P = C(n, b) / C(N, b), or
    # within strata the product of each stratum's such ratio over its positions among the b highest
    room, left = np.empty(pooled.size), np.empty(pooled.size)
    for cols, first in strata_columns:  # per position: its stratum's benchmark items and positions from it down
        room[cols], left[cols] = first.sum() - np.arange(cols.size), cols.size - np.arange(cols.size)
    on_top = np.arange(1, int(np.argmax(np.append(room[:top] <= 0, True))) + 1)  # while each stratum has items
    all_top = -np.cumsum(np.log10(room[:on_top.size] / left[:on_top.size]))
    caught = np.flatnonzero(p_of(all_top) < alpha)
    k = int(ks[best])
    return SparseSetTest(observed, k, int(round(observed_k[best] - k * n / pooled.size)), float(p_of(observed)),
                         n_permutations, n, m, int(on_top[caught[0]]) if caught.size else None)


def _top_count_log_pmf(strata: Sequence[tuple[np.ndarray, int]], ks: np.ndarray, top: int) -> np.ndarray:
    """Natural-log P(b benchmark items among the k highest scores), per k in `ks` and b = 0..top, when benchmark
    labels are exchangeable within each stratum. `strata`: per stratum, its positions in score order and its
    benchmark count. One stratum gives the hypergeometric law; several, the convolution of theirs (the k highest
    hold a fixed number of each stratum's positions), each term floored at 1e-300 times the product of the two
    laws' largest ones, where double precision cannot hold it (so a tail is never too small)."""
    hypergeom = _scipy_stats().hypergeom
    counts = np.arange(top + 1)
    total = None
    for cols, n_g in strata:
        in_top = np.searchsorted(cols, ks, side="left")  # the stratum's positions among the k highest
        log_pmf = hypergeom.logpmf(counts[None, :], cols.size, n_g, in_top[:, None])
        total = log_pmf if total is None else _log_convolve_rows(total, log_pmf)
    return total


def _log_convolve_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the log of the convolution of exp(a) and exp(b) (log pmfs of independent counts: that of
    their sum), truncated to a's width. Direct sums of non-negative terms, so small entries keep their relative
    precision (an FFT's error would swamp them); what underflows inside the support is floored (see above)."""
    out = np.full_like(a, -np.inf)
    width = a.shape[1]
    for i, (row_a, row_b) in enumerate(zip(a, b)):
        finite_a, finite_b = np.flatnonzero(np.isfinite(row_a)), np.flatnonzero(np.isfinite(row_b))
        if not finite_a.size or not finite_b.size:
            continue
        lo_a, hi_a, lo_b, hi_b = finite_a[0], finite_a[-1] + 1, finite_b[0], finite_b[-1] + 1
        shift_a, shift_b = row_a[lo_a:hi_a].max(), row_b[lo_b:hi_b].max()
        conv = np.convolve(np.exp(row_a[lo_a:hi_a] - shift_a), np.exp(row_b[lo_b:hi_b] - shift_b))
        lo = lo_a + lo_b
        keep = min(conv.size, width - lo)
        if keep > 0:
            out[i, lo:lo + keep] = np.log(np.maximum(conv[:keep], 1e-300)) + shift_a + shift_b
    return out


def permutation_rank_pvalues(original_ll: ArrayLike, permuted_ll: ArrayLike) -> np.ndarray:
    """Per-item p-value that the original option order is preferred: (1 + #{permuted >= original}) / (n_perm + 1).

    `original_ll` has shape (n_items,): the model's log-likelihood of each item with its options in the published
    order. `permuted_ll` has shape (n_items, n_perm): the same for the OTHER orders only (all n_options! - 1 of
    them, or a random sample without the original). Exact under exchangeability of the orders (a model that never
    saw the item has no reason to prefer the published one); ties count against the original, so conservative.
    Items with a different number of options belong in separate calls.
    """
    orig = _scores(original_ll, "original_ll")
    perm = np.asarray(permuted_ll, dtype=np.float64)
    if perm.ndim != 2 or perm.shape[0] != orig.size:
        raise ValueError(f"permuted_ll must have shape ({orig.size}, n_perm), got {perm.shape}")
    if perm.shape[1] == 0:
        raise ValueError("permuted_ll has no permutations (n_perm = 0)")
    if np.isnan(perm).any():
        raise ValueError("permuted_ll contains NaN")
    n_ge = np.count_nonzero(perm >= orig[:, None], axis=1)
    return (1.0 + n_ge) / (perm.shape[1] + 1.0)


@dataclass(frozen=True, slots=True)
class PermutationSetTest:
    """Result of `permutation_set_test`: how many items rank their original option order first, against chance."""

    count: int  # items whose original order beat every permutation
    n_items: int
    expected: float  # n_items / n_orders
    p_value: float  # one-sided binomial, alternative "more than chance"


def permutation_set_test(pvalues: ArrayLike, n_orders: int) -> PermutationSetTest:
    """One-sided binomial test that more items rank the original option order first than chance 1/n_orders.

    `pvalues` come from `permutation_rank_pvalues`; `n_orders` is n_perm + 1 there (24 for four options with all
    orders). An item ranks first when its p-value is 1/n_orders (strictly above every permutation), which under
    exchangeability happens with probability 1/n_orders, or less with ties, so the test is exact or conservative.
    """
    p = _scores(pvalues, "pvalues")
    if isinstance(n_orders, bool) or not isinstance(n_orders, (int, np.integer)) or n_orders < 2:
        raise ValueError(f"n_orders must be an integer >= 2, got {n_orders!r}")
    if (p > 1).any():
        raise ValueError("pvalues must lie in [0, 1]")
    chance = 1.0 / int(n_orders)
    tol = 1e-9 * chance
    if (p < chance - tol).any():
        raise ValueError(f"a p-value is below 1/n_orders = {chance:.6g}: n_orders does not match the p-values")
    count = int(np.count_nonzero(p <= chance + tol))
    result = _scipy_stats().binomtest(count, p.size, chance, alternative="greater")
    return PermutationSetTest(count=count, n_items=int(p.size), expected=p.size * chance, p_value=float(result.pvalue))
