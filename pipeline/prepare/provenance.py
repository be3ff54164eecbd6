"""What a checkpoint records about its training data: manifest folder -> summaries.

``data_summary`` (checksums, counts per split and label, the split fingerprint, the synthetic
flag, the sampling rules, the training videos' frame rate), ``data_source`` (which input folders) and ``train_crop`` (the crop
recipe of the training crops, for scoring to crop videos the same way).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.fsutil import sha256_file
from pipeline.io.manifest import manifest_path, read_manifest, read_meta
from pipeline.prepare.splits import split_fingerprint

logger = logging.getLogger(__name__)


def detect_synthetic(manifest_dir: Path) -> tuple[bool | None, str]:
    """Was the training data synthetic? (flag, how we know).

    ``dfpipe synth`` writes ``synth_truth.json`` at the dataset root: a video whose folder or
    parent folder holds one is synthetic. Without a videos manifest, a ``synthetic`` key in the
    clips manifest's recorded config decides; otherwise unknown (None).
    """
    videos = manifest_path(manifest_dir, "videos")
    if videos.is_file():
        folders = {Path(p).parent for p in read_manifest(videos, "videos")["path"] if p}
        for folder in folders:
            for d in (folder, folder.parent):
                if (d / "synth_truth.json").is_file():
                    return True, f"{d / 'synth_truth.json'} (written by dfpipe synth)"
        return False, f"no synth_truth.json beside the videos of {videos}"
    conf = read_meta(manifest_path(manifest_dir, "clips")).get("config", {})
    if "synthetic" in conf:
        return bool(conf["synthetic"]), "clips manifest sidecar config"
    return None, "unknown: no videos manifest and no flag in the clips sidecar"


def data_summary(manifest_dir: Path, clips: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any]:
    """What the model was trained on: checksums, counts per split and label, synthetic flag."""
    counts = {s: {lab: int(((split["split"] == s) & (split["label"] == lab)).sum())
                  for lab in ("REAL", "FAKE")} for s in ("train", "val", "test")}
    synthetic, source = detect_synthetic(manifest_dir)
    return {"manifest_dir": str(manifest_dir),
            "clips_sha256": sha256_file(manifest_path(manifest_dir, "clips")),
            "split_sha256": sha256_file(manifest_path(manifest_dir, "split")),
            # what evaluate and --resume compare: which video is in which split
            "split_fingerprint": split_fingerprint(split),
            "prepare_id": read_meta(manifest_path(manifest_dir, "split")).get("prepare_id"),
            "counts": counts, "n_slots": int(clips.groupby("video_id").size().max()),
            "source": data_source(manifest_dir),
            # the training videos' frame rate: scoring spaces its slots in seconds from it
            "fps": train_fps(manifest_dir, split),
            "synthetic": synthetic, "synthetic_source": source,
            # the sampling rules the clips were made with: scoring must use the same ones
            "prepare": read_meta(manifest_path(manifest_dir, "clips")).get("config", {})}


def train_fps(manifest_dir: Path, split: pd.DataFrame) -> float | None:
    """Median frame rate of the training split's videos (from the videos manifest); None when
    unknown (no videos manifest, or no usable fps: e.g. faces imported as still images)."""
    videos = manifest_path(manifest_dir, "videos")
    if not videos.is_file():
        return None
    v = read_manifest(videos, "videos", columns=["video_id", "fps"])
    train = set(split.loc[split["split"] == "train", "video_id"])
    fps = pd.to_numeric(v.loc[v["video_id"].isin(train), "fps"], errors="coerce")
    fps = fps[(fps > 0) & (fps < 1000)]
    return round(float(fps.median()), 3) if len(fps) else None


def data_source(manifest_dir: Path) -> str:
    """Short names of the folders the training videos came from (the extract config's inputs)."""
    conf = read_meta(manifest_path(manifest_dir, "videos")).get("config") or {}
    names = [f"{Path(p).parent.name}/{Path(p).name}" if Path(p).parent.name else Path(p).name
             for p in conf.get("inputs") or []]
    if len(names) > 3:
        names = [*names[:3], f"... ({len(names)} inputs)"]
    return ", ".join(names)


def train_crop(manifest_dir: Path) -> dict[str, Any] | None:
    """The crop recipe of the training crops, from the videos manifest's extract config.

    ``{"margin", "size", "square", "jpeg_quality", "source"}``; None when unknown (no videos
    manifest, or faces imported with ``--from-faces``: their crops were made elsewhere).
    """
    videos = manifest_path(manifest_dir, "videos")
    conf = read_meta(videos).get("config") or {}
    if conf.get("from_faces"):
        logger.warning("%s: faces imported with --from-faces were cropped elsewhere: the "
                       "checkpoint records no crop recipe (set one when exporting it for release)",
                       videos)
        return None
    if "margin" not in conf:
        return None
    return {"margin": float(conf["margin"]), "size": int(conf["crop_size"]),
            "square": bool(conf.get("square", True)), "jpeg_quality": int(conf["jpeg_quality"]),
            "source": f"extract config of {videos}"}


