"""Validated tables -> manifest files (Parquet or legacy CSV) + ``.meta.json`` sidecar, atomically.

Input: ``pandas.DataFrame`` chunks (or pyarrow tables) of one manifest kind, the resolved config
of the producing command, its input files and, for kinds that list face crops, the faces root.
Output: ``X.parquet`` written in row groups as rows come (bounded memory) and renamed into place
when finished, with ``X.meta.json`` beside it (kind, schema version, rows, config, counts,
checksums, faces root); the Parquet footer holds the same metadata less counts and checksums.
An exception while writing leaves the previous file untouched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import __version__
from pipeline.core.errors import ManifestError
from pipeline.core.fsutil import atomic_path, atomic_write_json, sha256_file
from pipeline.io.manifest_paths import (
    LEGACY,
    PARQUET,
    _other_format,
    meta_path,
    relative_crop_paths,
)
from pipeline.io.manifest_schema import (
    BYTE_STREAM_SPLIT,
    PATH_COLUMNS,
    ROW_GROUP_ROWS,
    SCHEMA_VERSION,
    SCHEMAS,
    arrow_schema,
    empty,
    validate,
)

if TYPE_CHECKING:
    import pandas as pd


def _to_arrow(table: pd.DataFrame, schema: Any) -> Any:
    import pyarrow as pa

    arrays = []
    for field in schema:
        col = table[field.name]
        if pa.types.is_string(field.type):
            arrays.append(pa.array(col.to_numpy(dtype=object), type=pa.string()))
        elif pa.types.is_floating(field.type):
            arrays.append(pa.array(col.to_numpy(dtype=np.float64), type=pa.float64()
                                   ).cast(field.type))
        else:
            arrays.append(pa.array(col, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _base_meta(kind: str, path: Path, config: dict[str, Any] | None, root: Any,
               prepare_id: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "format": "parquet" if path.suffix == PARQUET else "csv",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dfpipe_version": __version__,
        "python": platform.python_version(),
        "config": config or {},
    }
    if root is not None:
        r = Path(root).resolve()
        meta["faces_root"] = str(r)
        meta["faces_root_rel"] = os.path.relpath(r, path.parent.resolve())
    if prepare_id is not None:
        meta["prepare_id"] = prepare_id
    return meta


class ManifestWriter:
    """Write one manifest in row groups as rows come (bounded memory), atomically.

    ``write(df)`` validates a chunk and buffers it; every ``row_group_rows`` rows become a
    Parquet row group. ``close(counts)`` renames the finished file into place and writes the
    sidecar; an exception inside ``with`` leaves the previous file untouched. A ``.csv`` path
    writes the legacy CSV format the same way (chunks appended).

    Args:
        path: destination (``.parquet``; ``.csv`` for the legacy format).
        kind: key of ``SCHEMAS``.
        config: resolved config of the producing command (plain types).
        inputs: files this manifest was derived from (their SHA-256 goes in the sidecar).
        faces_root: folder the crop paths are relative to (kinds with a crop path column).
        prepare_id: id shared by the manifests of one ``dfpipe prepare`` run.
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, config: dict[str, Any] | None = None,
                 inputs: Sequence[str | os.PathLike] = (), faces_root: Any = None,
                 prepare_id: str | None = None, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        import pandas as pd
        self.path, self.kind = Path(path), kind
        self.inputs = list(inputs)
        self.meta = _base_meta(kind, self.path, config, faces_root, prepare_id)
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._buf: list[pd.DataFrame] = []
        self._buffered = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer: Any = None
        self._csv: Any = None
        if self.path.suffix == LEGACY:
            self._csv = self._stack.enter_context(open(self._tmp, "w", newline=""))
            pd.DataFrame(columns=list(SCHEMAS[kind].columns)).to_csv(self._csv, index=False)
        else:
            import pyarrow.parquet as pq

            # the footer keeps what does not change between identical runs (same rows, same
            # bytes); creation time and run id live in the sidecar
            stable = {k: v for k, v in self.meta.items()
                      if k not in ("created", "prepare_id", "python")}
            self.schema = arrow_schema(kind, stable)
            split = list(BYTE_STREAM_SPLIT.get(kind, ()))
            delta = [PATH_COLUMNS[kind]] if kind in PATH_COLUMNS else []
            self._writer = pq.ParquetWriter(
                self._tmp, self.schema, compression="zstd", compression_level=3,
                use_dictionary=[c for c in SCHEMAS[kind].columns if c not in split + delta],
                use_byte_stream_split=split or False,
                column_encoding=dict.fromkeys(delta, "DELTA_BYTE_ARRAY") or None,
                write_statistics=["video_id"] if "video_id" in SCHEMAS[kind].columns else False)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort(exc_type, exc, tb)

    def write(self, df: pd.DataFrame) -> None:
        """Validate and append rows (in the order given)."""
        if not len(df):
            return
        table = validate(df, self.kind, str(self.path))
        self.rows += len(table)
        if self._csv is not None:
            table.to_csv(self._csv, index=False, header=False)
            return
        self._buf.append(table)
        self._buffered += len(table)
        if self._buffered >= self.row_group_rows:
            self._flush(final=False)

    def write_arrow(self, table: Any) -> None:
        """Append a pyarrow table with the schema's columns (cast to its types; the fast path
        for tables built column-wise). Missing strings become ""; a null in a non-nullable
        column is a ``ManifestError``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self._csv is not None:
            self.write(table.to_pandas())
            return
        self._flush()
        missing = [f.name for f in self.schema if f.name not in table.column_names]
        if missing:
            raise ManifestError(f"{self.path}: not a '{self.kind}' table: missing column(s) {missing}")
        cols = []
        for f in self.schema:
            col = table.column(f.name)
            if pa.types.is_string(f.type):
                col = pc.fill_null(col.cast(pa.string()), "")
            else:
                col = col.cast(f.type)
                if not f.nullable and col.null_count:
                    raise ManifestError(f"{self.path}: column '{f.name}' has missing values")
            cols.append(col)
        t = pa.Table.from_arrays(cols, schema=self.schema)
        self.rows += t.num_rows
        if t.num_rows:
            self._writer.write_table(t, row_group_size=self.row_group_rows)

    def _flush(self, final: bool = True) -> None:
        """Write the buffered rows as full row groups (and, when ``final``, the remainder)."""
        import pandas as pd
        if not self._buf:
            return
        table = pd.concat(self._buf, ignore_index=True) if len(self._buf) > 1 else self._buf[0]
        n = len(table) if final else len(table) // self.row_group_rows * self.row_group_rows
        for start in range(0, n, self.row_group_rows):
            part = table.iloc[start:min(start + self.row_group_rows, n)]
            self._writer.write_table(_to_arrow(part, self.schema),
                                     row_group_size=self.row_group_rows)
        rest = table.iloc[n:]
        self._buf, self._buffered = ([rest], len(rest)) if len(rest) else ([], 0)

    def close(self, counts: dict[str, Any] | None = None) -> Path:
        """Finish the file, move it into place, write the sidecar; returns the path."""
        if self._writer is not None:
            self._flush()
            if self.rows == 0:  # an empty table still gets its schema (one empty row group)
                self._writer.write_table(_to_arrow(empty(self.kind), self.schema))
            self._writer.close()
        self._stack.close()  # closes the CSV handle, renames the temporary into place
        other = _other_format(self.path)
        if other != self.path and other.exists():  # one format per name: they share a sidecar
            other.unlink()
        meta = {**self.meta, "rows": self.rows, "counts": counts or {},
                "inputs": {str(p): sha256_file(p) for p in self.inputs if Path(p).is_file()},
                "sha256": sha256_file(self.path)}
        atomic_write_json(meta_path(self.path), meta)
        return self.path

    def abort(self, *exc_info: Any) -> None:
        """Drop the temporary file (the previous manifest, if any, stays)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        info = exc_info if exc_info and exc_info[0] is not None else (
            RuntimeError, RuntimeError("manifest write aborted"), None)
        with contextlib.suppress(BaseException):
            self._stack.__exit__(*info)


