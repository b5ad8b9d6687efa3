"""Data-parallel probe scoring: one model replica per device, items split into contiguous chunks.

`itd.probes.models.load_model(name, device="cuda:0,cuda:1")` (or `device="auto"` on a machine with several GPUs and a
model that fits on one of them) returns a `LoadedModel` that carries a `ReplicaPool`. The first replica is the
`LoadedModel`'s own model, in this process, on the first device; every further device gets a spawned worker
process (`torch.multiprocessing`, spawn) that loads the same weights there. `score_texts` then splits the texts
into one contiguous chunk per replica, balanced by length, scores the chunks concurrently and returns the
results in item order. Every replica runs the single-device scorer on its chunk, so the scores are those of
single-device scoring up to the floating-point noise of different batch shapes (and bf16 on GPUs).

A scoring run through a results store (`LoadedModel.store`) hands out its fixed store chunks instead, whole, so
each chunk is scored in exactly the batches a single device would use, and is recorded as soon as it is done.

`devices="cpu,cpu"` runs two CPU replicas: no faster than one on most machines, it exists to test the path
without GPUs.

Workers are spawned (CUDA cannot be forked), so, as with any spawn-based multiprocessing, a script that loads
a model on several devices needs the `if __name__ == "__main__":` guard; the `itd` command has it. A worker
that dies or fails stops the pool: the error is raised here, and the model must be loaded again. Workers end
when this process ends, whatever ends it (`itd.core.processes.die_with_parent`), so a killed run leaves no replica
holding a GPU.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import traceback
import weakref
from dataclasses import replace
from typing import Any, Callable, Sequence

from itd.core.errors import InputError
from itd.core.processes import die_with_parent

__all__ = ["ReplicaPool", "parse_devices", "split_balanced"]

_START_TIMEOUT_S = 600.0  # loading a large model on a slow disk
_POLL_S = 0.5


def parse_devices(device: str) -> list[str] | None:
    """The device list of a comma-separated `device` ("cuda:0,cuda:1", "cpu,cpu"); None for a single device.

    Each entry is cpu, mps, cuda or cuda:N; "auto" cannot be part of a list. Bare "cuda" entries are numbered
    in order (cuda:0, cuda:1, ...).
    """
    parts = [p.strip().lower() for p in str(device).split(",")]
    if len(parts) < 2:
        return None
    out = []
    cuda_seen = 0
    for p in parts:
        if p == "cuda":
            p = f"cuda:{cuda_seen}"
        if p == "auto" or not (p in ("cpu", "mps") or (p.startswith("cuda:") and p[5:].isdigit())):
            raise InputError(f"bad device {p!r} in the device list {device!r}; each must be cpu, mps, cuda or cuda:N")
        if p.startswith("cuda:"):
            cuda_seen += 1
        out.append(p)
    return out


def split_balanced(weights: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Split items of `weights` into `min(parts, len(weights))` contiguous, non-empty ranges [lo, hi) of about
    equal weight, in order (a zero weight counts as 1)."""
    n = len(weights)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    w = [max(1, int(x)) for x in weights]
    total = sum(w)
    bounds = [0]
    acc = 0
    for i, x in enumerate(w[:-1]):
        acc += x
        k = len(bounds)  # index of the range a cut here would start
        # cut once the ranges so far hold their share, or when every later item must start a range of its own
        if k < parts and (acc >= total * k / parts or n - (i + 1) <= parts - k):
            bounds.append(i + 1)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:]))


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError carrying its text and traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"a scoring replica failed:\n{text}")


def _load(load_model: Callable[..., Any], spec: Any, device: str) -> Any:
    return load_model(spec.name_or_path, device=device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                      revision=spec.revision)


