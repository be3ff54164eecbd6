"""``dfpipe bench``: speed measurements (never part of the tests): a video -> JSON + Markdown.

``bench_decode`` times a full decode per backend; ``bench_extract`` times face extraction
(detection + tracking + crops in memory, no disk writes) for naive per-frame full-resolution
MTCNN, the default settings and ``detect_every=5``, next to the decode-only time of the same
video. Times are wall-clock seconds on whatever machine runs them; medians over ``repeats``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import BenchConfig, ExtractConfig
from pipeline.errors import ConfigError
from pipeline.fsutil import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _decode_all(path: str, backend: str) -> int:
    from pipeline.video_io import open_video

    reader = open_video(path, backend)
    n = sum(len(idx) for idx, _ in reader.iter_batches(32))
    reader.close()
    return n


def bench_decode(video: str | os.PathLike, backends: Sequence[str] = ("decord", "pyav"),
                 repeats: int = 3) -> dict[str, Any]:
    """Full-decode time of ``video`` per backend: seconds/video, ms/frame, ratio to the fastest."""
    out: dict[str, Any] = {"video": str(video), "repeats": repeats, "backends": {}}
    for b in backends:
        sec, n = _median_time(lambda b=b: _decode_all(str(video), b), repeats)
        out["backends"][b] = {"s_per_video": round(sec, 3), "ms_per_frame": round(1000 * sec / n, 2),
                              "frames": n}
    fastest = min(v["s_per_video"] for v in out["backends"].values())
    for v in out["backends"].values():
        v["ratio_to_fastest"] = round(v["s_per_video"] / fastest, 2)
    return out


def bench_extract(video: str | os.PathLike, repeats: int = 1, naive_frames: int = 30,
                  cfg: ExtractConfig | None = None) -> dict[str, Any]:
    """Extraction time of ``video``: naive full-res per-frame MTCNN, default, detect_every=5.

    The naive mode is measured on the first ``naive_frames`` frames (it runs ~0.5 s/frame on a
    CPU core at 1080p) and extrapolated to the whole video (decode time added); the others run on
    the whole video. Face-frame counts are reported so speed can be read next to recall.
    """
    import torch

    from pipeline.faces import MTCNNDetector, extract_faces
    from pipeline.video_io import open_video

    torch.set_num_threads(1)
    cfg = cfg or ExtractConfig()
    path = str(video)
    info = open_video(path, cfg.decoder).info
    n = info.n_frames
    dec, _ = _median_time(lambda: _decode_all(path, cfg.decoder), repeats)
    res: dict[str, Any] = {"video": path, "frames": n, "size": [info.width, info.height],
                           "decoder": cfg.decoder, "repeats": repeats,
                           "torch_threads": torch.get_num_threads(), "modes": {}}
    res["modes"]["decode_only"] = {"s_per_video": round(dec, 2), "ms_per_frame": round(1000 * dec / n, 1)}

    naive_det = MTCNNDetector(cfg.device, scale=1.0, retry_scale=1.0, min_prob=cfg.min_face_prob)
    naive_cfg = replace(cfg, batch_size=1, detect_every=1)
    sub = list(range(min(naive_frames, n)))
    sec, vf = _median_time(lambda: extract_faces(open_video(path, cfg.decoder), naive_det, naive_cfg,
                                                 frames=sub), repeats)
    per_frame = sec / len(sub)
    res["modes"]["naive_fullres_per_frame"] = {
        "s_per_video": round(dec + per_frame * n, 1), "ms_per_frame": round(1000 * per_frame, 1),
        "face_frames": f"{vf.n_face_frames}/{len(sub)}", "note": f"measured on {len(sub)} frames, extrapolated"}
    for name, mode_cfg in [("default", cfg), ("detect_every_5", replace(cfg, detect_every=5))]:
        det = MTCNNDetector(cfg.device, min_face_size=cfg.min_face_size, scale=mode_cfg.scale,
                            retry_scale=mode_cfg.retry_scale, min_prob=cfg.min_face_prob)
        sec, vf = _median_time(lambda c=mode_cfg, d=det: extract_faces(path, d, c), repeats)
        res["modes"][name] = {"s_per_video": round(sec, 2), "ms_per_frame": round(1000 * sec / n, 1),
                              "face_frames": f"{vf.n_face_frames}/{n}", "faces": len(vf.records),
                              "retried_frames": det.n_retried}
    base = res["modes"]["default"]["s_per_video"]
    for v in res["modes"].values():
        v["ratio_to_default"] = round(v["s_per_video"] / base, 2)
    return res


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# dfpipe benchmarks", ""]
    if "decode" in results:
        r = results["decode"]
        lines += [f"## decode: {r['video']}", "", "| backend | s/video | ms/frame | x fastest |",
                  "|---|---|---|---|"]
        lines += [f"| {b} | {v['s_per_video']} | {v['ms_per_frame']} | {v['ratio_to_fastest']} |"
                  for b, v in r["backends"].items()]
        lines.append("")
    if "extract" in results:
        r = results["extract"]
        lines += [f"## extract: {r['video']} ({r['frames']} frames, {r['size'][0]}x{r['size'][1]})", "",
                  "| mode | s/video | ms/frame | x default | face frames |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {v['s_per_video']} | {v['ms_per_frame']} | {v['ratio_to_default']} | "
                  f"{v.get('face_frames', '')} |" for m, v in r["modes"].items()]
        lines.append("")
    return "\n".join(lines)


def run(cfg: BenchConfig) -> int:
    """Run the decode/extract benchmarks on ``cfg.video``; write ``bench.json`` and ``bench.md``."""
    if not cfg.video:
        raise ConfigError("bench: give --video (a 10 s 1080p clip, e.g. a DFDC sample)")
    if not Path(cfg.video).is_file():
        raise ConfigError(f"bench: {cfg.video}: file not found")
    results: dict[str, Any] = {}
    if "decode" in cfg.what:
        results["decode"] = bench_decode(cfg.video, ("decord", "pyav", "cv2"), cfg.repeats)
    if "extract" in cfg.what:
        results["extract"] = bench_extract(cfg.video, cfg.repeats)
    out = Path(cfg.out)
    atomic_write_json(out / "bench.json", results)
    atomic_write_text(out / "bench.md", _markdown(results))
    logger.info("bench: results in %s", out)
    print(json.dumps(results, indent=1))
    return 0