def write_manifest(
    df: pd.DataFrame,
    path: str | os.PathLike,
    kind: str,
    *,
    config: dict[str, Any] | None = None,
    inputs: list[str | os.PathLike] | tuple = (),
    counts: dict[str, Any] | None = None,
    prepare_id: str | None = None,
    faces_root: Any = None,
) -> Path:
    """Validate and atomically write a manifest and its ``.meta.json`` sidecar.

    Args:
        df: the table.
        path: destination: ``.parquet``, or ``.csv`` for the legacy format.
        kind: key of ``SCHEMAS``.
        config: resolved config of the producing command (plain types).
        inputs: files this manifest was derived from (their SHA-256 goes in the sidecar).
        counts: summary numbers for people and for later stages.
        prepare_id: id shared by the manifests one ``dfpipe prepare`` run writes (checked by
            ``data.read_clips_and_split``); None for other manifests.
        faces_root: folder the crop paths of ``df`` are relative to (recorded in the metadata);
            absolute paths under it are made relative.
    """
    if faces_root is not None and kind in PATH_COLUMNS:
        col = PATH_COLUMNS[kind]
        df = df.assign(**{col: relative_crop_paths(df[col], faces_root)})
    w = ManifestWriter(path, kind, config=config, inputs=inputs, faces_root=faces_root,
                       prepare_id=prepare_id)
    try:
        w.write(df)
    except BaseException as e:
        w.abort(type(e), e, e.__traceback__)
        raise
    return w.close(counts)

