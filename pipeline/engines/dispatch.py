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

The engines live in ``pipeline.engines.pool`` and ``pipeline.engines.ray_actors``; the default worker
count (usable cores and memory) in ``pipeline.core.resources``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from pipeline.core.errors import ConfigError
from pipeline.core.resources import resolve_workers
from pipeline.engines.common import call_worker, worker_env

logger = logging.getLogger(__name__)

ENGINES = ("inline", "pool", "ray")


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
        from pipeline.engines.pool import _run_pool

        results = _run_pool(worker_cls, worker_args, items, n_workers, max_in_flight,
                            worker_env(threads_per_worker, env), threads_per_worker)
    else:
        from pipeline.engines.ray_actors import _run_ray

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


# ---------------------------------------------------------------------------------------- inline


def _run_inline(worker_cls: type, worker_args: tuple, items: Sequence[dict]) -> Iterator[dict]:
    worker = worker_cls(*worker_args)
    for item in items:
        yield call_worker(worker, item)
