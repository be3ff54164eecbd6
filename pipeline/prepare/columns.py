"""The faces manifest -> integer columns; kept videos -> sampled clip and gap rows (columnar).

Input: the ``faces`` manifest (Parquet read one row group at a time; a legacy CSV converted on
read) and the videos table. Output: ``FaceColumns`` (video code, frame, track per face row,
sorted; crop paths read only for the rows a clip uses), the ``faces_mismatch`` outliers of
``check_face_counts``, and from ``sample_all`` the clip rows, gap rows and short-clip outliers
of every kept video, sampled at once (``sampling.sample_columns``, in batches of
``SAMPLE_BATCH`` videos). Used by ``dfpipe prepare`` (``pipeline.prepare.stage``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import PrepareConfig
from pipeline.core.errors import ManifestError
from pipeline.io import manifest
from pipeline.prepare.sampling import REASONS, SampledSlots, sample_columns

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceColumns:
    """The faces manifest as arrays, rows sorted by (video, frame, track); crop paths stay in
    the file and are read only for the rows a clip uses (``crop_paths``)."""

    path: Path
    codes: np.ndarray  # (R,) row of the face's video in the videos table; -1: not in it
    frames: np.ndarray  # (R,) int64
    tracks: np.ndarray  # (R,) int64
    file_rows: np.ndarray | None  # (R,) row in the file (None: the file was already sorted)
    unknown_ids: tuple[str, ...]  # video ids of faces rows absent from the videos table

    def crop_paths(self, rows: np.ndarray) -> pa.Array:
        """Stored crop paths (relative to the faces root) of sorted rows ``rows``."""
        file_rows = rows if self.file_rows is None else self.file_rows[rows]
        return manifest.take_rows(self.path, "faces", "crop_path", file_rows)


def _face_tables(path: Path) -> tuple[int, Any]:
    """(rows, iterator of pyarrow tables of ``video_id`` (dictionary), ``frame``, ``track``):
    one Parquet row group at a time; a legacy CSV converted whole."""
    import pyarrow.parquet as pq

    cols = ["video_id", "frame", "track"]
    if path.suffix == manifest.PARQUET:
        try:
            pf = pq.ParquetFile(path, read_dictionary=["video_id"])
        except (OSError, pa.ArrowException) as e:
            raise ManifestError(f"{path}: unreadable Parquet file: {e}") from e
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise ManifestError(f"{path}: not a 'faces' manifest: missing column(s) {missing}")
        return pf.metadata.num_rows, (pf.read_row_group(i, columns=cols)
                                      for i in range(pf.num_row_groups))
    table = manifest.read_arrow(path, "faces", cols, dictionary=["video_id"])
    return table.num_rows, iter([table])


def load_face_columns(path: Path, video_ids: pd.Series) -> FaceColumns:
    """Read ``video_id, frame, track`` of the faces manifest (no crop paths, no boxes) and map
    each row to its video's position in ``video_ids``.

    Memory: the three int32 result arrays (12 bytes per face row) plus one row group.
    """
    n_rows, tables = _face_tables(Path(path))
    ids = pa.array(video_ids.astype(str).tolist(), type=pa.string())
    codes = np.empty(n_rows, np.int32)  # (R,) filled row group by row group
    cols = {"frame": np.empty(n_rows, np.int32), "track": np.empty(n_rows, np.int32)}
    unknown: set[str] = set()
    at = 0
    for table in tables:
        n = table.num_rows
        for chunk in table.column("video_id").chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            pos = pc.fill_null(pc.index_in(chunk.dictionary, value_set=ids), -1).to_numpy()
            idx = pc.fill_null(chunk.indices, 0).to_numpy(zero_copy_only=False)
            part = pos.astype(np.int32)[idx] if len(pos) else np.full(len(idx), -1, np.int32)
            if (part < 0).any():
                unknown.update(chunk.dictionary.take(pa.array(np.unique(idx[part < 0])))
                               .to_pylist())
            codes[at:at + len(part)] = part
            at += len(part)
        for c in ("frame", "track"):
            col = table.column(c)
            if col.null_count:
                raise ManifestError(f"{path}: column '{c}' has missing values")
            values = col.to_numpy()
            if len(values) and (values.min() < 0 or values.max() >= 2**31):
                raise ManifestError(f"{path}: column '{c}' has values outside 0..2**31-1")
            cols[c][at - n:at] = values  # int32: half the memory of int64 at 36M rows
    frames, tracks = cols["frame"], cols["track"]
    file_rows = None
    if not _sorted_rows(codes, frames, tracks):
        file_rows = np.lexsort((tracks, frames, codes))
        codes, frames, tracks = codes[file_rows], frames[file_rows], tracks[file_rows]
    return FaceColumns(Path(path), codes, frames, tracks, file_rows, tuple(sorted(unknown)))


def _sorted_rows(codes: np.ndarray, frames: np.ndarray, tracks: np.ndarray) -> bool:
    """True when rows are in (code, frame, track) order (what extract writes)."""
    if len(codes) < 2:
        return True
    if frames.max() < 2**23 and tracks.max() < 2**8 and codes.min() >= 0:
        step = 1 << 22  # blocks of 4M rows (overlapping by one): bounded temporaries
        for lo in range(0, len(codes) - 1, step):
            sl = slice(lo, min(lo + step + 1, len(codes)))
            key = ((codes[sl].astype(np.int64) << 31) | (frames[sl].astype(np.int64) << 8)
                   | tracks[sl])
            if not (key[1:] >= key[:-1]).all():  # one int64 key per row
                return False
        return True
    dc, df, dt = np.diff(codes), np.diff(frames), np.diff(tracks)
    return bool(np.all((dc > 0) | ((dc == 0) & ((df > 0) | ((df == 0) & (dt >= 0))))))


def check_face_counts(
    videos: pd.DataFrame, rows_per_video: np.ndarray, unknown_ids: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill missing ``n_faces`` from faces rows; split off ``ok`` videos whose count disagrees.

    Args:
        videos: the videos table.
        rows_per_video: (len(videos),) faces rows of each video.
        unknown_ids: faces rows' video ids absent from ``videos`` (logged, ignored).

    Returns:
        (videos with ``n_faces`` filled, outlier rows ``faces_mismatch``).
    """
    videos = videos.copy()
    in_faces = pd.Series(rows_per_video, index=videos.index, dtype="int64")
    n = videos["n_faces"].astype("Int64")
    videos["n_faces"] = n.fillna(in_faces.astype("Int64"))
    bad = (videos["status"] == "ok") & n.notna() & (n != in_faces).fillna(False)
    out = videos.loc[bad, ["video_id", "label", "original", "n_faces"]].copy()
    out["reason"] = [
        f"faces_mismatch: videos manifest n_faces {a}, faces manifest has {b} rows"
        for a, b in zip(n[bad], in_faces[bad], strict=True)
    ]
    if unknown_ids:
        logger.warning("the faces manifest has rows for %d video(s) not in the videos manifest "
                       "(ignored): %s", len(unknown_ids), ", ".join(unknown_ids[:5]))
    return videos[~bad].reset_index(drop=True), out.reset_index(drop=True)


