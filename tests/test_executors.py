"""pipeline.engines.dispatch: inline / pool / Ray give the same rows; safety net; bounds; kills.

The worker classes live at the top of this module: spawned pool children and Ray workers import
them as ``test_executors`` (pytest puts tests/ on sys.path; both engines pass sys.path on).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError, MissingDependencyError
from pipeline.core.resources import resolve_workers
from pipeline.engines.common import DIED
from pipeline.engines.dispatch import run_items

CONSTRUCTED = 0  # ProbeWorker constructions in this process


def _start_environ() -> dict[str, str]:
    """The environment this process was exec'ed with (what glibc saw at start)."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


class ProbeWorker:
    """Test worker: ``{"id", "status": "ok", "y": x*x}`` plus where and how it ran.

    ``item["kind"]``: "raise" (escapes an exception), "kill_once" (kill -9 of its own process
    the first time, via a marker file), "kill_always", "busy" (counts simultaneous calls in a
    locked file), "probe" (reports thread settings and the start environment).
    """

    def __init__(self, tmp: str, fail_init: bool = False) -> None:
        global CONSTRUCTED
        if fail_init:
            raise FileNotFoundError(f"model weights missing in {tmp}")
        CONSTRUCTED += 1
        self.constructed = CONSTRUCTED
        self.tmp = Path(tmp)

    def _busy(self) -> None:
        counter = self.tmp / "concurrency"
        with open(counter, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            cur, peak = map(int, (fh.read() or "0 0").split())
            cur += 1
            fh.seek(0)
            fh.truncate()
            fh.write(f"{cur} {max(cur, peak)}")
        time.sleep(0.15)
        with open(counter, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            cur, peak = map(int, fh.read().split())
            fh.seek(0)
            fh.truncate()
            fh.write(f"{cur - 1} {peak}")

    def __call__(self, item: dict) -> dict:
        kind = item.get("kind")
        if kind == "raise":
            raise ValueError("bad frame\nsecond line of the message")
        if kind == "kill_once":
            marker = self.tmp / f"killed-{item['id']}"
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), 9)
        if kind == "kill_always":
            os.kill(os.getpid(), 9)
        if kind == "busy":
            self._busy()
        row = {"id": item["id"], "status": "ok", "y": item.get("x", 0) ** 2,
               "pid": os.getpid(), "instance": id(self), "constructed": self.constructed}
        if kind == "probe":
            import torch

            start = _start_environ()
            row.update(torch_threads=torch.get_num_threads(),
                       omp=os.environ.get("OMP_NUM_THREADS"),
                       start_env={k: start.get(k) for k in ("MALLOC_MMAP_THRESHOLD_",
                                                            "DFPIPE_PROBE", "OMP_NUM_THREADS")})
        return row


class TorchWorker(ProbeWorker):
    """Imports torch in its constructor (as the real workers do)."""

    def __init__(self, tmp: str) -> None:
        import torch  # noqa: F401

        super().__init__(tmp)


def _items(n: int, **extra: object) -> list[dict]:
    return [{"id": f"v{i}", "x": i, **extra} for i in range(n)]


def _run(engine: str, items: Sequence[dict], tmp: Path, **kw: object) -> list[dict]:
    kw.setdefault("workers", 2)
    return list(run_items(kw.pop("cls", ProbeWorker), (str(tmp),), items, engine=engine,
                          progress=False, **kw))


def _by_id(rows: list[dict]) -> dict[str, dict]:
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate rows: {sorted(ids)}"
    return {r["id"]: r for r in rows}


# ------------------------------------------------------------------------------ inline and pool

def test_resolve_workers() -> None:
    assert resolve_workers(3) == 3
    assert 1 <= resolve_workers(0) <= (os.cpu_count() or 1)
    with pytest.raises(ConfigError):
        resolve_workers(-1)


GiB = 1024**3


