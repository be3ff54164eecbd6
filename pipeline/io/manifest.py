"""Manifest files -> validated tables (the readers); the one import for manifest I/O.

Input: a manifest (``X.parquet``, or a legacy ``X.csv``) and its kind. Output: a validated
``pandas.DataFrame`` (``read_manifest``), its row groups one at a time (``iter_manifest``), pyarrow
columns as stored (``read_arrow``, ``take_rows``). This module also re-exports the schemas
(``pipeline.io.manifest_schema``), the file and crop-path helpers (``pipeline.io.manifest_paths``) and
the writer (``pipeline.io.manifest_write``), so callers import everything from here.

Stages talk only through these tables. A manifest is ``X.parquet`` (typed columns, written in
row groups as rows come, read with column selection) with a sidecar ``X.meta.json``: its kind,
schema version, row count, the resolved config of the command that wrote it, counts, checksums
of its inputs and, for manifests that list face crops, the faces root. The Parquet footer holds
the same metadata (less the counts and checksums), so a file copied alone still knows its root.

Folders written by earlier versions (``X.csv`` + ``X.meta.json``) are still read: every reader
converts on read and gets the same table (``manifest_path`` finds whichever of the two is there;
writing one format removes the other of the same name, since they share one sidecar).
``dfpipe manifest export`` writes CSV for people. ``data_manifests/README.md`` documents the
columns; ``SCHEMAS`` is the machine-checked version of that document.

Crop paths (``crop_path`` of faces and clips) are stored relative to the faces root, recorded
once in the metadata, so a faces folder can be moved or mounted elsewhere (see ``faces_root``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import ManifestError
from pipeline.io.manifest_paths import (
    LEGACY,
    PARQUET,
    ROOT_ENV,
    SUFFIXES,
    absolute_crop_paths,
    faces_root,
    manifest_path,
    meta_path,
    read_meta,
    relative_crop_paths,
    resolve_existing,
)
from pipeline.io.manifest_schema import (
    BYTE_STREAM_SPLIT,
    FLOAT32_COLUMNS,
    LABELS,
    META_KEY,
    OPTIONAL_COLUMNS,
    PATH_COLUMNS,
    ROW_GROUP_ROWS,
    SCHEMA_VERSION,
    SCHEMAS,
    Schema,
    _coerce,
    _parse_numeric,
    arrow_schema,
    empty,
    validate,
)
from pipeline.io.manifest_write import ManifestWriter, write_manifest

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BYTE_STREAM_SPLIT", "FLOAT32_COLUMNS", "LABELS", "LEGACY", "META_KEY", "OPTIONAL_COLUMNS",
    "PARQUET", "PATH_COLUMNS", "ROOT_ENV", "ROW_GROUP_ROWS", "SCHEMAS", "SCHEMA_VERSION",
    "SUFFIXES", "ManifestError", "ManifestWriter", "Schema", "absolute_crop_paths",
    "arrow_schema", "empty", "faces_root", "iter_manifest", "manifest_path", "meta_path",
    "read_arrow", "read_manifest", "read_meta", "relative_crop_paths", "resolve_existing",
    "take_rows", "validate", "write_manifest",
]


def read_manifest(path: str | os.PathLike, kind: str, columns: Sequence[str] | None = None, *,
                  absolute_paths: bool = True) -> pd.DataFrame:
    """Read and validate a manifest of ``kind``; raise ``ManifestError`` with the reason.

    Args:
        path: the manifest (``.parquet``, or a legacy ``.csv``; either name finds the other).
        kind: key of ``SCHEMAS``.
        columns: read only these (Parquet reads only their bytes); None: all, in schema order.
        absolute_paths: join relative crop paths with the faces root (``faces_root``); False
            returns them as stored.
    """
    import pandas as pd
    path = resolve_existing(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run the stage that writes it first)")
    schema = SCHEMAS[kind]
    cols = list(schema.columns) if columns is None else list(columns)
    unknown = [c for c in cols if c not in schema.columns]
    if unknown:
        raise ManifestError(f"{path}: '{kind}' manifests have no column(s) {unknown}")
    sub = Schema(kind, {c: schema.columns[c] for c in cols}, schema.doc)
    if path.suffix == PARQUET:
        df = _read_parquet(path, sub)
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False,
                             usecols=lambda c: c in sub.columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: unreadable CSV: {e}") from e
        # numeric columns come back as strings; empty strings are missing values
        for col, dtype in sub.columns.items():
            if col in df.columns and dtype != "string":
                df[col] = _parse_numeric(df[col], col, dtype, path)
        df = _coerce(df, sub, str(path))
    col = PATH_COLUMNS.get(kind)
    if absolute_paths and col in df.columns:
        df[col] = absolute_crop_paths(df[col], faces_root(read_meta(path), path))
    return df


def _read_parquet(path: Path, schema: Schema) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        present = set(pf.schema_arrow.names)
        table = pf.read(columns=[c for c in schema.columns if c in present])
    except (OSError, pa.ArrowException) as e:
        raise ManifestError(f"{path}: unreadable Parquet file: {e}") from e
    f32 = FLOAT32_COLUMNS.get(schema.kind, {})
    data: dict[str, Any] = {}
    for c in table.column_names:
        arr = table.column(c)
        if c in f32:
            data[c] = np.round(arr.to_numpy().astype(np.float64), f32[c])
        elif pa.types.is_string(arr.type) or pa.types.is_dictionary(arr.type):
            data[c] = arr.to_pandas(types_mapper=pd.ArrowDtype).astype("string")
        else:
            data[c] = arr.to_pandas()
    return _coerce(pd.DataFrame(data), schema, str(path))


def read_arrow(path: str | os.PathLike, kind: str, columns: Sequence[str],
               dictionary: Sequence[str] = ()) -> Any:
    """Columns of a manifest as a pyarrow Table, as stored (no pandas objects: what the columnar
    stages use at scale). ``dictionary`` columns come dictionary-encoded (cheap for ids).

    A legacy CSV is converted on read (``read_manifest``, paths as stored).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = resolve_existing(path)
    if path.suffix != PARQUET or not path.is_file():
        df = read_manifest(path, kind, columns, absolute_paths=False)
        table = pa.Table.from_pandas(df, preserve_index=False)
        for c in dictionary:
            i = table.column_names.index(c)
            table = table.set_column(i, c, table.column(c).dictionary_encode())
        return table
    unknown = [c for c in columns if c not in SCHEMAS[kind].columns]
    if unknown:
        raise ManifestError(f"{path}: '{kind}' manifests have no column(s) {unknown}")
    try:
        pf = pq.ParquetFile(path, read_dictionary=list(dictionary))
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise ManifestError(f"{path}: not a '{kind}' manifest: missing column(s) {missing}")
        return pf.read(columns=list(columns))
    except (OSError, pa.ArrowException) as e:
        raise ManifestError(f"{path}: unreadable Parquet file: {e}") from e


