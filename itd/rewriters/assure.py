"""The assurance stage (ITD's third step): re-run the detectors that flagged an item on its rewrite.

A rewrite that a detector still flags is sent back for another round. What this can and cannot show: passing
means the *tokens* of the rewrite no longer look memorised to these detectors. A token-level probe is easy to
pass (new wording is enough); whether the model still knows the item's answer from memory is measured only by
the evaluation step, on the rewritten set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from itd.core import Sample
from itd.core.errors import InputError

if TYPE_CHECKING:
    from itd.probes.detection import DetectConfig
    from itd.probes.models import ModelRef

__all__ = ["Assurance", "ModelAssurance", "CorpusAssurance", "build_assurance"]


class Assurance(Protocol):
    """A detector re-run on rewrites: `still_flagged` maps the id of each rewrite it still flags to why.

    `kind` is what the rewriter kept (`itd.rewriters.verify.KINDS`); a detector may judge a rewrite that keeps
    the wording by design ("values") by other evidence than one that changes it."""

    name: str

    def still_flagged(self, samples: Sequence[Sample], kind: str = "paraphrase") -> dict[str, str]: ...


class ModelAssurance:
    """Model probes with the model and calibration that flagged the items.

    With a reference set, a rewrite is still flagged when its decision p-value against the reference (scored
    once) is rejected by Benjamini-Hochberg at `config.fdr` among the rewrites of the round; without one, when its
    decision score exceeds `config.threshold`. The decision p-value is the decision probe's, or for "combined" the
    Cauchy combination of the combined probes' with one share per kind of evidence (`evidence_weights`: a round's
    rewrites are too few to fit weights on, as detection does).
    """

    name = "model"

    def __init__(self, model: ModelRef, reference: Sequence[Sample] | None = None, config: DetectConfig | None = None,
                 *, reference_model: ModelRef | None = None):
        """`model`: the evaluated model, loaded (`itd.probes.models.ScoringModel`) or a name/path to load; `reference`:
        clean items for p-values, or `config.threshold` without them; `reference_model`: the reference-model
        probes' model, when `config.methods` has any."""
        from itd.probes.detection import COMBINED, DetectConfig, check_reference_model
        from itd.probes.models import resolve_model

        self.config = config or DetectConfig()
        if not reference and self.config.threshold is None:
            raise InputError("model assurance needs a clean reference set (--reference-set) or a --threshold")
        check_reference_model(self.config.methods, reference_model)
        self.lm = resolve_model(model)
        self.reference_lm = None if reference_model is None else resolve_model(reference_model)
        self.reference = list(reference or ())
        combined = self.config.decision == COMBINED
        self._probes = self.config.combine if combined else (self.config.decision,)
        self._ref: dict[str, np.ndarray] | None = None

    def _scores(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        """The decision probes' scores of `samples` (NaN where a probe does not apply)."""
        from itd.probes.detection import score_samples

        scored = score_samples(self.lm, samples, self.config, self.reference_lm, stage="assurance")
        return {m: np.array([s.scores[m] for s in scored], dtype=float) for m in self._probes}

    def still_flagged(self, samples: Sequence[Sample], kind: str = "paraphrase") -> dict[str, str]:
        """Ids of the rewrites the probe still flags, with the score and p-value behind it (any `kind`)."""
        from itd.core import stats
        from itd.probes.detection import probe_pvalues, evidence_weights

        if not samples:
            return {}
        scores = self._scores(samples)
        m = self.config.decision
        if not self.reference:
            return {
                s.id: f"{m} {v:.4g} > threshold {self.config.threshold}"
                for s, v in zip(samples, scores[m]) if np.isfinite(v) and v > self.config.threshold
            }
        if self._ref is None:
            self._ref = self._scores(self.reference)
        pvalues = np.column_stack([probe_pvalues(probe, scores[probe], self._ref[probe], samples, self.reference,
                                                 self.config) for probe in self._probes])
        if len(self._probes) == 1:
            p = pvalues[:, 0]
        else:
            p = stats.cauchy_combination(pvalues, evidence_weights(self._probes))
        rejected, q = stats.benjamini_hochberg(p, self.config.fdr)
        return {
            s.id: f"{m} p={pv:.3g}, q={qv:.3g} <= fdr {self.config.fdr}"
            for s, r, pv, qv in zip(samples, rejected.tolist(), p.tolist(), q.tolist()) if r
        }


class CorpusAssurance:
    """A corpus scan (n-gram and/or MinHash) of the rewrites against the training corpus.

    A numeric re-instantiation ("values") keeps the wording on purpose, and the scan finds the original's
    wording with any numbers; such a rewrite is still leaked only when a verbatim match in the corpus also
    states every number of the rewritten question. An option permutation ("order") keeps the question and the
    options on purpose too: what it removes is a memorised answer position, so it is still leaked only when the
    corpus states the rewrite's own key after it (`input_and_label_contaminated`)."""

    name = "corpus"

    def __init__(self, corpus: Sequence[str | os.PathLike], config=None):
        from itd.corpus.scan import ScanConfig

        if not corpus:
            raise InputError("corpus assurance needs at least one corpus path")
        self.corpus = list(corpus)
        self.config = config or ScanConfig()

    def still_flagged(self, samples: Sequence[Sample], kind: str = "paraphrase") -> dict[str, str]:
        """Ids of the rewrites still found in the corpus, with the label and the evidence that found them."""
        from itd.core.numbers import numbers_in
        from itd.corpus.scan import scan

        if not samples:
            return {}
        found = {}
        for r in scan(samples, self.corpus, self.config).contaminated:
            if kind == "order":
                if r.label == "input_and_label_contaminated":
                    found[r.sample.id] = f"{r.label}: the corpus states the new key ({', '.join(r.detected_by)})"
                continue
            if kind != "values":
                found[r.sample.id] = f"{r.label} ({', '.join(r.detected_by)})"
                continue
            numbers = numbers_in(r.sample.question)
            same = [e for e in r.evidence if e.match == "raw" and numbers <= numbers_in(e.text)]
            if same:
                found[r.sample.id] = f"verbatim with the new numbers in {same[0].doc}"
        return found


def build_assurance(*, model: ModelRef | None = None, reference: Sequence[Sample] | None = None,
                    detect: DetectConfig | None = None, reference_model: ModelRef | None = None,
                    corpus: Sequence[str | os.PathLike] = (), scan=None) -> list[Assurance]:
    """The assurance detectors a rewrite run uses: model probes when `model` is given (with `reference` or
    `detect.threshold`, and `reference_model` for the reference-model probes), a corpus scan when `corpus` is
    (with `scan`, an `itd.corpus.scan.ScanConfig`)."""
    out: list[Assurance] = []
    if model is not None:
        out.append(ModelAssurance(model, reference, detect, reference_model=reference_model))
    if corpus:
        out.append(CorpusAssurance(list(corpus), scan))
    return out

