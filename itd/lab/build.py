"""Building a lab: the output directory made ready, the base taken from the cache or trained, both twins of every
replica trained and installed with their corpora, and each replica's manifest, written last."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from itd.core import Sample
from itd.core.errors import InputError, quiet_transformers, require
from itd.core.io import atomic_write, build_manifest, write_json
from itd.core.progress import StageProgress
from itd.core.render import resolve_rendering
from itd.lab.config import LabConfig, LabPreset
from itd.lab.experiment import LabSplit, build_corpus, exposure_schedule, extra_texts, split_items
from itd.lab.result import MANIFEST, MODELS, LabResult, lab_result
from itd.lab.training import (
    EOS_TOKEN,
    TMP_PREFIX,
    base_cache_dir,
    cached_base,
    portable_tokenizer_class,
    train_twin,
)
from itd.probes.models import cpu_thread_budget, resolve_device

REPLICA_PREFIX = "replica-"
_LAB_ENTRIES = frozenset({MANIFEST, "corpus", *MODELS})


# ---------------------------------------------------------------------------------------------------------------------
# Output directory


def _is_replica_dir(name: str) -> bool:
    return name.startswith(REPLICA_PREFIX) and name[len(REPLICA_PREFIX):].isdigit()


def _prepare_out(out: Path, replicas: int = 1) -> None:
    """Make `out` ready for a build: new, empty, or an earlier lab (whose manifest goes first, so that an
    interrupted rebuild never looks complete; replica directories beyond `replicas` go too). Refuses a
    directory holding anything else."""
    if out.exists() and not out.is_dir():
        raise InputError("the lab output must be a directory, but this is a file", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = list(out.iterdir())
    except OSError as exc:
        raise InputError(f"cannot create the lab directory: {exc.strerror or exc}", out) from None
    foreign = sorted(p.name for p in entries
                     if p.name not in _LAB_ENTRIES and not p.name.startswith(TMP_PREFIX) and not _is_replica_dir(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"the directory is not empty and not a lab (it holds {shown}); choose another --out", out)
    (out / MANIFEST).unlink(missing_ok=True)
    for p in entries:
        if p.name.startswith(TMP_PREFIX):  # left behind by a killed build
            shutil.rmtree(p, ignore_errors=True)
        elif _is_replica_dir(p.name):
            (p / MANIFEST).unlink(missing_ok=True)
            if int(p.name[len(REPLICA_PREFIX):]) >= replicas:
                shutil.rmtree(p, ignore_errors=True)


def _install_dir(out: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write a directory into a temp dir beside its target, then swap it in with renames."""
    tmp = out / f"{TMP_PREFIX}{name}-{os.getpid()}-{os.urandom(4).hex()}"
    target = out / name
    tmp.mkdir()
    try:
        write(tmp)
        if target.exists():
            old = out / f"{TMP_PREFIX}old-{name}-{os.urandom(4).hex()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_corpus(docs: Sequence[str], path: Path) -> None:
    with atomic_write(path) as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


def _input_files(samples: Sequence[Sample]) -> list[str]:
    files = {s.source.file for s in samples if s.source is not None}
    return sorted(f for f in files if Path(f).is_file())


# ---------------------------------------------------------------------------------------------------------------------
# The build


def build_lab(
    benchmark: Sequence[Sample],
    train: Sequence[Sample] | None,
    out: str | os.PathLike,
    config: LabConfig,
    progress: StageProgress | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> LabResult:
    """Build a contamination lab in directory `out`: split, base (trained, or taken from the cache), both twins
    of every replica, corpora, manifests.

    `train` is the clean in-domain text (e.g. the GSM8K train split; MMLU dev plus other subjects) and the pool
    of the placebo items; when None, the benchmark items not drawn for the experiment serve as both.
    `progress(stage, done, total)` is called as the stages ("tokenizer" and "base" when the base is trained,
    then the steps of "contaminated" and "clean", with " (replica k)" when there are several) advance.
    `cache_dir`: where bases are cached (default `base_cache_dir()`). `out` must be new, empty or an earlier
    lab. Returns replica 0 (its `replicas` lists every replica's directory).
    """
    torch = require("torch", "probes", "The contamination lab")
    device = torch.device(resolve_device(torch, config.device))
    # on a CPU shared with other busy processes: as many threads as cores are free (`itd.probes.models.cpu_threads`)
    with cpu_thread_budget(torch) if device.type == "cpu" else contextlib.nullcontext():
        return _build(benchmark, train, Path(out), config, device, progress, cache_dir)


def _build(benchmark: Sequence[Sample], train: Sequence[Sample] | None, out: Path, config: LabConfig, device: Any,
           progress: StageProgress | None, cache_dir: str | os.PathLike | None) -> LabResult:
    torch = require("torch", "probes", "The contamination lab")
    transformers = require("transformers", "probes", "The contamination lab")
    tokenizers = require("tokenizers", "probes", "The contamination lab")
    start = time.perf_counter()
    preset = config.resolved_preset()
    splits = [split_items(benchmark, train, config, k) for k in range(config.replicas)]
    _prepare_out(out, config.replicas)
    base_docs = build_corpus(splits[0], contaminated=False, repeats=0, seed=config.seed, rendering=config.rendering)
    cache = Path(cache_dir) if cache_dir is not None else base_cache_dir()
    base_path, base_key, base_record, trained = cached_base(base_docs, preset, config.seed, device, cache, progress)
    dirs = [out if k == 0 else out / f"{REPLICA_PREFIX}{k}" for k in range(config.replicas)]
    base = {"key": base_key, "trained_in_this_build": trained, "cache": str(base_path),
            **{k: v for k, v in base_record.items() if k != "key"}}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__}
    results: dict[int, LabResult] = {}
    for k in [*range(1, config.replicas), 0]:  # replica 0's manifest, the build's, is written last
        if k:
            _prepare_out(dirs[k])
        results[k] = _build_replica(splits[k], config, preset, device, dirs[k], base_path, base, base_docs,
                                    versions, progress, start, [d.relative_to(out).as_posix() or "." for d in dirs])
    return dataclasses.replace(results[0], replicas=tuple(dirs), seconds=time.perf_counter() - start)


