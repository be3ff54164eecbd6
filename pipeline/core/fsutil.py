"""Atomic file writes and checksums.

Every output is written to a temporary name in the same folder and ``os.replace``d into place,
so a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``.

    Args:
        path: final location.
        is_dir: yield a temporary *directory* (an existing ``path`` directory is replaced whole).

    On an exception the temporary is removed and ``path`` is left untouched. The result gets the
    permissions a plain ``open``/``mkdir`` would give under the current umask (``mkstemp`` and
    ``mkdtemp`` make 0600/0700), and the parent folder is fsync'd after the rename so the new
    name survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = current_umask()
        if is_dir:
            os.chmod(tmp, 0o777 & ~umask)
            if path.exists():
                old = path.with_name(TMP_PREFIX + path.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def current_umask() -> int:
    """The process umask: from /proc on Linux (thread-safe), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where dirs can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale_temps(folder: str | os.PathLike,
                       owned: Callable[[str], bool] | None = None) -> int:
    """Delete leftovers of interrupted atomic writes in ``folder``; return how many.

    Args:
        folder: where the atomic writes happened.
        owned: if given, only leftovers of final names ``owned(name)`` accepts are deleted (a
            sharded run must not delete another shard's writes in progress).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        if owned is not None and not owned(temp_target(p.name)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        n += 1
    return n


def temp_target(temp_name: str) -> str:
    """The final name a temporary of ``atomic_path`` stands for (``.tmp-<name>.<random>``)."""
    return temp_name.removeprefix(TMP_PREFIX).rsplit(".", 1)[0]


_DIGESTS: dict[tuple, str] = {}
"""(path, device, inode, size, mtime_ns) -> digest of files of ``CACHE_BYTES`` or more: a big
file hashed again unchanged (prepare records its 370 MB faces input in four sidecars) is not
read again. Smaller files are always read (an edit within the clock's mtime granularity that
keeps the size must still show)."""

CACHE_BYTES = 64 << 20


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (remembered while the file's size and mtime stay)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if st.st_size >= CACHE_BYTES and key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    if st.st_size >= CACHE_BYTES:
        if len(_DIGESTS) > 1024:
            _DIGESTS.clear()
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()