def take_rows(path: str | os.PathLike, kind: str, column: str, rows: np.ndarray) -> Any:
    """``column`` at file rows ``rows`` (any order) as a pyarrow array, read one row group at a
    time (memory: one row group of the column plus the result)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = resolve_existing(path)
    rows = np.asarray(rows, dtype=np.int64)
    if path.suffix != PARQUET:
        col = read_arrow(path, kind, [column]).column(column)
        return col.take(pa.array(rows)).combine_chunks() if len(rows) else pa.array([], col.type)
    pf = pq.ParquetFile(path)
    in_order = len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all())
    order = np.arange(len(rows)) if in_order else np.argsort(rows, kind="stable")
    sorted_rows = rows if in_order else rows[order]
    bounds = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                              for i in range(pf.num_row_groups)])
    parts = []
    for i in range(pf.num_row_groups):
        lo, hi = np.searchsorted(sorted_rows, [bounds[i], bounds[i + 1]])
        if hi > lo:
            col = pf.read_row_group(i, columns=[column]).column(0)
            parts.append(col.take(pa.array(sorted_rows[lo:hi] - bounds[i])))
    field = pf.schema_arrow.field(column)
    taken = pa.chunked_array(parts, type=field.type).combine_chunks() if parts else pa.array(
        [], field.type)
    if in_order:
        return taken
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return taken.take(pa.array(inverse))


def iter_manifest(path: str | os.PathLike, kind: str, columns: Sequence[str] | None = None, *,
                  absolute_paths: bool = False) -> Iterator[pd.DataFrame]:
    """Yield a Parquet manifest one row group at a time (validated tables; bounded memory).

    A legacy CSV is read in chunks of ``ROW_GROUP_ROWS`` rows.
    """
    import pandas as pd
    path = resolve_existing(path)
    if path.suffix != PARQUET:
        # legacy CSV: convert on read, whole (earlier versions wrote it whole too)
        yield read_manifest(path, kind, columns, absolute_paths=absolute_paths)
        return
    import pyarrow.parquet as pq

    schema = SCHEMAS[kind]
    cols = list(schema.columns) if columns is None else list(columns)
    sub = Schema(kind, {c: schema.columns[c] for c in cols}, schema.doc)
    root = faces_root(read_meta(path), path) if absolute_paths else None
    pf = pq.ParquetFile(path)
    f32 = FLOAT32_COLUMNS.get(kind, {})
    for i in range(pf.num_row_groups):
        t = pf.read_row_group(i, columns=cols)
        data = {c: (np.round(t.column(c).to_numpy().astype(np.float64), f32[c]) if c in f32
                    else t.column(c).to_pandas()) for c in t.column_names}
        df = _coerce(pd.DataFrame(data), sub, str(path))
        col = PATH_COLUMNS.get(kind)
        if root is not None and col in df.columns:
            df[col] = absolute_crop_paths(df[col], root)
        yield df
