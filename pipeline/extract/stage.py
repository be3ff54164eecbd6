"""Stage 1, ``dfpipe extract``: raw videos -> face crops + ``videos``/``faces`` manifests.

Input: DFDC part folders (``metadata.json`` + mp4s; folders are searched recursively), plain
folders or single video files. Output: ``FACES_DIR/<video_id>/<frame:04d>_<track>.jpg`` plus
``videos.parquet`` and ``faces.parquet`` in the manifest folder (crop paths relative to FACES_DIR,
recorded in the metadata; see ``pipeline.io.manifest``).

Resume: each finished video is one folder ``FACES_DIR/<video_id>/`` written under a temporary
name and renamed whole, holding its crops, ``_video.json`` (its videos-row, the parameters
that made it and the input file's identity: path, size, mtime_ns and a hash of its first and last
64 KiB) and ``_faces.csv``. A rerun skips videos whose folder exists with the same parameters and
the same input file (a file replaced under the same name is redone), and rebuilds both manifests from all per-video records (sorted by video_id, frame,
track), so a run killed at any moment and rerun gives the manifests an uninterrupted run gives.
Failed videos are recorded in ``FACES_DIR/_failed/<video_id>.json`` and retried on every rerun.
One run at a time per FACES_DIR (or per shard of it: ``--shard I/N`` processes only its own
videos, see ``pipeline.engines.shards``): a starting run deletes the ``.tmp-*`` leftovers of its videos.

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

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pipeline.config import ExtractConfig
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import remove_stale_temps
from pipeline.engines.shards import in_shard, parse_shard
from pipeline.extract.import_faces import import_faces
from pipeline.extract.manifests import write_manifests
from pipeline.extract.worker import FAILED_DIR, OK_STATUSES, ExtractWorker, load_record
from pipeline.io.discovery import _row, discover_inputs
from pipeline.io.manifest import SCHEMAS
from pipeline.io.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

# environment for pool/Ray workers (glibc reads it at process start). Measured here: one worker
# extracting two 1080p DFDC clips (decode + MTCNN + JPEG crops), two runs each way: wall
# 79.3/70.7 s -> 62.4/63.5 s, system CPU 13.0/9.8 s -> 1.7/1.8 s, user CPU unchanged (~42 s),
# peak RSS 2.3 -> 2.4 GiB. Not a halving, but a steady ~15 % for ~100 MiB.
WORKER_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "2147483648",
}



def _results(cfg: ExtractConfig, todo: list[dict]) -> Iterator[dict]:
    from pipeline.core.resources import resolve_extract_workers
    from pipeline.engines.dispatch import run_items

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
    from pipeline.core.resources import usable_cpus

    return max(1, usable_cpus() // max(1, workers))


def run(cfg: ExtractConfig) -> int:
    """``dfpipe extract``: process every input video (resuming), write both manifests.

    Returns:
        0 when every video is ok or no_face, 1 when any failed.
    """
    if cfg.from_faces:
        return import_faces(cfg)
    if not cfg.inputs:
        raise ConfigError("extract: give at least one input folder or video (or --from-faces DIR)")
    if cfg.detect_every < 1 or cfg.batch_size < 1 or cfg.crop_size < 1:
        raise ConfigError("extract: --detect-every, --batch-size and --crop-size must be >= 1")
    if not 0.0 <= cfg.track_support <= 1.0:
        raise ConfigError(f"extract: --track-support must be in [0, 1], got {cfg.track_support}")
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
