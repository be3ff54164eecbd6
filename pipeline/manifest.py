"""Manifest schemas and validated, atomic read/write.

Stages talk only through these tables. A manifest is ``X.parquet`` (typed columns, written in
row groups as rows come, read with column selection) with a sidecar ``X.meta.json``: its kind,
schema version, row count, the resolved config of the command that wrote it, counts, checksums
of its inputs and, for manifests that list face crops, the faces root. The Parquet footer holds
the same metadata (less the counts and checksums), so a file copied alone still knows its root.

Folders written by earlier versions (``X.csv`` + ``X.meta.json``) are still read: every reader
converts on read and gets the same table (``manifest_path`` finds whichever of the two is there;
writing one format removes the other of the same name, since they share one sidecar).
``dfpipe manifest export`` writes CSV for people. ``data_manifests/README.md`` documents the
columns; ``SCHEMAS`` below is the machine-checked version of that document.

Crop paths (``crop_path`` of faces and clips) are stored relative to the faces root, recorded
once in the metadata, so a faces folder can be moved or mounted elsewhere (see ``faces_root``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.errors import ManifestError
from pipeline.fsutil import atomic_path, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

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


PARQUET = ".parquet"
LEGACY = ".csv"
SUFFIXES = (PARQUET, LEGACY)

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


def _read_parquet_meta(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


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
