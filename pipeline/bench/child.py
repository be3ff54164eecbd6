"""A benchmark step in a fresh interpreter: its wall seconds, exit status and own peak RSS."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_HWM = """
import atexit, os
def _dfpipe_hwm():
    with open("/proc/self/status") as f:
        kib = next(line for line in f if line.startswith("VmHWM")).split()[1]
    with open(os.environ["DFPIPE_BENCH_HWM"], "w") as f:
        f.write(kib)
atexit.register(_dfpipe_hwm)
"""
"""Prepended to a child's code: it writes its own peak RSS (VmHWM of its own address space) at
exit. ``ru_maxrss`` from ``wait4`` is not used: a child started by vfork+exec inherits the
parent's high-water mark in it."""

_CLI = "import sys\nfrom pipeline import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


def run_child(code: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run Python ``code`` with ``args`` in a fresh interpreter: its wall seconds, exit status and
    peak RSS in MiB (its own, from /proc/self/status at exit)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _HWM + code, *args],
                              env={**os.environ, **(env or {}), "DFPIPE_BENCH_HWM": str(hwm)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        peak = round(int(hwm.read_text()) / 1024) if hwm.is_file() else None
    out = proc.stdout.strip()
    if proc.returncode:
        logger.warning("%s exited %d:\n%s", " ".join(args[:3]), proc.returncode, out[-2000:])
    return {"seconds": round(wall, 2), "peak_rss_mib": peak, "rc": proc.returncode,
            "tail": out.splitlines()[-1:] if out else []}
