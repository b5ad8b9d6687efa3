"""Crash sweep: `kill -9` at random moments of commands that write what a user keeps; is what is left whole?

Each fault class runs its command to completion once (the references, and the duration T), then `--cases` times
starts it over the *old* output and kills it with SIGKILL after a random delay: every other case in
[0.05 T, 1.1 T], the others in [0.8 T, 1.05 T], near the end where outputs are written and switched in (delays
past T let some runs finish). T follows the machine's load: a run that finishes before its kill sets T to the
time it took. A case is handled when what is on disk afterwards is entirely the old output or
entirely the new one (files that belong together from the same run), or, for `run`, when running the same
command again (the resume) gives files byte-identical to an uninterrupted run.

* `scan --out`: the per-item report and its manifest (the manifest's summary must be the report's).
* `index build` replacing an index: the index opens (`NGramIndex`) and holds exactly the old or the new corpus's
  n-grams.
* `rewrite --out` (numeric, GSM8K slice; old = seed 0, new = seed 1): the rewritten set, its manifest, the log
  and the log's manifest all from one run.
* `run` (scan + numeric rewrite, no model): killed, then resumed; the resumed results (items, summary, scan,
  rewrite log, decontaminated set, lm-eval export) byte-identical to the uninterrupted run.

Manifests carry the time they were written and the run's speed, so they are compared without those fields
(`created`, `seconds`, `mb_per_s`, `worker_peak_rss_mb`); the lm-eval task file names its own run directory, which
is compared as a placeholder.

    python benchmarks/bench_crash.py --cases 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CLASSES = ("scan", "index", "rewrite", "run")


def itd(*args: str, cwd: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "itd.cli.commands", *args]


def run_done(cmd: list[str], cwd: Path) -> float:
    """Run `cmd` to completion (exit 0 or 1); its duration in seconds."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return time.perf_counter() - t0


