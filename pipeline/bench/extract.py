"""Extraction benchmark and agreement (``dfpipe bench --what extract``): one clip -> speed of
each detector mode against the decode floor, and how far each agrees with full detection.

- ``agreement(ref, got)``: per-frame face presence and real tracks of one extraction against a
  reference one (``--detector-mode full``); also used by tests/test_track_verify.py.
- ``bench_extract``: on one clip, in one run, the decode floor (every frame to a numpy array:
  the faster plain loop of decord and PyAV, no project code), the project's reader beside it,
  the default (``track``), ``--detector-mode full``, ``--detect-every 5`` and the naive loop
  (full-resolution MTCNN per frame, on the first frames, scaled to the clip); each as s/video, x floor, and agreement with full detection.
- ``bench_extract_cli``: ``dfpipe extract --workers W`` from the command line over N copies of
  the clip, against N x the floor, with peak RSS per worker process;
- ``agreement_all`` (``dfpipe bench --what extract-agreement``): track against full detection on
  every clip of a folder (the real sample clips).
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
from collections.abc import Callable
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


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls of ``fn`` (at least one), and its last result."""
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


def _matches(a: dict[int, Any], b: dict[int, Any], cover: float = 0.0) -> bool:
    """True when track ``b`` follows the face of track ``a``: their boxes overlap on most of
    their shared frames, and those are at least ``cover`` of ``a``'s frames."""
    from pipeline.faces.tracks import iou

    shared = set(a) & set(b)
    if not shared or len(shared) < cover * len(a):
        return False
    return sum(iou(a[f], b[f]) >= MATCH_IOU for f in shared) >= 0.5 * len(shared)


def agreement(ref: Any, got: Any, n_frames: int | None = None,
              min_frames: int = REAL_TRACK_FRAMES) -> dict[str, Any]:
    """How far extraction ``got`` agrees with ``ref`` (two ``VideoFaces`` of one video).

    Returns:
        ``presence``: share of frames where both have a face or both have none;
        ``count``: share of frames with the same number of faces; ``real_tracks_ref`` /
        ``real_tracks``: tracks of at least ``min_frames`` face frames; ``ref_tracks_found``:
        how many of ``ref``'s real tracks one track of ``got`` follows over at least half of
        their frames (boxes overlapping, however the ids are numbered: a face split into
        several short tracks is not found); ``extra_tracks``: ``got``'s real tracks that follow
        none of ``ref``'s tracks, not even a short one (track -> {frame: box}).
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
    found = sum(any(_matches(fa, fb, cover=0.5) for fb in _by_track(got).values())
                for fa in ra.values())
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
    from pipeline.faces.tracks import iou
    from pipeline.io.video import open_video

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


FLOOR_RUNS = 3
"""Each decode loop of the floor runs at least this many times, interleaved, and keeps its median
time: on this shared 2-core machine one full decode of the same clip varies by ~20 % between
runs (1.06-1.34 s for the same loop within minutes), and a floor taken from one lucky or
unlucky run would move every ratio."""


def plain_decord(path: str) -> int:
    """The plain decord loop (no project code): every frame in order, ``vr[i].asnumpy()``."""
    import decord

    vr = decord.VideoReader(path)
    n = 0
    for i in range(len(vr)):
        vr[i].asnumpy()  # (H, W, 3) RGB
        n += 1
    return n


def plain_pyav(path: str) -> int:
    """The plain PyAV loop (no project code): FFmpeg's own threads, one RGB conversion a frame."""
    import av

    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")  # (H, W, 3)
            n += 1
    return n


def project_reader(path: str, decoder: str = "decord", threads: int = 0) -> int:
    """The project's reader as the default extraction (track mode) streams a video:
    ``open_video`` and ``iter_batches`` one frame at a time (FFmpeg picks its threads, as the
    plain loops let it)."""
    from pipeline.io.video import open_video

    reader = open_video(path, decoder, num_threads=threads)
    n = sum(len(i) for i, _ in reader.iter_batches(1))
    reader.close()
    return n


