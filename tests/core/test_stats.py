"""Calibrated statistics: validity of the p-values under the null, FDR control, AUROC against scipy, and speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from itd.core.stats import (
    PermutationSetTest,
    SetTest,
    _resampled_aurocs,
    auroc,
    benjamini_hochberg,
    bootstrap_auroc_ci,
    bootstrap_means,
    comparable_in_strata,
    conformal_pvalues,
    controlled_scores,
    permutation_rank_pvalues,
    rank_correlation,
    permutation_set_test,
    set_level_test,
    sparse_set_test,
    stratified_conformal_pvalues,
    tpr_at_fpr,
)

_small_ints = st.lists(st.integers(-3, 3), min_size=1, max_size=30)


# conformal p-values


def test_conformal_pvalues_hand_example_with_ties():
    p = conformal_pvalues([0, 2, 3, 4, 2.5], [1, 2, 2, 3])
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 2 / 5, 1 / 5, 2 / 5])
    assert conformal_pvalues([np.inf], [1.0, 2.0])[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("discrete", [False, True])
def test_conformal_pvalues_are_super_uniform_under_the_null(discrete):
    rng = np.random.default_rng(7)
    reps, n_ref, n_test = 400, 99, 25
    if discrete:  # heavy ties: counting only ref > s would be badly anti-conservative here
        ref, test = rng.integers(0, 5, (reps, n_ref)), rng.integers(0, 5, (reps, n_test))
    else:
        ref, test = rng.normal(size=(reps, n_ref)), rng.normal(size=(reps, n_test))
    p = np.stack([conformal_pvalues(t, r) for t, r in zip(test, ref)])
    assert p.min() >= 1 / (n_ref + 1) and p.max() <= 1.0
    for alpha in (0.05, 0.1, 0.2):
        rate = np.mean(p <= alpha)
        assert rate <= alpha + 0.01
        if not discrete:  # continuous scores: exact, so not needlessly conservative either
            assert rate >= alpha - 0.01


def test_conformal_pvalues_are_small_for_shifted_scores():
    rng = np.random.default_rng(0)
    p = conformal_pvalues(rng.normal(4, 1, 50), rng.normal(0, 1, 999))
    assert np.median(p) < 0.01


# Benjamini–Hochberg


def test_bh_hand_example():
    rejected, q = benjamini_hochberg([0.01, 0.04, 0.03, 0.005, 0.5], alpha=0.05)
    np.testing.assert_allclose(q, [0.025, 0.05, 0.05, 0.025, 0.5])
    assert rejected.tolist() == [True, True, True, True, False]


def test_bh_is_step_up_not_step_down():
    # p_(1) = 0.03 > alpha/2, but p_(2) = 0.04 <= alpha: step-up rejects both.
    rejected, q = benjamini_hochberg([0.04, 0.03], alpha=0.05)
    np.testing.assert_allclose(q, [0.04, 0.04])
    assert rejected.all()
    assert not benjamini_hochberg([0.04, 0.03], alpha=0.039)[0].any()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60), st.floats(0.001, 0.5))
def test_bh_matches_scipy(p, alpha):
    p = np.round(p, 2)  # ties
    rejected, q = benjamini_hochberg(p, alpha)
    np.testing.assert_allclose(q, scipy_stats.false_discovery_control(p), rtol=1e-12, atol=1e-15)
    assert (q <= 1).all() and (q >= p * (1 - 1e-12)).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(q[order]) >= 0).all()  # monotone in p
    # rejections are a prefix of the sorted p-values: the largest k with p_(k) <= k alpha / m
    ok = np.flatnonzero(np.sort(p) <= np.arange(1, p.size + 1) * alpha / p.size)
    k = ok[-1] + 1 if ok.size else 0
    assert rejected.sum() == k
    assert rejected[order[:k]].all()


def test_bh_controls_fdr_in_simulation():
    rng = np.random.default_rng(3)
    alpha, m, m1, reps = 0.1, 100, 20, 400
    fdp, power = [], []
    for _ in range(reps):
        z = np.concatenate([rng.normal(3.0, 1.0, m1), rng.normal(0.0, 1.0, m - m1)])
        rejected, _ = benjamini_hochberg(scipy_stats.norm.sf(z), alpha)
        false = rejected[m1:].sum()
        fdp.append(false / max(rejected.sum(), 1))
        power.append(rejected[:m1].mean())
    assert np.mean(fdp) <= alpha + 0.015  # theory: alpha * m0 / m = 0.08
    assert np.mean(power) > 0.3


def test_bh_all_null_rarely_rejects():
    rng = np.random.default_rng(4)
    alpha = 0.05
    any_rejection = [benjamini_hochberg(rng.uniform(size=200), alpha)[0].any() for _ in range(400)]
    assert np.mean(any_rejection) <= alpha + 0.03  # BH controls FWER at alpha under the global null


# AUROC and TPR at fixed FPR


@settings(max_examples=150, deadline=None)
@given(_small_ints, _small_ints)
def test_auroc_equals_mann_whitney_u(pos, neg):
    u = scipy_stats.mannwhitneyu(pos, neg, alternative="greater").statistic
    assert auroc(pos, neg) == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)
    assert auroc(pos, neg) + auroc(neg, pos) == pytest.approx(1.0)


def test_auroc_hand_examples():
    assert auroc([2, 3], [1, 2]) == pytest.approx(3.5 / 4)
    assert auroc([5, 6, 7], [1, 2]) == 1.0
    assert auroc([1, 2], [5, 6, 7]) == 0.0
    x = np.random.default_rng(0).normal(size=50)
    assert auroc(x, x) == 0.5
    assert auroc([1, 1, 1], [1, 1]) == 0.5


def test_tpr_at_fpr_hand_examples():
    neg = np.arange(1, 11) / 10  # 0.1 .. 1.0
    pos = [0.55, 0.85, 0.95, 1.0, 1.5]
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(0.2)  # 1.0 ties the top negative: not counted
    assert tpr_at_fpr(pos, neg, 0.1) == pytest.approx(0.6)
    assert tpr_at_fpr(pos, neg, 0.15) == pytest.approx(0.6)  # cannot flag 1.5 negatives: round down
    assert tpr_at_fpr(pos, neg, 0.3) == pytest.approx(0.8)
    assert tpr_at_fpr(pos, neg, 1.0) == 1.0
    # Ties among negatives: flagging any of them flags all three, which exceeds 1/3.
    assert tpr_at_fpr([2, 3], [1, 1, 1], 0.5) == 1.0
    assert tpr_at_fpr([1, 3], [1, 1, 1], 0.5) == 0.5
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 false positives are still allowed (t = 70).
    assert tpr_at_fpr(np.arange(100) + 0.5, np.arange(100), 0.29) == pytest.approx(0.30)


@settings(max_examples=150, deadline=None)
@given(_small_ints, _small_ints, st.floats(0.0, 1.0))
def test_tpr_at_fpr_is_best_roc_point_within_budget(pos, neg, fpr):
    pos, neg = np.array(pos, float), np.array(neg, float)
    thresholds = np.concatenate([[-np.inf], pos, neg])
    fprs = (neg[None, :] > thresholds[:, None]).mean(axis=1)
    tprs = (pos[None, :] > thresholds[:, None]).mean(axis=1)
    budget = np.floor(fpr * neg.size + 1e-9) / neg.size
    assert tpr_at_fpr(pos, neg, fpr) == pytest.approx(tprs[fprs <= budget + 1e-12].max())


# bootstrap


def test_vectorised_resampling_matches_naive_loop():
    rng = np.random.default_rng(5)
    pos, neg = rng.integers(0, 6, 13).astype(float), np.sort(rng.integers(0, 6, 9).astype(float))
    pos_idx, neg_idx = rng.integers(0, 13, (40, 13)), rng.integers(0, 9, (40, 9))
    fast = _resampled_aurocs(pos, neg, pos_idx, neg_idx)
    slow = [auroc(pos[pi], neg[ni]) for pi, ni in zip(pos_idx, neg_idx)]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_bootstrap_ci_contains_estimate_narrows_and_is_deterministic():
    rng = np.random.default_rng(6)
    widths = []
    for n in (40, 400, 4000):
        pos, neg = rng.normal(0.5, 1, n), rng.normal(0, 1, n)
        low, high = bootstrap_auroc_ci(pos, neg, n_boot=500, seed=1)
        assert low < auroc(pos, neg) < high
        widths.append(high - low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # width ~ 1/sqrt(n)
    pos, neg = rng.normal(0.5, 1, 100), rng.integers(0, 3, 80)
    assert bootstrap_auroc_ci(pos, neg, seed=3) == bootstrap_auroc_ci(pos, neg, seed=3)
    assert bootstrap_auroc_ci(pos, neg, seed=3) != bootstrap_auroc_ci(pos, neg, seed=4)
    assert bootstrap_auroc_ci([5, 6], [1, 2, 3], n_boot=50) == (1.0, 1.0)
    low90, high90 = bootstrap_auroc_ci(pos, neg, confidence=0.9, seed=3)
    low99, high99 = bootstrap_auroc_ci(pos, neg, confidence=0.99, seed=3)
    assert low99 <= low90 < high90 <= high99


# set-level test


def test_bootstrap_means_matches_index_resampling_and_is_paired():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, size=(2, 300)).astype(float)
    diff = lambda m: m[:, 0] - m[:, 1]  # noqa: E731
    ci = bootstrap_means(x, diff, n_boot=4000, seed=1)
    assert ci.value == pytest.approx(x[0].mean() - x[1].mean()) and ci.n_boot == 4000
    # the same interval as the textbook loop that resamples item indices (up to Monte Carlo error)
    idx = np.random.default_rng(2).integers(0, 300, size=(4000, 300))
    naive = np.quantile(x[0][idx].mean(axis=1) - x[1][idx].mean(axis=1), [0.025, 0.975])
    assert ci.low == pytest.approx(naive[0], abs=0.015) and ci.high == pytest.approx(naive[1], abs=0.015)
    # paired: identical columns differ by exactly 0 in every replicate
    same = bootstrap_means(np.stack([x[0], x[0]]), diff, n_boot=500)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert bootstrap_means(x, diff, n_boot=500, seed=3) == bootstrap_means(x, diff, n_boot=500, seed=3)


def test_bootstrap_means_masks_and_crossed_replicas():
    rng = np.random.default_rng(0)
    n_items, n_reps = 200, 4
    item_effect = rng.normal(0, 1, n_items)
    rep_effect = np.array([-1.5, -0.5, 0.5, 1.5])
    values = (item_effect[None, :] + rep_effect[:, None] + rng.normal(0, 0.1, (n_reps, n_items))).ravel()
    items, reps = np.tile(np.arange(n_items), n_reps), np.repeat(np.arange(n_reps), n_items)
    mean = lambda m: m[:, 0]  # noqa: E731
    crossed = bootstrap_means(values[None, :], mean, items=items, replicas=reps, n_boot=2000)
    items_only = bootstrap_means(values[None, :], mean, items=items, n_boot=2000)
    cells = bootstrap_means(values[None, :], mean, n_boot=2000)
    assert crossed.value == items_only.value == pytest.approx(values.mean())
    # replica-to-replica variation only widens the interval when replicas are resampled too
    assert (crossed.high - crossed.low) > 1.5 * (items_only.high - items_only.low)
    # the same cells as independent items understate the item-level correlation
    assert (items_only.high - items_only.low) > 1.2 * (cells.high - cells.low)
    # masks: each column's mean over its own cells; a figure undefined in a replicate is left out
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    masks = np.array([[True, True, False, False], [False, False, True, True]])
    ci = bootstrap_means(x, lambda m: m[:, 0] - m[:, 1], masks=masks, n_boot=300)
    assert ci.value == pytest.approx(0.5 - 0.5) and 0 < ci.n_boot < 300


def test_set_level_test_detects_a_shift():
    rng = np.random.default_rng(9)
    bench, ref = rng.normal(0.5, 1, 200), rng.normal(0, 1, 300)
    res = set_level_test(bench, ref)
    assert isinstance(res, SetTest)
    assert res.p_value < 0.01
    assert (res.n_benchmark, res.n_reference) == (200, 300)
    assert res.statistic == pytest.approx(scipy_stats.mannwhitneyu(bench, ref).statistic)
    assert res.auroc == pytest.approx(res.statistic / (200 * 300))
    assert res.auroc_ci[0] < res.auroc < res.auroc_ci[1]
    assert res.auroc_ci[0] > 0.5


def test_set_level_test_is_quiet_on_identical_distributions():
    rng = np.random.default_rng(10)
    res = set_level_test(rng.normal(0, 1, 200), rng.normal(0, 1, 300))
    assert res.p_value > 0.05
    assert abs(res.auroc - 0.5) < 0.1
    # the one-sided test ignores a shift the other way
    assert set_level_test(rng.normal(-1, 1, 100), rng.normal(0, 1, 100)).p_value > 0.5


def _direct_top_k(bench, ref):
    """The top-k statistic from its definition: for each k ending a tie group in the top half of the pooled
    scores, -log10 P(at least the observed benchmark count among the k highest) under the hypergeometric law."""
    pooled = sorted([(x, True) for x in bench] + [(x, False) for x in ref], key=lambda t: -t[0])
    n, total = len(bench), len(bench) + len(ref)
    best = (0.0, 0)
    for k in range(1, total // 2 + 1):
        if pooled[k][0] == pooled[k - 1][0]:
            continue
        count = sum(is_bench for _, is_bench in pooled[:k])
        value = -math.log10(scipy_stats.hypergeom.sf(count - 1, total, n, k))
        best = max(best, (value, k))
    return best


def test_sparse_set_test_statistic_matches_its_definition():
    rng = np.random.default_rng(3)
    bench = np.round(rng.normal(0, 1, 60), 1)  # ties, inside and across the two sets
    bench[:6] += 2.5
    ref = np.round(rng.normal(0, 1, 90), 1)
    res = sparse_set_test(bench, ref, n_permutations=99)
    value, k = _direct_top_k(bench, ref)
    assert res.statistic == pytest.approx(value, rel=1e-9) and res.top_k == k
    # k is bounded (the table of tails is max_k^2): the best k over the first 5 only
    capped = sparse_set_test(bench, ref, n_permutations=99, max_k=5)
    assert capped.top_k <= 5 and capped.statistic <= res.statistic
    assert (res.n_benchmark, res.n_reference, res.n_permutations) == (60, 90, 99)


def _direct_top_k_within(bench, ref, strata, reference_strata):
    """The same within strata, in exact integers: scores become within-stratum rank quantiles (mid-rank over size
    plus one), and a k's benchmark count is the sum of one hypergeometric count per stratum (the k highest hold a
    fixed number of each stratum's scores), its law their convolution."""
    labelled = [(x, g, True) for x, g in zip(bench, strata)] + [(x, g, False) for x, g in zip(ref, reference_strata)]
    quantiles = {}
    for g in set(strata) | set(reference_strata):
        members = [i for i, (_, h, _) in enumerate(labelled) if h == g]
        ranks = scipy_stats.rankdata([labelled[i][0] for i in members])
        quantiles.update({i: r / (len(members) + 1) for i, r in zip(members, ranks)})
    pooled = sorted(((quantiles[i], g, is_bench) for i, (_, g, is_bench) in enumerate(labelled)), key=lambda t: -t[0])
    groups = sorted(set(strata))
    size = {g: sum(h == g for _, h, _ in pooled) for g in groups}
    n_of = {g: sum(h == g and b for _, h, b in pooled) for g in groups}
    best = (0.0, 0)
    for k in range(1, len(pooled) // 2 + 1):
        if pooled[k][0] == pooled[k - 1][0]:
            continue
        law, denominator = [1], 1
        for g in groups:
            c = sum(h == g for _, h, _ in pooled[:k])
            stratum = [math.comb(n_of[g], a) * math.comb(size[g] - n_of[g], c - a) for a in range(c + 1)]
            law = [sum(law[i] * stratum[j - i] for i in range(len(law)) if 0 <= j - i < len(stratum))
                   for j in range(len(law) + len(stratum) - 1)]
            denominator *= math.comb(size[g], c)
        count = sum(b for _, _, b in pooled[:k])
        value = math.log10(denominator) - math.log10(sum(law[count:]))
        best = max(best, (value, k))
    return best


def test_sparse_set_test_within_strata_matches_its_definition():
    """Three strata of unequal sizes (their quantiles tie across strata at some ranks), a leak in two of them."""
    rng = np.random.default_rng(8)
    bench, ref = np.round(rng.normal(0, 1, 60), 1), np.round(rng.normal(0, 1, 90), 1)
    strata, reference_strata = list(rng.integers(0, 3, 60)), list(rng.integers(0, 3, 90))
    bench[:8] += np.where(np.array(strata[:8]) < 2, 3.0, 0.0)
    res = sparse_set_test(bench, ref, strata=strata, reference_strata=reference_strata, min_reference=1,
                          n_permutations=199)
    value, k = _direct_top_k_within(bench, ref, strata, reference_strata)
    assert res.statistic == pytest.approx(value, rel=1e-9) and res.top_k == k


def test_sparse_set_test_finds_a_small_leak_that_mann_whitney_misses():
    """20 of 400 items above every reference: Mann-Whitney's AUROC moves by 0.025 at most, the top-k test sees
    them all at the top."""
    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, 600)
    bench = rng.normal(0, 1, 400)
    bench[:20] = ref.max() + rng.uniform(0.1, 1.0, 20)
    assert set_level_test(bench, ref).p_value > 0.05
    res = sparse_set_test(bench, ref, n_permutations=999)
    assert (res.top_k, res.excess) == (20, 20 - 8)  # all 20 on top, where 20 * 400 / 1000 = 8 are expected
    # no permutation comes near: not held at 1 / 1000, but the union bound over the 500 thresholds tried
    assert res.statistic == pytest.approx(-sum(math.log10((400 - i) / (1000 - i)) for i in range(20)))
    assert res.p_value == pytest.approx(500 * 10 ** -res.statistic) and res.p_value < 1e-5
    # within strata (a k's count is then a sum of hypergeometric counts) the union bound holds as well, over
    # 250 thresholds: the two strata of 500 have the same rank quantiles, so the pooled scores tie in pairs
    strata = np.arange(1000) % 2
    within = sparse_set_test(bench, ref, strata=strata[:400], reference_strata=strata[400:], n_permutations=999)
    assert within.p_value == pytest.approx(250 * 10 ** -within.statistic) and within.p_value < 1e-5