def _strings(values: pd.Series) -> pa.Array:
    return pa.array(values.astype("string").fillna("").astype(str).tolist(), type=pa.string())


def _ints(values: np.ndarray) -> pa.Array:
    """int64 array, null where ``values`` is -1."""
    return pa.array(values, type=pa.int64(), mask=values < 0)


SAMPLE_BATCH = 10_000
"""Videos sampled per ``sample_columns`` call (bounds its temporaries: ~3M face rows)."""


def sample_batched(faces: FaceColumns, videos: np.ndarray, lengths: np.ndarray,
                   cfg: PrepareConfig) -> SampledSlots:
    """``sample_columns`` over batches of videos (codes ascending, as the videos table is
    ordered), with rows indexing ``faces``; ``videos`` in any order falls back to one call."""
    if len(videos) < 2 or np.all(np.diff(videos) > 0):
        parts = []
        for lo in range(0, len(videos), SAMPLE_BATCH):
            batch = videos[lo:lo + SAMPLE_BATCH]
            # keys in the array's dtype: a mismatch would copy all 36M codes on every call
            a = int(np.searchsorted(faces.codes, faces.codes.dtype.type(batch[0]), "left"))
            b = int(np.searchsorted(faces.codes, faces.codes.dtype.type(batch[-1]), "right"))
            s = sample_columns(faces.codes[a:b], faces.frames[a:b], faces.tracks[a:b], batch,
                               lengths[lo:lo + SAMPLE_BATCH], cfg.sampler, cfg.n_frames,
                               cfg.stride)
            parts.append((np.where(s.row >= 0, s.row + a, -1), s))
        if not parts:
            return sample_columns(faces.codes[:0], faces.frames[:0], faces.tracks[:0], videos,
                                  lengths, cfg.sampler, cfg.n_frames, cfg.stride)
        return SampledSlots(cfg.n_frames, np.concatenate([r for r, _ in parts]),
                            *(np.concatenate([getattr(p, k) for _, p in parts])
                              for k in ("frame", "track", "start", "reason")))
    return sample_columns(faces.codes, faces.frames, faces.tracks, videos, lengths, cfg.sampler,
                          cfg.n_frames, cfg.stride)


