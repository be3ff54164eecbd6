"""Frame-count filter: videos manifest -> kept videos + outliers (nothing is moved or deleted).

What is counted: ``n_faces``, the number of face crops that ``dfpipe extract`` wrote for a video
(= its rows in ``faces.csv``). The original study counted the images in each video's crop folder,
so a frame with two faces counts twice and a 300-frame two-actor video lands near 600 and is
filtered out as ``too_many_faces``; a video where the face is found in fewer than 200 frames is
``too_few_faces``. Bounds are inclusive: with the defaults 200 and 400 are kept, 199 and 401 are not.

Order of the checks, first match wins (one outlier row per video):

1. ``not_ok``: extract status is not ``ok`` (detail: the status and its reason);
2. ``no_label``: the label is not REAL/FAKE (not in any metadata.json; it cannot be trained on);
3. ``too_few_faces`` / ``too_many_faces``: ``n_faces`` outside ``[min_faces, max_faces]``;
4. ``orphan_fake``: a FAKE whose original is in the input but was left out (any reason above, or
   later by the sampler); dropped by default, kept with ``orphan_fakes="keep"``, always counted.

A FAKE whose original is absent from the input altogether (e.g. FF++ ``750_743``, original
``750`` not provided) is not an orphan in this sense: nothing was dropped; it is kept, counted as
``fakes_original_absent`` and grouped under its original's id by the split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.core.errors import ConfigError, ManifestError
from pipeline.io.manifest import LABELS

logger = logging.getLogger(__name__)

OUTLIER_COLUMNS = ["video_id", "label", "original", "n_faces", "reason"]


@dataclass
class FilterResult:
    """Outcome of the filter: ``kept`` rows (videos schema), ``outliers`` rows, summary counts."""

    kept: pd.DataFrame
    outliers: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def reason_code(reason: str) -> str:
    """The machine-readable part of an outlier reason (``"too_few_faces: 199 < 200"`` -> code)."""
    return str(reason).split(":", 1)[0].strip()


def _outlier_rows(df: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    out = df[["video_id", "label", "original", "n_faces"]].copy()
    out["reason"] = pd.array(list(reasons), dtype="string")  # positional, not by index
    return out.reset_index(drop=True)


def _check_columns(videos: pd.DataFrame) -> None:
    needed = ["video_id", "label", "original", "n_faces", "status"]
    missing = [c for c in needed if c not in videos.columns]
    if missing:
        raise ManifestError(f"videos table: missing column(s) {missing}")
    dup = videos["video_id"][videos["video_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(
            f"videos table: duplicate video_id(s) {dup[:5]} (ids must be unique across parts)"
        )


def window_filter(
    videos: pd.DataFrame, min_faces: int = 200, max_faces: int = 400
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checks 1-3 of the module docstring.

    Args:
        videos: rows of the ``videos`` manifest (``status``, ``label``, ``n_faces`` used).
        min_faces: smallest kept face-crop count (inclusive).
        max_faces: largest kept face-crop count (inclusive).

    Returns:
        (kept videos, outlier rows with ``video_id, label, original, n_faces, reason``).
    """
    if min_faces < 0 or max_faces < min_faces:
        raise ConfigError(f"face window [{min_faces}, {max_faces}] is empty or negative")
    _check_columns(videos)
    videos = videos.reset_index(drop=True)
    status = videos["status"].astype("string").fillna("")
    label = videos["label"].astype("string").fillna("")
    n = pd.to_numeric(videos["n_faces"], errors="coerce").astype("Int64")

    reasons = pd.Series([""] * len(videos), dtype="object")
    not_ok = status != "ok"
    for i in videos.index[not_ok]:
        detail = str(videos.at[i, "reason"]) if "reason" in videos.columns else ""
        detail = "" if detail in ("", "nan", "<NA>") else f" ({detail})"
        reasons[i] = f"not_ok: status {status[i] or '<empty>'}{detail}"
    rest = reasons == ""
    no_label = rest & ~label.isin(LABELS)
    for i in videos.index[no_label]:
        reasons[i] = f"no_label: label {label[i]!r} is not REAL/FAKE"
    rest = reasons == ""
    missing_n = rest & n.isna()
    for i in videos.index[missing_n]:
        reasons[i] = "not_ok: n_faces missing"
    rest = reasons == ""
    few = rest & (n.fillna(0) < min_faces)
    many = rest & (n.fillna(0) > max_faces)
    for i in videos.index[few]:
        reasons[i] = f"too_few_faces: {n[i]} < {min_faces}"
    for i in videos.index[many]:
        reasons[i] = f"too_many_faces: {n[i]} > {max_faces}"
    out_mask = reasons != ""
    kept = videos[~out_mask].reset_index(drop=True)
    outliers = _outlier_rows(videos[out_mask], reasons[out_mask])
    return kept, outliers