def test_sparse_set_test_below_the_permutations_resolution_keeps_its_level():
    """With 19 permutations (resolution 0.05) the union bound gives p-values down to 1e-4, and they stay
    calibrated: no more than 1% of null draws at p <= 0.01."""
    rng = np.random.default_rng(12)
    p = np.array([sparse_set_test(rng.normal(size=60), rng.normal(size=90), n_permutations=19, seed=i).p_value
                  for i in range(3000)])
    assert (p <= 0.05).mean() <= 0.05 + 0.012 and (p <= 0.01).mean() <= 0.01 + 0.006
    assert (p < 0.05).any()  # the bound was used: p-values below the resolution occur
    # within four strata of unequal sizes, each k's tail that of a sum of hypergeometric counts
    p = np.array([sparse_set_test(rng.normal(size=60), rng.normal(size=90), strata=rng.integers(0, 4, 60),
                                  reference_strata=rng.integers(0, 4, 90), min_reference=1, n_permutations=19,
                                  seed=i).p_value for i in range(1200)])
    assert (p <= 0.05).mean() <= 0.05 + 0.015 and (p <= 0.01).mean() <= 0.01 + 0.007
    assert (p < 0.05).any()


def test_sparse_set_test_says_the_smallest_leak_it_could_see():
    """`detectable` items above every reference item are caught at alpha; one fewer on top, with the rest of the
    benchmark below every reference item, is not. More reference items make the smallest visible leak smaller."""
    rng = np.random.default_rng(6)
    sizes = {}
    for m in (150, 600):
        ref = rng.normal(0, 1, m)
        res = sparse_set_test(rng.normal(0, 1, 400), ref, n_permutations=999, alpha=0.01)
        d = sizes[m] = res.detectable
        assert d is not None and 1 < d < 400
        above = ref.max() + rng.uniform(0.1, 1.0, 400)
        below = ref.min() - rng.uniform(0.1, 1.0, 400)
        caught = sparse_set_test(np.concatenate([above[:d], rng.normal(0, 1, 400 - d)]), ref, n_permutations=999)
        assert caught.p_value < 0.01, (m, d, caught)
        missed = sparse_set_test(np.concatenate([above[:d - 1], below[:400 - d + 1]]), ref, n_permutations=999)
        assert missed.p_value >= 0.01, (m, d, missed)
    assert sizes[600] < sizes[150]
    # too few permutations to resolve alpha: the union bound still sees a leak, of more items
    few = sparse_set_test(rng.normal(size=400), rng.normal(size=600), n_permutations=50).detectable
    assert few is not None and few > sizes[600]
    with pytest.raises(ValueError, match="alpha"):
        sparse_set_test(rng.normal(size=40), rng.normal(size=60), alpha=1.5)