def kill_after(cmd: list[str], cwd: Path, delay: float) -> float | None:
    """Start `cmd`, SIGKILL it after `delay` s; None if it was killed, else the seconds it took to finish."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


VOLATILE = {"created", "seconds", "mb_per_s", "worker_peak_rss_mb"}  # when and how fast, not what was written


def _stable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def manifest_body(path: Path) -> dict | None:
    """A manifest without the time it was written and how long the work took."""
    if not path.is_file():
        return None
    return _stable(json.loads(path.read_text("utf-8")))


def snapshot(files: dict[str, Path]) -> dict[str, object]:
    return {k: (manifest_body(p) if k.endswith("manifest") else read(p)) for k, p in files.items()}


def which(state: dict[str, object], versions: dict[str, dict[str, object]]) -> str | None:
    """The name of the version `state` equals as a whole, else None (a mix, or a torn file)."""
    return next((name for name, ref in versions.items() if state == ref), None)


# ---- the fault classes -----------------------------------------------------------------------------------------
class Case:
    """One fault class: `setup` makes the inputs and the references, `prepare` puts the old output in place,
    `command` is what gets killed, `judge` names the state left on disk ("old", "new", ...) or None."""

    name = ""

    def __init__(self, wd: Path, data: Path):
        self.wd = wd / self.name
        self.wd.mkdir(parents=True, exist_ok=True)
        self.data = data

    def setup(self) -> None: ...
    def prepare(self) -> None: ...
    def command(self) -> list[str]: ...
    def judge(self, killed: bool) -> str | None: ...


class ScanCase(Case):
    name = "scan"

    def setup(self) -> None:
        test = (self.data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
        (self.wd / "old.jsonl").write_text("\n".join(test[:150]) + "\n", encoding="utf-8")
        (self.wd / "new.jsonl").write_text("\n".join(test[150:300]) + "\n", encoding="utf-8")
        write_corpus(self.wd / "corpus.jsonl", self.data, [test[i] for i in (5, 40, 170, 260)])
        self.out = self.wd / "report.jsonl"
        self.files = {"report": self.out, "manifest": self.out.with_name(self.out.name + ".manifest.json")}
        self.versions = {}
        for version in ("old", "new"):
            self._scan(version)
            self.versions[version] = snapshot(self.files)
        self.duration = run_done(self._cmd("new"), self.wd)

    def _cmd(self, version: str) -> list[str]:
        return itd("scan", f"{version}.jsonl", "-c", "corpus.jsonl", "--detector", "ngram,minhash", "-o", self.out.name, "-q")

    def _scan(self, version: str) -> None:
        run_done(self._cmd(version), self.wd)

    def prepare(self) -> None:
        self._scan("old")

    def command(self) -> list[str]:
        return self._cmd("new")

    def judge(self, killed: bool) -> str | None:
        return which(snapshot(self.files), self.versions)


class IndexCase(Case):
    name = "index"

    def setup(self) -> None:
        train = (self.data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()
        as_text = [json.dumps({"text": (r := json.loads(x))["question"] + "\n" + r["answer"]}) for x in train]
        (self.wd / "old.jsonl").write_text("\n".join(as_text[:3000]) + "\n", encoding="utf-8")
        (self.wd / "new.jsonl").write_text("\n".join(as_text[3000:7000]) + "\n", encoding="utf-8")
        self.out = self.wd / "index"
        for version in ("old", "new"):
            run_done(itd("index", "build", "-c", f"{version}.jsonl", "-o", f"ref_{version}", "-q"), self.wd)
        self.pristine = self.wd / "ref_old"
        shutil.rmtree(self.out, ignore_errors=True)
        shutil.copytree(self.pristine, self.out)
        self.duration = run_done(self.command(), self.wd)

    def prepare(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        shutil.copytree(self.pristine, self.out)

    def command(self) -> list[str]:
        return itd("index", "build", "-c", "new.jsonl", "-o", self.out.name, "-q")

    def judge(self, killed: bool) -> str | None:
        from itd.core.errors import InputError
        from itd.corpus.index import NGramIndex

        try:
            got = NGramIndex(self.out)
        except InputError:
            return None
        keys = [(p, n) for p in ("raw", "numnorm") for n in sorted({got.n, got.n_short})]
        for version in ("old", "new"):
            ref = NGramIndex(self.wd / f"ref_{version}")
            if got.meta["documents"] == ref.meta["documents"] and all(
                    (got.array(*k) == ref.array(*k)).all() if got.array(*k).shape == ref.array(*k).shape else False
                    for k in keys):
                return version
        return None


class RewriteCase(Case):
    name = "rewrite"

    def setup(self) -> None:
        test = (self.data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
        (self.wd / "slice.jsonl").write_text("\n".join(test[:300]) + "\n", encoding="utf-8")
        self.out = self.wd / "rewritten.jsonl"
        log = self.out.with_name(self.out.name + ".log.jsonl")
        self.files = {"set": self.out, "set manifest": self.out.with_name(self.out.name + ".manifest.json"),
                      "log": log, "log manifest": log.with_name(log.name + ".manifest.json")}
        self.versions = {}
        for version, seed in (("old", 0), ("new", 1)):
            self.clear()
            run_done(self._cmd(seed), self.wd)
            self.versions[version] = snapshot(self.files)
        self.duration = run_done(self._cmd(1), self.wd)

    def clear(self) -> None:
        for p in self.wd.iterdir():
            if p.name != "slice.jsonl":
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _cmd(self, seed: int) -> list[str]:
        return itd("rewrite", "slice.jsonl", "--method", "numeric", "-o", self.out.name, "--seed", str(seed), "-q")

    def prepare(self) -> None:
        self.clear()
        run_done(self._cmd(0), self.wd)

    def command(self) -> list[str]:
        return self._cmd(1)

    def judge(self, killed: bool) -> str | None:
        return which(snapshot(self.files), self.versions)


class RunCase(Case):
    name = "run"
    RESULTS = ("items.jsonl", "summary.json", "scan.jsonl", "rewrite.jsonl")

    def setup(self) -> None:
        test = (self.data / "gsm8k" / "test.jsonl").read_text("utf-8").splitlines()
        (self.wd / "slice.jsonl").write_text("\n".join(test[:120]) + "\n", encoding="utf-8")
        write_corpus(self.wd / "corpus.jsonl", self.data, [test[i] for i in range(0, 120, 7)])
        (self.wd / "run.toml").write_text(
            '[benchmark]\npath = "slice.jsonl"\n[detect]\nprobes = false\n[evaluate]\nenabled = false\n'
            '[scan]\ncorpus = ["corpus.jsonl"]\ndetectors = ["ngram", "minhash"]\n[rewrite]\nmethod = "numeric"\n',
            encoding="utf-8")
        self.duration = run_done(itd("run", "run.toml", "--out", "reference", "-q"), self.wd)
        self.reference = self.results(self.wd / "reference")

    def results(self, run_dir: Path) -> dict[str, bytes]:
        files = [run_dir / n for n in self.RESULTS] + sorted((run_dir / "decontaminated").rglob("*.jsonl"))
        files += sorted((run_dir / "lm_eval").rglob("*"))
        here = str(run_dir).encode()
        return {str(p.relative_to(run_dir)): p.read_bytes().replace(here, b"<run>") for p in files if p.is_file()}

    def prepare(self) -> None:
        shutil.rmtree(self.wd / "resumed", ignore_errors=True)

    def command(self) -> list[str]:
        return itd("run", "run.toml", "--out", "resumed", "-q")

    def judge(self, killed: bool) -> str | None:
        run_done(self.command(), self.wd)  # the resume
        return "resumed identical" if self.results(self.wd / "resumed") == self.reference else None


def write_corpus(path: Path, data: Path, planted: list[str]) -> None:
    """GSM8K train text (2,000 items) with the `planted` test records' question and solution mixed in."""
    train = (data / "gsm8k" / "train.jsonl").read_text("utf-8").splitlines()[:2000]
    docs = [(r := json.loads(x))["question"] + "\n" + r["answer"] for x in train]
    for i, rec in enumerate(planted):
        r = json.loads(rec)
        docs.insert((i * 397) % len(docs), r["question"] + "\n" + r["answer"])
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")


