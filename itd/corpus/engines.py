"""Execution engines for corpus work: a local process pool (the default) and Ray, for clusters.

An engine runs one function over every shard of a corpus and yields each shard's result as soon as it is
ready; the caller merges the results (scan partials merge in any order, index n-gram runs are unioned), so
what comes out does not depend on the engine, the number of workers or the order shards finish in:

    engine = make_engine("ray", address="auto")
    for i, result in engine.map_shards(scan_one, shared, shards, progress):
        ...                      # merge result of shards[i]
    engine.stats.to_dict()       # shards, bytes, workers, nodes, retries, peak worker memory

`fn(shared, shard, on_bytes)` must be a module-level function (it is pickled by reference) that calls
`on_bytes(n)` as it reads `n` more bytes of the shard. `shared` is what every shard needs (the fitted
detectors): read-only, sent to each worker once.

* `local`: `workers=1` runs in this process. More workers fork a process pool (spawn off Linux) that inherits
  `shared`; bytes read are summed in shared memory for the progress callback. Every pool worker ends when this
  process ends, whatever ends it (`itd.core.processes.die_with_parent`: SIGTERM and SIGKILL leave no orphans).
* `ray`: `shared` is put in the object store once (`ray.put`) and every worker process fetches it once per run.
  Each shard is one task with `max_retries`, so a shard whose worker process or node dies is run again from
  its start on another worker, and its partial result counts once. Two tasks per cluster CPU (at least 16)
  are in flight (more are submitted as results come back), and a result leaves the object store once it is merged,
  so the driver's and the store's memory do not grow with the number of shards. A small actor keeps the bytes read per
  shard (of the shard's latest attempt, so a retried shard is not counted twice) for the progress callback;
  `retries` counts the shard runs Ray repeated (each task reports its attempt number). Ray is connected to with
  `ray.init(address)` only if this process is not connected yet (`None`: start a local Ray instance, with
  `workers` CPUs when more than one is asked for, else every core; `"auto"`: the cluster this machine belongs
  to; `"ray://host:10001"`: Ray Client); a Ray instance started here is shut down at the end. If this process
  is killed, Ray's own fate sharing ends the instance it started (measured with `kill -9`: raylet and workers at
  once, its two idle agent processes within a minute). On a cluster, `itd` (and the corpus: a shared
  filesystem or URLs every node can read) must be available on every node.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import socket
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

from itd.core.errors import InputError, ITDError, require
from itd.core.processes import die_with_parent
from itd.core.progress import Progress
from itd.core.registry import Registry
from itd.corpus.readers import Shard

__all__ = [
    "ENGINES",
    "RAY_MAX_RETRIES",
    "Engine",
    "EngineStats",
    "LocalEngine",
    "RayEngine",
    "ShardFn",
    "make_engine",
]

ShardFn = Callable[[Any, Shard, "Callable[[int], None] | None"], Any]

RAY_MAX_RETRIES = 3
"""Times Ray re-runs a shard whose worker died (a system failure; an error raised by the shard is not retried)."""

_POLL_S = 0.2
_MIN_IN_FLIGHT = 16  # Ray tasks kept in flight: at least this many, else two per cluster CPU

ENGINES: Registry[type["Engine"]] = Registry("engine")


@dataclass(slots=True)
class EngineStats:
    """What a run of an engine processed: shards, corpus bytes, distinct worker processes and nodes that ran
    shards, how many shards could run at once, shard re-runs after worker failures, and the largest peak
    resident memory of a worker (MB)."""

    engine: str
    shards: int = 0
    bytes: int = 0
    workers: int = 0
    nodes: int = 0
    parallelism: int = 0
    retries: int = 0
    worker_peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict."""
        return asdict(self)


def _peak_rss_bytes() -> int | None:
    """Peak resident memory of this process in bytes (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _worker_info(node: str) -> tuple[str, int, int | None]:
    """(node, pid, peak RSS bytes) of the process running a shard."""
    return node, os.getpid(), _peak_rss_bytes()


class _Workers:
    """Collects the worker info of every finished shard into `EngineStats`."""

    def __init__(self) -> None:
        self.procs: set[tuple[str, int]] = set()
        self.peak: int | None = None

    def add(self, info: tuple[str, int, int | None]) -> None:
        node, pid, rss = info
        self.procs.add((node, pid))
        if rss is not None:
            self.peak = rss if self.peak is None else max(self.peak, rss)

    def fill(self, stats: EngineStats) -> None:
        stats.workers = len(self.procs)
        stats.nodes = len({node for node, _ in self.procs})
        stats.worker_peak_rss_mb = None if self.peak is None else round(self.peak / 2**20, 1)


class Engine(abc.ABC):
    """Runs a function over corpus shards; see the module docstring."""

    name: ClassVar[str]

    def __init__(self, workers: int = 1, address: str | None = None):
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.address = address
        self.stats = EngineStats(self.name)

    @abc.abstractmethod
    def map_shards(
        self, fn: ShardFn, shared: Any, shards: Sequence[Shard], progress: Progress | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Run `fn(shared, shard, on_bytes)` on every shard; yield `(index of the shard, result)` as each one
        finishes. `progress(bytes done, bytes total)` is called as bytes are read. `self.stats` is complete once
        the iterator is exhausted."""


