"""Shared helpers of the benchmark scripts: data paths, corpus generation, timing and markdown tables.

Nothing here writes inside the repository: generated corpora go to a temp dir or `--workdir`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

# Default data location, relative to the project root (the parent of this directory).
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = os.path.relpath(ROOT.parent / "shared" / "data")  # "../shared/data" when run from the root


def data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=DEFAULT_DATA, help="Real data directory (gsm8k/, mmlu/). Default: ../shared/data")
    parser.add_argument("--workdir", default=None, help="Put generated files here instead of a temp dir (kept).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of generated corpora.")


@contextlib.contextmanager
def workdir(path: str | None, prefix: str) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def stage_log(prefix: str = "", steps: int = 4) -> Callable[[str, int, int], None]:
    """A `progress(stage, done, total)` callback for runs of hours whose stderr goes to a file (a progress bar
    there is one line at the end): a timestamped line on stderr when a stage starts, at each of `steps` equal
    parts of its total, and when it ends."""
    start: dict[str, float] = {}
    shown: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start.setdefault(stage, now)
        part = steps if total and done >= total else (done * steps // total if total else 0)
        if shown.get(stage) == part:
            return
        shown[stage] = part
        print(f"{time.strftime('%H:%M:%S')} {prefix}{stage}: {done}/{total} ({now - start[stage]:.0f} s)",
              file=sys.stderr, flush=True)

    return update


# ---- real data ----------------------------------------------------------------------------------------------
def gsm8k_records(data: str | Path, split: str) -> list[dict[str, str]]:
    with open(Path(data) / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mmlu_rows(data: str | Path, split: str) -> list[dict[str, str]]:
    """Rows of every `mmlu/<split>/*.csv` (header `question,choice0..3,answer`), sorted by file name."""
    rows = []
    for path in sorted((Path(data) / "mmlu" / split).glob("*.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def mmlu_text(row: dict[str, str], with_answer: bool = True) -> str:
    """An MMLU item rendered as question + one line per choice (+ the correct choice)."""
    choices = [row[f"choice{i}"] for i in range(4)]
    text = row["question"] + "\n" + "\n".join(choices)
    if with_answer:
        text += "\nAnswer: " + choices[int(row["answer"])]
    return text


def real_texts(data: str | Path) -> list[str]:
    """GSM8K train (question + worked solution) and MMLU dev + test items as texts."""
    out = [r["question"] + "\n" + r["answer"] for r in gsm8k_records(data, "train")]
    out += [mmlu_text(r) for split in ("dev", "test") for r in mmlu_rows(data, split)]
    return out


# ---- contamination-lab detections (bench_lab.py's dumps) ----------------------------------------------------
class DumpError(Exception):
    """A `bench_lab.py` dump or its lab that cannot be read: the message names the file."""


def load_lab_dump(path: Path) -> dict:
    """One twin's detection as `bench_lab.py` dumps it (`<benchmark>_r<r>_<twin>.jsonl`): item ids and renderings,
    probes, scores and p-values (items x probes), the control's p-values (NaN where a probe has none; None
    without a control), and its manifest's summary. DumpError when it cannot be read."""
    import numpy as np

    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        summary = json.loads(Path(f"{path}.manifest.json").read_text(encoding="utf-8"))["summary"]
        probes = list(rows[0]["p_values"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise DumpError(f"{path}: not a bench_lab.py detection dump with its manifest ({exc!r})") from None
    values = [[np.nan if r.get(m) is None else r[m] for m in probes] for r in rows]
    # the same probes under the reference model (the combination's negative control), where detect ran it
    control = np.array([[r.get("control_p_values", {}).get(m, np.nan) for m in probes] for r in rows], dtype=float)
    return {"ids": [r["id"] for r in rows], "renderings": [r.get("rendering") for r in rows], "probes": probes,
            "scores": np.array(values, dtype=float),
            "p": np.array([[r["p_values"].get(m, np.nan) for m in probes] for r in rows], dtype=float),
            "control": control if np.isfinite(control).any() else None,
            "summary": summary}


def twin_dumps(dirs: Sequence[Path]) -> list[Path]:
    """The contaminated twins' `bench_lab.py` dumps (`<benchmark>_r<r>_contaminated.jsonl`) under `dirs`,
    recursively, that have their clean twin's beside them."""
    return [dump for d in dirs for dump in sorted(d.rglob("*_contaminated.jsonl"))
            if dump.with_name(dump.name.replace("_contaminated", "_clean")).exists()]


def probe_columns(dump: dict) -> dict:
    """Each probe's scores of a `load_lab_dump` dump (higher = more likely leaked), by name; on a multiple-choice
    benchmark also each answer probe "within letter": -log10 of its p-values, which are calibrated within gold
    letters, as the flags and the combination rank items (its raw score mixes the letters' priors)."""
    import numpy as np

    from itd.probes.methods import PROBES

    lettered = any(str(r).startswith("options") for r in dump["renderings"])
    columns = {}
    for j, m in enumerate(dump["probes"]):
        columns[m] = dump["scores"][:, j]
        if lettered and PROBES.get(m).of_answer:
            p = np.where(np.isfinite(dump["scores"][:, j]), dump["p"][:, j], np.nan)
            columns[f"{m} (within letter)"] = -np.log10(np.clip(p, 1e-300, 1.0))
    return columns


def lab_cell(lab_dir: Path) -> tuple[tuple, int, set[str], set[str]]:
    """(benchmark, recipe, leak rate, r), the seed, and the leaked and unseen ids of the lab in `lab_dir`;
    DumpError when it is not a finished lab."""
    from itd.core.errors import InputError
    from itd.lab.result import lab_result, load_lab_manifest

    try:
        manifest = load_lab_manifest(lab_dir)
    except InputError as exc:
        raise DumpError(f"the dump's lab: {exc}") from None
    lab = lab_result(lab_dir, manifest)
    benchmark = lab_dir.name.rsplit("_r", 1)[0]
    key = (benchmark, manifest["recipe"], manifest["leak_rate"], manifest["repeats"])
    return key, manifest["seed"], set(lab.leaked), set(lab.unseen)


# ---- generated corpora ----------------------------------------------------------------------------------------
def filler_pool(rng: random.Random, n: int = 1500) -> list[str]:
    """Filler paragraphs (itd.pipeline.demo.filler_text) to draw documents from; generating is the slow part."""
    from itd.pipeline.demo import filler_text

    return [filler_text(rng, rng.randint(40, 250)) for _ in range(n)]


def write_corpus(
    path: Path,
    target_bytes: int,
    real: Sequence[str],
    rng: random.Random,
    planted: Sequence[str] = (),
    real_share: float = 0.5,
) -> dict[str, int]:
    """Write a JSONL corpus `{"text": ...}` of about `target_bytes`.

    Documents are either 1-6 real texts (GSM8K train / MMLU items, cycled in shuffled passes) joined by blank
    lines, or 2-12 filler paragraphs; about `real_share` of the documents are real. `planted` documents are
    inserted at random positions. Returns counts.
    """
    pool = filler_pool(rng)
    order = list(range(len(real)))
    rng.shuffle(order)
    cursor = 0
    plant_at = sorted(rng.random() for _ in planted)
    written = docs = 0
    pi = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes or pi < len(planted):
            frac = written / max(1, target_bytes)
            if pi < len(planted) and (plant_at[pi] <= frac or written >= target_bytes):
                text = planted[pi]
                pi += 1
            elif real and rng.random() < real_share:
                parts = []
                for _ in range(rng.randint(1, 6)):
                    if cursor == len(order):
                        rng.shuffle(order)
                        cursor = 0
                    parts.append(real[order[cursor]])
                    cursor += 1
                text = "\n\n".join(parts)
            else:
                text = "\n\n".join(rng.choice(pool) for _ in range(rng.randint(2, 12)))
            line = json.dumps({"id": docs, "text": text}) + "\n"
            f.write(line)
            written += len(line.encode("utf-8")) if not line.isascii() else len(line)
            docs += 1
    return {"bytes": path.stat().st_size, "documents": docs, "planted": len(planted)}


def planted_gsm8k_leaks(data: str | Path, rng: random.Random, per_variant: int) -> tuple[list[str], dict[int, str]]:
    """Leaked copies of GSM8K test items, `per_variant` of each `itd.pipeline.demo.VARIANTS` kind; (texts, item -> kind)."""
    from itd.pipeline.demo import VARIANTS, plant

    test = gsm8k_records(data, "test")
    order = list(range(len(test)))
    rng.shuffle(order)
    texts, truth = [], {}
    for k, kind in enumerate(VARIANTS):
        for j in order[k * per_variant : (k + 1) * per_variant]:
            texts.append(plant(kind, test[j]["question"], test[j]["answer"], rng))
            truth[j] = kind
    return texts, truth


# ---- timing and output ----------------------------------------------------------------------------------------
def warm_page_cache(path: str | Path) -> int:
    """Read a file once so later timed reads come from the page cache; returns its size in bytes."""
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            size += len(block)
    return size


def best_of(fn: Callable[[], object], reps: int) -> tuple[float, list[float], object]:
    """Run `fn` `reps` times; (best seconds, all seconds, last result)."""
    times = []
    result = None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:,.0f}"
            return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def machine() -> str:
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # absent off Linux
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{nproc} cores (nproc), {cpu}, Python {platform.python_version()}, {platform.system()} {platform.machine()}"


def code_version() -> str:
    """The itd commit measured, and whether itd/ had uncommitted changes (read-only git calls)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "itd"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + (" + uncommitted changes in itd/" if dirty else "")


def header(title: str, argv: Sequence[str] | None = None) -> None:
    argv = sys.argv if argv is None else argv
    print(f"## {title}\n")
    print(f"command: `python {' '.join(argv)}`  ")
    print(f"machine: {machine()}  ")
    print(f"itd: commit {code_version()}\n")


def profile_table(fn: Callable[[], object], top: int = 12) -> str:
    """cProfile one call of `fn`; the `top` functions by own time as a markdown table."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # own time of every function
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        where = func if file == "~" else f"{_short_path(file)}:{line}({func})"
        rows.append((where, ncalls, tottime, f"{tottime / total:.0%}", cumtime))
    return f"profiled total {total:.2f} s\n\n" + table(["function", "calls", "own s", "share", "cumulative s"], rows)


def _short_path(file: str) -> str:
    p = Path(file)
    for anchor in ("itd", "numpy", "datasketch", "json", "rapidfuzz"):
        if anchor in p.parts:
            return "/".join(p.parts[p.parts.index(anchor) :])
    return p.name
