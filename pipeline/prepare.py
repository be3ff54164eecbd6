"""``dfpipe prepare``: videos.csv + faces.csv -> outliers.csv, clips.csv, gaps.csv, split.csv.

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
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline import manifest
from pipeline.config import PrepareConfig, to_dict
from pipeline.errors import ConfigError, SplitError
from pipeline.filtering import orphan_filter, reason_counts, window_filter
from pipeline.fsutil import sha256_file
from pipeline.manifest import LABELS
from pipeline.sampling import (
    SlotChoice,
    clip_records,
    clips_frame,
    gap_records,
    gaps_frame,
    n_usable,
    sample_video,
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


def check_face_counts(
    videos: pd.DataFrame, faces: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill missing ``n_faces`` from faces rows; split off ``ok`` videos whose count disagrees.

    Returns:
        (videos with ``n_faces`` filled, outlier rows ``faces_mismatch``).
    """
    rows = faces.groupby("video_id").size()
    videos = videos.copy()
    in_faces = videos["video_id"].map(rows).fillna(0).astype("int64")
    n = videos["n_faces"].astype("Int64")
    videos["n_faces"] = n.fillna(pd.Series(in_faces, index=videos.index).astype("Int64"))
    bad = (videos["status"] == "ok") & n.notna() & (n != in_faces).fillna(False)
    out = videos.loc[bad, ["video_id", "label", "original", "n_faces"]].copy()
    out["reason"] = [
        f"faces_mismatch: videos.csv n_faces {a}, faces.csv has {b} rows"
        for a, b in zip(n[bad], in_faces[bad], strict=True)
    ]
    unknown = sorted(set(rows.index) - set(videos["video_id"]))
    if unknown:
        logger.warning("faces.csv has rows for %d video(s) not in videos.csv (ignored): %s",
                       len(unknown), ", ".join(unknown[:5]))
    return videos[~bad].reset_index(drop=True), out.reset_index(drop=True)