def orphan_filter(
    kept: pd.DataFrame, all_video_ids: set[str] | pd.Series, orphan_fakes: str = "drop"
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Find FAKEs in ``kept`` whose original is in the input but not in ``kept`` (check 4).

    Args:
        kept: videos still kept.
        all_video_ids: every video id of the input (to tell "dropped" from "never provided").
        orphan_fakes: ``"drop"`` (listed as outliers) or ``"keep"`` (kept, still counted).

    Returns:
        (kept videos, outlier rows for dropped orphans, counts ``orphan_fakes``,
        ``orphan_fakes_dropped``, ``fakes_original_absent``).
    """
    if orphan_fakes not in ("drop", "keep"):
        raise ConfigError(f"orphan_fakes must be 'drop' or 'keep', not {orphan_fakes!r}")
    kept = kept.reset_index(drop=True)
    all_ids = set(all_video_ids)
    kept_ids = set(kept["video_id"])
    is_fake = kept["label"] == "FAKE"
    # object dtype: isin with a Python set hashes (Arrow-backed strings would convert the set)
    orig = kept["original"].astype("string").fillna("").astype(object)
    has_orig = orig != ""
    absent = is_fake & has_orig & ~orig.isin(all_ids)
    orphan = is_fake & has_orig & orig.isin(all_ids) & ~orig.isin(kept_ids)
    counts = {
        "orphan_fakes": int(orphan.sum()),
        "orphan_fakes_dropped": int(orphan.sum()) if orphan_fakes == "drop" else 0,
        "fakes_original_absent": int(absent.sum()),
    }
    if orphan.any():
        logger.warning(
            "%d fake(s) whose original was left out: %s (orphan_fakes=%s)",
            int(orphan.sum()), ", ".join(kept.loc[orphan, "video_id"].head(10)), orphan_fakes,
        )
    if orphan_fakes == "keep" or not orphan.any():
        return kept, _outlier_rows(kept.iloc[0:0], pd.Series([], dtype="object")), counts
    reasons = pd.Series(
        [f"orphan_fake: original {o} was left out" for o in orig[orphan]], dtype="object"
    )
    outliers = _outlier_rows(kept[orphan], reasons)
    return kept[~orphan].reset_index(drop=True), outliers, counts


def reason_counts(outliers: pd.DataFrame) -> dict[str, int]:
    """Number of outliers per reason code, sorted by code."""
    codes = outliers["reason"].map(reason_code) if len(outliers) else pd.Series([], dtype=str)
    return {str(k): int(v) for k, v in sorted(codes.value_counts().items())}


def filter_videos(
    videos: pd.DataFrame,
    min_faces: int = 200,
    max_faces: int = 400,
    orphan_fakes: str = "drop",
) -> FilterResult:
    """Frame-count filter plus orphan handling (checks 1-4 of the module docstring).

    Args:
        videos: rows of the ``videos`` manifest.
        min_faces: smallest kept ``n_faces`` (inclusive).
        max_faces: largest kept ``n_faces`` (inclusive).
        orphan_fakes: ``"drop"`` or ``"keep"`` fakes whose original was filtered out.

    Returns:
        ``FilterResult`` with kept rows, outlier rows and summary counts
        (``videos_in``, ``kept``, ``outliers``, ``by_reason``, orphan counts).
    """
    kept, out1 = window_filter(videos, min_faces, max_faces)
    kept, out2, orphan_counts = orphan_filter(kept, videos["video_id"], orphan_fakes)
    outliers = pd.concat([out1, out2], ignore_index=True)
    summary = {
        "videos_in": len(videos),
        "kept": len(kept),
        "outliers": len(outliers),
        "by_reason": reason_counts(outliers),
        **orphan_counts,
    }
    return FilterResult(kept, outliers, summary)
