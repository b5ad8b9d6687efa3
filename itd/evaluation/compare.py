"""Comparison: accuracy with percentile-bootstrap intervals, the original and the decontaminated set side by side
(`compare`, `accuracy_by_group`), and the ground truth of contamination-lab twins (`ground_truth`)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from itd.core.errors import InputError
from itd.core.validate import is_int
from itd.evaluation.scoring import EvalResult

__all__ = [
    "Estimate",
    "Comparison",
    "TwinOutcome",
    "GroundTruth",
    "accuracy_by_group",
    "compare",
    "ground_truth",
]

@dataclass(frozen=True, slots=True)
class Estimate:
    """A figure with its percentile-bootstrap interval: `value` (None when undefined, with `reason`), the 95%
    interval [`low`, `high`], `n` items it is computed on and `n_boot` bootstrap replicates behind the interval
    (fewer than asked when some replicates leave the figure undefined)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    n_boot: int = 0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"value": self.value, "ci": [self.low, self.high], "n": self.n, "n_boot": self.n_boot}
        if self.reason is not None:
            d["reason"] = self.reason
        return d


def _undefined(n: int, reason: str) -> Estimate:
    return Estimate(None, None, None, n, 0, reason)


def _bootstrap(name: str, columns: list[np.ndarray], stat: Callable[[np.ndarray], np.ndarray], n_boot: int,
               seed: int, what: str, *, masks: list[np.ndarray] | None = None, items: np.ndarray | None = None,
               replicas: np.ndarray | None = None) -> Estimate:
    """`stat` of the column means (last axis: the columns) with `itd.core.stats.bootstrap_means`: paired (every
    replicate weighs the same items in all columns), items (and replicas, when given) resampled, seeded by
    `seed` and `name`. `masks` restricts each column's mean to some cells. Replicates where `stat` is not
    finite are left out."""
    from itd.core.stats import bootstrap_means

    x = np.stack(columns).astype(np.float64) if columns else np.empty((0, 0))
    m = np.stack(masks) if masks is not None else np.isfinite(x)
    n = int((m & np.isfinite(x)).any(axis=0).sum()) if x.size else 0
    if n == 0:
        return _undefined(0, f"no items: {what}")
    if items is not None:
        n = len(np.unique(np.asarray(items)[(m & np.isfinite(x)).any(axis=0)]))
    ci = bootstrap_means(x, stat, masks=m, items=items, replicas=replicas, n_boot=n_boot,
                         seed=[seed, zlib.crc32(name.encode("utf-8"))])
    if not math.isfinite(ci.value):
        return _undefined(n, f"undefined on these items: {what}")
    if ci.low is None:
        return Estimate(ci.value, None, None, n, 0, "no bootstrap replicate defines an interval")
    return Estimate(ci.value, ci.low, ci.high, n, ci.n_boot)


@dataclass(slots=True)
class Comparison:
    """What `compare` finds; every figure is an `Estimate` (value, 95% CI, n).

    `accuracy[role][subset]`: role "model" (and "clean" when a clean model's results were given); subsets
    "original", "decontaminated" (whole sets), "flagged_before" / "flagged_after" (the flagged items in the
    original / decontaminated set), "unflagged" (the other items of the decontaminated set, kept as they were).
    `inflation`: model accuracy original minus decontaminated, on the items in both. `true_inflation`: model
    minus clean on the original set; `residual_inflation`: model minus clean on the decontaminated set;
    `inflation_removed`: 1 - residual / true (on items all four results share; undefined when the true
    inflation is not positive). `fidelity`: share of rewritten items on which the clean model is right (or
    wrong) both before and after rewriting; `resistance`: share of rewritten items on which the model and the
    clean model agree in correctness after rewriting. `counts`: items, flagged, rewritten and unmatched ids.
    """

    accuracy: dict[str, dict[str, Estimate]]
    inflation: Estimate
    true_inflation: Estimate
    residual_inflation: Estimate
    inflation_removed: Estimate
    fidelity: Estimate
    resistance: Estimate
    counts: dict[str, int]
    n_boot: int
    seed: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "accuracy": {role: {k: e.to_dict() for k, e in subsets.items()} for role, subsets in self.accuracy.items()},
            "inflation": self.inflation.to_dict(),
            "true_inflation": self.true_inflation.to_dict(),
            "residual_inflation": self.residual_inflation.to_dict(),
            "inflation_removed": self.inflation_removed.to_dict(),
            "fidelity": self.fidelity.to_dict(),
            "resistance": self.resistance.to_dict(),
            "counts": dict(self.counts),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence,
                          "method": "percentile, items resampled; differences paired"},
        }