def _worker_main(
    parent_pid: int, spec: Any, device: str, threads: int | None, tasks: Any, results: Any, rank: int,
    load_model: Callable[..., Any], score_texts: Callable[..., Any],
) -> None:
    """A replica process: load the model on `device`, then score jobs from `tasks` until None arrives."""
    die_with_parent(parent_pid)
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        lm = _load(load_model, spec, device)
        results.put(("ready", rank, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", rank, _portable(exc)))
        return
    references: dict[Any, Any] = {}
    while True:
        job = tasks.get()
        if job is None:
            return
        job_id, texts, config, ref_spec = job
        try:
            ref = None
            if ref_spec is not None:
                if ref_spec not in references:
                    references[ref_spec] = _load(load_model, ref_spec, device)
                ref = references[ref_spec]

            def tick(done: int, total: int, job_id: int = job_id) -> None:
                results.put(("tick", rank, (job_id, done, total)))

            scored = score_texts(lm, texts, config, reference=ref, progress=tick)
            results.put(("done", rank, (job_id, scored)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            results.put(("error", rank, _portable(exc)))


def _shutdown(procs: list[Any], tasks: list[Any]) -> None:
    """Ask every worker to stop, wait a little, then terminate the ones still running."""
    for q in tasks:
        with contextlib.suppress(OSError, ValueError):  # a queue already closed: its worker is gone anyway
            q.put(None)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


class ReplicaPool:
    """Model replicas on `devices[1:]` in worker processes; `devices[0]` is the calling process's own model.

    `spec` (an `itd.probes.models.ModelSpec`) says what every worker loads, with `load_model`; jobs are scored with
    `score_texts` (both `itd.probes.models`' functions, passed in so that this module does not import the one that
    uses it; they must be module-level functions, which a spawned worker imports by name). The workers start
    here and are stopped by `close()`, or when the pool is garbage-collected or the interpreter exits.
    """

    def __init__(self, spec: Any, devices: Sequence[str], load_model: Callable[..., Any],
                 score_texts: Callable[..., Any]):
        import torch.multiprocessing as tmp

        if len(devices) < 2:
            raise ValueError("a replica pool needs at least two devices")
        self.spec = spec
        self.devices = list(devices)
        self._score_texts = score_texts
        ctx = tmp.get_context("spawn")
        n_cpu = sum(d == "cpu" for d in self.devices)
        threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu else None
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in self.devices[1:]]
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(os.getpid(), spec, dev, threads if dev == "cpu" else None, q, self._results, rank, load_model,
                      score_texts),
                daemon=True,
                name=f"itd-replica-{rank}-{dev}",
            )
            for rank, (dev, q) in enumerate(zip(self.devices[1:], self._tasks), start=1)
        ]
        for p in self._procs:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._tasks)
        self._call = 0  # number of the current `map` call: messages of an earlier, failed call are dropped
        try:
            waiting = set(range(1, len(self.devices)))
            while waiting:
                kind, rank, payload = self._get(_START_TIMEOUT_S)
                if kind == "error":
                    raise payload
                if kind == "ready":
                    waiting.discard(rank)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        """Number of replicas, this process's included."""
        return len(self.devices)

    def close(self) -> None:
        """Stop the worker processes."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether the workers were stopped (by `close()` or after a failed job)."""
        return not self._finalizer.alive

    def _get(self, timeout: float) -> tuple[str, int, Any]:
        """The next message of any worker; raises if a worker died without saying why."""
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
            dead = [p for p in self._procs if not p.is_alive()]
            if dead:
                raise RuntimeError(f"scoring replica {dead[0].name} died (exit code {dead[0].exitcode})")
            if waited >= timeout:
                raise TimeoutError(f"no answer from the scoring replicas in {timeout:.0f} s")

    def map(
        self,
        main: Any,
        jobs: Sequence[list[str]],
        config: Any,
        reference: Any = None,
        *,
        on_done: Callable[[int, list[Any]], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[Any]]:
        """Score every job (a list of texts) with the pool's `score_texts`; one result list per job, in job order.

        Jobs are dealt to the replicas in contiguous blocks of about equal text length; `main` (the
        `LoadedModel` of this process, device 0) scores the first block itself while the workers score theirs.
        `on_done(job, scores)` is called here as each job finishes. `progress(done, total)` counts scored
        tokens over all replicas (totals join as replicas start their jobs).
        """
        if self.closed:
            raise RuntimeError("the scoring replicas were stopped (closed, or after a failed job)")
        if not jobs:
            return []
        ref_spec = None if reference is None else reference.spec
        if reference is not None and ref_spec is None:
            raise ValueError("the reference model has no ModelSpec (was it loaded with load_model?)")
        self._call += 1
        try:
            return self._map(main, jobs, config, reference, ref_spec, on_done, progress)
        except BaseException:
            self.close()  # jobs of this call may still be queued or running: the pool cannot be reused
            raise

    def _map(self, main, jobs, config, reference, ref_spec, on_done, progress) -> list[list[Any]]:
        score_texts = self._score_texts
        call = self._call
        blocks = split_balanced([sum(len(t) for t in job) for job in jobs], self.size)
        for r, (lo, hi) in enumerate(blocks[1:], start=1):
            for j in range(lo, hi):
                self._tasks[r - 1].put(((call, j), jobs[j], config, ref_spec))
        out: dict[int, list[Any]] = {}
        ticks: dict[int, tuple[int, int]] = {}

        def report() -> None:
            if progress is not None:
                progress(sum(d for d, _ in ticks.values()), sum(t for _, t in ticks.values()))

        def handle(kind: str, rank: int, payload: Any) -> None:
            if kind == "error":
                raise payload
            if kind == "tick":
                (c, j), done, total = payload
                if c == call:
                    ticks[j] = (done, total)
                    report()
            elif kind == "done":
                (c, j), scored = payload
                if c != call:
                    return
                out[j] = scored
                if on_done is not None:
                    on_done(j, scored)

        def drain() -> None:
            while True:
                try:
                    msg = self._results.get_nowait()
                except queue.Empty:
                    return
                handle(*msg)

        bare = replace(main, replicas=None, store=None)
        lo, hi = blocks[0]
        for j in range(lo, hi):

            def tick(done: int, total: int, j: int = j) -> None:
                ticks[j] = (done, total)
                report()
                drain()  # keep the workers' progress and results flowing while this process scores

            out[j] = score_texts(bare, jobs[j], config, reference=reference, progress=tick)
            if on_done is not None:
                on_done(j, out[j])
        while len(out) < len(jobs):
            handle(*self._get(float("inf")))
        return [out[j] for j in range(len(jobs))]

    def score(
        self,
        main: Any,
        texts: list[str],
        config: Any,
        reference: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Any]:
        """`score_texts` over the replicas: one contiguous chunk of `texts` per replica, merged in item order."""
        chunks = split_balanced([len(t) for t in texts], self.size)
        jobs = [texts[lo:hi] for lo, hi in chunks]
        return [item for part in self.map(main, jobs, config, reference, progress=progress) for item in part]
