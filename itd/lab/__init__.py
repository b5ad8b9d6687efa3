"""The contamination lab: paired twin language models that differ by the leaked benchmark items alone.

There are no pretrained weights to audit offline, so detection and decontamination are measured the way the
literature does it (ConStat, the BDC study, Inference-Time Decontamination, counterfactual memorisation): a
seeded subset of a benchmark is *leaked*, the rest stays *unseen*, and two models that differ only in that leak
are compared.

**Paired design.** A small GPT-2 (its own byte-level BPE) is first trained from scratch on clean in-domain text:
the *base*, which learns the skill. It is cached (`base_cache_dir`), keyed by a hash of everything that decides
it, so several twins, repeat counts or seeds on the same data train it once. Both twins then continue from the
base's weights *and* optimiser state over the same sequence of clean batches (`twin_steps` steps, same learning
rate schedule). Each step also has extra slots: the *contaminated* twin sees the leaked items there, on a seeded
schedule that shows every leaked item exactly `repeats` times; the *clean* twin sees a *placebo* set in the same
slots on the same schedule: as many items of the same distribution that are not benchmark items of the
experiment (held-out training problems), so that both twins get the same amount of extra in-domain training and
differ only in *which* items they saw repeatedly. With `repeats = 0` the two twins are bit-identical.

**Recipes.** `pretrain`: a leaked item is plain corpus text (its `itd.core.render` rendering), trained like the rest
of the corpus (one token-level mean over the clean and the extra tokens). `finetune`: a leaked item is the exact
prompt the evaluator builds for it (`itd.evaluation.build_prompt`) followed by the gold answer
(`itd.evaluation.gold_continuation`) and the end-of-text token, as in supervised fine-tuning on the test set
(the BDC study's 8 epochs are `repeats = 8`); the extra rows are their own stream (the clean mean plus the mean
over the extra rows' trained tokens), and by default (`loss_on = "auto"`) only the answer span is trained.

**Replicas.** `replicas = K` builds K twin pairs on one base, each leaking another seeded subset of the same
experiment items (evenly shifted windows of one seeded order), so that with K >= 1 / leak_rate every item is
leaked in some replicas and unseen in others: per-item effects are then paired, and intervals can resample
items and replicas together (`itd.evaluation.ground_truth`).

Layout of a lab directory (one replica; replica k >= 1 of several is a lab of the same layout in
``DIR/replica-k/``)::

    DIR/contaminated/   Hugging Face model + tokenizer (safetensors), trained with the leaked items; its
                        config.json names the prompt style to evaluate it with (``itd_prompt_style``)
    DIR/clean/          the clean twin, trained with the placebo items in the same slots
    DIR/corpus/         each twin's training documents as JSONL ``{"text": ...}`` (clean text once, extras r times)
    DIR/manifest.json   ground truth (``leaked`` / ``unseen`` / ``placebo`` ids, and ``near_leaked``: items
                        sharing a 13-word run with a leaked one, neither), recipe, repeats, seeds, the base's
                        hash, config, corpus sizes, losses, timings

The manifest is written last: a directory without one is an unfinished (or killed) build.

The package, one job a module (imports flow downwards; `build` uses the other four)::

    config.py       LabPreset, PRESETS, LabConfig: what to build, validated
    experiment.py   the leaked / unseen / placebo items of each replica (split_items, near_copy_runs), the exposure
                    schedule and each twin's training documents (build_corpus)
    training.py     tokenizer, GPT-2, optimiser, batches and steps; the cached base (base_cache_dir); the twins
    result.py       a finished lab: LabResult, load_lab, load_lab_manifest, held_out, write_experiment
    build.py        build_lab: the output directory, both twins of every replica, corpora and manifests
"""

from itd.lab.build import build_lab
from itd.lab.config import PRESETS, RECIPES, LabConfig, LabPreset
from itd.lab.experiment import LabSplit, build_corpus, exposure_schedule, near_copy_runs, split_items
from itd.lab.result import LabResult, held_out, load_lab, load_lab_manifest, write_experiment
from itd.lab.training import base_cache_dir

__all__ = [
    "LabPreset",
    "PRESETS",
    "RECIPES",
    "LabConfig",
    "LabSplit",
    "LabResult",
    "split_items",
    "exposure_schedule",
    "near_copy_runs",
    "build_corpus",
    "build_lab",
    "base_cache_dir",
    "held_out",
    "write_experiment",
    "load_lab_manifest",
    "load_lab",
]
