"""Single-image videos -> label-checked, deduplicated videos and their one-image clip rows.

Input: the videos-rows of single-image videos (``extract --from-faces`` on a folder of one image
per video: status ``ok``, ``n_frames`` 1) and their stored crop paths. Output: the kept videos
(labelled, byte-identical images deduplicated: the rules are in the ``pipeline.prepare.stage``
docstring), a clip per video whose slot 0 is the image and whose other slots are padding, and
the outlier rows ``no_label`` / ``unreadable_image`` / ``duplicate_image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.config import PrepareConfig
from pipeline.core.fsutil import sha256_file
from pipeline.io.manifest import LABELS
from pipeline.prepare.sampling import SlotChoice, clip_records, clips_frame


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
