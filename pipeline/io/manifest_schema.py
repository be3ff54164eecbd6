"""Manifest kinds -> their columns and dtypes; tables -> validated tables.

Input: a ``pandas.DataFrame`` (or CSV cells as strings) said to be manifest ``kind``. Output:
the same table with exactly the schema's columns, in order and with its dtypes, or a
``ManifestError`` naming the source and the reason. Also the Parquet storage of each kind
(``arrow_schema``: float32 columns, encodings, row-group size, footer metadata key), shared by
the writer (``pipeline.io.manifest_write``) and the readers (``pipeline.io.manifest``).
``data_manifests/README.md`` documents the columns; ``SCHEMAS`` below is the machine-checked
version of that document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import ManifestError

if TYPE_CHECKING:
    import pandas as pd

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


PATH_COLUMNS: dict[str, str] = {"faces": "crop_path", "clips": "crop_path"}
"""Columns holding crop paths, stored relative to the manifest's faces root."""

FLOAT32_COLUMNS: dict[str, dict[str, int]] = {
    "faces": {"x1": 2, "y1": 2, "x2": 2, "y2": 2, "prob": 6},
}
"""Columns stored as float32 in Parquet -> decimals kept. Extract records boxes to 0.01 px and
MTCNN probabilities to 1e-6 (float32 at the source), so float32 plus rounding to those decimals
on read gives back exactly the float64 values of the CSV record, in half the bytes."""

BYTE_STREAM_SPLIT: dict[str, tuple[str, ...]] = {"faces": ("x1", "y1", "x2", "y2")}
"""Float columns written BYTE_STREAM_SPLIT (smooth box tracks: ~2 B/value after zstd, against
~2.7 with dictionary encoding). Crop paths are DELTA_BYTE_ARRAY (shared prefixes); the rest
dictionary-encoded. Measured on the scale benchmark's faces table: 10.6 bytes per face row."""

ROW_GROUP_ROWS = 1_000_000
"""Rows per Parquet row group (about 10-30 MB of a faces table in memory while writing)."""

META_KEY = b"dfpipe"
"""Parquet key-value metadata key of the manifest's metadata (JSON)."""


OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"videos": ("n_frames_lost",)}
"""Columns added after schema version 1: a manifest written before them reads them as missing."""


def _coerce(df: pd.DataFrame, schema: Schema, source: str) -> pd.DataFrame:
    import pandas as pd
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
    import pandas as pd
    schema = SCHEMAS[kind]
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.columns.items()})


def validate(df: pd.DataFrame, kind: str, source: str = "<table>") -> pd.DataFrame:
    """Return ``df`` with exactly the schema's columns in order and dtypes; raise if it can't."""
    return _coerce(df, SCHEMAS[kind], source)


def arrow_schema(kind: str, metadata: dict[str, Any] | None = None) -> Any:
    """The pyarrow schema of manifest ``kind`` (with ``metadata`` as JSON under ``META_KEY``)."""
    import pyarrow as pa

    f32 = FLOAT32_COLUMNS.get(kind, {})
    types = {"string": pa.string(), "int64": pa.int64(), "Int64": pa.int64(),
             "float64": pa.float64()}
    fields = [pa.field(c, pa.float32() if c in f32 else types[t], nullable=t != "int64")
              for c, t in SCHEMAS[kind].columns.items()]
    meta = {META_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


_MISSING_SPELLINGS = frozenset({"", "nan", "<na>"})
"""Cells read as missing: empty (what ``to_csv`` writes) and the spellings pandas prints."""


def _parse_numeric(cells: pd.Series, col: str, dtype: str, path: Path) -> pd.Series:
    """Parse a column of CSV strings into numbers; a cell that is not one is a ManifestError.

    The error names the file, the 1-based line of the CSV (header = line 1) and the column, with
    the bad value. Missing cells stay missing except in a non-nullable column (``int64``).
    """
    import pandas as pd
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


