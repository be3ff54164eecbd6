"""The ``ray`` engine of ``pipeline.engines.dispatch``: one Ray actor per worker.

Actors have ``max_restarts=-1`` and ``max_task_retries=1``: a killed actor is restarted (its
constructor runs again) and its tasks are retried once. Without an address an embedded
single-node Ray is started bound to loopback only and shut down at the end; with one, the driver
joins that cluster (``connect_ray``) and only its own actors are killed at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import MissingDependencyError, PipelineError
from pipeline.engines.common import (
    DIED,
    ITEM_RETRIES,
    _environ,
    _in_flight_limit,
    _limit_torch_threads,
    call_worker,
    error_row,
)

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'dfpipe[dist]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(f"engine 'ray' needs ray, which is not installed: "
                                     f"{RAY_INSTALL}") from exc
    return ray


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host.startswith("ray://"):
        host = host[len("ray://"):]
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray keeps loopback addresses as they are while this is active (see ``start_local_ray``)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # layout changed: the environment variable still reaches child processes
        ray_constants = None
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if ray_constants is not None and saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                       "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}):
            yield
    finally:
        if ray_constants is not None and saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


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
    t0 = time.perf_counter()
    with _loopback_only():
        # "local": always a new embedded node, even when RAY_ADDRESS is set
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                 _node_ip_address="127.0.0.1", log_to_driver=False,
                 logging_level=logging.WARNING)
    logger.info("started embedded Ray on 127.0.0.1 with %d CPUs in %.1f s", num_cpus,
                time.perf_counter() - t0)


def connect_ray(address: str) -> None:
    """Join the running cluster at ``address`` as a driver.

    Token authentication (on by default since Ray 2.5x) is Ray's own: the driver presents the
    cluster's token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``
    (``RAY_AUTH_MODE=token``). A loopback address (a cluster of nodes on this machine, e.g.
    ``scripts/ray_local_cluster.sh``) is kept as given: Ray would otherwise replace it by the
    machine's routable IP, where a loopback-bound cluster does not answer.
    """
    ray = _import_ray()
    t0 = time.perf_counter()
    ctx = _loopback_only() if _is_loopback(address) else contextlib.nullcontext()
    try:
        with ctx:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PipelineError(f"could not connect to the Ray cluster at {address}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                            f"(a cluster with token authentication needs its token: "
                            f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)") from exc
    logger.info("connected to Ray at %s in %.1f s", address, time.perf_counter() - t0)


def _import_roots(worker_cls: type) -> list[str]:
    """The folders from which an actor on this machine imports ``worker_cls`` and ``pipeline``."""
    roots = []
    for name in (worker_cls.__module__, __name__):
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if not file:
            continue
        root = Path(file).resolve().parent
        for _ in range(name.count(".")):  # pipeline.engines.ray_actors -> the folder holding pipeline/
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return roots


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
            connect_ray(address)
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
        if started:  # same machine: actors import the worker class from where the driver did
            paths = _import_roots(worker_cls)
            if os.environ.get("PYTHONPATH"):
                paths.append(os.environ["PYTHONPATH"])
            env = {"PYTHONPATH": os.pathsep.join(paths), **env}
        # a cluster's nodes import dfpipe as installed there (the same version: docs/engines.md)
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