def _fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_default_workers_follow_affinity_and_cgroup_v2_quota(tmp_path: Path, monkeypatch) -> None:
    """Issue #12.16: workers=0 fits the cores the process may use, not os.cpu_count()."""
    from pipeline.core.resources import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    plenty = {"proc/meminfo": f"MemTotal: {256 * GiB // 1024} kB\nMemAvailable: {200 * GiB // 1024} kB\n"}
    root = _fake_root(tmp_path / "a", plenty)
    assert usable_cpus(root) == 6 and resolve_workers(0, root=root) == 6
    # cgroup v2: 2.5 CPUs on the job's own cgroup (found through /proc/self/cgroup), max above it
    root = _fake_root(tmp_path / "b", {**plenty, "proc/self/cgroup": "0::/jobs/42\n",
                                       "sys/fs/cgroup/cpu.max": "max 100000\n",
                                       "sys/fs/cgroup/jobs/42/cpu.max": "250000 100000\n"})
    assert resolve_workers(0, root=root) == 2
    # a limit on a parent cgroup applies too
    root = _fake_root(tmp_path / "c", {**plenty, "proc/self/cgroup": "0::/jobs/42\n",
                                       "sys/fs/cgroup/jobs/cpu.max": "100000 100000\n",
                                       "sys/fs/cgroup/jobs/42/cpu.max": "max 100000\n"})
    assert resolve_workers(0, root=root) == 1


