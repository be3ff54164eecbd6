"""``dfpipe prepare``: videos + faces manifests -> outliers, clips, gaps, split (Parquet).

Columnar: the faces manifest is read as three integer columns (video, frame, track; no boxes, no
paths), every video is sampled at once (``sampling.sample_columns``, in batches of
``SAMPLE_BATCH`` videos) and crop paths are read only for the rows the clips use; a legacy CSV
folder is converted on read. Crop paths stay relative to the faces root, copied into the clips
metadata.

Steps (each decision lands in a manifest; nothing is moved or deleted):

1. consistency: ``n_faces`` of ``videos.csv`` must equal the video's rows in ``faces.csv``
   (filled from faces.csv when empty); a mismatch is an outlier ``faces_mismatch`` and exit 1;
2. frame-count filter (``pipeline.prepare.filtering.window_filter``): status, label, ``n_faces`` window;
3. subsampling (``pipeline.prepare.sampling``): ``n_frames`` slots per video, gaps recorded; a video with
   fewer usable slots is dropped (``too_few_usable_frames: 27/30``) or padded with mask 0 rows;
4. orphan fakes (``pipeline.prepare.filtering.orphan_filter``): fakes whose original was left out;
5. grouped split (``pipeline.prepare.splits``), checked for leaks and labels before it is written;
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

Modules: this one runs the stage (filters, split, writes); the columnar faces reading, the
count check of step 1 and the sampling of step 3 are in ``pipeline.prepare.columns``, the
single-image videos in ``pipeline.prepare.single``; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import PrepareConfig, to_dict
from pipeline.core.errors import ConfigError, ManifestError, SplitError
from pipeline.io import manifest
from pipeline.prepare.columns import (
    SAMPLE_BATCH,
    FaceColumns,
    _strings,
    check_face_counts,
    load_face_columns,
    sample_all,
    sample_batched,
)
from pipeline.prepare.filtering import orphan_filter, reason_counts, window_filter
from pipeline.prepare.single import prepare_single_images, single_image_choices, single_image_mask
from pipeline.prepare.splits import check_split, merge_report, split_groups, split_summary

logger = logging.getLogger(__name__)

__all__ = ["SAMPLE_BATCH", "FaceColumns", "check_face_counts", "load_face_columns",
           "prepare_single_images", "run", "sample_all", "sample_batched",
           "single_image_choices", "single_image_mask"]


def _validate_config(cfg: PrepareConfig) -> None:
    if cfg.min_faces < 0 or cfg.max_faces < cfg.min_faces:
        raise ConfigError(f"--min-faces {cfg.min_faces} / --max-faces {cfg.max_faces}: empty window")
    if cfg.n_frames < 1 or cfg.stride < 1:
        raise ConfigError(f"--n-frames {cfg.n_frames} and --stride {cfg.stride} must be >= 1")
    if not 0 < cfg.test_share < 1 or not 0 < cfg.val_share < 1:
        raise ConfigError(
            f"--test-share {cfg.test_share} and --val-share {cfg.val_share} must lie in (0, 1)"
        )


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
    from pipeline.prepare.filtering import _check_columns

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
