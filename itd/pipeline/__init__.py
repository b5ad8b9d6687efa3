"""The pipeline: every stage in one run directory, its report, its exports, and the demo.

    run.py          PipelineConfig (each TOML table is a stage's config), the run directory, resume
    html_report.py  report.html with its plots
    export.py       the lm-evaluation-harness task export
    demo.py         generated benchmarks, planted leaks, the demo (`itd demo`)

`from itd.pipeline import Pipeline, PipelineConfig, load_config` reads as it always did; the names are imported
on first use, so importing `itd.pipeline.export` does not load the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "BenchmarkConfig",
    "ModelConfig",
    "ScanSection",
    "RewriteConfig",
    "ReportConfig",
    "PipelineConfig",
    "Pipeline",
    "RunResult",
    "load_config",
]

if TYPE_CHECKING:
    from itd.pipeline.run import (
        BenchmarkConfig,
        ModelConfig,
        Pipeline,
        PipelineConfig,
        ReportConfig,
        RewriteConfig,
        RunResult,
        ScanSection,
        load_config,
    )


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("itd.pipeline.run"), name)
    raise AttributeError(f"module 'itd.pipeline' has no attribute {name!r}")