CASES: dict[str, Callable[[Path, Path], Case]] = {"scan": ScanCase, "index": IndexCase, "rewrite": RewriteCase, "run": RunCase}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--cases", type=int, default=20, help="Kills per fault class.")
    ap.add_argument("--classes", default=",".join(CLASSES), help="Fault classes to run: " + ", ".join(CLASSES))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    os.environ.setdefault("NO_COLOR", "1")
    rows, notes = [], []
    C.header(f"kill -9 sweep, {args.cases} random moments per fault class")
    with C.workdir(args.workdir, "itd-bench-crash-") as wd:
        for name in args.classes.split(","):
            case = CASES[name.strip()](wd, Path(args.data).resolve())
            case.setup()
            outcomes: dict[str, int] = {}
            handled = killed_n = 0
            for i in range(args.cases):
                case.prepare()
                # every other kill lands near the end, where the outputs are written and switched in
                delay = (rng.uniform(0.05, 1.1) if i % 2 == 0 else rng.uniform(0.8, 1.05)) * case.duration
                took = kill_after(case.command(), case.wd, delay)
                killed = took is None
                killed_n += killed
                if not killed:  # the machine got faster: aim the next kills at the run time seen now
                    case.duration = took
                state = case.judge(killed)
                handled += state is not None
                key = (state or "NOT WHOLE") + ("" if killed else " (finished before the kill)")
                outcomes[key] = outcomes.get(key, 0) + 1
            rows.append((f"kill -9 during `{name}`", args.cases, handled))
            notes.append(f"- `{name}` (uninterrupted {case.duration:.1f} s, {killed_n} of {args.cases} killed before "
                         f"finishing): " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    print(C.table(["fault class", "cases tried", "cases handled"], rows))
    print()
    print("\n".join(notes))
    return 0 if all(r[1] == r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