# ---- local --------------------------------------------------------------------------------------------------
_POOL: dict[str, Any] = {}


def _init_pool_worker(parent_pid: int, fn: ShardFn, shared: Any, counter: Any) -> None:
    die_with_parent(parent_pid)
    _POOL.update(fn=fn, shared=shared, counter=counter)


def _pool_add_bytes(n: int) -> None:
    counter = _POOL["counter"]
    with counter.get_lock():
        counter.value += n


def _pool_task(shard: Shard) -> tuple[Any, tuple[str, int, int | None]]:
    result = _POOL["fn"](_POOL["shared"], shard, _pool_add_bytes)
    return result, _worker_info(socket.gethostname())


@ENGINES.register("local")
class LocalEngine(Engine):
    """This process (`workers=1`) or a local process pool of `workers` processes."""

    name = "local"

    def __init__(self, workers: int = 1, address: str | None = None):
        if address is not None:
            raise InputError("a Ray address needs the Ray engine (--engine ray)")
        super().__init__(workers, None)

    def map_shards(
        self, fn: ShardFn, shared: Any, shards: Sequence[Shard], progress: Progress | None = None
    ) -> Iterator[tuple[int, Any]]:
        total = sum(s.size for s in shards)
        self.stats = EngineStats(self.name, shards=len(shards), bytes=total)
        workers = _Workers()
        self.stats.parallelism = max(1, min(self.workers, len(shards)))
        if self.workers == 1 or len(shards) <= 1:
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(min(done, total), total)

            for i, shard in enumerate(shards):
                result = fn(shared, shard, on_bytes)
                workers.add(_worker_info(socket.gethostname()))
                yield i, result
        else:
            yield from self._pool(fn, shared, shards, total, progress, workers)
        workers.fill(self.stats)

    def _pool(self, fn, shared, shards, total, progress, workers: _Workers) -> Iterator[tuple[int, Any]]:
        # fork on Linux: workers inherit `shared` and need no importable __main__ (scripts piped to python,
        # notebooks); they run only numpy/rapidfuzz code, so the usual fork hazards do not apply
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        counter = ctx.Value("q", 0)
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(shards)),
            mp_context=ctx,
            initializer=_init_pool_worker,
            initargs=(os.getpid(), fn, shared, counter),
        ) as pool:
            index = {pool.submit(_pool_task, s): i for i, s in enumerate(shards)}
            pending = set(index)
            try:
                while pending:
                    done, pending = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                    for fut in done:
                        result, info = fut.result()
                        workers.add(info)
                        yield index.pop(fut), result  # the future (and its result) is let go once merged
                    if progress is not None:
                        progress(min(counter.value, total), total)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


# ---- Ray ----------------------------------------------------------------------------------------------------
class _ShardTracker:
    """Ray actor: bytes read by the latest attempt of every shard, and how many attempts each shard took.

    Tasks only send to it, never wait for it: a task blocked in `ray.get` lends its CPU to another task, and
    Ray would start extra worker processes. An actor runs the calls of one caller in the order they were sent,
    so a task's `start` comes before its `add`s.
    """

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}
        self.current: dict[int, str] = {}
        self.bytes: dict[int, int] = {}

    def start(self, shard: int, attempt: str) -> None:
        """A task starts on `shard`; `attempt` names this run of it."""
        self.attempts[shard] = self.attempts.get(shard, 0) + 1
        self.current[shard] = attempt
        self.bytes[shard] = 0

    def add(self, shard: int, attempt: str, n: int) -> None:
        if self.current.get(shard) == attempt:  # late reports of a dead attempt are dropped
            self.bytes[shard] += n

    def done(self) -> int:
        return sum(self.bytes.values())

    def retries(self) -> int:
        return sum(a - 1 for a in self.attempts.values())


_SHARED: dict[str, Any] = {}  # in a Ray worker: the shared value of the current run, by object id


def _shared_value(ray: Any, ref: Any) -> Any:
    key = ref.hex()
    if key not in _SHARED:
        _SHARED.clear()  # one run's value at a time
        _SHARED[key] = ray.get(ref)
    return _SHARED[key]