def decode_floor(path: str, repeats: int = 1, decoder: str = "decord") -> dict[str, Any]:
    """The decode floor of ``path``: the faster of the plain decord and PyAV loops (no project
    code), each run ``max(repeats, FLOOR_RUNS)`` times, interleaved, median kept; and beside it
    the project's reader (``project_reader``), timed the same way, as ``reader_s`` and its
    overhead over the floor ``reader_x_floor``."""
    runs: dict[str, Callable[[], int]] = {
        "decord_plain_loop": lambda: plain_decord(path),
        "pyav_plain_loop": lambda: plain_pyav(path),
        "project_reader": lambda: project_reader(path, decoder),
    }
    times: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    for _ in range(max(repeats, FLOOR_RUNS)):
        for name, fn in runs.items():
            if name in failed:
                continue
            try:
                t = time.perf_counter()
                fn()
                times.setdefault(name, []).append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - a library that cannot read the clip is reported
                failed[name] = f"failed: {type(e).__name__}: {e}"
    median = {k: statistics.median(v) for k, v in times.items() if k not in failed}
    out: dict[str, Any] = {k: round(v, 4) for k, v in median.items()} | failed
    plain = {k: v for k, v in median.items() if k != "project_reader"}
    if not plain:
        raise RuntimeError(f"{path}: no plain decode loop could read it: {failed}")
    floor_backend = min(plain, key=plain.get)  # type: ignore[arg-type]
    floor = plain[floor_backend]
    res = {"backends": out, "floor_s": round(floor, 4), "floor_backend": floor_backend,
           "runs": max(repeats, FLOOR_RUNS)}
    if "project_reader" in median:
        res["reader_s"] = round(median["project_reader"], 4)
        res["reader_x_floor"] = round(median["project_reader"] / floor, 3)
    return res


def _row(name: str, sec: float, floor: float, vf: Any, ref: Any, n: int, note: str = ""
         ) -> dict[str, Any]:
    a = agreement(ref, vf, n) if ref is not None else None
    row: dict[str, Any] = {"mode": name, "s_per_video": round(sec, 2), "x_floor": round(sec / floor, 2),
                           "face_frames": vf.n_face_frames if vf is not None else None,
                           "faces": len(vf.records) if vf is not None else None, "note": note}
    if a is not None:
        row.update(presence=round(a["presence"], 4), count=round(a["count"], 4),
                   real_tracks=a["real_tracks"], real_tracks_full=a["real_tracks_ref"],
                   full_tracks_found=a["ref_tracks_found"], extra_tracks=len(a["extra_tracks"]))
    return row


