"""The contamination lab (being split into modules: see the next commit)."""

from itd.lab.training import (PRESETS, RECIPES, LabConfig, LabPreset, LabResult, LabSplit, base_cache_dir, build_corpus,
                              build_lab, exposure_schedule, held_out, load_lab, load_lab_manifest, near_copy_runs,
                              split_items, write_experiment)
from itd.lab.training import __all__ as __all__