def _run_shard(fn: ShardFn, shared_box: list[Any], shard: Shard, index: int, tracker: Any) -> tuple[Any, Any, int]:
    """The Ray task of one shard (its worker process is titled `ray::_run_shard`)."""
    import ray

    attempt = f"{os.getpid()}-{os.urandom(6).hex()}"
    tracker.start.remote(index, attempt)
    shared = _shared_value(ray, shared_box[0])  # the ref is boxed so the worker resolves it once, not per task

    def on_bytes(n: int) -> None:
        tracker.add.remote(index, attempt, n)

    result = fn(shared, shard, on_bytes)
    return result, _worker_info(ray.get_runtime_context().get_node_id()), _ray_attempt_number(ray)


def _ray_attempt_number(ray: Any) -> int:
    """How many times Ray has already run this task (0 on its first run), from Ray's own task record.

    The tracker's count can miss a run: a worker killed just after sending `start` loses the message. Ray has
    no public call for this; 0 where a Ray version lacks it (the tracker's count stands alone then).
    """
    try:
        return int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number())
    except AttributeError:
        return 0


_REMOTES: dict[tuple[str, int], Any] = {}


def _remote(ray: Any, what: str, max_retries: int = 0) -> Any:
    """The Ray remote function or actor class, made once per process."""
    key = (what, max_retries)
    if key not in _REMOTES:
        if what == "task":
            _REMOTES[key] = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_run_shard)
        else:
            _REMOTES[key] = ray.remote(num_cpus=0)(_ShardTracker)
    return _REMOTES[key]


@ENGINES.register("ray")
class RayEngine(Engine):
    """One Ray task per shard on a local Ray instance or a cluster; see the module docstring."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None, max_retries: int = RAY_MAX_RETRIES):
        super().__init__(workers, address)
        if max_retries < 0:
            raise InputError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self._ray = require("ray", "ray", "The Ray engine (--engine ray)")

    def _connect(self) -> bool:
        """Connect to Ray unless this process already is; True when a local instance was started here."""
        ray = self._ray
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {
            "address": self.address,
            "ignore_reinit_error": True,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if self.address is None:
            kwargs.update(num_cpus=self.workers if self.workers > 1 else None, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            raise InputError(f"cannot connect to the Ray cluster at {self.address!r}: {exc}") from None
        return self.address is None

    def map_shards(
        self, fn: ShardFn, shared: Any, shards: Sequence[Shard], progress: Progress | None = None
    ) -> Iterator[tuple[int, Any]]:
        total = sum(s.size for s in shards)
        self.stats = EngineStats(self.name, shards=len(shards), bytes=total)
        if not shards:
            return
        started = self._connect()
        try:
            yield from self._run(fn, shared, shards, total, progress)
        finally:
            if started:
                self._ray.shutdown()

    def _run(self, fn, shared, shards, total, progress) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        workers = _Workers()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.stats.parallelism = min(cpus, len(shards))
        tracker = _remote(ray, "tracker").remote()
        task = _remote(ray, "task", self.max_retries)
        box = [ray.put(shared)]  # once into the object store, shared by every task
        index: dict[Any, int] = {}
        todo = iter(enumerate(shards))
        reruns = 0  # by Ray's count of the finished tasks' attempts

        def submit(n: int) -> None:
            for i, shard in itertools.islice(todo, n):
                index[task.remote(fn, box, shard, i, tracker)] = i

        submit(max(2 * cpus, _MIN_IN_FLIGHT))
        try:
            while index:
                ready, _ = ray.wait(list(index), num_returns=len(index), timeout=_POLL_S)
                while ready:
                    ref = ready.pop()
                    try:
                        result, info, attempt = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, ITDError):  # a bad input line: the user's error, not a crash
                            raise cause from None
                        raise
                    workers.add(info)
                    reruns += attempt
                    i = index.pop(ref)
                    del ref  # the last reference: the result leaves the object store
                    submit(1)
                    yield i, result
                if progress is not None:
                    progress(min(ray.get(tracker.done.remote()), total), total)
            self.stats.retries = max(reruns, ray.get(tracker.retries.remote()))
            workers.fill(self.stats)
        except BaseException:
            for ref in index:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                ray.kill(tracker)


def make_engine(name: str, *, workers: int = 1, address: str | None = None) -> Engine:
    """The engine called `name` ("local" or "ray"; unknown names raise with a did-you-mean). A missing Ray
    raises `MissingDependencyError` with the install command here, before any work starts."""
    return ENGINES.get(name)(workers=workers, address=address)
