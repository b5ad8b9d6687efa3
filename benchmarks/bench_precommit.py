"""The pre-commit hook as an eval-set repository uses it: install size and time of the hook's environment, and
the warm run time of `pre-commit run`, with the real `pre-commit` client.

An eval-set repository (a git repository in a temp dir) holds a GSM8K benchmark file, a predictions JSONL and a
results CSV, and a `.pre-commit-config.yaml` that names this project (`repo:` its root, `rev:` its HEAD commit,
so commit first) with `args: [--index, corpus.idx]`. The index is built from GSM8K train plus 5 test items.

  * cold: `pre-commit install-hooks` (pip installs `itd` and its dependencies into a fresh virtualenv);
  * the environment's size on disk and its largest packages;
  * warm: `pre-commit run --all-files`, best of `--reps` (exit 1: the 5 leaked items; the two other files are
    skipped with one line each), against the same `itd check --skip-non-benchmark` run directly in this
    interpreter's environment (the baseline of the same run: what the hook itself adds);
  * for comparison, the size `datasketch` (with scipy) adds to that environment: the dependency the hook used to
    pull in. Installed after the timings, into the same environment.

    python benchmarks/bench_precommit.py            # pip as configured (index or local wheels)
    PIP_NO_INDEX=1 python benchmarks/bench_precommit.py   # offline: local wheels only (pip's find-links)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(parser)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=C.ROOT, capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "itd", "setup.cfg", ".pre-commit-hooks.yaml"],
                           cwd=C.ROOT, capture_output=True, text=True).stdout.strip()
    if dirty:
        print("warning: uncommitted changes in itd/, setup.cfg or the hook: the hook installs HEAD", file=sys.stderr)
    gsm8k_test = C.gsm8k_records(args.data, "test")
    with C.workdir(args.workdir, "itd-precommit-") as tmp:
        repo = tmp / "evals"
        repo.mkdir()
        corpus = tmp / "corpus.jsonl"
        docs = [r["question"] + "\n" + r["answer"] for r in C.gsm8k_records(args.data, "train")]
        docs += [gsm8k_test[i]["question"] for i in (3, 50, 99, 400, 700)]
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        env = {**os.environ, "PRE_COMMIT_HOME": str(tmp / "cache"), "NO_COLOR": "1"}
        here = {**env, "PYTHONPATH": str(C.ROOT)}  # this checkout's itd, for the index and the baseline
        itd = [sys.executable, "-m", "itd"]
        subprocess.run([*itd, "index", "build", "--corpus", str(corpus), "--out", str(repo / "corpus.idx"), "-q"],
                       check=True, env=here, capture_output=True)
        (repo / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_test[:1000]), encoding="utf-8")
        (repo / "predictions.jsonl").write_text("".join(json.dumps({"id": f"gsm8k_test:{i}", "prediction": "42"}) + "\n"
                                                        for i in range(1, 1001)), encoding="utf-8")
        (repo / "results.csv").write_text("model,task,accuracy\nlab,gsm8k,0.41\n", encoding="utf-8")
        (repo / ".pre-commit-config.yaml").write_text(
            f"repos:\n  - repo: {C.ROOT}\n    rev: {head}\n    hooks:\n      - id: itd-check\n"
            "        args: [--index, corpus.idx]\n", encoding="utf-8")
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
            subprocess.run(cmd, cwd=repo, check=True)

        cold, proc = timed(["pre-commit", "install-hooks"], repo, env)
        if proc.returncode:
            sys.exit(f"pre-commit install-hooks failed:\n{proc.stdout}\n{proc.stderr}")
        envs = [p for p in (tmp / "cache").glob("repo*/py_env-*") if p.is_dir()]
        (venv,) = envs
        size = du(venv)
        py = venv / "bin" / "python"
        listed = json.loads(subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], capture_output=True,
                                           text=True, check=True).stdout)
        site = next((venv / "lib").glob("python*/site-packages"))
        by_dir: dict[str, int] = {}
        for entry in site.iterdir():
            if entry.is_dir() and not entry.name.endswith((".dist-info", "__pycache__")):
                by_dir[entry.name] = du(entry)
        largest = sorted(by_dir.items(), key=lambda kv: -kv[1])[:6]

        files = ["gsm8k_test.jsonl", "predictions.jsonl", "results.csv"]
        hook_runs, direct_runs = [], []
        hook_proc = direct_proc = None
        for _ in range(args.reps):
            t, hook_proc = timed(["pre-commit", "run", "--all-files"], repo, env)
            hook_runs.append(t)
            t, direct_proc = timed([*itd, "check", "--skip-non-benchmark", "--index", "corpus.idx", *files], repo, here)
            direct_runs.append(t)

        extra = subprocess.run([str(py), "-m", "pip", "install", "-q", "datasketch>=2.0"], capture_output=True, text=True)
        with_datasketch = du(venv) if extra.returncode == 0 else None

        mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
        print(f"## pre-commit hook (`bench_precommit.py`), itd {head[:7]}, pre-commit "
              f"{subprocess.run(['pre-commit', '--version'], capture_output=True, text=True).stdout.split()[-1]}\n")
        print("| figure | value |\n|---|---|")
        print(f"| `pre-commit install-hooks` (cold: a virtualenv, `pip install` of itd and its dependencies) | {cold:.1f} s |")
        print(f"| hook environment on disk | {mb(size)} ({len(listed)} packages) |")
        print("| largest packages | " + ", ".join(f"{name} {mb(n)}" for name, n in largest) + " |")
        if with_datasketch is not None:
            print(f"| the same environment with `datasketch` (and scipy) added | {mb(with_datasketch)} "
                  f"(+{mb(with_datasketch - size)}, {with_datasketch / size:.2f}x) |")
        else:
            print(f"| `datasketch` could not be added here | {extra.stderr.strip().splitlines()[-1] if extra.stderr else '?'} |")
        hook_best, direct_best = min(hook_runs), min(direct_runs)
        print(f"| warm `pre-commit run --all-files`, best of {args.reps} (exit {hook_proc.returncode}) | "
              f"{hook_best:.2f} s (runs: {', '.join(f'{t:.2f}' for t in hook_runs)}) |")
        print(f"| baseline: `itd check --skip-non-benchmark` on the same files, directly (exit {direct_proc.returncode}) | "
              f"{direct_best:.2f} s (runs: {', '.join(f'{t:.2f}' for t in direct_runs)}) |")
        print(f"| hook / direct | {hook_best / direct_best:.2f}x |")
        print("\nhook output:\n```\n" + hook_proc.stdout.strip() + "\n```")


if __name__ == "__main__":
    main()