def sample_all(
    kept: pd.DataFrame, faces: pd.DataFrame, cfg: PrepareConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Run the sampler on every kept video.

    Returns:
        (kept videos, clip rows, gap rows of every sampled video, outlier rows of dropped short
        clips, counts).
    """
    by_video = dict(iter(faces.groupby("video_id", sort=False)))
    empty_faces = manifest.empty("faces")
    clips, gaps, short, keep_mask = [], [], [], []
    advanced = 0
    for row in tqdm(kept.itertuples(index=False), total=len(kept), desc="sample", unit="video",
                    disable=None):
        vf = None if pd.isna(row.n_frames) else int(row.n_frames)
        choices = sample_video(by_video.get(row.video_id, empty_faces), cfg.sampler,
                               cfg.n_frames, cfg.stride, vf)
        advanced += sum(c.reason == "advanced" for c in choices)
        gaps.extend(gap_records(row.video_id, choices))
        got = n_usable(choices)
        if got < cfg.n_frames:
            short.append((row, got))
            if cfg.short_clips == "drop":
                keep_mask.append(False)
                continue
        keep_mask.append(True)
        clips.extend(clip_records(row.video_id, row.label, row.original, choices))
    short_out = pd.DataFrame(
        {
            "video_id": [r.video_id for r, _ in short],
            "label": [r.label for r, _ in short],
            "original": [r.original for r, _ in short],
            "n_faces": pd.Series([r.n_faces for r, _ in short], dtype="Int64"),
            "reason": [f"too_few_usable_frames: {g}/{cfg.n_frames}" for _, g in short],
        }
    )
    if cfg.short_clips == "pad":
        short_out = short_out.iloc[0:0]
    clip_df, gap_df = clips_frame(clips), gaps_frame(gaps)
    counts = {
        "sampled": len(kept),
        "short_clips": len(short),
        "short_clips_dropped": len(short) if cfg.short_clips == "drop" else 0,
        "short_clips_padded": len(short) if cfg.short_clips == "pad" else 0,
        "gap_slots": len(gap_df),
        "gaps_by_reason": {str(k): int(v) for k, v in
                           sorted(gap_df["reason"].value_counts().items())},
        "advanced_slots": advanced,
    }
    kept = kept[pd.Series(keep_mask, index=kept.index, dtype=bool)].reset_index(drop=True)
    return kept, clip_df, gap_df, short_out, counts


def single_image_mask(videos: pd.DataFrame) -> pd.Series:
    """True for single-image videos (status ``ok``, ``n_frames`` 1; see the module docstring)."""
    n = pd.to_numeric(videos["n_frames"], errors="coerce")
    return ((videos["status"] == "ok") & (n == 1)).fillna(False).astype(bool)


def single_image_choices(crop_path: str, n_frames: int) -> list[SlotChoice]:
    """The clip of a single-image video: slot 0 is the image, the other slots are padding."""
    return [SlotChoice(0, None, 0, 0, crop_path, "")] + [
        SlotChoice(k, None, None, None, None, "single_image") for k in range(1, n_frames)]


def prepare_single_images(
    singles: pd.DataFrame, faces: pd.DataFrame, cfg: PrepareConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Label check, byte-level dedupe and clip rows for single-image videos.

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


def run(cfg: PrepareConfig) -> int:
    """Run the prepare stage (see the module docstring); returns the exit status."""
    _validate_config(cfg)
    mdir = Path(cfg.manifest_dir)
    videos_path = manifest.manifest_path(mdir, "videos")
    faces_path = manifest.manifest_path(mdir, "faces")
    videos = manifest.read_manifest(videos_path, "videos")
    faces = manifest.read_manifest(faces_path, "faces")
    logger.info("prepare: %d videos, %d face rows from %s", len(videos), len(faces), mdir)

    videos, mismatch = check_face_counts(videos, faces)
    single = single_image_mask(videos)
    kept, window_out = window_filter(videos[~single], cfg.min_faces, cfg.max_faces)
    kept, clips, gaps, short_out, sample_counts = sample_all(kept, faces, cfg)
    s_kept, s_clips, single_out, single_counts = prepare_single_images(
        videos[single], faces[faces["video_id"].isin(set(videos.loc[single, "video_id"]))], cfg)
    if len(s_kept):
        kept = pd.concat([kept, s_kept], ignore_index=True)
        clips = pd.concat([clips, s_clips], ignore_index=True)
    all_ids = set(videos["video_id"]) | set(mismatch["video_id"])
    kept, orphan_out, orphan_counts = orphan_filter(kept, all_ids, cfg.orphan_fakes)
    clips = clips[clips["video_id"].isin(set(kept["video_id"]))].reset_index(drop=True)

    outliers = _concat([mismatch, window_out, short_out, single_out, orphan_out])
    conf = to_dict(cfg)
    inputs = [videos_path, faces_path]
    # one id in the four sidecars: readers check that clips and split come from one run
    prepare_id = uuid.uuid4().hex
    pre_counts = {"videos_in": len(videos) + len(mismatch), "kept": len(kept),
                  "outliers": len(outliers), "outliers_by_reason": reason_counts(outliers),
                  **orphan_counts, **sample_counts, **single_counts}
    try:
        split = split_groups(kept, cfg.test_share, cfg.val_share, cfg.seed, cfg.merge_groups)
        check_split(split)
    except SplitError as e:
        # the filter's decisions are still worth reading; stale clips/split must not survive
        for kind, table in (("outliers", outliers), ("gaps", gaps)):
            manifest.write_manifest(table, manifest.manifest_path(mdir, kind), kind,
                                    config=conf, inputs=inputs, counts=pre_counts,
                                    prepare_id=prepare_id)
        for kind in ("clips", "split"):
            for p in (manifest.manifest_path(mdir, kind), manifest.meta_path(
                    manifest.manifest_path(mdir, kind))):
                p.unlink(missing_ok=True)
        raise SplitError(f"{e} ({len(kept)} videos kept of {pre_counts['videos_in']}; "
                         f"see {manifest.manifest_path(mdir, 'outliers')})") from e
    per_video = clips.groupby("video_id").size()
    if not (per_video == cfg.n_frames).all() or set(per_video.index) != set(split["video_id"]):
        raise RuntimeError("internal error: clips do not have n_frames rows per split video")

    counts: dict[str, Any] = {
        **pre_counts,
        "clip_rows": len(clips),
        "padded_rows": int((clips["mask"] == 0).sum()),
        "split": split_summary(split),
        "groups": merge_report(kept, cfg.merge_groups),
    }
    for kind, table in (("outliers", outliers), ("clips", clips), ("gaps", gaps),
                        ("split", split)):
        manifest.write_manifest(table, manifest.manifest_path(mdir, kind), kind,
                                config=conf, inputs=inputs, counts=counts, prepare_id=prepare_id)
    _log_summary(counts)
    if len(mismatch):
        logger.error("%d video(s) whose n_faces disagrees with faces.csv (see outliers.csv)",
                     len(mismatch))
        return 1
    return 0
