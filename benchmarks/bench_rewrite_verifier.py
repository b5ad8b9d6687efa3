"""What the rewrite verifier catches on realistic LLM rewrites: per defect kind, without and with the solver.

The rewrites are `tests/fixtures/realistic_rewrites.jsonl`: held-out GSM8K and MMLU test items of the shared data,
each rewritten as a strong LLM following the packaged prompts would write it, faithful (close paraphrases, new
scenarios, names and terms kept verbatim) or broken in one of the ways real rewriters break items. They are served
by the test suite's OpenAI-compatible server (`tests/openai_server.py`) to `itd rewrite --method llm`, which runs
here in-process, twice: the deterministic checks (and the embedding checks) alone, then with `--solver` (3
samples, majority vote; the scripted solver makes a few realistic slips). A defect is caught when the item ends
`rejected`; a faithful rewrite is kept when it ends `rewritten`.

    python benchmarks/bench_rewrite_verifier.py
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _common as C  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.data_arg(ap)
    ap.add_argument("--embedder", default="auto", help="Embedding model of the drift and option-alignment checks (auto, off).")
    args = ap.parse_args()

    from openai_server import OpenAIServer
    from rewrite_fixtures import failed_checks, load_records, responder, run_cli, tally

    records = load_records(Path(args.data))
    os.environ.setdefault("ITD_API_KEY", "benchmark-key")
    C.header("Rewrite verifier on realistic LLM rewrites")
    with C.workdir(args.workdir, "itd-bench-verifier-") as wd, OpenAIServer(responder(records)) as server:
        runs = {
            "without solver": run_cli(records, server.url, wd, solver=False, embedder=args.embedder),
            "with solver": run_cli(records, server.url, wd, solver=True, embedder=args.embedder),
        }
        calls = server.calls
    rows = tally(records, runs)
    table = [(r["benchmark"], r["kind"], r["items"], r["needs_understanding"],
              *(f"{r[n]}/{r['items']}" for n in runs)) for r in rows]
    print(C.table(("benchmark", "kind", "items", "needs understanding", "caught / kept without solver", "caught / kept with solver"), table))

    broken = [r for r in records if r.kind != "faithful"]
    faithful = [r for r in records if r.kind == "faithful"]
    plain = [r for r in broken if not r.needs_understanding]
    for name, log in runs.items():
        caught = sum(log[r.original.id]["status"] == "rejected" for r in broken)
        kept = sum(log[r.original.id]["status"] == "rewritten" for r in faithful)
        plain_caught = sum(log[r.original.id]["status"] == "rejected" for r in plain)
        unexplained = [r.original.id for r in broken + faithful
                       if log[r.original.id]["status"] == "rejected" and not failed_checks(log[r.original.id])]
        print(f"\n{name}: broken rejected {caught}/{len(broken)} ({caught / len(broken):.0%}), "
              f"defects needing no understanding {plain_caught}/{len(plain)}, faithful kept {kept}/{len(faithful)} "
              f"({kept / len(faithful):.0%}); rejections without a failed check named: {len(unexplained)}")
        lost = [r for r in faithful if log[r.original.id]["status"] != "rewritten"]
        for r in lost:
            print(f"  faithful rejected: {r.original.id} ({r.note or r.variant}): {dict(failed_checks(log[r.original.id]))}")
        missed = [r for r in broken if log[r.original.id]["status"] != "rejected"]
        for r in missed:
            print(f"  defect kept: {r.original.id} [{r.kind}] {r.note}")
    solver_log = runs["with solver"]
    by_check = Counter()
    for r in records:
        by_check.update(failed_checks(solver_log[r.original.id]))
    print("\nrejections per check (with solver): " + ", ".join(f"{k} {v}" for k, v in by_check.most_common()))
    print(f"scripted endpoint calls: {calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
