"""Training speed of the demo's model with one and with all CPU threads, on an idle machine and beside processes
that keep cores busy: why `itd.probes.models.cpu_threads` gives a loaded machine fewer threads.

Each configuration trains the `demo` preset's GPT-2 (2 layers, 128 wide, 16 x 256 tokens a step) for `--steps`
steps after a warm-up and reports steps per second; the busy processes are pure-Python loops this script starts
and stops. Every figure is measured in the same run, so the ratios hold on a noisy machine.

    python benchmarks/bench_threads.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _spin(stop: mp.Event) -> None:
    """Keep one core busy until `stop` is set (the loop's test is the work)."""
    while not stop.is_set():
        continue


def _steps_per_second(threads: int, steps: int) -> float:
    import torch
    import transformers

    from itd.lab import PRESETS
    from itd.probes.models import quiet_transformers

    preset = PRESETS.get("demo")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with quiet_transformers():
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=preset.vocab_size, n_positions=preset.seq_len, n_embd=preset.n_embd, n_layer=preset.n_layer,
            n_head=preset.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, preset.vocab_size, (preset.batch_size, preset.seq_len))

    def step() -> None:
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="Busy processes beside the training.")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    C.header(f"Training steps per second of the demo's model, 1 vs {cores} threads, beside busy processes")
    rows = []
    for busy in args.busy:
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            time.sleep(1.0 if busy else 0.0)
            import torch

            from itd.probes.models import cpu_threads

            torch.set_num_threads(cores)
            chosen = cpu_threads(torch)
            one = _steps_per_second(1, args.steps)
            all_ = _steps_per_second(cores, args.steps)
        finally:
            stop.set()
            for p in spinners:
                p.join()
        rows.append([busy, f"{one:.2f}", f"{all_:.2f}", f"{all_ / one:.2f}", chosen])
    print(C.table(["busy processes", "1 thread (steps/s)", f"{cores} threads (steps/s)", f"{cores} / 1",
                   "cpu_threads chose"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