def _column(ids: list[str], result: EvalResult | None) -> np.ndarray:
    """Correctness (1.0/0.0) of `result` on each id, NaN where it has no such item (or no result)."""
    col = np.full(len(ids), np.nan)
    if result is not None:
        by_id = result.by_id()
        for j, i in enumerate(ids):
            it = by_id.get(i)
            if it is not None:
                col[j] = 1.0 if it.correct else 0.0
    return col


def _diff(m: np.ndarray) -> np.ndarray:
    return m[:, 0] - m[:, 1]


def _mean(m: np.ndarray) -> np.ndarray:
    return m[:, 0]


def _removed(m: np.ndarray) -> np.ndarray:
    true = m[:, 0] - m[:, 1]
    residual = m[:, 2] - m[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(true > 0, 1.0 - residual / np.where(true > 0, true, 1.0), np.nan)


def accuracy_by_group(
    original: EvalResult,
    decontaminated: EvalResult | None,
    groups: Mapping[str, Iterable[str]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """A model's accuracy on each group of item ids (e.g. the corpus scan's labels, the model-side flagged and
    unflagged items), on the original set ("before") and on the decontaminated one ("after"), each an
    `Estimate` dict with its percentile-bootstrap interval and item count."""
    out: dict[str, dict[str, Any]] = {}
    for group, members in groups.items():
        ids = list(dict.fromkeys(members))
        row: dict[str, Any] = {}
        for which, result in (("before", original), ("after", decontaminated)):
            col = _column(ids, result)
            row[which] = _bootstrap(f"{group}/{which}", [col[np.isfinite(col)]], _mean, n_boot, seed,
                                    f"no {group} items in the {'original' if which == 'before' else 'decontaminated'} set").to_dict()
        out[group] = row
    return out


def compare(
    original: EvalResult,
    decontaminated: EvalResult,
    flagged: Iterable[str],
    *,
    clean_original: EvalResult | None = None,
    clean_decontaminated: EvalResult | None = None,
    rewritten: Iterable[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare a model's results on the original and the decontaminated benchmark (see `Comparison`).

    `flagged`: ids flagged as leaked. `clean_original` / `clean_decontaminated`: a clean twin's (or reference
    model's) results on the same two sets. `rewritten`: ids whose text changed (default: ids in both sets whose
    question, choices or answer differ). Intervals: percentile bootstrap over items, `n_boot` replicates, seeded.
    """
    if not is_int(n_boot) or n_boot < 1:
        raise InputError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not is_int(seed):
        raise InputError(f"seed must be an integer, got {seed!r}")
    flagged = set(flagged)
    orig_ids = [it.id for it in original.items]
    decon_ids = [it.id for it in decontaminated.items]
    orig_set = set(orig_ids)
    ids = orig_ids + [i for i in decon_ids if i not in orig_set]
    if rewritten is None:
        before = {it.id: it.sample_key for it in original.items}
        rewritten = {it.id for it in decontaminated.items if it.id in before and before[it.id] != it.sample_key}
    rewritten = set(rewritten)
    m_o, m_d = _column(ids, original), _column(ids, decontaminated)
    c_o, c_d = _column(ids, clean_original), _column(ids, clean_decontaminated)
    is_flagged = np.array([i in flagged for i in ids], dtype=bool)
    is_rewritten = np.array([i in rewritten for i in ids], dtype=bool)
    have = np.isfinite

    def acc(name: str, col: np.ndarray, rows: np.ndarray, what: str) -> Estimate:
        return _bootstrap(name, [col[rows]], _mean, n_boot, seed, what)

    accuracy: dict[str, dict[str, Estimate]] = {}
    roles = [("model", m_o, m_d)]
    if clean_original is not None or clean_decontaminated is not None:
        roles.append(("clean", c_o, c_d))
    for role, o, d in roles:
        accuracy[role] = {
            "original": acc(f"{role}/original", o, have(o), "no original results"),
            "decontaminated": acc(f"{role}/decontaminated", d, have(d), "no decontaminated results"),
            "flagged_before": acc(f"{role}/flagged_before", o, have(o) & is_flagged, "no flagged items"),
            "flagged_after": acc(f"{role}/flagged_after", d, have(d) & is_flagged, "no flagged items"),
            "unflagged": acc(f"{role}/unflagged", d, have(d) & ~is_flagged, "no unflagged items"),
        }

    def paired(name: str, cols: list[np.ndarray], stat: Callable, what: str, extra: np.ndarray | None = None) -> Estimate:
        rows = np.logical_and.reduce([have(c) for c in cols])
        if extra is not None:
            rows &= extra
        return _bootstrap(name, [c[rows] for c in cols], stat, n_boot, seed, what)

    no_clean = "needs the clean model's results on both sets"
    inflation = paired("inflation", [m_o, m_d], _diff, "no item in both sets")
    if clean_original is not None:
        true_inflation = paired("true_inflation", [m_o, c_o], _diff, "no item shared with the clean results")
    else:
        true_inflation = _undefined(0, "needs the clean model's results on the original set")
    if clean_decontaminated is not None:
        residual = paired("residual_inflation", [m_d, c_d], _diff, "no item shared with the clean results")
        resistance = paired("resistance", [(m_d == c_d).astype(float)], _mean, "no rewritten item",
                            extra=is_rewritten & have(m_d) & have(c_d))
    else:
        residual = _undefined(0, "needs the clean model's results on the decontaminated set")
        resistance = _undefined(0, no_clean)
    if clean_original is not None and clean_decontaminated is not None:
        fidelity = paired("fidelity", [(c_o == c_d).astype(float)], _mean, "no rewritten item",
                          extra=is_rewritten & have(c_o) & have(c_d))
        rows = have(m_o) & have(c_o) & have(m_d) & have(c_d)
        n = int(rows.sum())
        true_point = float(m_o[rows].mean() - c_o[rows].mean()) if n else math.nan
        if n == 0:
            removed = _undefined(0, "no item has all four results")
        elif not true_point > 0:
            removed = _undefined(n, f"true inflation is {true_point:+.4f} (not positive): there is no inflation to remove")
        else:
            removed = _bootstrap("inflation_removed", [m_o[rows], c_o[rows], m_d[rows], c_d[rows]], _removed, n_boot,
                                 seed, "no item has all four results")
    else:
        fidelity = _undefined(0, no_clean)
        removed = _undefined(0, no_clean)
    counts = {
        "items": len(ids),
        "original": len(orig_ids),
        "decontaminated": len(decon_ids),
        "in_both": int((have(m_o) & have(m_d)).sum()),
        "flagged": int(is_flagged.sum()),
        "flagged_unknown": len(flagged - set(ids)),
        "rewritten": int(is_rewritten.sum()),
    }
    return Comparison(accuracy, inflation, true_inflation, residual, removed, fidelity, resistance, counts, n_boot, seed)


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth on contamination-lab twins


@dataclass(frozen=True)
class TwinOutcome:
    """One lab replica's evaluation. `leaked` / `unseen`: its ground truth. `results[role][set]`: the
    contaminated twin's (role "model") and the clean twin's (role "clean") results on the "original" set and on
    each decontaminated one (e.g. "itd": the flagged items rewritten, "all": every item rewritten, "retest":
    every item rewritten again with another seed). `rewritten[set]`: the ids whose text that set changed.
    `flagged`: the ids the detector flagged, when known."""

    leaked: Sequence[str]
    unseen: Sequence[str]
    results: Mapping[str, Mapping[str, EvalResult]]
    rewritten: Mapping[str, Iterable[str]] = field(default_factory=dict)
    flagged: Iterable[str] | None = None


@dataclass
class GroundTruth:
    """What `ground_truth` measures; every figure an `Estimate` (value, 95% CI over items and replicas, n items).

    `true_inflation`: the contaminated twin's accuracy gain over the clean twin on the leaked items minus the
    same gain on the unseen ones (difference in differences); `leaked_gain` and `unseen_gap` are its two
    terms (the unseen gap is the lab's noise: the twins should agree there). `arms[set]` per decontaminated set
    (and "none", the original set): `residual_inflation` (the same DiD on it), `inflation_removed` (1 -
    residual / true), accuracy of both twins on it, and on the items it rewrote: `fidelity` (the clean twin right
    or wrong alike before and after), `fidelity_ratio` (fidelity / ceiling) and `difficulty` (the clean twin's
    accuracy after minus before, paired). `ceiling`: the clean twin's agreement between two independent rewrites
    of the same items (test-retest), and `chance`: the agreement of two independent answer sheets with those
    accuracies. `accuracy[role][group]` on the original set (group "leaked", "unseen", "all"). `flags`: share of
    leaked and unseen items flagged. `per_item`: each item's gain when leaked and when unseen.
    """

    true_inflation: Estimate
    leaked_gain: Estimate
    unseen_gap: Estimate
    accuracy: dict[str, dict[str, Estimate]]
    arms: dict[str, dict[str, Estimate]]
    ceiling: Estimate
    chance: Estimate
    flags: dict[str, Any] | None
    per_item: list[dict[str, Any]]
    counts: dict[str, int]
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "true_inflation": self.true_inflation.to_dict(),
            "leaked_gain": self.leaked_gain.to_dict(),
            "unseen_gap": self.unseen_gap.to_dict(),
            "accuracy": {role: {g: e.to_dict() for g, e in groups.items()} for role, groups in self.accuracy.items()},
            "arms": {arm: {k: e.to_dict() for k, e in figs.items()} for arm, figs in self.arms.items()},
            "ceiling": self.ceiling.to_dict(),
            "chance": self.chance.to_dict(),
            "flags": self.flags,
            "per_item": self.per_item,
            "counts": dict(self.counts),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "confidence": 0.95,
                          "method": "percentile; items and replicas resampled (crossed); differences paired"},
        }


def _did(m: np.ndarray) -> np.ndarray:
    return m[:, 0] - m[:, 1]


def _ratio(m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m[:, 1] > 0, m[:, 0] / np.where(m[:, 1] > 0, m[:, 1], 1.0), np.nan)


def _chance(m: np.ndarray) -> np.ndarray:
    return m[:, 0] * m[:, 1] + (1 - m[:, 0]) * (1 - m[:, 1])


def ground_truth(outcomes: Sequence[TwinOutcome], *, retest: str | None = "retest", reference: str | None = None,
                 n_boot: int = 2000, seed: int = 0) -> GroundTruth:
    """The ground truth of lab replicas (see `GroundTruth`): true inflation as a difference in differences, the
    residual on every decontaminated set and the share removed, fidelity against its test-retest ceiling and
    chance, difficulty preservation, all with bootstrap CIs over items and replicas (`itd.core.stats.bootstrap_means`).

    The arms are the sets of the first outcome's contaminated twin; `retest` names the second independent rewrite
    (used for the ceiling only) and `reference` the rewrite it is compared with (default "all" when there is
    one, else the first decontaminated set). Cells are (replica, item) pairs with both twins' original results.
    """
    if not outcomes:
        raise InputError("ground truth needs at least one lab replica's results")
    if not is_int(n_boot) or n_boot < 1:
        raise InputError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    first = outcomes[0].results
    if "original" not in first.get("model", {}):
        raise InputError("ground truth needs the contaminated twin's results on the original set")
    arms = [s for s in first["model"] if s not in ("original", retest)]
    sets = list(dict.fromkeys([*first["model"], *first.get("clean", {})]))
    reference = reference or ("all" if "all" in arms else (arms[0] if arms else None))
    ids: list[str] = []
    rep: list[int] = []
    leaked_l: list[bool] = []
    flagged_l: list[bool] = []
    cols: dict[tuple[str, str], list[np.ndarray]] = {}
    rewritten: dict[str, list[np.ndarray]] = {}
    for r, out in enumerate(outcomes):
        truth = {i: True for i in out.leaked} | {i: False for i in out.unseen}
        for role in ("model", "clean"):
            if "original" not in out.results.get(role, {}):
                raise InputError(f"replica {r}: no {'contaminated' if role == 'model' else 'clean'} twin results "
                                 "on the original set")
        have = {it.id for it in out.results["model"]["original"].items} & {
            it.id for it in out.results["clean"]["original"].items}
        cell_ids = [i for i in truth if i in have]
        ids += cell_ids
        rep += [r] * len(cell_ids)
        leaked_l += [truth[i] for i in cell_ids]
        flagged = set(out.flagged or ())
        flagged_l += [i in flagged for i in cell_ids]
        for role in ("model", "clean"):
            for s in (*sets,):
                cols.setdefault((role, s), []).append(_column(cell_ids, out.results.get(role, {}).get(s)))
        for s in sets:
            changed = set(out.rewritten.get(s, ()))
            rewritten.setdefault(s, []).append(np.array([i in changed for i in cell_ids], dtype=bool))
    if not ids:
        raise InputError("no leaked or unseen item has both twins' results")
    index = {i: k for k, i in enumerate(dict.fromkeys(ids))}
    items = np.array([index[i] for i in ids])
    replicas = np.array(rep)
    L = np.array(leaked_l, dtype=bool)
    U = ~L
    col = {key: np.concatenate(parts) for key, parts in cols.items()}
    rw = {s: np.concatenate(parts) for s, parts in rewritten.items()}
    have = np.isfinite

    def est(name: str, columns: list[np.ndarray], masks: list[np.ndarray], stat: Callable, what: str) -> Estimate:
        masks = [m & have(c) for c, m in zip(columns, masks)]
        return _bootstrap(name, columns, stat, n_boot, seed, what, masks=masks, items=items, replicas=replicas)

    def diff(role_set: str) -> np.ndarray:
        return col[("model", role_set)] - col[("clean", role_set)]

    d_o = diff("original")
    true = est("gt/true_inflation", [d_o, d_o], [L, U], _did, "needs leaked and unseen items")
    accuracy = {
        role: {group: est(f"gt/accuracy/{role}/{group}", [col[(role, "original")]], [mask], _mean, f"no {group} items")
               for group, mask in (("leaked", L), ("unseen", U), ("all", L | U))}
        for role in ("model", "clean")
    }
    arm_figs: dict[str, dict[str, Estimate]] = {}
    ceiling = chance = _undefined(0, "needs two independent rewrites of the same items (a retest set)")
    agree_rt = None
    if reference is not None and retest and ("clean", retest) in col and col[("clean", retest)].size:
        both = rw[reference] & rw.get(retest, np.zeros_like(L))
        agree_rt = (col[("clean", reference)] == col[("clean", retest)]).astype(float)
        agree_rt[~(have(col[("clean", reference)]) & have(col[("clean", retest)]))] = np.nan
        ceiling = est("gt/ceiling", [agree_rt], [both], _mean, "no item rewritten in both rewrites")
        chance = est("gt/chance", [col[("clean", reference)], col[("clean", retest)]], [both, both], _chance,
                     "no item rewritten in both rewrites")
    rewritten_cells: dict[str, int] = {}
    for arm in ["original", *arms]:
        d_s = diff(arm)
        both = have(d_o) & have(d_s)
        figs: dict[str, Estimate] = {
            "residual_inflation": est(f"gt/{arm}/residual", [d_s, d_s], [L, U], _did, "needs leaked and unseen items"),
        }
        if not (true.value is not None and true.value > 0):
            figs["inflation_removed"] = _undefined(true.n, "the true inflation is not positive: nothing to remove")
        else:
            figs["inflation_removed"] = est(f"gt/{arm}/removed", [d_o, d_o, d_s, d_s], [L & both, U & both] * 2,
                                            _removed, "needs leaked and unseen items")
        for role in ("model", "clean"):
            figs[f"accuracy_{role}"] = est(f"gt/{arm}/acc/{role}", [col[(role, arm)]], [L | U], _mean, "no results")
        k_o, k_s = col[("clean", "original")], col[("clean", arm)]
        agree = (k_o == k_s).astype(float)
        agree[~(have(k_o) & have(k_s))] = np.nan
        changed = rw[arm]
        figs["fidelity"] = est(f"gt/{arm}/fidelity", [agree], [changed], _mean, "no rewritten item")
        figs["difficulty"] = est(f"gt/{arm}/difficulty", [k_s, k_o], [changed, changed], _diff, "no rewritten item")
        if agree_rt is not None and arm != "original":
            figs["fidelity_ratio"] = est(f"gt/{arm}/fidelity_ratio", [agree, agree_rt],
                                         [changed, rw[reference] & rw.get(retest, changed)], _ratio,
                                         "no rewritten item, or no test-retest agreement")
        rewritten_cells[arm] = int(changed.sum())
        arm_figs["none" if arm == "original" else arm] = figs
    flags = None
    if any(out.flagged is not None for out in outcomes):
        f = np.array(flagged_l, dtype=bool)
        flags = {"leaked_flagged": int((f & L).sum()), "leaked": int(L.sum()),
                 "unseen_flagged": int((f & U).sum()), "unseen": int(U.sum()),
                 "recall": est("gt/flags/recall", [f.astype(float)], [L], _mean, "no leaked items").to_dict(),
                 "false_flag_rate": est("gt/flags/fpr", [f.astype(float)], [U], _mean, "no unseen items").to_dict()}
    per_item = []
    for i, k in index.items():
        rows = items == k
        entry: dict[str, Any] = {"id": i, "leaked_in": int((rows & L).sum()), "unseen_in": int((rows & U).sum())}
        for arm in ["original", *arms]:
            d = diff(arm)
            for group, mask in (("leaked", L), ("unseen", U)):
                sel = rows & mask & have(d)
                entry.setdefault("gain", {}).setdefault(arm, {})[group] = float(d[sel].mean()) if sel.any() else None
        per_item.append(entry)
    counts = {"replicas": len(outcomes), "items": len(index), "cells": int(items.size),
              "leaked_cells": int(L.sum()), "unseen_cells": int(U.sum()),
              **{f"rewritten_{'none' if a == 'original' else a}": n for a, n in rewritten_cells.items()}}
    leaked_gain = est("gt/leaked_gain", [d_o], [L], _mean, "no leaked items")
    unseen_gap = est("gt/unseen_gap", [d_o], [U], _mean, "no unseen items")
    return GroundTruth(true, leaked_gain, unseen_gap, accuracy, arm_figs, ceiling, chance, flags, per_item, counts,
                       n_boot, seed)
