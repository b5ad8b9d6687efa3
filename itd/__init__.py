"""itd: Inference-Time Decontamination for evaluation benchmarks.

Library entry points: `load_benchmark`, `write_benchmark`, `scan`, `build_index`, `check` (corpus side);
`load_model`, `detect` (model side); `build_lab` (ground-truth twin models); `rewrite` (verified rewrites);
`evaluate`, `compare` (scores before and after); `Pipeline` (all of it, from a TOML config, in a run directory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from itd.moved import install as _install_moved_paths

_install_moved_paths()

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
    "Sample": "itd.core",
    "Source": "itd.core",
    "load_benchmark": "itd.core",
    "write_benchmark": "itd.core",
    "scan": "itd.corpus.scan",
    "ScanConfig": "itd.corpus.scan",
    "ScanReport": "itd.corpus.report",
    "build_index": "itd.corpus.index",
    "check": "itd.corpus.index",
    "load_model": "itd.probes.models",
    "detect": "itd.probes.detection",
    "DetectConfig": "itd.probes.detection",
    "DetectionReport": "itd.probes.detection",
    "build_lab": "itd.lab",
    "LabConfig": "itd.lab",
    "rewrite": "itd.rewriters.loop",
    "RewriteReport": "itd.rewriters.loop",
    "evaluate": "itd.evaluation",
    "compare": "itd.evaluation",
    "EvalConfig": "itd.evaluation",
    "EvalResult": "itd.evaluation",
    "Pipeline": "itd.pipeline.run",
    "PipelineConfig": "itd.pipeline.run",
    "InputError": "itd.core.errors",
}


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from itd.core import Sample, Source, load_benchmark, write_benchmark
    from itd.core.errors import InputError
    from itd.corpus.index import build_index, check
    from itd.corpus.report import ScanReport
    from itd.corpus.scan import ScanConfig, scan
    from itd.evaluation import EvalConfig, EvalResult, compare, evaluate
    from itd.lab import LabConfig, build_lab
    from itd.pipeline.run import Pipeline, PipelineConfig
    from itd.probes.detection import DetectConfig, DetectionReport, detect
    from itd.probes.models import load_model
    from itd.rewriters.loop import RewriteReport, rewrite


def __getattr__(name: str):
    # Lazy so that `import itd` (and the pre-commit check) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'itd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names and the lazily imported public API, so `dir(itd)`, `help(itd)` and completion list it."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
