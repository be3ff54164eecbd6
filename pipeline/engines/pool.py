"""The ``pool`` engine of ``pipeline.engines.dispatch``: spawned worker processes with per-child queues.

Each child has its own pipe and handles its items in FIFO order, so when a child dies (kill -9,
the OOM killer) the item it was working on is known exactly: that item is retried once on a fresh
process, items queued behind it are re-queued without penalty, and an item that kills a worker
twice becomes an error row. Started with ``spawn`` (fork deadlocked once torch/FFmpeg threads
existed).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait as mp_wait
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.engines.common import (
    _MAX_START_DEATHS,
    DIED,
    ITEM_RETRIES,
    _environ,
    _in_flight_limit,
    _limit_torch_threads,
    call_worker,
)

logger = logging.getLogger(__name__)

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
            _quick_exit()
        conn.send(("row", call_worker(worker, item)))


def _quick_exit() -> None:
    """End a child whose rows are all sent, skipping interpreter teardown: tearing down torch,
    MTCNN and a worker heap tuned never to return memory took ~1 s per extract worker, spent after
    the last video (measured: 2.1 s of pool stop for 2 workers; the rows and files are written
    by then, atomically, so nothing is lost)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(0)


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
        self.asked_to_stop = False
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

    def ask_to_stop(self) -> None:
        """Send the end-of-work sentinel once (the child exits after its last row)."""
        if not self.asked_to_stop and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.asked_to_stop = True

    def stop(self, graceful: bool) -> None:
        if graceful and self.proc.is_alive():
            self.ask_to_stop()
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
            if graceful:  # every child is told first, so they exit side by side
                for child in self.children:
                    child.ask_to_stop()
            for child in self.children:
                child.stop(graceful)


def _run_pool(worker_cls: type, worker_args: tuple, items: Sequence[dict], n_workers: int,
              max_in_flight: int, env: dict[str, str], threads: int) -> Iterator[dict]:
    yield from _Pool(worker_cls, worker_args, items, n_workers, max_in_flight, env, threads).run()
