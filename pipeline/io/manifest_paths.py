"""Manifest names -> files; stored crop paths <-> the faces root.

Input: a manifest folder and kind, or a manifest path in either format (``x.parquet``, legacy
``x.csv``). Output: the file that is there (``manifest_path``, ``resolve_existing``), its
sidecar path and metadata (``meta_path``, ``read_meta``), and crop paths made relative to or
joined with the faces root the metadata records (``relative_crop_paths``, ``faces_root``,
``absolute_crop_paths``), so a faces folder can be moved or mounted elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import ManifestError
from pipeline.io.manifest_schema import META_KEY

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PARQUET = ".parquet"
LEGACY = ".csv"
SUFFIXES = (PARQUET, LEGACY)

ROOT_ENV = "DFPIPE_FACES_ROOT"
"""Environment variable that overrides every manifest's faces root (a mount point elsewhere)."""


def meta_path(path: str | os.PathLike) -> Path:
    """Sidecar path of a manifest: ``x.parquet`` or ``x.csv`` -> ``x.meta.json``."""
    p = Path(path)
    name = p.name
    for suf in SUFFIXES:
        name = name.removesuffix(suf) if name.endswith(suf) else name
    return p.with_name(name + ".meta.json")


def _other_format(path: Path) -> Path:
    """``x.parquet`` <-> ``x.csv`` (the same manifest in the other format)."""
    if path.suffix == PARQUET:
        return path.with_suffix(LEGACY)
    if path.suffix == LEGACY:
        return path.with_suffix(PARQUET)
    return path


def resolve_existing(path: str | os.PathLike) -> Path:
    """``path`` if it exists, else the same manifest in the other format if that exists, else
    ``path`` (a reader of ``split.csv`` finds a ``split.parquet`` written by this version)."""
    p = Path(path)
    if p.exists():
        return p
    other = _other_format(p)
    return other if other.exists() else p


def relative_crop_paths(paths: pd.Series, root: str | os.PathLike) -> pd.Series:
    """Crop paths relative to ``root`` ("" stays ""); a path outside ``root`` stays absolute."""
    prefix = str(Path(root).resolve()).rstrip("/") + "/"
    s = paths.astype("string").fillna("")
    inside = s.str.startswith(prefix)
    return s.where(~inside, s.str.slice(len(prefix)))


def faces_root(meta: dict[str, Any], manifest: str | os.PathLike | None = None) -> Path | None:
    """Where the relative crop paths of a manifest point, or None when it records no root.

    Order: ``$DFPIPE_FACES_ROOT`` (the faces folder mounted elsewhere); the recorded root taken
    relative to the manifest's folder (faces and manifests moved together); the recorded
    absolute root. When none exists the recorded absolute root is returned (loading a crop then
    names the missing file) and a warning says how to point elsewhere.
    """
    if not meta.get("faces_root"):
        return None
    env = os.environ.get(ROOT_ENV, "")
    if env:
        return Path(env).resolve()
    candidates = []
    if manifest is not None and meta.get("faces_root_rel"):
        candidates.append(Path(manifest).parent / meta["faces_root_rel"])
    candidates.append(Path(meta["faces_root"]))
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    logger.warning("%s: faces root %s not found (moved? set %s=/new/place)", manifest,
                   " or ".join(map(str, candidates)), ROOT_ENV)
    return Path(meta["faces_root"])


def absolute_crop_paths(paths: pd.Series, root: Path | None) -> pd.Series:
    """Join relative crop paths with ``root`` ("" and absolute paths stay as they are)."""
    s = paths.astype("string").fillna("")
    if root is None:
        return s
    rel = (s != "") & ~s.str.startswith("/")
    return s.where(~rel, str(root).rstrip("/") + "/" + s)

def _read_parquet_meta(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}

def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar dict of a manifest; a Parquet file's own metadata when the sidecar is absent;
    empty dict when neither exists."""
    mp = meta_path(path)
    if not mp.is_file():
        p = resolve_existing(path)
        if p.suffix == PARQUET and p.is_file():
            return _read_parquet_meta(p)
        return {}
    try:
        return json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mp}: invalid JSON sidecar: {e}") from e


def manifest_path(manifest_dir: str | os.PathLike, kind: str) -> Path:
    """Location of manifest ``kind`` in a manifest folder: ``kind.parquet``, or a legacy
    ``kind.csv`` when only that exists (written by an earlier version)."""
    p = Path(manifest_dir) / f"{kind}{PARQUET}"
    return resolve_existing(p)
