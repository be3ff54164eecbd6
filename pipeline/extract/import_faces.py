"""``dfpipe extract --from-faces``: pre-extracted face images -> the extract stage's two manifests.

No detection: a folder per video (one image per frame) or one image per video (the Kaggle
"deepfake_faces" layout) plus a metadata CSV become ``videos``/``faces`` rows referencing the
images in place.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd

from pipeline.config import ExtractConfig
from pipeline.core.errors import ConfigError, MetadataError, VideoReadError
from pipeline.extract.manifests import write_manifests
from pipeline.io.discovery import IMAGE_EXTENSIONS, _label, _row, _stem
from pipeline.io.manifest import LABELS

logger = logging.getLogger(__name__)


def _frame_number(name: str, fallback: int) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in Path(name).stem).split()
    return int(digits[-1]) if digits else fallback


def _read_faces_metadata(mpath: Path) -> dict[str, dict]:
    """Rows of a Kaggle faces metadata CSV by video id (``filename`` or ``videoname`` column)."""
    if not mpath.is_file():
        raise ConfigError(f"--metadata {mpath}: file not found")
    try:
        table = pd.read_csv(mpath, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise MetadataError(f"{mpath}: unreadable CSV: {' '.join(str(e).split())}") from e
    key = next((c for c in ("filename", "videoname") if c in table.columns), None)
    if key is None or "label" not in table.columns:
        raise MetadataError(f"{mpath}: needs columns filename|videoname,label[,original]; "
                            f"has {list(table.columns)}")
    meta: dict[str, dict] = {}
    for line, r in enumerate(table.to_dict("records"), start=2):
        label = str(r.get("label", "")).strip().upper()
        if label not in LABELS:  # the video is still imported, with label "" (prepare: no_label)
            logger.warning("%s: line %d: label %r is not REAL/FAKE; imported with label ''",
                           mpath, line, r.get("label"))
        meta[_stem(r[key])] = r
    return meta


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; ``VideoReadError`` when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise VideoReadError(f"{path}: not a readable image: {' '.join(str(e).split())}") from e


def import_faces(cfg: ExtractConfig) -> int:
    """``--from-faces DIR... --metadata CSV``: pre-extracted faces -> the same two manifests.

    Two layouts, recognised per input folder (both may be mixed):

    - one folder per video (Kaggle "deepfake-detection-faces"): ``DIR/<video_id>/<frame>.jpg``;
      frame numbers come from the last number in each image name; a folder without images is
      ``no_face``;
    - one image per video (Kaggle "deepfake_faces"): ``DIR/<video_id>.jpg`` directly in the
      folder. Each image is a *single-image video*: a videos-row with ``n_frames = 1`` and one
      face at frame 0 (width/height are the image's); ``prepare`` skips the frame-count filter and
      the 30-frame sampler for such videos. An unreadable image is ``read_error``.

    The CSV has ``filename`` or ``videoname``, ``label`` and optionally ``original`` (extra columns
    ignored). Images are referenced where they are (not copied); track 0, boxes and probabilities
    NaN. Metadata rows without images are ``missing_file``; images without a row get label "".
    """
    if not cfg.inputs:
        raise ConfigError("extract --from-faces: give the face folder(s) as inputs")
    srcs = [Path(p) for p in cfg.inputs]
    for src in srcs:
        if not src.is_dir():
            raise ConfigError(f"--from-faces {src}: folder not found")
    meta = _read_faces_metadata(Path(cfg.metadata)) if cfg.metadata else {}
    found: dict[str, tuple[str, Path]] = {}  # video id -> ("folder" | "image", path)
    rows: list[dict] = []
    imported: dict[str, list[list]] = {}  # face rows by the video row's path (not a row column)
    for src in srcs:
        try:
            entries = sorted(src.iterdir())
        except OSError as e:
            raise ConfigError(f"--from-faces {src}: cannot list folder: {e.strerror or e}") from e
        for d in entries:
            if d.name.startswith((".", "_")):
                continue
            if d.is_dir():
                kind = "folder"
            elif d.is_file() and d.suffix.lower() in IMAGE_EXTENSIONS:
                kind = "image"
            else:
                continue
            vid = d.stem if kind == "image" else d.name
            if vid in found:
                rows.append(_row(video_id=vid, part=src.name, path=str(d.resolve()),
                                 status="duplicate_id",
                                 reason=f"{d}: id {vid} already used by {found[vid][1]}"))
                continue
            found[vid] = (kind, d)
    n_single = 0
    for vid in sorted(set(found) | set(meta)):
        entry = meta.get(vid, {})
        base = dict(video_id=vid, label=_label(entry), original=_stem(entry.get("original", "")))
        if vid not in found:
            rows.append(_row(**base, part="", path="", status="missing_file",
                             reason=f"{vid}: listed in {cfg.metadata} but no face image or folder "
                                    f"in {' '.join(map(str, srcs))}"))
            continue
        kind, where = found[vid]
        where = where.resolve()
        if kind == "image":
            try:
                width, height = _image_size(where)
            except VideoReadError as e:
                rows.append(_row(**base, part=where.parent.name, path=str(where),
                                 status=e.status, reason=str(e)))
                continue
            row = _row(**base, part=where.parent.name, path=str(where), n_frames=1,
                       width=width, height=height, n_face_frames=1, n_faces=1,
                       n_multi_face_frames=0, n_tracks=1, status="ok", reason="")
            imported[row["path"]] = [[vid, 0, 0, math.nan, math.nan, math.nan, math.nan,
                                      math.nan, str(where)]]
            rows.append(row)
            n_single += 1
            continue
        images = sorted(f for f in where.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        faces = []
        seen: set[int] = set()
        for i, img in enumerate(images):
            frame = _frame_number(img.name, i)
            if frame in seen:
                frame = max(seen) + 1
            seen.add(frame)
            faces.append([vid, frame, 0, math.nan, math.nan, math.nan, math.nan, math.nan, str(img)])
        row = _row(**base, part=where.parent.name, path=str(where), n_face_frames=len(faces),
                   n_faces=len(faces), n_multi_face_frames=0, n_tracks=1 if faces else 0,
                   status="ok" if faces else "no_face",
                   reason="" if faces else f"{where}: no images")
        imported[row["path"]] = faces
        rows.append(row)
    root = os.path.commonpath([str(Path(s).resolve()) for s in srcs]) if srcs else cfg.out
    counts = write_manifests(cfg, rows, kind_counts={"imported_from": [str(s) for s in srcs],
                                                     "single_image_videos": n_single},
                             faces_root=root, imported=imported)
    logger.info("import: %d videos (%s; %d single-image), %d faces; manifests in %s",
                counts["videos"], ", ".join(f"{k} {v}" for k, v in counts["status"].items()),
                n_single, counts["faces"], cfg.manifest_dir)
    return 1 if counts["failed"] else 0