def _build_replica(split: LabSplit, config: LabConfig, preset: LabPreset, device: Any, out: Path, base_path: Path,
                   base: dict[str, Any], base_docs: list[str], versions: dict[str, str], progress: StageProgress | None,
                   start: float, replica_dirs: list[str]) -> LabResult:
    """Both twins of one replica, its corpora and its manifest."""
    torch = require("torch", "probes", "The contamination lab")
    k = split.replica
    schedule_seed = [config.seed, 4, k]
    schedule = exposure_schedule(len(split.leaked), config.repeats, preset.twin_steps, schedule_seed)
    corpora = {name: build_corpus(split, contaminated=name == "contaminated", repeats=config.repeats,
                                  seed=config.seed, rendering=config.rendering, config=config) for name in MODELS}

    def save_corpora(tmp: Path) -> None:
        for name in MODELS:
            _write_corpus(corpora[name], tmp / f"{name}.jsonl")

    _install_dir(out, "corpus", save_corpora)
    records: dict[str, dict[str, Any]] = {"base": base}
    n_params = 0
    for name in MODELS:
        texts = extra_texts(split.leaked if name == "contaminated" else split.placebo, config)
        stage = name if config.replicas == 1 else f"{name} (replica {k})"
        model, tokenizer, records[name] = train_twin(base_path, preset, config, device, base_docs, texts, schedule,
                                                      progress, stage)
        n_params = sum(p.numel() for p in model.parameters())

        def save(tmp: Path, model: Any = model, tokenizer: Any = tokenizer) -> None:
            # the style the evaluator's "auto" uses for this model, kept in its own config.json so that it
            # travels with the model directory
            from itd.evaluation import MODEL_STYLE_KEY

            setattr(model.config, MODEL_STYLE_KEY, config.eval_prompt_style)
            with quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            portable_tokenizer_class(tmp / "tokenizer_config.json")

        _install_dir(out, name, save)
        del model

    chosen = (*split.leaked, *split.unseen, *split.near_leaked, *split.reference)
    manifest = build_manifest(
        command="lab",
        config=config.to_dict(),
        inputs=_input_files([*chosen, *split.train, *split.placebo]),
        models=list(MODELS),
    )
    per_step = [len(items) for items in schedule]
    manifest.update(
        {
            "kind": "itd-lab",
            "preset": preset.name,
            "seed": config.seed,
            "leak_rate": config.leak_rate,
            "repeats": config.repeats,
            "recipe": config.recipe,
            "loss_on": config.trained_span,
            "prompt_style": config.eval_prompt_style,
            "replica": k,
            "replicas": config.replicas,
            "replica_dirs": replica_dirs if k == 0 else None,
            "rendering": {
                "mode": config.rendering,
                "resolved": sorted({resolve_rendering(s, config.rendering) for s in (*chosen, *split.train)}),
                "separator": EOS_TOKEN,
            },
            "leaked": split.leaked_ids,
            "unseen": split.unseen_ids,
            "placebo": split.placebo_ids,
            "near_leaked": split.near_leaked_ids,
            "reference": split.reference_ids,
            "schedule": {
                "steps": preset.twin_steps,
                "exposures_per_item": config.repeats,
                "seeds": {"experiment": [config.seed, 0], "placebo_and_train": [config.seed, 1],
                          "schedule": schedule_seed, "clean_batches": [config.seed, 5], "weights": config.seed},
                "extra_items_per_step": [min(per_step), max(per_step)],
            },
            "base": {"key": base["key"], "trained_in_this_build": base["trained_in_this_build"],
                     "cache": base["cache"]},
            "corpus": {
                "train_items": len(split.train),
                "leaked_items": len(split.leaked),
                "unseen_items": len(split.unseen),
                "placebo_items": len(split.placebo),
                "near_leaked_items": len(split.near_leaked),
                "reference_items": len(split.reference),
                "benchmark_duplicates_skipped": split.duplicates,
                "train_items_dropped_as_experiment_items": split.dropped_train,
                "documents": {name: len(corpora[name]) for name in MODELS},
                "files": {name: f"corpus/{name}.jsonl" for name in MODELS},
            },
            "tokenizer": {
                "type": "byte-level BPE",
                "trained_on": "the base's clean text",
                "vocab_size": len(tokenizer),
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "pad_token": tokenizer.pad_token,
                "adds_bos": True,
            },
            "model": {"type": "gpt2", "parameters": int(n_params), "n_positions": preset.seq_len},
            "training": records,
            "device": str(device),
            "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
            "threads": torch.get_num_threads(),
            "versions": versions,
            "wall_seconds": round(time.perf_counter() - start, 2),
        }
    )
    write_json(out / MANIFEST, manifest)
    return lab_result(out, manifest)