def test_sparse_set_test_is_calibrated_without_a_leak():
    rng = np.random.default_rng(5)
    p = np.array([sparse_set_test(rng.normal(size=60), rng.normal(size=90), n_permutations=99, seed=i).p_value
                  for i in range(400)])
    assert 0.05 <= (p <= 0.1).mean() <= 0.15 and 0.15 <= (p <= 0.25).mean() <= 0.35
    # a single tie over the top half separates nothing
    assert sparse_set_test(np.ones(10), np.ones(10)).p_value == 1.0
    # one-sided: benchmark items below the reference are no evidence
    assert sparse_set_test(rng.normal(-2, 1, 100), rng.normal(0, 1, 100), n_permutations=99).p_value > 0.5


# a negative control at set level


def test_controlled_scores_match_their_definition_and_ignore_which_side_an_item_stands():
    rng = np.random.default_rng(11)
    model, control = rng.normal(size=50).round(1), rng.normal(size=50).round(1)  # with ties
    bench, ref = controlled_scores(model[:20], model[20:], control[:20], control[20:])
    expected = (scipy_stats.rankdata(model) - scipy_stats.rankdata(control)) / 50
    assert np.concatenate([bench, ref]) == pytest.approx(expected)
    # another split of the same items gives each item the same value: items exchangeable stay exchangeable
    order = rng.permutation(50)
    bench2, ref2 = controlled_scores(model[order[:35]], model[order[35:]], control[order[:35]], control[order[35:]])
    assert np.concatenate([bench2, ref2]) == pytest.approx(expected[order])


