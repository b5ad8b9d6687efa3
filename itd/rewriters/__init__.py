"""Rewriters: turn a leaked item into a variant that tests the same skill (see `itd.rewriters.loop` for the loop).

Registered: `numeric` (GSM8K numeric re-instantiation), `permute` (MCQ option shuffle), `llm` (paraphrase over
an OpenAI-compatible endpoint).
"""

from itd.rewriters import llm, numeric, permute  # noqa: F401  (registers the rewriters)
from itd.rewriters.base import REWRITERS, Candidate, NotRewritable, Rewriter

__all__ = ["REWRITERS", "Candidate", "NotRewritable", "Rewriter"]
