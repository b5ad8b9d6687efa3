"""itd: Inference-Time Decontamination for evaluation benchmarks.

Library entry points: `load_benchmark`, `write_benchmark`, `scan`, `build_index`, `check` (corpus side);
`load_model`, `detect` (model side); `build_lab` (ground-truth twin models); `rewrite` (verified rewrites);
`evaluate`, `compare` (scores before and after); `Pipeline` (all of it, from a TOML config, in a run directory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Sample",
    "Source",
    "load_benchmark",
    "write_benchmark",
    "scan",
    "ScanConfig",
    "ScanReport",
    "build_index",
    "check",
    "load_model",
    "detect",
    "DetectConfig",
    "DetectionReport",
    "build_lab",
    "LabConfig",
    "rewrite",
    "RewriteReport",
    "evaluate",
    "compare",
    "EvalConfig",
    "EvalResult",
    "Pipeline",
    "PipelineConfig",
    "InputError",
]

_LAZY = {
    "Sample": "itd.data",
    "Source": "itd.data",
    "load_benchmark": "itd.data",
    "write_benchmark": "itd.data",
    "scan": "itd.scan",
    "ScanConfig": "itd.scan",
    "ScanReport": "itd.report",
    "build_index": "itd.index",
    "check": "itd.index",
    "load_model": "itd.models",
    "detect": "itd.detection",
    "DetectConfig": "itd.detection",
    "DetectionReport": "itd.detection",
    "build_lab": "itd.lab",
    "LabConfig": "itd.lab",
    "rewrite": "itd.rewriting",
    "RewriteReport": "itd.rewriting",
    "evaluate": "itd.evaluation",
    "compare": "itd.evaluation",
    "EvalConfig": "itd.evaluation",
    "EvalResult": "itd.evaluation",
    "Pipeline": "itd.pipeline",
    "PipelineConfig": "itd.pipeline",
    "InputError": "itd.errors",
}


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from itd.data import Sample, Source, load_benchmark, write_benchmark
    from itd.detection import DetectConfig, DetectionReport, detect
    from itd.errors import InputError
    from itd.evaluation import EvalConfig, EvalResult, compare, evaluate
    from itd.index import build_index, check
    from itd.lab import LabConfig, build_lab
    from itd.models import load_model
    from itd.pipeline import Pipeline, PipelineConfig
    from itd.report import ScanReport
    from itd.rewriting import RewriteReport, rewrite
    from itd.scan import ScanConfig, scan


def __getattr__(name: str):
    # Lazy so that `import itd` (and the pre-commit check) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'itd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names and the lazily imported public API, so `dir(itd)`, `help(itd)` and completion list it."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