def test_controlled_set_tests_cancel_a_shift_the_control_shows_and_keep_a_leak():
    """A benchmark drawn a little apart from its reference (both models see it) fools the plain tests, not the
    controlled ones; a leak the evaluated model alone saw stays plain to them."""
    rng = np.random.default_rng(12)
    n, m = 400, 600
    control = rng.normal(size=n + m)
    control[:n] += 0.3  # the draw's shift: any model, the control too, scores these items a little higher
    model = control + 0.2 * rng.normal(size=n + m)
    bench, ref = controlled_scores(model[:n], model[n:], control[:n], control[n:])
    assert set_level_test(model[:n], model[n:]).p_value < 1e-4
    assert set_level_test(bench, ref).p_value > 0.05
    assert sparse_set_test(bench, ref, n_permutations=999).p_value > 0.05
    leaked = model.copy()
    leaked[:20] += 1.5  # 20 items (5%) the evaluated model saw
    bench, ref = controlled_scores(leaked[:n], leaked[n:], control[:n], control[n:])
    assert sparse_set_test(bench, ref, n_permutations=999).p_value < 0.01


def test_rank_correlation_is_spearman_and_zero_on_a_constant_side():
    rng = np.random.default_rng(14)
    x = rng.normal(size=60).round(1)
    y = x + rng.normal(size=60)
    assert rank_correlation(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert rank_correlation(x, -x) == pytest.approx(-1.0)
    assert rank_correlation(np.ones(5), np.arange(5.0)) == 0.0


def test_controlled_set_tests_are_calibrated_without_a_leak():
    rng = np.random.default_rng(13)
    p = []
    for _ in range(400):
        control = rng.normal(size=150)
        model = 0.8 * control + 0.6 * rng.normal(size=150)
        p.append(set_level_test(*controlled_scores(model[:60], model[60:], control[:60], control[60:]), n_boot=1).p_value)
    p = np.array(p)
    assert 0.02 <= (p <= 0.05).mean() <= 0.09 and 0.06 <= (p <= 0.1).mean() <= 0.15


# MCQ option permutations


def test_permutation_rank_pvalues_hand_example():
    orig = [-1.0, -2.0, -3.0]
    perm = [[-2.0, -3.0, -4.0], [-2.0, -1.0, -5.0], [-3.0, -3.0, -3.0]]
    np.testing.assert_allclose(permutation_rank_pvalues(orig, perm), [1 / 4, 3 / 4, 4 / 4])


def test_permutation_pvalues_are_exact_under_exchangeability():
    rng = np.random.default_rng(11)
    ll = rng.normal(size=(20000, 24))
    p = permutation_rank_pvalues(ll[:, 0], ll[:, 1:])
    assert np.mean(p <= 1 / 24) == pytest.approx(1 / 24, abs=0.004)
    assert np.mean(p <= 0.5) == pytest.approx(12 / 24, abs=0.015)


def test_permutation_set_test_hand_example():
    p = [1 / 24] * 3 + [0.5] * 21
    res = permutation_set_test(p, 24)
    assert isinstance(res, PermutationSetTest)
    assert (res.count, res.n_items, res.expected) == (3, 24, pytest.approx(1.0))
    assert res.p_value == pytest.approx(scipy_stats.binomtest(3, 24, 1 / 24, alternative="greater").pvalue)


def test_permutation_set_test_significant_when_original_order_is_memorised():
    rng = np.random.default_rng(12)
    n_items, memorised = 300, 40
    ll = rng.normal(size=(n_items, 24))
    ll[:memorised, 0] += 10.0  # the model strongly prefers the published order on these items
    res = permutation_set_test(permutation_rank_pvalues(ll[:, 0], ll[:, 1:]), 24)
    assert res.count >= memorised
    assert res.expected == pytest.approx(300 / 24)
    assert res.p_value < 1e-6


def test_permutation_set_test_quiet_when_ranks_are_uniform():
    rng = np.random.default_rng(13)
    ll = rng.normal(size=(500, 24))
    assert permutation_set_test(permutation_rank_pvalues(ll[:, 0], ll[:, 1:]), 24).p_value > 0.05
    # ties with the original count against it: an indifferent model is never "first"
    flat = np.zeros((500, 24))
    res = permutation_set_test(permutation_rank_pvalues(flat[:, 0], flat[:, 1:]), 24)
    assert res.count == 0 and res.p_value == 1.0


# input validation


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: conformal_pvalues([], [1.0]), "scores is empty"),
        (lambda: conformal_pvalues([1.0], []), "reference is empty"),
        (lambda: conformal_pvalues([np.nan], [1.0]), "NaN"),
        (lambda: conformal_pvalues([[1.0]], [1.0]), "1-D"),
        (lambda: benjamini_hochberg([0.1], alpha=0.0), "alpha"),
        (lambda: benjamini_hochberg([0.1], alpha=1.0), "alpha"),
        (lambda: benjamini_hochberg([0.1, 1.2]), r"\[0, 1\]"),
        (lambda: benjamini_hochberg([-0.1]), r"\[0, 1\]"),
        (lambda: auroc([1.0], []), "negative is empty"),
        (lambda: auroc([np.nan], [1.0]), "NaN"),
        (lambda: tpr_at_fpr([1.0], [0.0], 1.5), "fpr"),
        (lambda: bootstrap_auroc_ci([1.0], [0.0], confidence=1.0), "confidence"),
        (lambda: bootstrap_auroc_ci([1.0], [0.0], n_boot=0), "n_boot"),
        (lambda: bootstrap_auroc_ci([1.0], [0.0], n_boot=2.5), "n_boot"),
        (lambda: set_level_test([], [1.0]), "benchmark_scores is empty"),
        (lambda: permutation_rank_pvalues([1.0, 2.0], [[1.0], [2.0], [3.0]]), "shape"),
        (lambda: permutation_rank_pvalues([1.0], [1.0, 2.0]), "shape"),
        (lambda: permutation_rank_pvalues([1.0], np.empty((1, 0))), "n_perm = 0"),
        (lambda: permutation_rank_pvalues([1.0], [[np.nan]]), "NaN"),
        (lambda: permutation_set_test([0.5], 1), "n_orders"),
        (lambda: permutation_set_test([1 / 24], 6), "n_orders does not match"),
        (lambda: permutation_set_test([], 24), "empty"),
        (lambda: sparse_set_test([1.0], [0.0], n_permutations=0), "n_permutations"),
        (lambda: sparse_set_test([1.0], [0.0], max_k=0), "max_k"),
        (lambda: sparse_set_test([1.0], [np.nan]), "NaN"),
        (lambda: controlled_scores([1.0, 2.0], [0.0], [1.0], [0.0]), "same benchmark and reference items"),
        (lambda: controlled_scores([1.0], [0.0], [1.0], [np.nan]), "NaN"),
        (lambda: rank_correlation([1.0, 2.0], [1.0]), "pair up"),
    ],
)
def test_input_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cauchy_combination():
    from itd.core.stats import cauchy_combination

    # one test, or the same p-value several times (perfect dependence), is returned unchanged
    for p in (1e-12, 0.003, 0.2, 0.6):
        assert cauchy_combination([p]) == pytest.approx(p, rel=1e-9)
        assert cauchy_combination([p, p, p]) == pytest.approx(p, rel=1e-9)
    # the published formula, T = mean tan((0.5 - p) pi), p = 0.5 - arctan(T) / pi
    ps = np.array([0.01, 0.2, 0.6])
    t = np.tan((0.5 - ps) * np.pi).mean()
    assert cauchy_combination(ps) == pytest.approx(0.5 - np.arctan(t) / np.pi, rel=1e-12)
    w = np.array([0.5, 0.3, 0.2])
    t = (w * np.tan((0.5 - ps) * np.pi)).sum()
    assert cauchy_combination(ps, w) == pytest.approx(0.5 - np.arctan(t) / np.pi, rel=1e-12)
    # NaN = a test that did not apply; tiny p-values keep their size; rows are items
    got = cauchy_combination([[1e-20, 0.5], [np.nan, 0.3], [np.nan, np.nan], [1.0, 1.0]])
    assert got[0] == pytest.approx(2e-20, rel=1e-6) and got[1] == pytest.approx(0.3)
    assert np.isnan(got[2]) and got[3] == pytest.approx(0.5)  # capped at 1 - 1/d
    # a p-value at 1 (a discrete score tied with the whole reference) does not cancel strong evidence
    assert cauchy_combination([1e-6, 1.0, 1.0]) < 1e-5
    assert cauchy_combination([1e-6, 0.97, 0.99]) == pytest.approx(cauchy_combination([1e-6, 2 / 3, 2 / 3]))
    assert cauchy_combination([1.0]) == pytest.approx(1.0)  # one test alone is not capped
    # valid under the null: independent uniforms, and strongly dependent ones, reject at about the level
    rng = np.random.default_rng(0)
    independent = rng.uniform(size=(20000, 4))
    z = rng.normal(size=(20000, 1)) + 0.5 * rng.normal(size=(20000, 4))
    dependent = 1 - _normal_cdf(z / np.sqrt(1.25))
    for sample in (independent, dependent):
        rate = (cauchy_combination(sample) < 0.05).mean()
        assert 0.04 < rate < 0.06, rate
    with pytest.raises(ValueError, match="lie in"):
        cauchy_combination([0.5, 1.5])
    with pytest.raises(ValueError, match="weights"):
        cauchy_combination([0.5, 0.5], [1.0])
    # a row of weights per item combines each row with its own
    rows, row_weights = rng.uniform(size=(5, 3)), rng.uniform(size=(5, 3))
    assert np.allclose(cauchy_combination(rows, row_weights),
                       [cauchy_combination(r, w) for r, w in zip(rows, row_weights)], rtol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        cauchy_combination(rows, np.vstack([row_weights[:4], np.zeros(3)]))


def _cross_fit_case(rng, n=400, m=600, k=6, leaked=0, shift=0.0):
    """k probes of normal scores, the first shifted by `shift` for the first `leaked` items; conformal p-values."""
    scores, ref = rng.normal(size=(n, k)), rng.normal(size=(m, k))
    scores[:leaked, 0] += shift
    p = np.column_stack([conformal_pvalues(scores[:, j], ref[:, j]) for j in range(k)])
    return p, scores, [ref[:, j] for j in range(k)]


def test_cross_fit_cauchy_weights_the_probe_that_sees_the_leak():
    from itd.core.stats import cauchy_combination, cross_fit_cauchy

    rng = np.random.default_rng(11)
    p, scores, ref = _cross_fit_case(rng, leaked=120, shift=1.0)
    combined, weights = cross_fit_cauchy(p)
    assert weights.shape == (400, 6) and np.allclose(weights.sum(axis=1), 1) and (weights[:, 0] > 0.5).all()
    truth = np.arange(400) < 120
    equal = cauchy_combination(p)
    assert auroc(-np.log(combined[truth]), -np.log(combined[~truth])) > auroc(-np.log(equal[truth]),
                                                                              -np.log(equal[~truth])) + 0.03
    # K folds: one row of weights per fold
    _, by_fold = cross_fit_cauchy(p, folds=2)
    assert len(np.unique(by_fold, axis=0)) == 2 and (by_fold[:, 0] > 0.5).all()
    # few items: equal weights, or the prior's
    small, w = cross_fit_cauchy(p[:20])
    assert np.allclose(small, cauchy_combination(p[:20])) and np.allclose(w, 1 / 6)
    prior = np.array([3.0, 1, 1, 1, 1, 1])
    small, w = cross_fit_cauchy(p[:20], prior=prior)
    assert np.allclose(w, prior / 8) and np.allclose(small, cauchy_combination(p[:20], prior / 8))
    # no probe sees a leak: the prior's weights (one share per kind of evidence in `detect`)
    even = np.column_stack([rng.permutation(np.arange(1, 401) / 401) for _ in range(6)])  # no tail holds more
    _, w = cross_fit_cauchy(even, prior=prior)
    assert np.allclose(w, prior / 8)
    for bad in (np.ones(5), np.zeros(6), -prior):
        with pytest.raises(ValueError, match="prior"):
            cross_fit_cauchy(p, prior=bad)
    for bad in ((1.5,), ()):
        with pytest.raises(ValueError, match="tails"):
            cross_fit_cauchy(p, tails=bad)
    with pytest.raises(ValueError, match="folds"):
        cross_fit_cauchy(p, folds=1)


def test_cross_fit_cauchy_leads_with_the_probe_that_separates_in_the_tail():
    """One probe that lifts the leaked items far into the reference's tail and seven that shift them a little: the
    weights go to the first (a set-level shift would spread them), and the combination is as good as it."""
    from itd.core.stats import cross_fit_cauchy

    rng = np.random.default_rng(13)
    p, scores, ref = _cross_fit_case(rng, k=8, leaked=120, shift=3.0)
    scores[:120, 1:] += 0.6
    p[:, 1:] = np.column_stack([conformal_pvalues(scores[:, j], ref[j]) for j in range(1, 8)])
    combined, weights = cross_fit_cauchy(p)
    assert (weights[:, 0] > 0.8).all(), weights
    truth = np.arange(400) < 120
    best = auroc(scores[truth, 0], scores[~truth, 0])
    assert auroc(-np.log(combined[truth]), -np.log(combined[~truth])) >= best - 0.01


def test_cross_fit_cauchy_weights_match_their_definition():
    """Each item's weights against a direct loop over items: the other items' largest one-sided tail-excess z over
    the tails that expect an item, (z - 1.645)^2 above the threshold, normalised (equal when none passes); NaN
    p-values count for no item. With a control, the excess is counted over t plus the control's excess beyond
    one standard error."""
    from itd.core.stats import cauchy_combination, cross_fit_cauchy

    rng = np.random.default_rng(21)
    p = rng.uniform(size=(80, 4))
    p[:12, 0] = rng.uniform(0, 0.01, size=12)  # a leak the first test sees
    p[5, 2] = np.nan
    p[20:40, 1] = rng.uniform(0, 0.02, size=20)  # a shift the control shows too
    control = rng.uniform(size=(80, 4))
    control[20:40, 1] = rng.uniform(0, 0.02, size=20)
    control[:, 3] = np.nan  # no control for the last test
    tails = (0.01, 0.02, 0.05, 0.1)
    for c in (None, control):
        combined, weights = cross_fit_cauchy(p, control=c)
        for i in range(p.shape[0]):
            others = np.delete(p, i, axis=0)
            z = np.zeros(4)
            for j in range(4):
                col = others[np.isfinite(others[:, j]), j]
                ctl = None if c is None else np.delete(c[:, j], i)
                ctl = None if ctl is None or not np.isfinite(ctl).any() else ctl[np.isfinite(ctl)]
                for t in tails:
                    expected = t
                    if ctl is not None:  # the control's excess beyond one standard error
                        expected += max(0.0, (ctl <= t).mean() - t - math.sqrt(t * (1 - t) / ctl.size))
                    if col.size * t >= 1:
                        z[j] = max(z[j], ((col <= t).mean() - expected) / math.sqrt(t * (1 - t) / col.size))
            w = np.clip(z - 1.645, 0, None) ** 2
            w = w / w.sum() if w.sum() > 0 else np.full(4, 0.25)
            assert weights[i] == pytest.approx(w, abs=1e-12), i
            assert combined[i] == pytest.approx(cauchy_combination(p[i], w), rel=1e-12)
    # the shift takes most of the weight, unless the control shows it too
    assert (cross_fit_cauchy(p)[1][:, 1] > 0.5).all()
    weights = cross_fit_cauchy(p, control=control)[1]
    assert (weights[:, 1] < 0.05).all() and (weights[12:, 0] > 0.9).all()


def test_cross_fit_cauchy_keeps_a_small_leak_seen_by_one_probe():
    """20 leaked items of 400 that one probe lifts by 2.6 standard deviations (a reference model at one exposure),
    five probes lifting them a little and four not at all, all correlated: with 10 leaked items a half, chance tail
    excesses of the others are as large as the real one's at a single tail. Over 12 draws the strong probe keeps
    most of the weight and the combination falls below its AUROC's interval at most once (weights from the
    other half's squared z at a 5% tail, as before: in half of them; from the other half with these tails: 3)."""
    from itd.core.stats import cross_fit_cauchy

    rng = np.random.default_rng(5)
    shifts = np.array([2.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0, 0.0])
    n, m, below, strong_weight = 400, 600, 0, []
    truth = np.arange(n) < 20
    for _ in range(12):
        x = np.sqrt(0.6) * rng.normal(size=(n + m, 1)) + np.sqrt(0.4) * rng.normal(size=(n + m, shifts.size))
        x[:20] += shifts
        p = np.column_stack([conformal_pvalues(x[:n, j], x[n:, j]) for j in range(shifts.size)])
        combined, weights = cross_fit_cauchy(p)
        low, _ = bootstrap_auroc_ci(x[:n, 0][truth], x[:n, 0][~truth], n_boot=500)
        below += auroc(-np.log(combined[truth]), -np.log(combined[~truth])) < low
        strong_weight.append(weights[:, 0].min())
    assert below <= 1 and np.median(strong_weight) >= 0.9, (below, strong_weight)


def test_cross_fit_cauchy_discounts_a_shift_its_negative_control_shows_too():
    """A probe whose benchmark sits apart from its reference by chance (text both models read alike) has a tail
    excess as large as a leak's; the same probe under a model that never saw the benchmark shows it too, and with
    that control the weight goes to the probe that sees the leak. A control with fewer small p-values than
    expected lends no probe weight; a test without one (NaN) is weighed as before."""
    from itd.core.stats import cross_fit_cauchy

    rng = np.random.default_rng(7)
    n, m = 400, 600
    truth = np.arange(n) < 40
    text = rng.normal(size=(n + m, 1))  # what the shifted probe reads of the text, under either model
    text[rng.choice(n, 24, replace=False)] += 3.0  # benchmark items unlike any reference item
    evaluated = np.column_stack([text[:, 0] + 0.3 * rng.normal(size=n + m), rng.normal(size=n + m)])
    control = np.column_stack([text[:, 0] + 0.3 * rng.normal(size=n + m), rng.normal(size=n + m)])
    evaluated[:40, 1] += 1.6  # the leak: only the evaluated model's second probe sees it
    pvalues = lambda x: np.column_stack([conformal_pvalues(x[:n, j], x[n:, j]) for j in range(2)])  # noqa: E731
    p, c = pvalues(evaluated), pvalues(control)
    c[:, 1] = np.nan  # the leak's probe has no control here

    def auc(combined):
        return auroc(-np.log(combined[truth]), -np.log(combined[~truth]))

    plain, w_plain = cross_fit_cauchy(p)
    controlled, w_controlled = cross_fit_cauchy(p, control=c)
    assert w_plain[:, 0].mean() > 0.3  # the shift takes weight without the control
    assert (w_controlled[:, 1] > 0.95).all()
    assert auc(controlled) > auc(plain) + 0.05
    assert auc(controlled) >= auroc(evaluated[:n, 1][truth], evaluated[:n, 1][~truth]) - 0.02
    # a control with fewer small p-values than expected changes nothing; an all-NaN control is no control
    deficit = np.where(np.isfinite(c), 1.0, np.nan)
    assert np.array_equal(cross_fit_cauchy(p, control=deficit)[1], w_plain)
    assert np.array_equal(cross_fit_cauchy(p, control=np.full_like(p, np.nan))[1], w_plain)
    with pytest.raises(ValueError, match="shape"):
        cross_fit_cauchy(p, control=c[:10])


def test_cross_fit_cauchy_is_calibrated_without_a_leak():
    from itd.core.stats import cross_fit_cauchy

    rng = np.random.default_rng(12)
    rates = []
    for _ in range(40):
        p, scores, ref = _cross_fit_case(rng, n=200, m=300)
        combined, _ = cross_fit_cauchy(p, seed=int(rng.integers(1 << 30)))
        rates.append((combined <= 0.05).mean())
    assert 0.03 <= float(np.mean(rates)) <= 0.07


def _normal_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)


