"""Stage 1, one video: ``ExtractWorker(item) -> videos-row``, its resume record, its faces record.

Each finished video is one folder ``FACES_DIR/<video_id>/`` written under a temporary name and
renamed whole, holding its crops, ``_video.json`` (its videos-row, the parameters that made it and
the input file's identity: path, size, mtime_ns and a hash of its first and last 64 KiB) and
``_faces.csv``. ``load_record`` gives a finished video's row back when its parameters and input
file are the same (a file replaced under the same name is redone). A failed video is recorded in
``FACES_DIR/_failed/<video_id>.json``. The worker is engine-agnostic (``pipeline.engines``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import MIN_FRAMES, ExtractConfig
from pipeline.core.errors import VideoReadError
from pipeline.core.fsutil import atomic_path, atomic_write_json
from pipeline.io.discovery import _row

logger = logging.getLogger(__name__)

OK_STATUSES = ("ok", "no_face")
FAILED_DIR = "_failed"
VIDEO_RECORD = "_video.json"
FACES_RECORD = "_faces.csv"
FACE_FIELDS = ["frame", "track", "x1", "y1", "x2", "y2", "prob", "crop"]
# parameters that change a video's outputs: a recorded video made with others is redone
RESULT_PARAMS = ("detector_mode", "track_every", "search_every", "track_support", "detect_every", "scale", "retry_scale", "min_face_prob", "min_face_size", "margin",
                 "crop_size", "square", "jpeg_quality", "iou_threshold", "batch_size", "decoder")
IDENTITY_BYTES = 64 * 1024
"""Bytes hashed at each end of an input: the MP4 header/index sits at one end or the other."""


def result_params(cfg: ExtractConfig) -> dict[str, Any]:
    """The config values a video's outputs depend on (stored in its record)."""
    return {k: getattr(cfg, k) for k in RESULT_PARAMS}


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What makes an input file "the same file" for resume: resolved path, size, mtime_ns and
    the SHA-256 of its first and last ``IDENTITY_BYTES`` (a file copied over another keeps
    neither its size and mtime nor, short of an identical file, those bytes).

    Raises:
        OSError: the file cannot be stat'ed or read.
    """
    p = Path(path).resolve()
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(IDENTITY_BYTES))
        if st.st_size > IDENTITY_BYTES:
            f.seek(max(st.st_size - IDENTITY_BYTES, IDENTITY_BYTES))
            h.update(f.read(IDENTITY_BYTES))
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head_tail_sha256": h.hexdigest()}


class ExtractWorker:
    """Engine-agnostic per-video worker: built once per process (loads MTCNN once).

    ``worker(item) -> videos-row dict`` never raises for a bad video: the failure is the row's
    status and reason (and a record in ``FACES_DIR/_failed/``).
    """

    def __init__(self, cfg: ExtractConfig, threads: int = 1, decode_threads: int | None = None
                 ) -> None:
        import torch

        from pipeline.faces.detect import detector_from_config

        torch.set_num_threads(max(1, threads))
        self.cfg = cfg
        self.threads = threads
        # FFmpeg threads: the worker's share of the cores (``decode_threads_for``)
        self.decode_threads = max(1, decode_threads or threads)
        self.out = Path(cfg.out)
        self.detector = detector_from_config(cfg)

    def __call__(self, item: dict) -> dict:
        t0 = time.perf_counter()
        base = {k: item.get(k, "") for k in ("video_id", "part", "path", "label", "original")}
        try:
            row = self._process(item, base, t0)
        except VideoReadError as e:
            row = _row(**base, status=e.status, reason=str(e))
        except Exception as e:  # noqa: BLE001 - one bad video must not stop the job
            logger.exception("%s: unexpected error", item.get("path"))
            row = _row(**base, status="error", reason=f"{item.get('path')}: {type(e).__name__}: "
                       + " ".join(str(e).split())[:300])
        if isinstance(row.get("seconds"), float) and math.isnan(row["seconds"]):
            row["seconds"] = round(time.perf_counter() - t0, 3)
        row["id"] = item["id"]
        if row["status"] not in OK_STATUSES:
            try:
                atomic_write_json(self.out / FAILED_DIR / f"{row['video_id']}.json", _plain(row))
            except OSError as e:
                logger.warning("cannot record failure of %s: %s", row["video_id"], e)
        return row

    def _process(self, item: dict, base: dict, t0: float) -> dict:
        from pipeline.faces.video import crop_writer, extract_faces
        from pipeline.io.video import open_video

        cfg = self.cfg
        reader = open_video(item["path"], cfg.decoder, num_threads=self.decode_threads)
        try:  # after open_video: its checks name missing and empty files
            identity = input_identity(item["path"])
        except OSError as e:
            raise VideoReadError(f"{item['path']}: cannot read: {e.strerror or e}") from e
        info = reader.info
        meta = dict(fps=round(info.fps, 4), n_frames=info.n_frames, width=info.width, height=info.height)
        if info.n_frames < MIN_FRAMES:
            return _row(**base, **meta, status="too_short",
                        reason=f"{item['path']}: {info.n_frames} frame(s), need at least {MIN_FRAMES}")
        final = self.out / item["video_id"]
        with atomic_path(final, is_dir=True) as tmp:
            # crops are written as they are made (memory stays bounded on long videos)
            faces = extract_faces(reader, self.detector, cfg,
                                  sink=crop_writer(tmp, cfg.jpeg_quality))
            reader.close()
            row, faces_csv = _rows(item, base, meta, faces, reader)
            (tmp / FACES_RECORD).write_text(faces_csv)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            # the record goes last: a folder is complete exactly when it has one
            record = {"row": _plain(row), "params": result_params(cfg), "input": identity}
            (tmp / VIDEO_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        failed = self.out / FAILED_DIR / f"{item['video_id']}.json"
        if failed.exists():
            failed.unlink()
        return row



def _rows(item: dict, base: dict, meta: dict, faces: Any, reader: Any) -> tuple[dict, str]:
    """A finished video's videos-row and its ``_faces.csv`` text."""
    status = "ok" if faces.records else "no_face"
    meta["n_frames_lost"] = int(reader.frames_lost)
    if reader.frames_lost:
        logger.warning("%s: %d of %d frames could not be decoded (skipped)", item["path"],
                       reader.frames_lost, meta["n_frames"])
    row = _row(**base, **meta, n_face_frames=faces.n_face_frames, n_faces=len(faces.records),
               n_multi_face_frames=faces.n_multi_face_frames, n_tracks=faces.n_tracks,
               status=status, reason="" if faces.records else f"{item['path']}: no face found")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FACE_FIELDS)
    for r in faces.records:
        w.writerow([r.frame, r.track, *(f"{v:.2f}" for v in r.box),
                    "" if math.isnan(r.prob) else f"{r.prob:.6f}", r.name])
    return row, buf.getvalue()


