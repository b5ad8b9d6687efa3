"""Tokens/s of `itd detect` on one device and on several (one model replica per device), against a forward-only
loop of the same model and batches.

Items: the first `--items` GSM8K test items rendered `auto` (question + worked solution), the texts `itd detect`
scores. Model: `--model` (directory or hub name), or a random-init GPT-2 built here (`bench_probes.py`'s `--preset
tiny` or `gpt2`). Contenders, timed round-robin, best of `--reps`, every device synchronised before the clock stops:

  * forward only: the exact batches `itd detect` runs on the first device (recorded in a warm-up) replayed through
    `model(...)` with no reduction: the cost of the model alone on one device;
  * itd detect, 1 device: `itd.probes.detection.detect(samples, model, config)` (all of `--methods` from one pass), the
    first device only;
  * itd detect, N devices (with `--devices`): the same call on a model loaded with `device="cuda:0,cuda:1,..."`:
    items split into one contiguous chunk per replica, scored concurrently, merged in item order.

Reported: tokens/s (scored tokens), itd as a share of forward-only (goal on GPU >= 70%), the N-device speed-up and
scaling efficiency, its share of N x the one-device forward-only rate, the devices by name, and the largest score
difference between one and N devices (bf16 noise on GPUs).

    python benchmarks/bench_detect_devices.py --devices cuda:0,cuda:1 --preset gpt2 --items 2000
    python benchmarks/bench_detect_devices.py --devices auto --model EleutherAI/pythia-410m --items 2000
    python benchmarks/bench_detect_devices.py --devices cpu,cpu --items 40      # the path itself, on a CPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_probes import PRESETS, build_model, forward_only, record_batches  # noqa: E402

METHODS = ("loss", "zlib", "mink", "minkpp")


def device_names(devices: list[str]) -> list[str]:
    """`cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)`, `cpu (AMD EPYC ..., 2 cores)` for each device."""
    import torch

    out = []
    for dev in devices:
        if dev.startswith("cuda"):
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            props = torch.cuda.get_device_properties(idx)
            out.append(f"{dev} ({props.name}, {props.total_memory / 2**30:.1f} GiB)")
        else:
            out.append(f"{dev} ({C.machine().split(', Python')[0]})")
    return out


def sync_all(devices: list[str]) -> None:
    import torch

    for dev in devices:
        if dev.startswith("cuda"):
            torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.data_arg(ap)
    ap.add_argument("--items", type=int, default=1000, help="GSM8K test items scored.")
    ap.add_argument("--model", default=None, help="Model directory or hub name (default: build a random GPT-2).")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpt2", help="Shape of the built model.")
    ap.add_argument("--device", default=None, help="The one device (default: the first of --devices, else auto).")
    ap.add_argument("--devices", default=None, help="Comma-separated devices for data-parallel scoring, or 'auto' (every GPU).")
    ap.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32.")
    ap.add_argument("--batch-size", default="auto", help="itd batch size: 'auto' or rows per batch.")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions (best kept).")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from itd.core import load_benchmark
    from itd.core.render import render
    from itd.probes.detection import DetectConfig, detect
    from itd.probes.models import load_model, score_texts
    from itd.probes.parallel import parse_devices

    devices = None
    if args.devices == "auto":
        n = torch.cuda.device_count()
        if n < 2:
            raise SystemExit(f"--devices auto needs at least 2 visible GPUs, found {n}")
        devices = [f"cuda:{i}" for i in range(n)]
    elif args.devices:
        devices = parse_devices(args.devices) or [args.devices]
    one = args.device or (devices[0] if devices else "auto")
    samples = load_benchmark(Path(args.data) / "gsm8k" / "test.jsonl")[: args.items]
    texts = [render(s, "auto") for s in samples]
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    config = DetectConfig(methods=METHODS, batch_size=batch_size)
    with C.workdir(args.workdir, "itd-bench-devices-") as wd:
        source = args.model or build_model(wd, args.preset, args.data, args.seed)
        t = time.perf_counter()
        multi = load_model(source, device=",".join(devices), dtype=args.dtype) if devices and len(devices) > 1 else None
        load_multi_s = time.perf_counter() - t
        if multi is not None and multi.device == one:
            single = replace(multi, replicas=None)  # replica 0 on its own
        else:
            single = load_model(source, device=one, dtype=args.dtype)
        used = [single.device]
        n_params = sum(p.numel() for p in single.model.parameters())

        # warm-up: record the batches itd runs on one device; warm every replica
        seen, handle = record_batches(single)
        ref = score_texts(single, texts, config.score_config())
        handle.remove()
        tokens = sum(s.n_tokens for s in ref)
        if multi is not None:
            detect(samples[: 4 * len(devices)], multi, config=config)

        contenders = {
            "forward": lambda: forward_only(single, seen),
            "itd1": lambda: detect(samples, single, config=config),
        }
        if multi is not None:
            contenders["itdN"] = lambda: detect(samples, multi, config=config)
        times: dict[str, list[float]] = {k: [] for k in contenders}
        results = {}
        for _ in range(args.reps):
            for name, fn in contenders.items():
                sync_all(devices or used)
                t = time.perf_counter()
                results[name] = fn()
                sync_all(devices or used)
                times[name].append(time.perf_counter() - t)
        if multi is not None:
            multi.replicas.close()

    best = {k: min(v) for k, v in times.items()}
    rate = {k: tokens / v for k, v in best.items()}
    C.header("`itd detect` tokens/s on one and several devices vs a forward-only loop (`bench_detect_devices.py`)")
    print(f"model: {'built ' + args.preset + ' random-init GPT-2' if not args.model else args.model}, "
          f"{n_params / 1e6:.1f}M parameters, dtype {single.dtype}; torch {torch.__version__}  ")
    print(f"one device: {device_names([single.device])[0]}  ")
    if multi is not None:
        print(f"{len(devices)} devices: {'; '.join(device_names(devices))} (replicas loaded in {load_multi_s:.1f} s)  ")
    print(f"items: {len(texts)} GSM8K test items rendered `auto`, {tokens:,} scored tokens; {len(seen)} forward passes "
          f"on one device, batch_size={args.batch_size}; methods {', '.join(METHODS)}; best of {args.reps}\n")
    rows = [
        ("forward only, 1 device, itd's batches", best["forward"], rate["forward"], "-", "-"),
        ("itd detect, 1 device", best["itd1"], rate["itd1"], f"{rate['itd1'] / rate['forward']:.0%}", "-"),
    ]
    if multi is not None:
        n = len(devices)
        rows.append((f"itd detect, {n} devices (one replica each)", best["itdN"], rate["itdN"],
                     f"{rate['itdN'] / (n * rate['forward']):.0%} of {n} x forward",
                     f"{rate['itdN'] / rate['itd1']:.2f}x ({rate['itdN'] / rate['itd1'] / n:.0%} efficiency)"))
    print(C.table(["contender", "best s", "tokens/s", "share of forward-only", "speed-up vs 1 device"], rows))
    print()
    print("all timings (s): " + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in times.items()) + "  ")
    worst = 0.0
    if multi is not None:
        a, b = results["itd1"].items, results["itdN"].items
        assert [x.sample.id for x in a] == [x.sample.id for x in b], "items out of order"
        diffs = [abs(x.scores[m] - y.scores[m]) for x, y in zip(a, b) for m in METHODS
                 if math.isfinite(x.scores[m]) and math.isfinite(y.scores[m])]
        worst = max(diffs, default=0.0)
        print(f"largest |1 device - {len(devices)} devices| score difference: {worst:.2g} (items in order: yes)")
    tol = 1e-3 if single.dtype == "float32" else 0.1
    return 0 if np.isfinite(worst) and worst <= tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