def test_stratified_conformal_pvalues_calibrate_within_each_stratum():
    """Two strata whose scores differ by a shift (a model preferring one answer letter): pooled p-values are far
    from uniform within a stratum, Mondrian ones are uniform in each; a stratum with too few references (or
    None) gets the pooled p-value."""
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.normal(0, 1, 400), rng.normal(3, 1, 400)])
    ref_keys = [0] * 400 + [1] * 400
    null = np.concatenate([rng.normal(0, 1, 4000), rng.normal(3, 1, 4000)])
    keys = [0] * 4000 + [1] * 4000
    p = stratified_conformal_pvalues(null, ref, keys, ref_keys)
    pooled = conformal_pvalues(null, ref)
    for k in (0, 1):
        own = p[np.array(keys) == k]
        assert abs(float(np.mean(own <= 0.1)) - 0.1) < 0.02  # uniform within the stratum
        assert np.array_equal(own, conformal_pvalues(null[np.array(keys) == k], ref[np.array(ref_keys) == k]))
    assert float(np.mean(pooled[:4000] <= 0.1)) < 0.02 and float(np.mean(pooled[4000:] <= 0.1)) > 0.15
    sparse = stratified_conformal_pvalues(null[:3], ref, [2, None, 0], ref_keys)
    assert sparse[0] == pooled[0] and sparse[1] == pooled[1] and sparse[2] == p[2]
    with pytest.raises(ValueError, match="label every"):
        stratified_conformal_pvalues(null[:3], ref, [0, 1], ref_keys)