def bench_extract(video: str | os.PathLike, repeats: int = 1, naive_frames: int = 30,
                  cfg: ExtractConfig | None = None) -> dict[str, Any]:
    """One clip, one run: decode floor, default (track), full, detect_every=5 and naive
    extraction (detection + tracking + crops in memory, no disk writes), each in s/video,
    x floor and agreement with ``--detector-mode full``.

    The naive loop (full-resolution MTCNN on every frame, one frame at a time, no retry) is
    measured on the first ``naive_frames`` frames and scaled to the clip (the decode floor
    added); its agreement is over those frames.
    """
    import torch

    from pipeline.faces.detect import MTCNNDetector, detector_from_config
    from pipeline.faces.video import extract_faces
    from pipeline.io.video import open_video

    torch.set_num_threads(1)
    cfg = cfg or ExtractConfig()
    path = str(video)
    info = open_video(path, cfg.decoder).info
    n = info.n_frames
    floor = decode_floor(path, repeats, cfg.decoder)
    fl = floor["floor_s"]
    det = detector_from_config(cfg)
    extract_faces(path, det, cfg, frames=list(range(min(5, n))))  # warm-up (first-call costs)
    modes = [("default (track)", cfg), ("--detector-mode full", replace(cfg, detector_mode="full")),
             ("--detect-every 5", replace(cfg, detector_mode="full", detect_every=5))]
    timed: dict[str, tuple[float, Any]] = {}
    for name, c in modes:
        timed[name] = median_time(lambda c=c: extract_faces(path, det, c), repeats)
    ref = timed["--detector-mode full"][1]
    rows = [{"mode": "decode floor (plain loop, no project code)", "s_per_video": fl,
             "x_floor": 1.0,
             "note": f"{floor['floor_backend']}, median of {floor['runs']}; all: {floor['backends']}"}]
    if "reader_s" in floor:
        rows.append({"mode": f"the project's reader ({cfg.decoder}), as extraction streams",
                     "s_per_video": floor["reader_s"], "x_floor": floor["reader_x_floor"],
                     "note": f"median of {floor['runs']}; goal <= 1.15x"})
    rows += [_row(name, sec, fl, vf, ref, n) for name, (sec, vf) in timed.items()]
    naive_det = MTCNNDetector(cfg.device, scale=1.0, retry_scale=1.0, min_prob=cfg.min_face_prob)
    naive_cfg = replace(cfg, detector_mode="full", batch_size=1, detect_every=1)
    sub = list(range(min(naive_frames, n)))
    sec, vf = median_time(lambda: extract_faces(path, naive_det, naive_cfg, frames=sub), repeats)
    ref_sub = type(ref)(info=ref.info, records=[r for r in ref.records if r.frame < len(sub)])
    naive = _row("naive (full-res MTCNN per frame)", fl + sec / len(sub) * n, fl, vf, ref_sub,
                 len(sub), note=f"measured on frames 0-{len(sub) - 1}, scaled to {n}")
    rows.append(naive)
    default = next(r for r in rows if r["mode"] == "default (track)")["s_per_video"]
    return {"video": path, "frames": n, "size": [info.width, info.height], "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "device": str(det.device),
            "decode": floor, "rows": rows,
            "naive_over_default": round(naive["s_per_video"] / default, 1)}


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc: Linux only)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _peak_rss(pid: int) -> int | None:
    """Peak resident memory (VmHWM) of a live process, bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def bench_extract_cli(video: str | os.PathLike, n_videos: int = 4, workers: int = 2,
                      floor_s: float | None = None, device: str = "cpu") -> dict[str, Any]:
    """``dfpipe extract --workers W`` from the command line over ``n_videos`` copies of
    ``video`` (fresh output): wall seconds against ``n_videos`` x the decode floor, and the
    peak RSS of each worker process (polled from /proc while it runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        src.mkdir()
        for k in range(n_videos):
            os.symlink(Path(video).resolve(), src / f"copy{k:02d}{Path(video).suffix}")
        cmd = [sys.executable, "-m", "pipeline", "extract", str(src), "--out", f"{tmp}/faces",
               "--manifest-dir", f"{tmp}/m", "--workers", str(workers), "--device", device]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peaks: dict[int, int] = {}
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                for p in _descendants(proc.pid):
                    rss = _peak_rss(p)
                    if rss is not None:
                        peaks[p] = max(peaks.get(p, 0), rss)
                stop.wait(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, err = proc.communicate()
        sec = time.perf_counter() - t
        stop.set()
        poller.join()
    # the W largest processes below the driver are its workers (the others: a resource tracker)
    workers_rss = sorted(peaks.values(), reverse=True)[:workers]
    out: dict[str, Any] = {"command": " ".join(["dfpipe", *cmd[3:]]), "videos": n_videos,
                           "workers": workers, "s_total": round(sec, 1), "rc": proc.returncode,
                           "peak_rss_per_worker_mib": [round(b / 2**20) for b in workers_rss]}
    if floor_s:
        out["x_floors"] = round(sec / (n_videos * floor_s), 2)
    if proc.returncode:
        out["stderr_tail"] = (err or "").strip().splitlines()[-3:]
    return out


def markdown(r: dict[str, Any]) -> list[str]:
    """The extract benchmark as ready-to-paste Markdown lines."""
    lines = [f"## extract: {Path(r['video']).name} ({r['frames']} frames, "
             f"{r['size'][0]}x{r['size'][1]}, MTCNN on {r['device']}, "
             f"{r['torch_threads']} torch thread(s), median of {r['repeats']})", "",
             "| mode | s/video | x floor | face frames | faces | presence vs full | faces/frame "
             "vs full | real tracks (full) | full's tracks found | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        pres = f"{100 * row['presence']:.1f} %" if "presence" in row else ""
        cnt = f"{100 * row['count']:.1f} %" if "count" in row else ""
        tracks = (f"{row['real_tracks']} ({row['real_tracks_full']})"
                  if "real_tracks" in row else "")
        found = (f"{row['full_tracks_found']}/{row['real_tracks_full']}"
                 if "full_tracks_found" in row else "")
        lines.append(f"| {row['mode']} | {row['s_per_video']} | {row['x_floor']} | "
                     f"{row.get('face_frames', '') or ''} | {row.get('faces', '') or ''} | {pres} | "
                     f"{cnt} | {tracks} | {found} | {row.get('note', '')} |")
    lines += ["", f"Naive / default: {r['naive_over_default']}x.", ""]
    cli = r.get("cli")
    if cli:
        lines += [f"`{cli['command']}`: {cli['s_total']} s for {cli['videos']} videos "
                  f"({cli.get('x_floors', '?')}x {cli['videos']} floors), exit {cli['rc']}, "
                  f"peak RSS per worker {', '.join(f'{m} MiB' for m in cli['peak_rss_per_worker_mib'])}.",
                  ""]
    return lines


def agreement_all(folder: str | os.PathLike, cfg: ExtractConfig | None = None,
                  confirm_scale: float = 0.5) -> dict[str, Any]:
    """Track mode (``cfg``, default settings) against ``--detector-mode full`` on every clip under
    ``folder`` (e.g. ``../shared/data/real_samples``): per clip the agreement, both times, and
    whether the real tracks only track mode has are faces MTCNN at ``confirm_scale`` finds."""
    import torch

    from pipeline.faces.detect import MTCNNDetector, detector_from_config
    from pipeline.faces.video import extract_faces
    from pipeline.io.video import VIDEO_EXTENSIONS

    torch.set_num_threads(1)
    cfg = cfg or ExtractConfig()
    det = detector_from_config(cfg)
    fine = MTCNNDetector(cfg.device, scale=confirm_scale, min_prob=cfg.min_face_prob)
    clips = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    rows = []
    for clip in clips:
        t = time.perf_counter()
        full = extract_faces(clip, det, replace(cfg, detector_mode="full"), sink=_discard)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        track = extract_faces(clip, det, cfg, sink=_discard)
        t_track = time.perf_counter() - t
        a = agreement(full, track)
        extra = a.pop("extra_tracks")
        confirmed = confirm_tracks(clip, extra, fine) if extra else {}
        rows.append({"clip": str(clip.relative_to(folder)), "frames": full.info.n_frames,
                     "full_s": round(t_full, 1), "track_s": round(t_track, 1),
                     "face_frames_full": full.n_face_frames,
                     "face_frames_track": track.n_face_frames,
                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in a.items()},
                     "extra_tracks": len(extra),
                     "extra_confirmed": sum(confirmed.values()), "stats": track.stats})
        logger.info("agreement %s: %s", clip.name, rows[-1])
    return {"folder": str(folder), "track_every": cfg.track_every, "rows": rows}


def _discard(record: Any, crop: Any) -> None:
    """A crop sink that keeps nothing (measurements need the records only)."""


def agreement_markdown(r: dict[str, Any]) -> list[str]:
    """``agreement_all`` as ready-to-paste Markdown lines."""
    lines = [f"## track vs full detection on every clip of {r['folder']} "
             f"(--track-every {r['track_every']})", "",
             "| clip | frames | face frames full / track | presence agree | faces/frame agree | "
             "real tracks full / track | full's found | extra (confirmed at 2x scale) | "
             "s full / track |", "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['clip']} | {x['frames']} | {x['face_frames_full']} / "
                     f"{x['face_frames_track']} | {100 * x['presence']:.1f} % | "
                     f"{100 * x['count']:.1f} % | {x['real_tracks_ref']} / {x['real_tracks']} | "
                     f"{x['ref_tracks_found']}/{x['real_tracks_ref']} | {x['extra_tracks']} "
                     f"({x['extra_confirmed']}) | {x['full_s']} / {x['track_s']} |")
    return [*lines, ""]