def test_default_workers_follow_cgroup_v1_quota_and_memory(tmp_path: Path, monkeypatch) -> None:
    from pipeline.core.resources import usable_memory

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    root = _fake_root(tmp_path, {
        "proc/meminfo": f"MemAvailable: {100 * GiB // 1024} kB\n",
        "proc/self/cgroup": "4:memory:/job\n1:cpu,cpuacct:/job\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "800000\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/memory/job/memory.limit_in_bytes": f"{9 * GiB}\n",
        "sys/fs/cgroup/memory/job/memory.usage_in_bytes": f"{2 * GiB}\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1: no limit
    })
    assert usable_memory(root) == 7 * GiB
    # 8 CPUs by quota, but 7 GiB free in the cgroup / 2 GiB per worker -> 3
    assert resolve_workers(0, root=root) == 3
    assert resolve_workers(0, root=root, per_worker_bytes=GiB // 2) == 8
    assert resolve_workers(5, root=root) == 5  # an explicit count is obeyed
    # MemAvailable alone, when no cgroup limits it
    root2 = _fake_root(tmp_path / "v2", {"proc/meminfo": f"MemAvailable: {3 * GiB // 1024} kB\n",
                                         "proc/self/cgroup": "0::/\n",
                                         "sys/fs/cgroup/memory.max": "max\n"})
    assert usable_memory(root2) == 3 * GiB and resolve_workers(0, root=root2) == 1


def test_bad_engine_and_empty_items(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        _run("spark", _items(1), tmp_path)
    assert _run("pool", [], tmp_path) == []


@pytest.mark.parametrize("engine", ["inline", "pool"])
def test_same_rows_and_one_construction_per_process(engine: str, tmp_path: Path) -> None:
    rows = _by_id(_run(engine, _items(8), tmp_path))
    assert {k: r["y"] for k, r in rows.items()} == {f"v{i}": i * i for i in range(8)}
    instances: dict[int, set[int]] = {}
    for r in rows.values():
        instances.setdefault(r["pid"], set()).add(r["instance"])
    assert all(len(v) == 1 for v in instances.values()), instances  # one worker per process
    if engine == "inline":
        assert set(instances) == {os.getpid()}
    else:
        assert os.getpid() not in instances and 1 <= len(instances) <= 2
        assert {r["constructed"] for r in rows.values()} == {1}  # fresh spawned processes


@pytest.mark.parametrize("engine", ["inline", "pool"])
def test_escaped_exception_becomes_error_row(engine: str, tmp_path: Path) -> None:
    items = _items(5)
    items[2]["kind"] = "raise"
    rows = _by_id(_run(engine, items, tmp_path))
    assert rows["v2"] == {"id": "v2", "status": "error", "reason": "ValueError: bad frame"}
    assert [rows[f"v{i}"]["status"] for i in (0, 1, 3, 4)] == ["ok"] * 4


@pytest.mark.parametrize("engine", ["inline", "pool"])
def test_constructor_error_is_raised(engine: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model weights missing"):
        list(run_items(ProbeWorker, (str(tmp_path), True), _items(3), engine=engine, workers=2,
                       progress=False))


class RecordingItems(Sequence):
    """A sequence that records, for every item the executor reads, how many rows were out."""

    def __init__(self, items: list[dict]) -> None:
        self.items, self.yielded, self.reads = items, 0, []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        self.reads.append((i, self.yielded))
        return self.items[i]


@pytest.mark.parametrize("engine,max_in_flight", [("inline", 0), ("pool", 3), ("pool", 0)])
def test_max_in_flight_bounds_items_read_ahead(engine: str, max_in_flight: int,
                                               tmp_path: Path) -> None:
    items = RecordingItems(_items(12))
    for _ in run_items(ProbeWorker, (str(tmp_path),), items, engine=engine, workers=2,
                       max_in_flight=max_in_flight, progress=False):
        items.yielded += 1
    bound = 1 if engine == "inline" else (max_in_flight or 4)  # 0: 2 per worker
    reads = [(i, y) for i, y in items.reads if i < 12]  # the iterator's final IndexError probe
    assert [i for i, _ in reads] == list(range(12))  # each item read once, lazily, in order
    assert max(i + 1 - y for i, y in reads) <= bound


def test_max_in_flight_one_means_one_running_item(tmp_path: Path) -> None:
    rows = _run("pool", _items(4, kind="busy"), tmp_path, max_in_flight=1)
    assert {r["status"] for r in rows} == {"ok"}
    assert (tmp_path / "concurrency").read_text() == "0 1"  # never two items at once


def test_pool_threads_and_env_reach_children(tmp_path: Path) -> None:
    env = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "DFPIPE_PROBE": "yes"}
    before = dict(os.environ)
    rows = _run("pool", _items(2, kind="probe"), tmp_path, cls=TorchWorker,
                threads_per_worker=3, env=env)
    for r in rows:
        assert r["torch_threads"] == 3 and r["omp"] == "3"
        # present in the environment the child was exec'ed with, so glibc saw MALLOC_*
        assert r["start_env"] == {"MALLOC_MMAP_THRESHOLD_": "1073741824", "DFPIPE_PROBE": "yes",
                                  "OMP_NUM_THREADS": "3"}
    assert dict(os.environ) == before  # the parent's environment is restored


def test_pool_survives_kill_9(tmp_path: Path) -> None:
    items = _items(8)
    items[2]["kind"] = "kill_once"
    items[5]["kind"] = "kill_always"
    rows = _by_id(_run("pool", items, tmp_path))
    assert rows["v2"]["status"] == "ok"  # retried once on a fresh process
    assert (tmp_path / "killed-v2").exists()
    assert rows["v5"]["status"] == "error"
    assert rows["v5"]["reason"] == f"{DIED} (killed by SIGKILL); retried 1x"
    assert {k for k, r in rows.items() if r["status"] == "ok"} == set(rows) - {"v5"}
    assert all(rows[f"v{i}"]["y"] == i * i for i in (0, 1, 2, 3, 4, 6, 7))


def test_pool_stops_children_when_caller_stops_early(tmp_path: Path) -> None:
    rows = run_items(ProbeWorker, (str(tmp_path),), _items(20), engine="pool", workers=2,
                     progress=False)
    first = next(rows)
    assert first["status"] == "ok" and first["pid"] in _descendants(os.getpid())
    rows.close()  # e.g. the caller broke out of its loop or raised
    left = {p for p in _descendants(os.getpid()) - {os.getpid()}
            if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()}
    assert left == set()  # (multiprocessing's resource tracker lives on, by design)


# ------------------------------------------------------------------------------------------- ray

def test_ray_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dfpipe\[dist\]'"):
        _run("ray", _items(1), tmp_path)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def _listen_addresses(pids: set[int]) -> set[str]:
    """Local addresses of TCP sockets in LISTEN state owned by ``pids`` (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*") if Path(f"/proc/{pid}").exists() else []:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    addrs = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addrs.add(cols[1].split(":")[0])
    return addrs


def _is_loopback(hex_addr: str) -> bool:
    if len(hex_addr) == 8:  # IPv4, little-endian: 127.x.x.x ends in 7F
        return hex_addr.endswith("7F")
    # IPv6: ::1, or ::ffff:127.x.x.x (v4-mapped)
    return hex_addr == "00000000000000000000000001000000" or (
        hex_addr.startswith("0000000000000000FFFF0000") and hex_addr.endswith("7F"))


@pytest.mark.ray
@pytest.mark.slow
def test_ray_embedded_rows_env_threads_loopback(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    items = _items(6) + [{"id": "p", "kind": "probe"}, {"id": "e", "kind": "raise"}]
    rows, listening = [], set()
    for row in run_items(ProbeWorker, (str(tmp_path),), items, engine="ray", workers=2,
                         env={"MALLOC_MMAP_THRESHOLD_": "1073741824", "DFPIPE_PROBE": "yes"},
                         threads_per_worker=1, progress=False):
        if not rows:  # while our embedded Ray runs
            listening = _listen_addresses(_descendants(os.getpid()) - {os.getpid()})
        rows.append(row)
    assert not ray.is_initialized()  # we started it, so we shut it down
    assert listening and all(_is_loopback(a) for a in listening), listening
    by_id = _by_id(rows)
    assert {k: r["y"] for k, r in by_id.items() if k.startswith("v")} == {
        f"v{i}": i * i for i in range(6)}
    assert by_id["e"] == {"id": "e", "status": "error", "reason": "ValueError: bad frame"}
    assert by_id["p"]["torch_threads"] == 1
    assert by_id["p"]["start_env"] == {"MALLOC_MMAP_THRESHOLD_": "1073741824",
                                       "DFPIPE_PROBE": "yes", "OMP_NUM_THREADS": "1"}
    ok = [r for r in rows if r["status"] == "ok"]
    pids = {r["pid"] for r in ok}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(len({r["instance"] for r in ok if r["pid"] == p}) == 1 for p in pids)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_killed_actor_item_is_retried(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    items = _items(6)
    items[3]["kind"] = "kill_once"
    rows = _by_id(_run("ray", items, tmp_path))
    assert (tmp_path / "killed-v3").exists()  # it really died once
    assert {k: (r["status"], r["y"]) for k, r in rows.items()} == {
        f"v{i}": ("ok", i * i) for i in range(6)}
    assert rows["v3"]["constructed"] == 1  # on a restarted actor: a fresh process


def test_decode_threads_are_the_workers_share_of_the_cores(monkeypatch):
    import pipeline.core.resources as resources
    from pipeline.extract.stage import decode_threads_for

    monkeypatch.setattr(resources, "usable_cpus", lambda root="/": 2)
    assert [decode_threads_for(w) for w in (1, 2, 3, 0)] == [2, 1, 1, 2]
    monkeypatch.setattr(resources, "usable_cpus", lambda root="/": 16)
    assert [decode_threads_for(w) for w in (1, 4, 5)] == [16, 4, 3]


def test_prefetch_with_and_without_a_decode_thread_gives_the_same_batches():
    import threading

    import numpy as np

    from pipeline.io.prefetch import prefetch

    threads = []

    def batches():
        for k in range(5):
            threads.append(threading.current_thread())
            yield [k], np.full((1, 2, 2, 3), k, np.uint8)

    ahead = [(i, b.copy()) for i, b in prefetch(batches(), 1)]
    assert all(t is not threading.main_thread() for t in threads)
    threads.clear()
    inline = list(prefetch(batches(), 0))
    assert all(t is threading.main_thread() for t in threads)
    assert [i for i, _ in ahead] == [i for i, _ in inline] == [[k] for k in range(5)]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ahead, inline, strict=True))


def test_an_extract_worker_process_does_not_import_pandas():
    """Every pool child imports the worker's module (``pipeline.extract.worker``, where
    ``ExtractWorker`` lives) and what it runs; pandas (0.4 s per process, before any video)
    belongs to the driver, which writes the manifests."""
    import subprocess
    import sys

    from pipeline.extract.worker import ExtractWorker

    assert ExtractWorker.__module__ == "pipeline.extract.worker"
    code = ("import sys, pipeline.extract.worker, pipeline.engines.pool, pipeline.faces.video, "
            "pipeline.faces.detect, pipeline.faces.track_verify; print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