def _plain(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k != "id"}


def load_record(out: Path, video_id: str, cfg: ExtractConfig, path: str | os.PathLike) -> dict | None:
    """The stored videos-row of a finished video, or None when it must be (re)done.

    Redone: no readable record, other result parameters, or an input at ``path`` that is not the
    file the record was made from (see ``input_identity``; a record without an identity, made by
    an older dfpipe, cannot be checked and is redone too). The reason is logged.
    """
    rec = out / video_id / VIDEO_RECORD
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("params") != result_params(cfg):
        return None
    stored = data.get("input")
    if not isinstance(stored, dict):
        logger.info("%s: redoing %s: its record has no input identity (older dfpipe)", path, video_id)
        return None
    try:
        now = input_identity(path)
    except OSError:
        return None  # the worker reports the file's problem
    if now != stored:
        what = ", ".join(k for k in now if now[k] != stored.get(k))
        logger.info("%s: redoing %s: the input is not the file its faces came from (%s changed)",
                    path, video_id, what)
        return None
    return _row(**{k: (math.nan if v is None else v) for k, v in data["row"].items()})


def read_face_records(out: Path, video_id: str) -> Iterator[list[Any]]:
    """Faces-rows ``[video_id, frame, track, x1, y1, x2, y2, prob, crop_path]`` of a finished video."""
    folder = (out / video_id).resolve()
    with open(folder / FACES_RECORD, newline="") as f:
        for r in csv.DictReader(f):
            yield [video_id, int(r["frame"]), int(r["track"]), float(r["x1"]), float(r["y1"]),
                   float(r["x2"]), float(r["y2"]), float(r["prob"]) if r["prob"] else math.nan,
                   str(folder / r["crop"])]
