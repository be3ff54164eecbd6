"""Manifest schemas and validated, atomic read/write.

Stages talk only through these CSV tables. Each manifest ``X.csv`` has a sidecar
``X.meta.json`` with its kind, schema version, row count, the resolved config of the command
that wrote it, counts, and checksums of its inputs. ``data_manifests/README.md`` documents the
columns; ``SCHEMAS`` below is the machine-checked version of that document.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import __version__
from pipeline.errors import ManifestError
from pipeline.fsutil import atomic_write_json, atomic_write_text, sha256_file

SCHEMA_VERSION = 1

LABELS = ("REAL", "FAKE")
"""DFDC label strings; label 1 = FAKE everywhere in the models."""


@dataclass(frozen=True)
class Schema:
    """Columns (name -> pandas dtype) of one manifest kind, in order."""

    kind: str
    columns: dict[str, str]
    doc: str


SCHEMAS: dict[str, Schema] = {
    s.kind: s
    for s in [
        Schema(
            "videos",
            {
                "video_id": "string",  # file stem, unique across parts (DFDC ids are)
                "part": "string",  # folder name (dfdc_train_part_N) or "" for loose files
                "path": "string",  # absolute path of the video file
                "label": "string",  # REAL | FAKE | "" (unknown: not in metadata)
                "original": "string",  # original's video_id for fakes, "" otherwise
                "fps": "float64",
                "n_frames": "Int64",
                "n_frames_lost": "Int64",  # frames that could not be decoded (damaged packets)
                "width": "Int64",
                "height": "Int64",
                "n_face_frames": "Int64",  # frames with >= 1 face
                "n_faces": "Int64",  # face crops written (what the 200-400 filter counts)
                "n_multi_face_frames": "Int64",  # frames with >= 2 faces
                "n_tracks": "Int64",
                "status": "string",  # ok | no_face | read_error | missing_file | ...
                "reason": "string",  # one line, empty when ok
                "seconds": "float64",
            },
            "one row per input video (written by `dfpipe extract`)",
        ),
        Schema(
            "faces",
            {
                "video_id": "string",
                "frame": "int64",  # 0-based frame index in the video
                "track": "int64",  # face track id within the video (0, 1, ...)
                "x1": "float64",  # box in full-resolution pixels
                "y1": "float64",
                "x2": "float64",
                "y2": "float64",
                "prob": "float64",  # MTCNN probability (NaN for carried/imported boxes)
                "crop_path": "string",  # absolute path of the JPEG crop
            },
            "one row per face crop (written by `dfpipe extract`)",
        ),
        Schema(
            "outliers",
            {
                "video_id": "string",
                "label": "string",
                "original": "string",
                "n_faces": "Int64",
                "reason": "string",  # "code: detail"; codes in data_manifests/README.md
            },
            "videos left out by the frame-count filter (written by `dfpipe prepare`)",
        ),
        Schema(
            "clips",
            {
                "video_id": "string",
                "label": "string",
                "original": "string",
                "slot": "int64",  # 0..n_frames-1
                "frame": "Int64",  # source frame index; <NA> for a padded slot
                "track": "Int64",
                "crop_path": "string",  # "" for a padded slot
                "mask": "int64",  # 1 = real frame, 0 = padding
            },
            "exactly n_frames rows per kept video (written by `dfpipe prepare`)",
        ),
        Schema(
            "gaps",
            {
                "video_id": "string",
                "slot": "int64",
                "start_frame": "Int64",  # slot's first frame (stride); <NA> for uniform
                "reason": "string",  # no_face | multi_face | past_end | too_few_usable_frames
            },
            "sampler slots without a usable frame (written by `dfpipe prepare`)",
        ),
        Schema(
            "split",
            {
                "video_id": "string",
                "label": "string",
                "group": "string",  # the original (a REAL's own id, a FAKE's original), merged
                # with originals that share an identity (splits.assign_groups)
                "split": "string",  # train | val | test
            },
            "one row per kept video (written by `dfpipe prepare`)",
        ),
        Schema(
            "predictions",
            {
                "video_id": "string",
                "label": "string",
                "group": "string",
                "model": "string",
                "p_fake": "float64",
            },
            "per-video probabilities (written by `dfpipe evaluate`)",
        ),
    ]
}


def meta_path(path: str | os.PathLike) -> Path:
    """Sidecar path of a manifest: ``x.csv`` -> ``x.meta.json``."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".csv") + ".meta.json")


OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"videos": ("n_frames_lost",)}
"""Columns added after schema version 1: a manifest written before them reads them as missing."""


