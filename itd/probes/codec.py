"""CoDeC, a dataset-level contamination test (Zawalski et al., 2025, "Detecting Data Contamination in LLMs via
In-Context Learning").

In-context examples from a dataset the model has not seen teach it the set's style, so its confidence on an item
rises when other items of the same set come before it. On a set it has memorised there is nothing left to learn
from them, and the extra context disturbs the memorised continuation: its confidence falls. For every item,
delta = LL(item | `shots` other items of the same set) - LL(item), LL the mean log-likelihood of the item's
tokens; the CoDeC score is the share of items whose delta is negative. Two forward passes per item (one of them
over the longer, in-context text).

`itd` reports the score with a bootstrap CI for the benchmark and, computed the same way, for the clean reference
set, and a one-sided Mann-Whitney test that the benchmark's deltas are lower than the reference's: the score alone
depends on the model and the kind of text, the comparison with unseen text of the same kind does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from itd.core import Sample, stats
from itd.core.progress import StageProgress, under
from itd.core.render import render

__all__ = ["CodecResult", "context_deltas", "codec_test"]

SEPARATOR = "\n\n"  # between the in-context items and the scored one


@dataclass(frozen=True)
class CodecResult:
    """CoDeC on a benchmark: `score` (share of items whose log-likelihood falls behind in-context items of the same
    set) with its bootstrap CI, the same for the clean reference set, and the one-sided Mann-Whitney p-value that
    the benchmark's deltas are lower (None without a reference set). `deltas` per benchmark item, in order."""

    score: float
    score_ci: tuple[float | None, float | None]
    deltas: tuple[float, ...]
    shots: int
    reference_score: float | None = None
    reference_ci: tuple[float | None, float | None] = (None, None)
    p_value: float | None = None
    n_reference: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The figures, JSON-ready (the per-item deltas left out)."""
        return {"score": self.score, "score_ci": list(self.score_ci), "reference_score": self.reference_score,
                "reference_ci": list(self.reference_ci), "p_value": self.p_value, "shots": self.shots,
                "n_benchmark": len(self.deltas), "n_reference": self.n_reference}


def context_deltas(lm: Any, samples: Sequence[Sample], *, shots: int = 3, rendering: str = "auto", seed: int = 0,
                   batch_size: int | str = "auto", max_length: int | None = None,
                   progress: StageProgress | None = None) -> np.ndarray:
    """Per item, LL(item | `shots` other items of `samples`, drawn with `seed`) - LL(item): the mean
    log-probability of the item's tokens behind the others minus alone (NaN where an item has no tokens).
    `progress(stage, tokens done, tokens total)` follows the two passes ("alone", "in context")."""
    from itd.probes.models import AnsweredText, ScoreConfig, score_texts

    if len(samples) < 2:
        raise ValueError("CoDeC needs at least 2 items: the others make each one's context")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    texts = [render(s, rendering) for s in samples]
    rng = np.random.default_rng(seed)
    behind = []
    for i, text in enumerate(texts):
        others = rng.choice(len(texts) - 1, size=min(shots, len(texts) - 1), replace=False)
        context = SEPARATOR.join(texts[j + (j >= i)] for j in others.tolist())  # any item but i
        behind.append(AnsweredText(context + SEPARATOR + text, len(context) + len(SEPARATOR)))
    n = len(texts)
    alone = score_texts(lm, texts, ScoreConfig(methods=("loss",), batch_size=batch_size, max_length=max_length),
                        progress=under(progress, "alone"))
    joined = score_texts(lm, behind, ScoreConfig(methods=("answer_logp",), batch_size=batch_size,
                                                 max_length=max_length), progress=under(progress, "in context"))
    return np.array([joined[i].scores["answer_logp"] - alone[i].scores["loss"] for i in range(n)])


def _share_negative(deltas: np.ndarray, seed: int) -> tuple[float, tuple[float | None, float | None]]:
    ok = deltas[np.isfinite(deltas)]
    ci = stats.bootstrap_means((ok < 0).astype(np.float64)[None, :], lambda means: means[:, 0], seed=seed)
    return ci.value, (ci.low, ci.high)


def codec_test(lm: Any, samples: Sequence[Sample], reference: Sequence[Sample] | None = None, *, shots: int = 3,
               rendering: str = "auto", seed: int = 0, batch_size: int | str = "auto", max_length: int | None = None,
               progress: StageProgress | None = None) -> CodecResult:
    """CoDeC on `samples`, and on the clean `reference` set (each set's items the context of its own items)."""
    kwargs = dict(shots=shots, rendering=rendering, seed=seed, batch_size=batch_size, max_length=max_length)
    deltas = context_deltas(lm, samples, progress=progress, **kwargs)
    score, ci = _share_negative(deltas, seed)
    if not reference:
        return CodecResult(score, ci, tuple(deltas.tolist()), shots)
    ref = context_deltas(lm, reference, progress=progress, **kwargs)
    ref_score, ref_ci = _share_negative(ref, seed)
    bench_ok, ref_ok = deltas[np.isfinite(deltas)], ref[np.isfinite(ref)]
    # lower deltas on the benchmark: the set test of the negated deltas ("benchmark greater")
    p = stats.set_level_test(-bench_ok, -ref_ok, seed=seed).p_value if bench_ok.size and ref_ok.size else None
    return CodecResult(score, ci, tuple(deltas.tolist()), shots, ref_score, ref_ci, p, len(reference))
