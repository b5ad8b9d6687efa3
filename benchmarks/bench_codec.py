"""CoDeC (`itd.probes.codec`) on a paired lab that `bench_pipeline.py` built: the leaked items and the unseen items, each as
a set, under the contaminated and the clean twin, against the held-out reference set.

A memorised set should show lower in-context deltas than the reference (a small Mann-Whitney p-value) under the
contaminated twin only, and only for its leaked items.

    python benchmarks/bench_pipeline.py --benchmark gsm8k --preset small --recipe finetune --repeats 6 \\
        --loss-on answer --workdir runs/gsm8k-ft6
    python benchmarks/bench_codec.py runs/gsm8k-ft6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _one(path: Path) -> Path:
    """The benchmark or reference file (or directory) `write_experiment` wrote under this name."""
    found = sorted(path.parent.glob(path.name + "*"))
    if not found:
        raise SystemExit(f"{path}*: not found (run bench_pipeline.py with --workdir first)")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", help="A bench_pipeline.py --workdir (its lab/ and data/).")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from itd.core import load_benchmark
    from itd.lab import load_lab
    from itd.probes.codec import codec_test
    from itd.probes.detection import load_truth
    from itd.probes.models import load_model

    wd = Path(args.workdir)
    lab = load_lab(wd / "lab")
    benchmark = load_benchmark(_one(wd / "data" / "benchmark"))
    reference = load_benchmark(_one(wd / "data" / "reference"))
    truth = load_truth(wd / "data" / "truth.json")
    sets = {name: [s for s in benchmark if s.id in set(truth[name])] for name in ("leaked", "unseen")}
    C.header(f"CoDeC on the lab in {wd}: {len(sets['leaked'])} leaked, {len(sets['unseen'])} unseen, "
             f"{len(reference)} reference items, {args.shots} shots")
    rows = []
    for role in ("contaminated", "clean"):
        lm = load_model(str(getattr(lab, role)), device="cpu")
        for name, items in sets.items():
            t0 = time.perf_counter()
            r = codec_test(lm, items, reference, shots=args.shots, seed=args.seed)
            rows.append([role, name, f"{r.score:.3f} [{r.score_ci[0]:.3f}, {r.score_ci[1]:.3f}]",
                         f"{r.reference_score:.3f} [{r.reference_ci[0]:.3f}, {r.reference_ci[1]:.3f}]",
                         f"{r.p_value:.2g}", f"{time.perf_counter() - t0:.0f} s"])
    print(C.table(["twin", "set", "CoDeC score", "reference's score", "p (deltas lower)", "seconds"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
