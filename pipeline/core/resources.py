"""What this process may use: CPU cores (affinity, cgroup quota) and memory (available, cgroup
limit) -> the default number of worker processes.

``os.cpu_count()`` counts the machine's cores, not the ones a container or a CPU-affinity mask
lets this process use; every reader takes a ``root`` so tests can point it at fake files.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)

#: estimated peak memory of one worker process (MTCNN + decoding a 1080p clip in batches of 32;
#: docs/bad-input.md's memory section measures 0.8-2.4 GiB): the default worker count divides by this
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


#: extraction workers per GPU: one decodes and crops on the CPU while another's MTCNN batch runs
#: on the device; more only queue on the same device (MTCNN needs well under 1 GiB of it)
WORKERS_PER_GPU = 2


def gpu_count(device: str) -> int:
    """CUDA devices the workers would use: 0 for ``cpu`` (or ``auto`` without CUDA)."""
    if device == "cpu":
        return 0
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_extract_workers(workers: int, device: str, *, root: str | os.PathLike = "/",
                            n_gpus: int | None = None) -> int:
    """Worker processes for extraction: ``resolve_workers`` on a CPU host; on a GPU host (device
    ``cuda``, or ``auto`` with CUDA) at most ``WORKERS_PER_GPU`` per GPU, so the workers share
    the device instead of queueing on it (still capped by the usable CPU cores and memory).
    An explicit ``workers`` > 0 is kept.

    Args:
        workers: explicit count (> 0), or 0 for the default.
        device: the extract config's device.
        root: file-system root for the CPU/memory readers (tests).
        n_gpus: CUDA devices (default: ``gpu_count(device)``).
    """
    base = resolve_workers(workers, root=root)
    if workers > 0:
        return base
    gpus = gpu_count(device) if n_gpus is None else n_gpus
    if gpus <= 0:
        return base
    n = max(1, min(base, WORKERS_PER_GPU * gpus))
    logger.info("%d worker(s) on %d GPU(s) (%d per GPU at most)", n, gpus, WORKERS_PER_GPU)
    return n
