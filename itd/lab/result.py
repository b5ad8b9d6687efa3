"""A finished lab directory: `LabResult`, reading a lab back from its manifest (`load_lab`, `load_lab_manifest`),
the items neither twin saw (`held_out`), and the experiment written out as a benchmark (`write_experiment`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itd.core import Sample
from itd.core.errors import InputError
from itd.core.io import write_json
from itd.core.render import render
from itd.lab.experiment import near_copy_runs

MODELS = ("contaminated", "clean")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class LabResult:
    """A built lab replica: its directory, the two model directories, the ground truth (with the items set apart
    as `near_leaked`), the training loss curves (base and twins), the base's cache key, and the directories of
    every replica of the build."""

    out: Path
    contaminated: Path
    clean: Path
    manifest: Path
    leaked: tuple[str, ...]
    unseen: tuple[str, ...]
    losses: dict[str, list[float]]
    seconds: float
    preset: str
    placebo: tuple[str, ...] = ()
    replica: int = 0
    replicas: tuple[Path, ...] = ()
    base: str = ""
    near_leaked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "contaminated": str(self.contaminated),
            "clean": str(self.clean),
            "manifest": str(self.manifest),
            "preset": self.preset,
            "leaked": len(self.leaked),
            "unseen": len(self.unseen),
            "placebo": len(self.placebo),
            "near_leaked": len(self.near_leaked),
            "replica": self.replica,
            "replicas": [str(p) for p in self.replicas],
            "base": self.base,
            "final_loss": {name: curve[-1] if curve else None for name, curve in self.losses.items()},
            "seconds": round(self.seconds, 1),
        }


def lab_result(path: Path, manifest: Mapping[str, Any]) -> LabResult:
    """The `LabResult` of the lab replica in directory `path`, read from its `manifest`."""
    training = manifest.get("training", {})
    dirs = manifest.get("replica_dirs") or ["."]
    return LabResult(
        out=path,
        contaminated=path / "contaminated",
        clean=path / "clean",
        manifest=path / MANIFEST,
        leaked=tuple(manifest["leaked"]),
        unseen=tuple(manifest["unseen"]),
        losses={name: list(training.get(name, {}).get("loss_curve", [])) for name in ("base", *MODELS)},
        seconds=float(manifest.get("wall_seconds", 0.0)),
        preset=str(manifest.get("preset", "")),
        placebo=tuple(manifest.get("placebo") or ()),
        replica=int(manifest.get("replica") or 0),
        replicas=tuple(path / d if d != "." else path for d in dirs),
        base=str((manifest.get("base") or {}).get("key", "")),
        near_leaked=tuple(manifest.get("near_leaked") or ()),
    )


def load_lab_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the lab in directory `path`; InputError when it is missing, unfinished or not a lab's."""
    path = Path(path)
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("not a finished lab: no manifest.json (the build was interrupted, or this is not a lab)", path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the lab manifest: {exc}", file) from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "itd-lab":
        raise InputError("not a lab manifest (no \"kind\": \"itd-lab\")", file)
    for key in ("leaked", "unseen"):
        ids = manifest.get(key)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"the lab manifest's {key!r} must be a list of sample ids", file)
    for name in MODELS:
        if not (path / name / "model.safetensors").is_file():
            raise InputError(f"the lab's {name} model is missing ({name}/model.safetensors)", path)
    return manifest


def load_lab(path: str | os.PathLike) -> LabResult:
    """A finished lab directory (one replica) as a `LabResult` (from its manifest)."""
    path = Path(path)
    return lab_result(path, load_lab_manifest(path))


def held_out(lab: LabResult, benchmark: Sequence[Sample]) -> list[Sample]:
    """A valid clean reference set for calibrating the probes on the lab's models: the reserved reference items
    when the lab was built with `LabConfig.reference_items` (drawn with the experiment, kept from every corpus:
    exchangeable with the unseen items by construction); else the items of `benchmark` that neither twin saw:
    not in the experiment, not a placebo item, and sharing no run of 13 words with either twin's training corpus
    (`near_copy_runs`).

    The lab keeps near copies of its experiment's items out of the clean text; a reference item with a near copy
    in it (MMLU items that share a passage, about 10% of MMLU's held-out items) would be more familiar to both
    twins than an unseen item. Leaving those out still leaves out more of the items that share text with others
    than the experiment does, so reserve the reference where that matters."""
    manifest = load_lab_manifest(lab.out)
    if manifest.get("reference"):
        reserved = set(manifest["reference"])
        return [s for s in benchmark if s.id in reserved]
    rendering = manifest.get("config", {}).get("rendering", "auto")
    trained: set[str] = set()
    for name in MODELS:
        with open(lab.out / "corpus" / f"{name}.jsonl", encoding="utf-8") as f:
            trained |= {json.loads(line)["text"] for line in f}
    runs = set().union(*(near_copy_runs(text) for text in trained))
    excluded = {*lab.leaked, *lab.unseen, *lab.placebo, *lab.near_leaked}
    return [s for s in benchmark if s.id not in excluded and (text := render(s, rendering)) not in trained
            and runs.isdisjoint(near_copy_runs(text))]


def write_experiment(lab: LabResult, benchmark: Sequence[Sample], out: str | os.PathLike, *,
                     reference: int = 0) -> dict[str, Path]:
    """Write the lab's experiment items (leaked + unseen) as a benchmark in their source layout, `reference`
    held-out items (`held_out`) as a clean reference set, and `truth.json` with the leaked and unseen ids as
    the written files number them. Returns the paths under the keys "benchmark", "reference" and "truth"."""
    from itd.core import load_benchmark, write_benchmark

    out = Path(out)
    chosen = set(lab.leaked) | set(lab.unseen)
    sets = {"benchmark": [s for s in benchmark if s.id in chosen]}
    if reference:
        sets["reference"] = held_out(lab, benchmark)[:reference]
    paths: dict[str, Path] = {}
    written: list[Sample] = []
    for name, samples in sets.items():
        if not samples:
            raise InputError(f"no {name} items to write; the benchmark has too few items beyond the experiment")
        is_dir = any(s.source is not None and s.source.file != samples[0].source.file for s in samples)
        target = out / name if is_dir else out / f"{name}{Path(samples[0].source.file).suffix if samples[0].source else '.jsonl'}"
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        write_benchmark(samples, target)
        paths[name] = target
        if name == "benchmark":
            written = load_benchmark(target)
    text_id = {render(s, "question"): s.id for s in written}
    old_text = {s.id: render(s, "question") for s in sets["benchmark"]}
    truth = {key: [text_id[old_text[i]] for i in ids] for key, ids in (("leaked", lab.leaked), ("unseen", lab.unseen))}
    paths["truth"] = out / "truth.json"
    write_json(paths["truth"], truth)
    return paths
