"""Stage 1, ``dfpipe extract``: raw videos -> face crops + ``videos``/``faces`` manifests.

Input: DFDC part folders (``metadata.json`` + mp4s; folders are searched recursively), plain
folders or single video files. Output: ``FACES_DIR/<video_id>/<frame:04d>_<track>.jpg`` plus
``videos.parquet`` and ``faces.parquet`` in the manifest folder (crop paths relative to FACES_DIR,
recorded in the metadata; see ``pipeline.manifest``).

Resume: each finished video is one folder ``FACES_DIR/<video_id>/`` written under a temporary
name and renamed whole, holding its crops, ``_video.json`` (its videos-row, the parameters
that made it and the input file's identity: path, size, mtime_ns and a hash of its first and last
64 KiB) and ``_faces.csv``. A rerun skips videos whose folder exists with the same parameters and
the same input file (a file replaced under the same name is redone), and rebuilds both manifests from all per-video records (sorted by video_id, frame,
track), so a run killed at any moment and rerun gives the manifests an uninterrupted run gives.
Failed videos are recorded in ``FACES_DIR/_failed/<video_id>.json`` and retried on every rerun.
One run at a time per FACES_DIR (or per shard of it: ``--shard I/N`` processes only its own
videos, see ``pipeline.shards``): a starting run deletes the ``.tmp-*`` leftovers of its videos.

Statuses: ``ok``; ``no_face`` (a readable video where MTCNN found no face: a valid outcome, not a
failure); failures: ``missing_file`` (listed in metadata.json but absent), ``empty_file``,
``read_error`` (not a video, truncated, no video stream, decoder error; also a folder that
cannot be listed, id ``<folder>/``), ``too_short`` (fewer than 2 frames),
``duplicate_id`` (a second file with an id already seen), ``bad_metadata`` (a metadata.json that
cannot be used: not JSON, or an entry with a wrong field type; its folder's videos are still
processed with label ""), ``error`` (anything
else, with the exception). Exit status 1 when any failure occurred.
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
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import config as config_mod
from pipeline.config import MIN_FRAMES, ExtractConfig
from pipeline.discovery import _row, discover_inputs  # noqa: F401
from pipeline.errors import ConfigError, VideoReadError
from pipeline.fsutil import atomic_path, atomic_write_json, remove_stale_temps
from pipeline.manifest import (
    SCHEMAS,
    ManifestWriter,
    manifest_path,
    relative_crop_paths,
    write_manifest,
)
from pipeline.video_io import VIDEO_EXTENSIONS

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
# environment for pool/Ray workers (glibc reads it at process start). Measured here: one worker
# extracting two 1080p DFDC clips (decode + MTCNN + JPEG crops), two runs each way: wall
# 79.3/70.7 s -> 62.4/63.5 s, system CPU 13.0/9.8 s -> 1.7/1.8 s, user CPU unchanged (~42 s),
# peak RSS 2.3 -> 2.4 GiB. Not a halving, but a steady ~15 % for ~100 MiB.
WORKER_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "2147483648",
}


# ---------------------------------------------------------------------------- per-video work


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

        from pipeline.faces import detector_from_config

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
        from pipeline.faces import crop_writer, extract_faces
        from pipeline.video_io import open_video

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


# ---------------------------------------------------------------------------- run


def _results(cfg: ExtractConfig, todo: list[dict]) -> Iterator[dict]:
    from pipeline.executors import run_items
    from pipeline.resources import resolve_extract_workers

    # workers (Ray actors included) may run in another folder: give them absolute paths
    worker_cfg = replace(cfg, out=str(Path(cfg.out).resolve()))
    workers = cfg.workers if cfg.engine == "ray" else resolve_extract_workers(cfg.workers,
                                                                             cfg.device)
    decode = 1 if cfg.engine == "ray" else decode_threads_for(workers)
    return run_items(ExtractWorker, (worker_cfg, 1, decode), todo, engine=cfg.engine,
                     workers=workers,
                     address=cfg.address, max_in_flight=cfg.max_in_flight, desc="videos",
                     threads_per_worker=1, env=WORKER_ENV, progress=False)


def decode_threads_for(workers: int) -> int:
    """FFmpeg decoding threads of each local worker: its share of the usable cores (at least
    1; a Ray actor's share is unknown here, it decodes with 1)."""
    from pipeline.resources import usable_cpus

    return max(1, usable_cpus() // max(1, workers))


FACE_CHUNK_ROWS = 250_000
"""Face rows gathered before they are handed to the manifest writer (bounded memory)."""


def write_manifests(cfg: ExtractConfig, rows: list[dict], *, kind_counts: dict | None = None,
                    faces_root: str | os.PathLike | None = None,
                    imported: dict[str, list[list[Any]]] | None = None) -> dict[str, Any]:
    """Write the ``videos`` and ``faces`` manifests (rows sorted) from videos-rows and face records.

    Face rows are read one video at a time (in video_id order) and streamed to the Parquet
    writer in chunks, so memory does not grow with the number of face rows. Crop paths are
    stored relative to ``faces_root`` (default: ``cfg.out``), recorded in the metadata.
    ``imported``: face rows of videos that were imported rather than extracted (``--from-faces``),
    by the video row's ``path``; the others are read from their ``_faces.csv`` in the faces folder.
    """
    import pandas as pd

    out = Path(cfg.out)
    root = Path(faces_root if faces_root is not None else out).resolve()
    videos = pd.DataFrame([{k: r.get(k) for k in SCHEMAS["videos"].columns} for r in rows],
                          columns=list(SCHEMAS["videos"].columns))
    order = videos.sort_values(["video_id", "path"], kind="stable").index
    videos = videos.loc[order].reset_index(drop=True)
    statuses = Counter(videos["status"])
    mdir = Path(cfg.manifest_dir)
    conf = config_mod.to_dict(cfg)
    columns = list(SCHEMAS["faces"].columns)
    n_faces = 0
    with ManifestWriter(manifest_path(mdir, "faces").with_suffix(".parquet"), "faces",
                        config=conf, faces_root=root) as writer:
        chunk: list[list[Any]] = []

        def flush() -> None:
            if chunk:
                df = pd.DataFrame(chunk, columns=columns)
                writer.write(df.assign(crop_path=relative_crop_paths(df["crop_path"], root)))
                chunk.clear()

        for i in order:
            r = rows[i]
            if imported is not None and r["path"] in imported:
                got = sorted(imported[r["path"]], key=lambda f: (f[1], f[2]))
            elif r["status"] == "ok":
                got = sorted(read_face_records(out, r["video_id"]), key=lambda f: (f[1], f[2]))
            else:
                continue
            chunk.extend(got)
            n_faces += len(got)
            if len(chunk) >= FACE_CHUNK_ROWS:
                flush()
        flush()
        counts = {
            "videos": len(videos),
            "failed": int(sum(n for s, n in statuses.items() if s not in OK_STATUSES)),
            "faces": n_faces,
            "status": dict(sorted(statuses.items())),
            **(kind_counts or {}),
        }
        write_manifest(videos, manifest_path(mdir, "videos").with_suffix(".parquet"), "videos",
                       config=conf, counts=counts)
        writer.close(counts)
    return counts


def run(cfg: ExtractConfig) -> int:
    """``dfpipe extract``: process every input video (resuming), write both manifests.

    Returns:
        0 when every video is ok or no_face, 1 when any failed.
    """
    if cfg.from_faces:
        from pipeline.import_faces import import_faces

        return import_faces(cfg)
    if not cfg.inputs:
        raise ConfigError("extract: give at least one input folder or video (or --from-faces DIR)")
    if cfg.detect_every < 1 or cfg.batch_size < 1 or cfg.crop_size < 1:
        raise ConfigError("extract: --detect-every, --batch-size and --crop-size must be >= 1")
    if not 0.0 <= cfg.track_support <= 1.0:
        raise ConfigError(f"extract: --track-support must be in [0, 1], got {cfg.track_support}")
    from pipeline.shards import in_shard, parse_shard

    shard = parse_shard(cfg.shard)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # a sharded run removes only its own shard's leftovers: the other shards may be writing
    n_stale = (remove_stale_temps(out, lambda name: in_shard(name, shard))
               + remove_stale_temps(out / FAILED_DIR,
                                    lambda name: in_shard(name.removesuffix(".json"), shard)))
    if n_stale:
        logger.info("removed %d leftover temporary file(s) of an interrupted run", n_stale)
    items, rows = discover_inputs(cfg.inputs)
    if shard is not None:
        n_all = len(items)
        items = [it for it in items if in_shard(it["video_id"], shard)]
        rows = [r for r in rows if in_shard(r["video_id"], shard)]
        logger.info("shard %d/%d: %d of %d videos", shard[0], shard[1], len(items), n_all)
    if not items and not rows:
        logger.warning("extract: no videos (%s) found in %s", " ".join(VIDEO_EXTENSIONS),
                       " ".join(cfg.inputs))
    todo: list[dict] = []
    n_resumed = 0
    for it in items:
        rec = None if cfg.overwrite else load_record(out, it["video_id"], cfg, it["path"])
        if rec is not None:
            rec.update({k: it[k] for k in ("part", "path", "label", "original")})
            rows.append(rec)
            n_resumed += 1
        else:
            todo.append(it)
    logger.info("%d video(s): %d done before, %d to process, %d failed before decoding",
                len(items), n_resumed, len(todo), len(rows) - n_resumed)

    from tqdm import tqdm

    by_id = {it["id"]: it for it in todo}

    t0 = time.perf_counter()
    n_faces = n_failed = 0
    with tqdm(total=len(todo), desc="extract", unit="video", dynamic_ncols=True) as bar:
        for res in _results(cfg, todo):
            item = by_id[res["id"]]
            merged = {**{k: item[k] for k in ("video_id", "part", "path", "label", "original")},
                      **{k: v for k, v in res.items() if k in SCHEMAS["videos"].columns}}
            row = _row(**merged)
            if row["status"] not in OK_STATUSES:
                n_failed += 1
                logger.warning("%s: %s", row["status"], row["reason"])
            elif not math.isnan(float(row["n_faces"])):
                n_faces += int(row["n_faces"])
            rows.append(row)
            bar.update(1)
            bar.set_postfix(faces_per_s=f"{n_faces / max(time.perf_counter() - t0, 1e-9):.0f}",
                            failed=n_failed)
    counts = write_manifests(cfg, rows, kind_counts={"resumed": n_resumed, "processed": len(todo)})
    logger.info("extract: %d videos (%s), %d faces, %.1f s; manifests in %s",
                counts["videos"], ", ".join(f"{k} {v}" for k, v in counts["status"].items()),
                counts["faces"], time.perf_counter() - t0, cfg.manifest_dir)
    return 1 if counts["failed"] else 0


__all__ = ["ExtractWorker", "discover_inputs", "load_record", "run", "write_manifests"]
