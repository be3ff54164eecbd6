"""Finding the videos of ``dfpipe extract``: DFDC part folders, plain folders or files -> items.

DFDC part folders hold ``metadata.json`` (label, original per file) and the videos; folders are
searched recursively. Rows that fail before any decoding (a listed file that is missing, unusable
metadata, a second file with an id already seen, a folder that cannot be listed) come back as
videos-rows with their status and reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, MetadataError
from pipeline.io.manifest import LABELS, SCHEMAS
from pipeline.io.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
"""Still images (``dfpipe score`` scores them; ``import_faces`` reads face crops); any case."""


def _row(**kw: Any) -> dict[str, Any]:
    """A videos-row with every column (missing numbers NaN, strings "")."""
    row: dict[str, Any] = {}
    for col, dtype in SCHEMAS["videos"].columns.items():
        row[col] = kw.get(col, "" if dtype == "string" else math.nan)
    return row


def _read_metadata(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MetadataError(f"{path}: cannot read: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise MetadataError(f"{path}: expected an object mapping 'x.mp4' to {{label, original}}")
    for name, entry in sorted(data.items()):
        label, original = entry.get("label"), entry.get("original")
        if "label" in entry and (not isinstance(label, str) or label.upper() not in LABELS):
            raise MetadataError(f"{path}: {name}: label is {label!r}, expected 'REAL' or 'FAKE'")
        if original is not None and not isinstance(original, str):
            raise MetadataError(f"{path}: {name}: original is {original!r}, expected a file name or null")
        if not isinstance(entry.get("split", ""), str):
            raise MetadataError(f"{path}: {name}: split is {entry['split']!r}, expected a string")
    return data


def _label(entry: dict) -> str:
    label = str(entry.get("label") or "").upper()
    return label if label in LABELS else ""


def _stem(name: Any) -> str:
    return Path(str(name)).stem if name else ""


def discover_inputs(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """Find the videos to process and the rows that fail before any decoding.

    Args:
        paths: DFDC part folders (``metadata.json`` + videos), folders of those, plain folders
            of videos, or video files. Folders are searched recursively.

    Returns:
        ``(items, failed_rows)``: items are plain dicts (``id``, ``video_id``, ``part``, ``path``,
        ``label``, ``original``) sorted by video_id; failed_rows are videos-rows for metadata
        entries whose file is missing (``missing_file``), unreadable metadata (``bad_metadata``)
        and second files with an id already seen (``duplicate_id``).

    Raises:
        ConfigError: a given path does not exist.
    """
    items: list[dict] = []
    failed: list[dict] = []
    folders: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ConfigError(f"{p}: input not found")
        if p.is_dir():
            folders.extend(sorted({p, *[d for d in p.rglob("*") if d.is_dir()]}))
        else:
            items.append(dict(video_id=p.stem, part="", path=str(p.resolve()), label="", original=""))
    for folder in folders:
        part = folder.name
        meta_file = folder / "metadata.json"
        try:
            videos = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
            has_meta = meta_file.is_file()
        except OSError as e:  # e.g. a folder without read permission: a row, not a crash
            logger.warning("%s: cannot list folder: %s", folder, e.strerror or e)
            failed.append(_row(video_id=f"{part}/", part=part, path=str(folder.resolve()),
                               status="read_error",
                               reason=f"{folder}: cannot list folder: {e.strerror or e}"))
            continue
        meta: dict[str, dict] = {}
        if has_meta:
            try:
                meta = _read_metadata(meta_file)
            except MetadataError as e:
                logger.warning("%s", e)
                failed.append(_row(video_id=f"{part}/metadata.json", part=part,
                                   path=str(meta_file.resolve()), status="bad_metadata",
                                   reason=f"{e}; videos in this folder get label ''"))
        present = {f.name for f in videos}
        for name, entry in sorted(meta.items()):
            if name not in present:
                failed.append(_row(video_id=_stem(name), part=part, path=str((folder / name).resolve()),
                                   label=_label(entry), original=_stem(entry.get("original")),
                                   status="missing_file",
                                   reason=f"{folder / name}: listed in {meta_file} but not present"))
        for f in videos:
            entry = meta.get(f.name, {})
            items.append(dict(video_id=f.stem, part=part, path=str(f.resolve()),
                              label=_label(entry), original=_stem(entry.get("original"))))
    seen: dict[str, str] = {}
    unique = []
    for it in sorted(items, key=lambda x: (x["video_id"], x["path"])):
        if it["video_id"] in seen:
            if seen[it["video_id"]] == it["path"]:
                continue  # the same file given twice
            failed.append(_row(**it, status="duplicate_id",
                               reason=f"{it['path']}: id {it['video_id']} already used by {seen[it['video_id']]}"))
            continue
        seen[it["video_id"]] = it["path"]
        unique.append({"id": it["video_id"], **it})
    return unique, failed


def discover_paths(inputs: Sequence[str | os.PathLike],
                   extensions: Sequence[str] = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS) -> list[Path]:
    """Files to score: files named directly, and files with ``extensions`` (any case) found
    recursively in folders; sorted by path.

    Every distinct input path is kept, also two paths of one file (a symlink, a hard link):
    ``score.batch.find_duplicates`` says which ones are the same file. Only the same path named
    twice (a folder and a file in it) is listed once. A named path that does not exist, and a
    sub-folder that cannot be listed, are kept as items of their own (the caller gives them a
    row with the reason) rather than raising.
    """
    exts = {e.lower() for e in extensions}
    found: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            unlisted: list[Path] = []
            walk = os.walk(p, onerror=lambda e, u=unlisted: u.append(Path(e.filename)))
            for folder, _, files in walk:
                found += [Path(folder) / f for f in files
                          if Path(f).suffix.lower() in exts and (Path(folder) / f).is_file()]
            found += unlisted
        else:
            found.append(p)
    seen, out = set(), []
    for p in sorted(found, key=lambda q: str(q)):
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
