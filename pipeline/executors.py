"""Where per-item (per-video) work runs: in-process, a local process pool, or Ray.

Input: a worker class + its constructor arguments and a sequence of plain picklable item dicts
(each with an ``"id"``). Output: one result dict per item, yielded in completion order.

The worker class is constructed once per worker process and then called once per item::

    worker = worker_cls(*worker_args)      # once per process (loads models, opens files ...)
    row = worker(item)                     # per item -> dict (workers catch their own errors)

Engines:

- ``inline``: everything in the calling process (debugging, tests, tiny jobs). The caller's
  thread settings and environment are left alone.
- ``pool``: ``workers`` processes started with ``spawn`` (fork deadlocked once torch/FFmpeg
  threads existed). Each child has its own pipe and handles its items in FIFO order, so when a
  child dies (kill -9, OOM killer) the item it was working on is known exactly: that item is
  retried once on a fresh process, items queued behind it are re-queued without penalty, and an
  item that kills a worker twice becomes ``{"status": "error", "reason": "worker process died
  ..."}``. The job always finishes.
- ``ray``: one Ray actor per worker (``max_restarts=-1``, ``max_task_retries=1``), so a killed
  actor is restarted (its constructor runs again) and its tasks are retried once. Without an
  address an embedded single-node Ray is started bound to loopback only and shut down at the end.

Safety net for every engine: an exception escaping ``worker(item)`` becomes
``{"id": ..., "status": "error", "reason": "<ExcType>: <first line>"}`` and the job continues.
An exception in the worker's constructor means the job cannot run: it is re-raised.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.errors import ConfigError, MissingDependencyError, PipelineError

logger = logging.getLogger(__name__)

ENGINES = ("inline", "pool", "ray")
#: exit reason prefix for items whose worker process died under them
DIED = "worker process died"
#: times an item may be re-run after its worker process died under it (pool and Ray)
ITEM_RETRIES = 1
#: consecutive pool child deaths during start-up (before the worker is constructed) tolerated
_MAX_START_DEATHS = 3


#: estimated peak memory of one worker process (MTCNN + decoding a 1080p clip in batches of 32;
#: the README's memory section measures 0.8-2.4 GiB): the default worker count divides by this
WORKER_PEAK_BYTES = 2 * 1024**3


def resolve_workers(workers: int, *, per_worker_bytes: int = WORKER_PEAK_BYTES,
                    root: str | os.PathLike = "/") -> int:
    """Number of worker processes: ``workers`` if positive, else what the process may use.

    The default (``workers=0``) is the smaller of the usable CPU cores (``usable_cpus``) and the
    usable memory divided by ``per_worker_bytes`` (``usable_memory``), at least 1.

    Args:
        workers: explicit count (> 0), or 0 for the default.
        per_worker_bytes: estimated peak memory of one worker.
        root: file-system root the cgroup and ``/proc`` files are read under (tests).
    """
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: fit the usable CPU cores and memory), "
                          f"got {workers}")
    if workers > 0:
        return workers
    cpus = usable_cpus(root)
    mem = usable_memory(root)
    by_mem = max(1, mem // per_worker_bytes) if mem is not None else cpus
    if by_mem < cpus:
        logger.info("%d worker(s), not %d: %.1f GiB usable memory / %.1f GiB per worker", by_mem,
                    cpus, mem / 1024**3, per_worker_bytes / 1024**3)
    return max(1, min(cpus, by_mem))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(root: Path) -> list[Path]:
    """This process's cgroup folders (v2 unified, v1 cpu/memory), own folder first, then each
    parent up to the mount: a limit set on any of them applies."""
    fs = root / "sys" / "fs" / "cgroup"
    rel: dict[str, str] = {}
    for line in (_read(root / "proc" / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in (parts[1].split(",") if parts[1] else [""]):
                rel.setdefault(ctrl, parts[2].lstrip("/"))
    out: list[Path] = []
    for mount, ctrl in ((fs, ""), (fs / "cpu", "cpu"), (fs / "cpu,cpuacct", "cpu"),
                        (fs / "memory", "memory")):
        if not mount.is_dir():
            continue
        own = mount / rel.get(ctrl, "")
        while True:
            if own.is_dir() and own not in out:
                out.append(own)
            if own == mount or mount not in own.parents:
                break
            own = own.parent
        if mount not in out:
            out.append(mount)
    return out


def usable_cpus(root: str | os.PathLike = "/") -> int:
    """CPU cores this process may run on: the affinity mask, capped by a cgroup CPU quota
    (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; rounded down, >= 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    for d in _cgroup_dirs(Path(root)):
        quota = period = None
        v2 = _read(d / "cpu.max")
        if v2:
            q, _, per = v2.partition(" ")
            if q != "max":
                quota, period = q, per or "100000"
        else:
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        try:
            q_us, p_us = int(quota or -1), int(period or 0)
        except ValueError:
            continue
        if q_us > 0 and p_us > 0:
            cpus = min(cpus, max(1, q_us // p_us))
    return max(1, cpus)


def usable_memory(root: str | os.PathLike = "/") -> int | None:
    """Bytes this process may still allocate: ``MemAvailable`` of ``/proc/meminfo``, capped by
    a cgroup memory limit minus its usage (v2 ``memory.max`` / ``memory.current``, v1
    ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``); None when nothing says."""
    root = Path(root)
    avail: int | None = None
    for line in (_read(root / "proc" / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            with contextlib.suppress(ValueError, IndexError):
                avail = int(line.split()[1]) * 1024
    for d in _cgroup_dirs(root):
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit = _read(d / limit_name)
            if not limit or limit == "max":
                continue
            try:
                left = int(limit) - int(_read(d / usage_name) or 0)
            except ValueError:
                continue
            if int(limit) >= 1 << 60:  # v1 "no limit" is a huge number
                continue
            avail = max(0, left) if avail is None else min(avail, max(0, left))
    return avail


def error_row(item_id: Any, exc: BaseException) -> dict:
    """The row for an item whose worker raised: ``<ExcType>: <first line of the message>``."""
    lines = str(exc).strip().splitlines()
    reason = type(exc).__name__ + (f": {lines[0]}" if lines else "")
    return {"id": item_id, "status": "error", "reason": reason}


def call_worker(worker: Any, item: dict) -> dict:
    """Run ``worker(item)``; an escaped exception or a non-dict result becomes an error row."""
    try:
        row = worker(item)
    except Exception as exc:  # the executor's safety net: the job goes on
        logger.warning("item %s: %s escaped the worker", item.get("id"), type(exc).__name__,
                       exc_info=True)
        return error_row(item.get("id"), exc)
    if not isinstance(row, dict):
        return error_row(item.get("id"),
                         TypeError(f"worker returned {type(row).__name__}, not a dict"))
    return row


def worker_env(threads_per_worker: int, env: dict | None) -> dict[str, str]:
    """Environment for worker processes: thread caps, then ``env`` (which wins)."""
    out = {name: str(threads_per_worker)
           for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out.update({str(k): str(v) for k, v in (env or {}).items()})
    return out


def _limit_torch_threads(threads: int) -> None:
    """``torch.set_num_threads`` if the worker uses torch (torch is not imported just for this)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily set ``os.environ`` entries (children started meanwhile inherit them).

    glibc reads ``MALLOC_*`` once at process start, so these must be in the environment the
    child is exec'ed with; setting them inside the child would be too late.
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_items(
    worker_cls: type,
    worker_args: tuple,
    items: Sequence[dict],
    *,
    engine: str = "pool",
    workers: int = 0,
    address: str | None = None,
    max_in_flight: int = 0,
    desc: str = "items",
    threads_per_worker: int = 1,
    env: dict | None = None,
    progress: bool = True,
) -> Iterator[dict]:
    """Run ``worker_cls(*worker_args)(item)`` for every item; yield result rows as they finish.

    Args:
        worker_cls: picklable (module-level) class; constructed once per worker process.
        worker_args: constructor arguments (picklable).
        items: plain picklable dicts, each with an ``"id"``; read lazily, in order.
        engine: ``"inline"``, ``"pool"`` or ``"ray"``.
        workers: worker processes / Ray actors (0: ``resolve_workers``, the usable CPU cores
            and memory; with a Ray address, the cluster's CPUs divided by
            ``threads_per_worker``).
        address: Ray cluster address; None starts an embedded local Ray (loopback only).
        max_in_flight: items submitted but not yet yielded, at most (0: 2 per worker).
        desc: progress bar label.
        threads_per_worker: torch/OpenMP/MKL threads in each worker process.
        env: extra environment variables for worker processes (set before they start).
        progress: show a tqdm bar with per-status counts.

    Yields:
        One dict per item (completion order); the worker's row, or an error row with
        ``status="error"`` and a one-line ``reason``.

    Raises:
        ConfigError: unknown engine or bad numbers.
        MissingDependencyError: engine ``"ray"`` without ray installed.
        Exception: whatever the worker's constructor raised.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if threads_per_worker < 1:
        raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    if max_in_flight < 0:
        raise ConfigError(f"max_in_flight must be >= 0 (0: 2 per worker), got {max_in_flight}")
    n_workers = resolve_workers(workers) if engine != "ray" or address is None or workers else 0
    if not len(items):
        return
    if engine == "inline":
        results = _run_inline(worker_cls, worker_args, items)
    elif engine == "pool":
        results = _run_pool(worker_cls, worker_args, items, n_workers, max_in_flight,
                            worker_env(threads_per_worker, env), threads_per_worker)
    else:
        results = _run_ray(worker_cls, worker_args, items, n_workers, address, max_in_flight,
                           worker_env(threads_per_worker, env), threads_per_worker)
    counts: collections.Counter[str] = collections.Counter()
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress,
              dynamic_ncols=True) as bar, contextlib.closing(results):
        for row in results:
            counts[str(row.get("status", "?"))] += 1
            bar.set_postfix(dict(sorted(counts.items())), refresh=False)
            bar.update(1)
            yield row
    logger.info("%s: %d items, %s", desc, sum(counts.values()),
                ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def _in_flight_limit(max_in_flight: int, n_workers: int) -> int:
    return max_in_flight if max_in_flight > 0 else 2 * n_workers


# ---------------------------------------------------------------------------------------- inline


def _run_inline(worker_cls: type, worker_args: tuple, items: Sequence[dict]) -> Iterator[dict]:
    worker = worker_cls(*worker_args)
    for item in items:
        yield call_worker(worker, item)


# ------------------------------------------------------------------------------------------ pool


def _child_main(conn: Any, worker_cls: type, worker_args: tuple, threads: int) -> None:
    """Body of a pool child: construct the worker once, then answer items in FIFO order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    _limit_torch_threads(threads)  # torch may already be imported by worker_cls's module
    try:
        worker = worker_cls(*worker_args)
    except BaseException as exc:
        try:
            conn.send(("init_error", exc))
        except Exception:  # unpicklable exception: send its text
            conn.send(("init_error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        return
    _limit_torch_threads(threads)
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except EOFError:  # parent went away
            return
        if item is None:
            return
        conn.send(("row", call_worker(worker, item)))


class _Child:
    """One pool process, its pipe, and the items sent to it (FIFO: the first one is running)."""

    def __init__(self, ctx: Any, worker_cls: type, worker_args: tuple, threads: int,
                 env: dict[str, str]) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_child_main, name="dfpipe-worker", daemon=True,
                                args=(child_conn, worker_cls, worker_args, threads))
        with _environ(env):
            self.proc.start()
        child_conn.close()
        self.ready = False
        self.broken = False  # its pipe failed: it died and bury() will handle it
        self.queue: collections.deque[dict] = collections.deque()

    def death_reason(self) -> str:
        self.proc.join(5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return f"{DIED} ({how})"

    def stop(self, graceful: bool) -> None:
        if graceful and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


class _Pool:
    """Spawned children with per-child FIFO queues; see the module docstring for death handling."""

    def __init__(self, worker_cls: type, worker_args: tuple, items: Sequence[dict],
                 n_workers: int, max_in_flight: int, env: dict[str, str], threads: int) -> None:
        self.worker_cls, self.worker_args, self.env, self.threads = (worker_cls, worker_args,
                                                                     env, threads)
        self.limit = _in_flight_limit(max_in_flight, n_workers)
        self.n_procs = max(1, min(n_workers, self.limit, len(items)))
        self.ctx = multiprocessing.get_context("spawn")
        self.source = iter(items)
        self.exhausted = False
        self.retry: collections.deque[dict] = collections.deque()  # sent before new items
        self.deaths: collections.Counter[Any] = collections.Counter()  # item id -> deaths
        self.start_deaths = 0
        self.children: list[_Child] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    def spawn(self) -> None:
        self.children.append(_Child(self.ctx, self.worker_cls, self.worker_args, self.threads,
                                    self.env))

    def next_item(self) -> dict | None:
        if self.retry:
            return self.retry.popleft()
        if not self.exhausted:
            item = next(self.source, None)
            if item is not None:
                return item
            self.exhausted = True
        return None

    def refill(self) -> None:
        while self.in_flight < self.limit:
            item = self.next_item()
            if item is None:
                return
            child = min(self.children, key=lambda c: (c.broken, len(c.queue)))
            child.queue.append(item)  # a dead child's queue is re-queued by bury()
            try:
                child.conn.send(item)
            except OSError:  # died and not yet buried (BrokenPipeError)
                child.broken = True
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def drain(self, child: _Child) -> Iterator[dict]:
        """Everything the child has sent so far (rows are yielded; an init error is raised)."""
        while True:
            try:
                if not child.conn.poll():
                    return
                kind, payload = child.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "init_error":
                if hasattr(payload, "add_note"):
                    payload.add_note(f"raised constructing {self.worker_cls.__name__} "
                                     "in a pool worker process")
                raise payload
            if kind == "ready":
                child.ready = True
                self.start_deaths = 0
                continue
            child.queue.popleft()
            self.in_flight -= 1
            yield payload
            self.refill()

    def bury(self, child: _Child) -> Iterator[dict]:
        """A child died: retry or fail the item it was running, re-queue the rest, replace it."""
        reason = child.death_reason()
        self.children.remove(child)
        child.stop(graceful=False)
        queued = list(child.queue)
        self.in_flight -= len(queued)
        logger.warning("%s (pid %s) with %d item(s) in its queue", reason, child.proc.pid,
                       len(queued))
        if child.ready and queued:
            culprit, queued = queued[0], queued[1:]
            self.deaths[culprit.get("id")] += 1
            if self.deaths[culprit.get("id")] > ITEM_RETRIES:
                yield {"id": culprit.get("id"), "status": "error",
                       "reason": f"{reason}; retried {ITEM_RETRIES}x"}
            else:
                queued.insert(0, culprit)
        elif not child.ready:
            self.start_deaths += 1
            if self.start_deaths >= _MAX_START_DEATHS:
                raise PipelineError(f"worker processes for {self.worker_cls.__name__} keep dying "
                                    f"during start-up ({reason}); check memory and the worker")
        self.retry.extendleft(reversed(queued))
        if self.retry or not self.exhausted or self.in_flight:
            self.spawn()
        self.refill()

    def run(self) -> Iterator[dict]:
        graceful = False
        try:
            for _ in range(self.n_procs):
                self.spawn()
            self.refill()
            while self.in_flight:
                conns = {c.conn: c for c in self.children}
                procs = {c.proc.sentinel: c for c in self.children}
                ready = mp_wait(list(conns) + list(procs))
                for obj in ready:
                    child = conns.get(obj) or procs.get(obj)
                    if child not in self.children:  # already handled in this round
                        continue
                    yield from self.drain(child)
                    if not child.proc.is_alive():
                        yield from self.bury(child)
            graceful = True
        finally:
            logger.debug("pool: peak %d items in flight", self.peak_in_flight)
            for child in self.children:
                child.stop(graceful)


def _run_pool(worker_cls: type, worker_args: tuple, items: Sequence[dict], n_workers: int,
              max_in_flight: int, env: dict[str, str], threads: int) -> Iterator[dict]:
    yield from _Pool(worker_cls, worker_args, items, n_workers, max_in_flight, env, threads).run()


# ------------------------------------------------------------------------------------------- ray

RAY_INSTALL = "pip install 'dfpipe[dist]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"engine 'ray' needs ray, which is not installed: "
                                     f"{RAY_INSTALL}") from exc
    return ray


def start_local_ray(num_cpus: int) -> None:
    """Start an embedded single-node Ray whose servers listen on loopback only.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough on Linux: Ray rewrites a
    loopback node address to the machine's routable IP and its gRPC servers then listen on all
    interfaces. Ray only keeps the loopback address when its "clusters enabled" flag is off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at import time into
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``), so both are switched off while the node
    starts. Verified with ``ss -ltnp``: GCS, raylet, agents and workers listen on 127.0.0.1 only.
    """
    ray = _import_ray()
    try:
        from ray._private import ray_constants
    except ImportError:  # layout changed: the environment variable still reaches child processes
        ray_constants = None
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if ray_constants is not None and saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    t0 = time.perf_counter()
    try:
        with _environ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                       "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}):
            # "local": always a new embedded node, even when RAY_ADDRESS is set
            ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                     _node_ip_address="127.0.0.1", log_to_driver=False,
                     logging_level=logging.WARNING)
    finally:
        if ray_constants is not None and saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved
    logger.info("started embedded Ray on 127.0.0.1 with %d CPUs in %.1f s", num_cpus,
                time.perf_counter() - t0)


class _ActorHost:
    """Body of a Ray actor: one worker instance, called once per item."""

    def __init__(self, worker_cls: type, worker_args: tuple, threads: int) -> None:
        self.init_error: BaseException | None = None
        _limit_torch_threads(threads)
        try:
            self.worker = worker_cls(*worker_args)
        except Exception as exc:  # re-raised by ready() so the driver sees the original type
            self.init_error = exc
        _limit_torch_threads(threads)

    def ready(self) -> int:
        if self.init_error is not None:
            raise self.init_error
        return os.getpid()

    def call(self, item: dict) -> dict:
        return call_worker(self.worker, item)


def _run_ray(worker_cls: type, worker_args: tuple, items: Sequence[dict], n_workers: int,
             address: str | None, max_in_flight: int, env: dict[str, str],
             threads: int) -> Iterator[dict]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            start_local_ray(n_workers * threads)
            started = True
        else:
            t0 = time.perf_counter()
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            logger.info("connected to Ray at %s in %.1f s", address, time.perf_counter() - t0)
    actors: list[Any] = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if n_workers <= 0:  # an existing cluster, workers=0: fill it
            n_workers = max(1, cpus // threads)
        if n_workers * threads > cpus:
            logger.warning("%d Ray workers x %d threads > %d CPUs in the cluster: using %d",
                           n_workers, threads, cpus, max(1, cpus // threads))
            n_workers = max(1, cpus // threads)
        limit = _in_flight_limit(max_in_flight, n_workers)
        n_actors = max(1, min(n_workers, limit, len(items)))
        if started:  # same machine: actors import what the driver imports (tests/, scripts)
            paths = [p for p in sys.path if p and os.path.isdir(p)]
            if os.environ.get("PYTHONPATH"):
                paths.append(os.environ["PYTHONPATH"])
            env = {"PYTHONPATH": os.pathsep.join(paths), **env}
        host = ray.remote(_ActorHost).options(
            num_cpus=threads, max_restarts=-1, max_task_retries=ITEM_RETRIES,
            runtime_env={"env_vars": env})
        t0 = time.perf_counter()
        actors = [host.remote(worker_cls, worker_args, threads) for _ in range(n_actors)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayTaskError as exc:  # the worker's constructor raised
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            raise cause from None
        except ray.exceptions.RayActorError as exc:  # e.g. worker_cls not importable there
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise PipelineError(f"Ray workers for {worker_cls.__module__}.{worker_cls.__name__} "
                                f"could not start: {lines[-1] if lines else exc!r}") from exc
        logger.info("%d Ray actors ready in %.1f s", n_actors, time.perf_counter() - t0)

        source = iter(items)
        pending: dict[Any, tuple[int, dict]] = {}  # object ref -> (actor index, item)
        load = [0] * n_actors

        def refill() -> None:
            while len(pending) < limit:
                item = next(source, None)
                if item is None:
                    return
                idx = min(range(n_actors), key=load.__getitem__)
                pending[actors[idx].call.remote(item)] = (idx, item)
                load[idx] += 1

        refill()
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            idx, item = pending.pop(ref)
            load[idx] -= 1
            try:
                row = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # died and retried: give up on it
                row = {"id": item.get("id"), "status": "error",
                       "reason": f"{DIED} ({type(exc).__name__}); retried {ITEM_RETRIES}x"}
            except ray.exceptions.RayError as exc:
                row = error_row(item.get("id"), exc)
            yield row
            refill()
    finally:
        if started:
            ray.shutdown()
        else:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
