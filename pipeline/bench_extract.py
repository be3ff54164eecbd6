"""Extraction benchmark and agreement (``dfpipe bench --what extract``): one clip -> speed of
each detector mode against the decode floor, and how far each agrees with full detection.

- ``agreement(ref, got)``: per-frame face presence and real tracks of one extraction against a
  reference one (``--detector-mode full``); also used by tests/test_track_verify.py.
- ``bench_extract``: on one clip, in one run, the decode floor (every frame to a numpy array,
  fastest backend), the default (``track``), ``--detector-mode full``, ``--detect-every 5`` and
  the naive loop (full-resolution MTCNN per frame, on the first frames, scaled to the clip);
  each as s/video, x floor, and agreement with full detection.
- ``bench_extract_cli``: ``dfpipe extract --workers W`` from the command line over N copies of
  the clip, against N x the floor, with peak RSS per worker process.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ExtractConfig

logger = logging.getLogger(__name__)

REAL_TRACK_FRAMES = 10
"""A track with at least this many face frames is a real track (a face, not a flicker)."""
MATCH_IOU = 0.3
"""Two tracks follow the same face when their boxes overlap this much on shared frames."""


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _by_track(vf: Any) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = {}
    for r in vf.records:
        out.setdefault(r.track, {})[r.frame] = r.box
    return out


def real_tracks(vf: Any, min_frames: int = REAL_TRACK_FRAMES) -> dict[int, dict[int, Any]]:
    """Tracks with at least ``min_frames`` face frames: track -> {frame: box}."""
    return {t: f for t, f in _by_track(vf).items() if len(f) >= min_frames}


def _matches(a: dict[int, Any], b: dict[int, Any]) -> bool:
    """True when track ``b`` follows the face of track ``a`` on most of ``a``'s shared frames."""
    from pipeline.tracks import iou

    shared = set(a) & set(b)
    if not shared:
        return False
    return sum(iou(a[f], b[f]) >= MATCH_IOU for f in shared) >= 0.5 * len(shared)


def agreement(ref: Any, got: Any, n_frames: int | None = None,
              min_frames: int = REAL_TRACK_FRAMES) -> dict[str, Any]:
    """How far extraction ``got`` agrees with ``ref`` (two ``VideoFaces`` of one video).

    Returns:
        ``presence``: share of frames where both have a face or both have none;
        ``count``: share of frames with the same number of faces; ``real_tracks_ref`` /
        ``real_tracks``: tracks of at least ``min_frames`` face frames; ``ref_tracks_found``:
        how many of ``ref``'s real tracks a track of ``got`` follows (boxes overlapping on most
        shared frames, however the ids are numbered); ``extra_tracks``: ``got``'s real tracks
        that follow none of ``ref``'s tracks (track -> {frame: box}, for a closer look).
    """
    n = int(n_frames if n_frames is not None else ref.info.n_frames)
    ca: dict[int, int] = {}
    cb: dict[int, int] = {}
    for r in ref.records:
        ca[r.frame] = ca.get(r.frame, 0) + 1
    for r in got.records:
        cb[r.frame] = cb.get(r.frame, 0) + 1
    ra, rb = real_tracks(ref, min_frames), real_tracks(got, min_frames)
    all_ref = _by_track(ref)
    found = sum(any(_matches(fa, fb) for fb in rb.values()) for fa in ra.values())
    extra = {t: fb for t, fb in rb.items() if not any(_matches(fb, fa) or _matches(fa, fb)
                                                      for fa in all_ref.values())}
    return {"presence": sum((f in ca) == (f in cb) for f in range(n)) / max(n, 1),
            "count": sum(ca.get(f, 0) == cb.get(f, 0) for f in range(n)) / max(n, 1),
            "real_tracks_ref": len(ra), "real_tracks": len(rb), "ref_tracks_found": found,
            "extra_tracks": extra}


def confirm_tracks(path: str | os.PathLike, tracks: dict[int, dict[int, Any]], detector: Any,
                   per_track: int = 3) -> dict[int, bool]:
    """Whether each track is a face full detection also finds: ``detector`` (e.g. MTCNN at a
    finer scale than the reference's) runs on ``per_track`` of the track's frames, evenly spaced;
    a track is confirmed when a detection overlaps its box on most of them."""
    from pipeline.tracks import iou
    from pipeline.video_io import open_video

    picks = {t: sorted(f)[:: max(1, len(f) // per_track)][:per_track] for t, f in tracks.items()}
    wanted = sorted({f for fs in picks.values() for f in fs})
    if not wanted:
        return {}
    reader = open_video(path)
    frames = dict(zip(wanted, reader.get_batch(wanted), strict=True))
    reader.close()
    out = {}
    for t, fs in picks.items():
        dets = detector.detect(np.stack([frames[f] for f in fs]))
        hits = sum(any(iou(d.box, tracks[t][f]) >= MATCH_IOU for d in ds)
                   for f, ds in zip(fs, dets, strict=True))
        out[t] = hits * 2 > len(fs)
    return out