def sample_all(
    kept: pd.DataFrame, faces: FaceColumns, cfg: PrepareConfig
) -> tuple[pd.DataFrame, pa.Table, pa.Table, pd.DataFrame, dict[str, Any]]:
    """Run the sampler on every kept video at once (``sampling.sample_columns``).

    Returns:
        (kept videos, clip rows, gap rows of every sampled video, outlier rows of dropped short
        clips, counts).
    """
    n = cfg.n_frames
    lengths = kept["n_frames"].astype("Int64").to_numpy(dtype=np.float64, na_value=np.nan)
    s = sample_batched(faces, kept["_code"].to_numpy(np.int64), lengths, cfg)
    got = s.usable_per_video  # (V,)
    short = got < n
    ids, labels, originals = (_strings(kept[c]) for c in ("video_id", "label", "original"))
    gap_cells = np.flatnonzero(s.row < 0)
    reasons = pa.array(list(REASONS), type=pa.string())
    gaps = pa.table({
        "video_id": ids.take(pa.array(gap_cells // n)),
        "slot": pa.array(gap_cells % n, type=pa.int64()),
        "start_frame": _ints(s.start[gap_cells]),
        "reason": reasons.take(pa.array(s.reason[gap_cells].astype(np.int64))),
    })
    keep = ~short if cfg.short_clips == "drop" else np.ones(len(kept), dtype=bool)
    cells = np.flatnonzero(np.repeat(keep, n))  # (kept videos * n,)
    rows = s.row[cells]
    valid = rows >= 0
    stored = faces.crop_paths(rows[valid])
    slot_crop = np.full(len(cells), len(stored), np.int64)  # index of "" for a padded slot
    slot_crop[valid] = np.arange(len(stored))
    crops = pa.concat_arrays([stored.cast(pa.string()), pa.array([""], pa.string())])
    video = pa.array(cells // n)
    clips = pa.table({
        "video_id": ids.take(video), "label": labels.take(video),
        "original": originals.take(video),
        "slot": pa.array(cells % n, type=pa.int64()),
        "frame": _ints(s.frame[cells]), "track": _ints(s.track[cells]),
        "crop_path": crops.take(pa.array(slot_crop)),
        "mask": pa.array(valid.astype(np.int64)),
    })
    short_rows = kept[short]
    short_out = pd.DataFrame({
        "video_id": short_rows["video_id"].to_numpy(), "label": short_rows["label"].to_numpy(),
        "original": short_rows["original"].to_numpy(),
        "n_faces": pd.array(short_rows["n_faces"].to_numpy(), dtype="Int64"),
        "reason": [f"too_few_usable_frames: {g}/{n}" for g in got[short]],
    })
    if cfg.short_clips == "pad":
        short_out = short_out.iloc[0:0]
    gap_reasons = np.bincount(s.reason[gap_cells], minlength=len(REASONS))
    counts = {
        "sampled": len(kept),
        "short_clips": int(short.sum()),
        "short_clips_dropped": int(short.sum()) if cfg.short_clips == "drop" else 0,
        "short_clips_padded": int(short.sum()) if cfg.short_clips == "pad" else 0,
        "gap_slots": len(gap_cells),
        "gaps_by_reason": {REASONS[i]: int(c) for i, c in
                           sorted(enumerate(gap_reasons), key=lambda t: REASONS[t[0]]) if c},
        "advanced_slots": int((s.reason == REASONS.index("advanced")).sum()),
    }
    return kept[keep].reset_index(drop=True), clips, gaps, short_out, counts