def _letter_confounded(rng, n_bench, n_ref, shift=1.0):
    """Scores with no leak whose level depends on the stratum (a model preferring letter 0), the benchmark's
    letters skewed to 0 and the reference's balanced: exchangeable within a letter, not across."""
    bench_keys = rng.choice(4, n_bench, p=[0.7, 0.1, 0.1, 0.1])
    ref_keys = rng.choice(4, n_ref)
    offset = np.array([shift, 0.0, 0.0, 0.0])
    return (rng.normal(size=n_bench) + offset[bench_keys], rng.normal(size=n_ref) + offset[ref_keys],
            bench_keys.tolist(), ref_keys.tolist())


def test_stratified_set_level_test_is_van_elteren_and_calibrated_within_strata():
    """With strata, the set test compares scores within a stratum only: calibrated where the strata's levels
    differ and the benchmark's strata are skewed (the pooled Mann-Whitney test rejects almost always there), and
    its statistic is van Elteren's, the within-stratum rank sums over stratum size plus one."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    strat, pooled = [], []
    for _ in range(200):
        bench, ref, keys, ref_keys = _letter_confounded(rng, 100, 300)
        strat.append(set_level_test(bench, ref, strata=keys, reference_strata=ref_keys, n_boot=10).p_value)
        pooled.append(set_level_test(bench, ref, n_boot=10).p_value)
    assert np.mean(np.array(strat) <= 0.05) <= 0.09 and np.mean(np.array(pooled) <= 0.05) > 0.8
    bench, ref, keys, ref_keys = _letter_confounded(rng, 60, 200)
    res = set_level_test(bench, ref, strata=keys, reference_strata=ref_keys)
    expected = 0.0
    for k in range(4):
        own = np.concatenate([bench[np.array(keys) == k], ref[np.array(ref_keys) == k]])
        expected += rankdata(own)[:int(np.sum(np.array(keys) == k))].sum() / (own.size + 1)
    assert res.statistic == pytest.approx(expected)
    assert (res.n_benchmark, res.n_reference) == (60, 200)
    leaked = bench + 1.0  # a real shift is still found
    assert set_level_test(leaked, ref, strata=keys, reference_strata=ref_keys).p_value < 1e-4


def test_stratified_set_tests_pool_small_strata_and_drop_benchmark_strata_without_references():
    rng = np.random.default_rng(1)
    ref, ref_keys = rng.normal(size=90), [0] * 50 + [1] * 30 + [2] * 10
    bench, keys = rng.normal(size=12), [0] * 4 + [2] * 4 + [None] * 2 + [3] * 2  # 2, 3 and None pool
    res = set_level_test(bench, ref, strata=keys, reference_strata=ref_keys, min_reference=20)
    assert (res.n_benchmark, res.n_reference) == (12, 90)
    # without small strata among the references, the pooled stratum has none: its benchmark scores go
    ref_keys = [0] * 50 + [1] * 40
    res = set_level_test(bench, ref, strata=keys, reference_strata=ref_keys, min_reference=20)
    assert (res.n_benchmark, res.n_reference) == (4, 90)
    top = sparse_set_test(bench, ref, strata=keys, reference_strata=ref_keys, min_reference=20, n_permutations=99)
    assert (top.n_benchmark, top.n_reference) == (4, 90)
    with pytest.raises(ValueError, match="label every"):
        set_level_test(bench, ref, strata=keys[:3], reference_strata=ref_keys)
    with pytest.raises(ValueError, match="no benchmark score"):
        set_level_test(bench[-2:], ref, strata=[3, 3], reference_strata=ref_keys)
    # which benchmark scores those tests compare, so a caller can tell before running them that none would be
    assert comparable_in_strata(keys, ref_keys, min_reference=20).tolist() == [True] * 4 + [False] * 8
    assert not comparable_in_strata([3, 3], ref_keys, min_reference=20).any()


def test_stratified_sparse_set_test_permutes_within_strata():
    """The top-k test with strata ranks within-stratum quantiles and permutes within strata: calibrated under a
    letter confound that the pooled test mistakes for a leak, and still finds a few items far above their
    stratum's references."""
    rng = np.random.default_rng(2)
    strat, pooled = [], []
    for i in range(100):
        bench, ref, keys, ref_keys = _letter_confounded(rng, 100, 300, shift=1.5)
        strat.append(sparse_set_test(bench, ref, strata=keys, reference_strata=ref_keys, n_permutations=99,
                                     seed=i).p_value)
        pooled.append(sparse_set_test(bench, ref, n_permutations=99, seed=i).p_value)
    assert np.mean(np.array(strat) <= 0.05) <= 0.12 and np.mean(np.array(pooled) <= 0.05) > 0.8
    bench, ref, keys, ref_keys = _letter_confounded(rng, 400, 600)
    bench[:20] += 4.0
    assert sparse_set_test(bench, ref, strata=keys, reference_strata=ref_keys, n_permutations=999).p_value <= 0.01
