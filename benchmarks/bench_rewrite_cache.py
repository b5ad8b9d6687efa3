"""Cost of re-running a finished LLM rewrite job: the reply cache against a slow endpoint.

Starts the test suite's OpenAI-compatible server (`tests/openai_server.py`) answering every rewrite prompt after
`--delay` seconds (a stand-in for a hosted model: its replies are rule-made rewrites, stated as such), then runs
`itd.rewriters.loop.rewrite` with the LLM rewriter on `--items` GSM8K test items twice with the same cache directory:
the first run pays for every call, the re-run should make none. Both runs do the same verification (embedding
check off, so the ratio measures the cache, not the embedder). Ratio = first-run time / re-run time, one run.

    python benchmarks/bench_rewrite_cache.py --items 200 --delay 0.5 --concurrency 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _common as C  # noqa: E402

GOAL = 50.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.data_arg(ap)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.5, help="Seconds the endpoint takes per reply.")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    from openai_server import OpenAIServer, rewrite_responder

    from itd.core import load_benchmark
    from itd.llm import LLMConfig
    from itd.rewriters.llm import LLMRewriter
    from itd.rewriters.loop import rewrite
    from itd.rewriters.verify import VerifyConfig

    items = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")[: args.items]
    os.environ.setdefault("ITD_API_KEY", "benchmark-key")
    C.header("LLM rewrite: first run vs re-run from the reply cache")
    with C.workdir(args.workdir, "itd-bench-cache-") as wd, OpenAIServer(lambda req: rewrite_responder(req, args.delay)) as server:
        config = LLMConfig(model="test-model", base_url=server.url, concurrency=args.concurrency, cache_dir=str(wd / "cache"))
        rows, reports = [], []
        for run in ("first run", "re-run"):
            server.reset()
            t0 = time.perf_counter()
            report = rewrite(items, LLMRewriter(config), VerifyConfig(embedder="off"), rounds=1)
            seconds = time.perf_counter() - t0
            reports.append(report)
            rows.append((run, len(items), server.calls, report.stats.get("cache_hits", 0), report.counts()["rewritten"], seconds))
    same = [it.final for it in reports[0].items] == [it.final for it in reports[1].items]
    ratio = rows[0][-1] / rows[1][-1]
    print(C.table(("run", "items", "API calls", "cache hits", "rewritten", "seconds"), rows))
    print(f"\nendpoint delay {args.delay} s per reply, concurrency {args.concurrency}; identical output: {same}")
    print(f"re-run speed-up: {ratio:.0f}x (goal >= {GOAL:.0f}x): {'met' if ratio >= GOAL and same else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
