"""``dfpipe prepare``: videos + faces manifests -> outliers, clips, gaps, split (Parquet).

Columnar: the faces manifest is read as three integer columns (video, frame, track; no boxes, no
paths), every video is sampled at once (``sampling.sample_columns``, in batches of
``SAMPLE_BATCH`` videos) and crop paths are read only for the rows the clips use; a legacy CSV
folder is converted on read. Crop paths stay relative to the faces root, copied into the clips
metadata.

Steps (each decision lands in a manifest; nothing is moved or deleted):

1. consistency: ``n_faces`` of ``videos.csv`` must equal the video's rows in ``faces.csv``
   (filled from faces.csv when empty); a mismatch is an outlier ``faces_mismatch`` and exit 1;
2. frame-count filter (``pipeline.filtering.window_filter``): status, label, ``n_faces`` window;
3. subsampling (``pipeline.sampling``): ``n_frames`` slots per video, gaps recorded; a video with
   fewer usable slots is dropped (``too_few_usable_frames: 27/30``) or padded with mask 0 rows;
4. orphan fakes (``pipeline.filtering.orphan_filter``): fakes whose original was left out;
5. grouped split (``pipeline.splits``), checked for leaks and labels before it is written;
   ``--merge-groups auto`` merges groups that share an identity (counts in ``counts.groups``).

Single-image videos (``extract --from-faces`` on a folder of one image per video, e.g. the Kaggle
"deepfake_faces" set: videos-rows with status ``ok`` and ``n_frames`` 1) skip steps 2 and 3: the
200-400 window and the 30-frame sampler describe videos, not one crop. Each becomes a clip whose
slot 0 is the image and whose other slots are padding (mask 0, no gap rows), so the frame model
reads the image and clip models see one valid frame. Their labels are still required
(``no_label``), and byte-identical images are deduplicated before the split (``duplicate_image``:
the first video id keeps it; when the copies disagree on the label, none is kept), so the same
image can never sit in two splits. They take part in the orphan check and the grouped split like
any video; the summary counts them.

Exit 0 when done, 1 when some input rows were inconsistent (listed as outliers), 2 (typed error)
when the inputs are missing or the split is impossible.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline import manifest
from pipeline.config import PrepareConfig, to_dict
from pipeline.errors import ConfigError, ManifestError, SplitError
from pipeline.filtering import orphan_filter, reason_counts, window_filter
from pipeline.fsutil import sha256_file
from pipeline.manifest import LABELS
from pipeline.sampling import (
    REASONS,
    SampledSlots,
    SlotChoice,
    clip_records,
    clips_frame,
    sample_columns,
)
from pipeline.splits import check_split, merge_report, split_groups, split_summary

logger = logging.getLogger(__name__)


def _validate_config(cfg: PrepareConfig) -> None:
    if cfg.min_faces < 0 or cfg.max_faces < cfg.min_faces:
        raise ConfigError(f"--min-faces {cfg.min_faces} / --max-faces {cfg.max_faces}: empty window")
    if cfg.n_frames < 1 or cfg.stride < 1:
        raise ConfigError(f"--n-frames {cfg.n_frames} and --stride {cfg.stride} must be >= 1")
    if not 0 < cfg.test_share < 1 or not 0 < cfg.val_share < 1:
        raise ConfigError(
            f"--test-share {cfg.test_share} and --val-share {cfg.val_share} must lie in (0, 1)"
        )


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


def single_image_mask(videos: pd.DataFrame) -> pd.Series:
    """True for single-image videos (status ``ok``, ``n_frames`` 1; see the module docstring)."""
    n = pd.to_numeric(videos["n_frames"], errors="coerce")
    return ((videos["status"] == "ok") & (n == 1)).fillna(False).astype(bool)


def single_image_choices(crop_path: str, n_frames: int) -> list[SlotChoice]:
    """The clip of a single-image video: slot 0 is the image, the other slots are padding."""
    return [SlotChoice(0, None, 0, 0, crop_path, "")] + [
        SlotChoice(k, None, None, None, None, "single_image") for k in range(1, n_frames)]


def prepare_single_images(
    singles: pd.DataFrame, faces: pd.DataFrame, cfg: PrepareConfig, root: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Label check, byte-level dedupe and clip rows for single-image videos.

    ``faces`` holds their rows' ``video_id`` and stored ``crop_path`` (relative to ``root``,
    which the images are hashed from; the clip rows keep the stored path).

    Returns:
        (kept videos, clip rows, outlier rows ``no_label`` / ``unreadable_image`` /
        ``duplicate_image``, counts).
    """
    crops = faces.drop_duplicates("video_id").set_index("video_id")["crop_path"]
    out_rows: list[tuple[Any, str]] = []
    digests: dict[str, list] = {}
    for row in tqdm(singles.sort_values("video_id").itertuples(index=False), total=len(singles),
                    desc="hash images", unit="image", disable=None):
        if row.label not in LABELS:
            out_rows.append((row, f"no_label: label {row.label!r} is not REAL/FAKE"))
            continue
        path = str(crops.get(row.video_id, ""))
        if root is not None and path and not path.startswith("/"):
            path = f"{root}/{path}"
        try:
            digest = sha256_file(path)
        except OSError as e:
            out_rows.append((row, f"unreadable_image: {path}: {e.strerror or e}"))
            continue
        digests.setdefault(digest, []).append(row)
    kept_rows, clips = [], []
    n_dup = 0
    for same in digests.values():
        first, rest = same[0], same[1:]
        if any(r.label != first.label for r in rest):
            ids = ", ".join(r.video_id for r in same)
            out_rows += [(r, f"duplicate_image: identical bytes in {ids} with different labels")
                         for r in same]
            n_dup += len(same)
            continue
        out_rows += [(r, f"duplicate_image: identical bytes to {first.video_id}") for r in rest]
        n_dup += len(rest)
        kept_rows.append(first)
        clips.extend(clip_records(first.video_id, first.label, first.original,
                                  single_image_choices(str(crops[first.video_id]), cfg.n_frames)))
    kept = pd.DataFrame(kept_rows, columns=singles.columns) if kept_rows else singles.iloc[0:0]
    kept = kept.sort_values("video_id").reset_index(drop=True).astype(singles.dtypes.to_dict())
    outliers = pd.DataFrame({
        "video_id": [r.video_id for r, _ in out_rows],
        "label": [r.label for r, _ in out_rows],
        "original": [r.original for r, _ in out_rows],
        "n_faces": pd.Series([r.n_faces for r, _ in out_rows], dtype="Int64"),
        "reason": [why for _, why in out_rows],
    })
    counts = {"single_image_videos": len(singles), "single_image_kept": len(kept),
              "duplicate_images": n_dup}
    return kept, clips_frame(clips), outliers, counts


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [manifest.validate(f, "outliers") for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else manifest.empty("outliers")


def _log_summary(counts: dict[str, Any]) -> None:
    lines = [
        f"videos in                {counts['videos_in']}",
        f"kept                     {counts['kept']}",
        f"outliers                 {counts['outliers']}",
    ]
    lines += [f"  {k:<23}{v}" for k, v in counts["outliers_by_reason"].items()]
    lines += [
        f"orphan fakes             {counts['orphan_fakes']} "
        f"({counts['orphan_fakes_dropped']} dropped; {counts['fakes_original_absent']} fakes "
        "whose original is absent from the input, kept)",
        f"single-image videos      {counts['single_image_videos']} (face-count filter and "
        f"frame sampler not applied; {counts['single_image_kept']} kept, "
        f"{counts['duplicate_images']} duplicate images left out)",
        f"short clips              {counts['short_clips']} ({counts['short_clips_dropped']} dropped, "
        f"{counts['short_clips_padded']} padded)",
        f"gap slots                {counts['gap_slots']} {counts['gaps_by_reason']}",
        f"{'split':<8}{'videos':>8}{'groups':>8}{'fake share':>12}",
    ]
    for s, d in counts["split"].items():
        lines.append(f"{s:<8}{d['videos']:>8}{d['groups']:>8}{d['fake_share']:>12.3f}")
    g = counts["groups"]
    lines.append(f"groups                   {g['groups']} ({g['groups_by_original']} originals, "
                 f"--merge-groups {g['merge_groups']}: {len(g['merged_groups'])} merged group(s))")
    logger.info("prepare summary\n%s", "\n".join(lines))


def _single_faces(videos: pd.DataFrame, single: pd.Series, faces: FaceColumns) -> pd.DataFrame:
    """``video_id, crop_path`` (stored) of the faces rows of single-image videos."""
    pos = videos.loc[single, "_code"].to_numpy(np.int64)
    rows = np.flatnonzero(np.isin(faces.codes, pos))
    by_code = pd.Series(videos["video_id"].to_numpy(), index=videos["_code"].to_numpy())
    return pd.DataFrame({"video_id": by_code.loc[faces.codes[rows]].to_numpy(),
                         "crop_path": faces.crop_paths(rows).to_pylist()})


def _to_clips_arrow(clips: pd.DataFrame) -> pa.Table:
    return manifest.validate(clips, "clips").pipe(
        lambda df: pa.Table.from_pandas(df, preserve_index=False))


def _write(kind: str, table: pd.DataFrame | pa.Table, mdir: Path, **kw: Any) -> None:
    counts = kw.pop("counts")
    path = manifest.manifest_path(mdir, kind).with_suffix(manifest.PARQUET)
    with manifest.ManifestWriter(path, kind, **kw) as w:
        if isinstance(table, pa.Table):
            w.write_arrow(table)
        else:
            w.write(table)
        w.close(counts)


def run(cfg: PrepareConfig) -> int:
    """Run the prepare stage (see the module docstring); returns the exit status."""
    _validate_config(cfg)
    mdir = Path(cfg.manifest_dir)
    videos_path = manifest.manifest_path(mdir, "videos")
    faces_path = manifest.manifest_path(mdir, "faces")
    videos = manifest.read_manifest(videos_path, "videos")
    if not faces_path.is_file():
        raise ManifestError(f"{faces_path}: manifest not found (run the stage that writes it first)")
    from pipeline.filtering import _check_columns

    _check_columns(videos)
    videos["_code"] = np.arange(len(videos), dtype=np.int64)
    faces = load_face_columns(faces_path, videos["video_id"])
    root = manifest.faces_root(manifest.read_meta(faces_path), faces_path)
    logger.info("prepare: %d videos, %d face rows from %s", len(videos), len(faces.codes), mdir)

    rows_per_video = np.bincount(faces.codes[faces.codes >= 0], minlength=len(videos))
    videos, mismatch = check_face_counts(videos, rows_per_video, faces.unknown_ids)
    single = single_image_mask(videos)
    kept, window_out = window_filter(videos[~single], cfg.min_faces, cfg.max_faces)
    kept, clips, gaps, short_out, sample_counts = sample_all(kept, faces, cfg)
    s_kept, s_clips, single_out, single_counts = prepare_single_images(
        videos[single], _single_faces(videos, single, faces), cfg, root)
    if len(s_kept):
        kept = pd.concat([kept, s_kept], ignore_index=True)
        schema = manifest.arrow_schema("clips")
        clips = pa.concat_tables([clips.cast(schema), _to_clips_arrow(s_clips).cast(schema)])
    all_ids = set(videos["video_id"]) | set(mismatch["video_id"])
    kept, orphan_out, orphan_counts = orphan_filter(kept, all_ids, cfg.orphan_fakes)
    clips = clips.filter(pc.is_in(clips.column("video_id"),
                                  value_set=_strings(kept["video_id"])))
    kept = kept.drop(columns=["_code"])

    outliers = _concat([mismatch, window_out, short_out, single_out, orphan_out])
    conf = to_dict(cfg)
    inputs = [videos_path, faces_path]
    # one id in the four sidecars: readers check that clips and split come from one run
    prepare_id = uuid.uuid4().hex
    pre_counts = {"videos_in": len(videos) + len(mismatch), "kept": len(kept),
                  "outliers": len(outliers), "outliers_by_reason": reason_counts(outliers),
                  **orphan_counts, **sample_counts, **single_counts}
    kw = dict(config=conf, inputs=inputs, prepare_id=prepare_id)
    try:
        split = split_groups(kept, cfg.test_share, cfg.val_share, cfg.seed, cfg.merge_groups)
        check_split(split)
    except SplitError as e:
        # the filter's decisions are still worth reading; stale clips/split must not survive
        for kind, table in (("outliers", outliers), ("gaps", gaps)):
            _write(kind, table, mdir, counts=pre_counts, **kw)
        for kind in ("clips", "split"):
            for suffix in manifest.SUFFIXES:
                p = (mdir / kind).with_suffix(suffix)
                p.unlink(missing_ok=True)
            manifest.meta_path(mdir / f"{kind}.parquet").unlink(missing_ok=True)
        raise SplitError(f"{e} ({len(kept)} videos kept of {pre_counts['videos_in']}; "
                         f"see {manifest.manifest_path(mdir, 'outliers')})") from e
    per_video = pc.value_counts(clips.column("video_id"))
    n_per = per_video.field("counts").to_numpy()
    if (clips.num_rows != cfg.n_frames * len(split) or not (n_per == cfg.n_frames).all()
            or set(per_video.field("values").to_pylist()) != set(split["video_id"])):
        raise RuntimeError("internal error: clips do not have n_frames rows per split video")

    mask = clips.column("mask").to_numpy()
    counts: dict[str, Any] = {
        **pre_counts,
        "clip_rows": clips.num_rows,
        "padded_rows": int((mask == 0).sum()),
        "split": split_summary(split),
        "groups": merge_report(kept, cfg.merge_groups),
    }
    for kind, table in (("outliers", outliers), ("clips", clips), ("gaps", gaps),
                        ("split", split)):
        _write(kind, table, mdir, counts=counts, **kw,
               faces_root=root if kind == "clips" else None)
    _log_summary(counts)
    if len(mismatch):
        logger.error("%d video(s) whose n_faces disagrees with the faces manifest (see outliers)",
                     len(mismatch))
        return 1
    return 0
