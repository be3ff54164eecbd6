"""What every engine shares: the worker call with its safety net, error rows, the retry and
death rules, thread caps and the environment children start with."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("pipeline.engines.dispatch")

#: exit reason prefix for items whose worker process died under them
DIED = "worker process died"
#: times an item may be re-run after its worker process died under it (pool and Ray)
ITEM_RETRIES = 1
#: consecutive pool child deaths during start-up (before the worker is constructed) tolerated
_MAX_START_DEATHS = 3


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


def _in_flight_limit(max_in_flight: int, n_workers: int) -> int:
    return max_in_flight if max_in_flight > 0 else 2 * n_workers