def _coerce(df: pd.DataFrame, schema: Schema, source: str) -> pd.DataFrame:
    for col in OPTIONAL_COLUMNS.get(schema.kind, ()):
        if col not in df.columns:
            df = df.assign(**{col: pd.NA})
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{source}: not a '{schema.kind}' manifest: missing column(s) {missing}"
        )
    out = df[list(schema.columns)].copy()
    for col, dtype in schema.columns.items():
        try:
            if dtype == "string":
                out[col] = out[col].astype("string").fillna("")
            else:
                out[col] = out[col].astype(dtype)
        except (ValueError, TypeError) as e:
            raise ManifestError(f"{source}: column '{col}' is not {dtype}: {e}") from e
    return out


def empty(kind: str) -> pd.DataFrame:
    """An empty table with the columns and dtypes of manifest ``kind``."""
    schema = SCHEMAS[kind]
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.columns.items()})


def validate(df: pd.DataFrame, kind: str, source: str = "<table>") -> pd.DataFrame:
    """Return ``df`` with exactly the schema's columns in order and dtypes; raise if it can't."""
    return _coerce(df, SCHEMAS[kind], source)


def write_manifest(
    df: pd.DataFrame,
    path: str | os.PathLike,
    kind: str,
    *,
    config: dict[str, Any] | None = None,
    inputs: list[str | os.PathLike] | tuple = (),
    counts: dict[str, Any] | None = None,
    prepare_id: str | None = None,
) -> Path:
    """Validate and atomically write a manifest and its ``.meta.json`` sidecar.

    Args:
        df: the table.
        path: destination ``.csv``.
        kind: key of ``SCHEMAS``.
        config: resolved config of the producing command (plain types).
        inputs: files this manifest was derived from (their SHA-256 goes in the sidecar).
        counts: summary numbers for people and for later stages.
        prepare_id: id shared by the manifests one ``dfpipe prepare`` run writes (checked by
            ``data.read_clips_and_split``); None for other manifests.
    """
    path = Path(path)
    table = validate(df, kind, str(path))
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    meta = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "rows": len(table),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dfpipe_version": __version__,
        "python": platform.python_version(),
        "config": config or {},
        "counts": counts or {},
        "inputs": {str(p): sha256_file(p) for p in inputs if Path(p).is_file()},
        "sha256": sha256_file(path),
    }
    if prepare_id is not None:
        meta["prepare_id"] = prepare_id
    atomic_write_json(meta_path(path), meta)
    return path


def read_manifest(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read and validate a manifest of ``kind``; raise ``ManifestError`` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run the stage that writes it first)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: unreadable CSV: {e}") from e
    # numeric columns come back as strings; empty strings are missing values
    schema = SCHEMAS[kind]
    for col, dtype in schema.columns.items():
        if col in df.columns and dtype != "string":
            df[col] = _parse_numeric(df[col], col, dtype, path)
    return _coerce(df, schema, str(path))


_MISSING_SPELLINGS = frozenset({"", "nan", "<na>"})
"""Cells read as missing: empty (what ``to_csv`` writes) and the spellings pandas prints."""


def _parse_numeric(cells: pd.Series, col: str, dtype: str, path: Path) -> pd.Series:
    """Parse a column of CSV strings into numbers; a cell that is not one is a ManifestError.

    The error names the file, the 1-based line of the CSV (header = line 1) and the column, with
    the bad value. Missing cells stay missing except in a non-nullable column (``int64``).
    """
    text = cells.str.strip()
    missing = text.str.lower().isin(_MISSING_SPELLINGS)
    values = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if dtype in ("int64", "Int64"):
        finite = values.notna() & ~bad
        whole = values[finite] == values[finite].round()
        bad |= finite & ~whole.reindex(values.index, fill_value=True)
    if dtype == "int64":
        bad |= missing
    if bad.any():
        rows = [i for i, b in enumerate(bad.tolist()) if b]
        first = rows[0]
        kind = "an integer" if dtype in ("int64", "Int64") else "a number"
        more = f" (and {len(rows) - 1} more bad cell(s) in that column)" if len(rows) > 1 else ""
        raise ManifestError(
            f"{path}: line {first + 2}, column '{col}': {cells.iloc[first]!r} is not {kind}{more}"
        )
    return values


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar dict of a manifest (empty dict when absent)."""
    mp = meta_path(path)
    if not mp.is_file():
        return {}
    try:
        return json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mp}: invalid JSON sidecar: {e}") from e


def manifest_path(manifest_dir: str | os.PathLike, kind: str) -> Path:
    """Conventional location of manifest ``kind`` in a manifest folder."""
    return Path(manifest_dir) / f"{kind}.csv"
