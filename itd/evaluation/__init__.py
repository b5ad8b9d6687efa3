"""Evaluation (being split into modules by stage; this step only moves the file so that its history follows)."""

from itd.evaluation.compare import *  # noqa: F403
from itd.evaluation.compare import __all__, fewshot_pool  # noqa: F401
