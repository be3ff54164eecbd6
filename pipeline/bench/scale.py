"""Scale benchmark (``dfpipe bench --what scale --videos 120000``): DFDC-size manifests, no videos.

``generate`` writes ``videos.parquet`` and ``faces.parquet`` the way ``dfpipe extract`` would
for ``n_videos`` DFDC-like videos (no video or crop files): one REAL per ~6 videos, the others
FAKEs of a random REAL; 300 frames (some 298); per video one face track present in ~98 % of the
frames, except 5 % two-actor videos (two tracks: ~590 rows, left out as too_many_faces), 3 % with
the face in ~40 % of the frames (too_few_faces) and 2 % in ~85 %. About 300 face rows per video:
36M at 120,000 videos. Boxes drift smoothly with jitter (0.01 px as extract records them),
probabilities near 1 (MTCNN's).

``bench_scale`` then times, each in its own process (peak RSS from ``wait4``, the child's own):
``dfpipe prepare`` on those manifests, a training-index build (``data.read_clips_and_split`` +
``build_records`` for the train split), the core of the sampler (per (video, frame) counts
and the first usable frame per slot) in pyarrow+numpy (ours), polars and duckdb when installed,
and evaluation's report stage (``evaluate.stage.build_report``, 1000 grouped-bootstrap resamples)
on generated prediction tables for ``n_test`` test videos (``bench.evaluate``).
Storage: bytes of each manifest file. Speed lives here, never in tests.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.bench.child import _CLI, run_child
from pipeline.io import manifest

logger = logging.getLogger(__name__)

CHUNK_VIDEOS = 2000
"""Videos generated per chunk (about 600k face rows: one row group)."""


def _video_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique DFDC-style ids: 10 lowercase letters."""
    while True:
        letters = rng.integers(0, 26, size=(n, 10), dtype=np.uint8) + ord("a")
        ids = letters.view("S10").ravel().astype(str)
        if len(np.unique(ids)) == n:
            return np.sort(ids)


def _face_chunk(rng: np.random.Generator, ids: np.ndarray, n_frames: np.ndarray,
                tracks: np.ndarray, presence: np.ndarray) -> Any:
    """Face rows (pyarrow table, faces schema, sorted) of one chunk of videos."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cand = n_frames * tracks  # (V,) candidate rows per video: frame-major, track-minor
    offsets = np.concatenate([[0], np.cumsum(cand)])
    video = np.repeat(np.arange(len(ids)), cand)  # (C,)
    local = np.arange(offsets[-1]) - offsets[video]
    frame = local // tracks[video]
    track = local % tracks[video]
    keep = rng.random(len(video)) < presence[video]
    video, frame, track = video[keep], frame[keep], track[keep]
    n = len(video)
    base = rng.uniform(200, 1500, size=(len(ids), 2, 2))  # (V, track, xy)
    side = rng.uniform(150, 400, size=(len(ids), 2))
    phase = rng.uniform(0, 6.28, size=(len(ids), 2))
    drift = 20 * np.sin(frame / 40 + phase[video, track])
    x1 = base[video, track, 0] + drift + rng.normal(0, 0.4, n)
    y1 = base[video, track, 1] + 0.5 * drift + rng.normal(0, 0.4, n)
    s = side[video, track] + rng.normal(0, 0.6, n)
    prob = np.clip(1 - rng.exponential(2e-4, n), 0.9, 1.0)
    vid = pa.array(ids).take(pa.array(video))
    crop = pc.binary_join_element_wise(
        vid, "/", pc.utf8_lpad(pc.cast(pa.array(frame), pa.string()), 4, "0"), "_",
        pc.cast(pa.array(track), pa.string()), ".jpg", "")
    return pa.table({
        "video_id": vid, "frame": pa.array(frame), "track": pa.array(track),
        "x1": np.round(x1, 2), "y1": np.round(y1, 2), "x2": np.round(x1 + s, 2),
        "y2": np.round(y1 + s * 1.2, 2), "prob": np.round(prob, 6), "crop_path": crop,
    })


def generate(out: str | os.PathLike, n_videos: int, seed: int = 0) -> dict[str, Any]:
    """Write DFDC-size ``videos.parquet`` + ``faces.parquet`` into ``out`` (module docstring)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "faces"  # where crops would be (empty: nothing reads them here)
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = _video_ids(rng, n_videos)
    is_real = rng.random(n_videos) < 1 / 6
    is_real[: min(3, n_videos)] = True
    reals = ids[is_real]
    original = np.where(is_real, "", reals[rng.integers(0, len(reals), n_videos)])
    kind = rng.choice(4, size=n_videos, p=[0.90, 0.05, 0.03, 0.02])
    n_frames = np.where(rng.random(n_videos) < 0.97, 300, 298)
    tracks = np.where(kind == 1, 2, 1)
    presence = np.array([0.98, 0.98, 0.40, 0.85])[kind]
    n_faces = np.zeros(n_videos, np.int64)
    config = {"generated_by": "dfpipe bench --what scale", "videos": n_videos, "seed": seed}
    with manifest.ManifestWriter(out / "faces.parquet", "faces", config=config,
                                 faces_root=root) as w:
        for lo in tqdm(range(0, n_videos, CHUNK_VIDEOS), desc="generate", unit="chunk",
                       disable=None):
            hi = min(lo + CHUNK_VIDEOS, n_videos)
            t = _face_chunk(rng, ids[lo:hi], n_frames[lo:hi], tracks[lo:hi], presence[lo:hi])
            first = np.searchsorted(ids[lo:hi], t.column("video_id").to_numpy(zero_copy_only=False))
            n_faces[lo:hi] = np.bincount(first, minlength=hi - lo)
            w.write_arrow(t)
        n_rows = w.rows
        videos = pd.DataFrame({
            "video_id": ids, "part": [f"dfdc_train_part_{i * 50 // n_videos}" for i in
                                      range(n_videos)],
            "path": [f"/data/dfdc/{v}.mp4" for v in ids],
            "label": np.where(is_real, "REAL", "FAKE"), "original": original, "fps": 29.97,
            "n_frames": n_frames, "n_frames_lost": 0, "width": 1920, "height": 1080,
            "n_face_frames": n_faces // tracks, "n_faces": n_faces,
            "n_multi_face_frames": np.where(tracks > 1, n_faces // 3, 0), "n_tracks": tracks,
            "status": "ok", "reason": "", "seconds": 0.0})
        manifest.write_manifest(videos, out / "videos.parquet", "videos", config=config)
        w.close({"videos": n_videos, "faces": n_rows})
    return {"videos": n_videos, "face_rows": int(n_rows)}


_INDEX = """
import sys, time
from pipeline.train.data import build_records, read_clips_and_split
t0 = time.perf_counter()
clips, split = read_clips_and_split(sys.argv[1])
t1 = time.perf_counter()
recs = build_records(clips, split, "train")
t2 = time.perf_counter()
print(f"{len(recs)} train records x {len(recs[0].paths)} slots: read {t1 - t0:.1f} s, "
      f"index {t2 - t1:.1f} s (the rest is interpreter start and imports)")
"""

_CORE = {
    "pyarrow+numpy": """
import sys
import pandas as pd
from pipeline.io import manifest
from pipeline.config import PrepareConfig
from pipeline.prepare.stage import load_face_columns, sample_batched
import numpy as np
d = sys.argv[1]
v = manifest.read_manifest(d + "/videos.parquet", "videos", ["video_id", "n_frames"])
f = load_face_columns(manifest.manifest_path(d, "faces"), v["video_id"])
s = sample_batched(f, np.arange(len(v)), np.full(len(v), np.nan), PrepareConfig())
print(int((s.row >= 0).sum()), "slots with a frame")
""",
    "polars": """
import sys
import polars as pl
f = pl.scan_parquet(sys.argv[1] + "/faces.parquet").select("video_id", "frame", "track")
per_frame = f.group_by("video_id", "frame").agg(pl.len().alias("n"))
slots = (per_frame.filter((pl.col("n") == 1) & (pl.col("frame") < 300))
         .with_columns((pl.col("frame") // 10).alias("slot"))
         .group_by("video_id", "slot").agg(pl.col("frame").min()))
print(slots.select(pl.len()).collect().item(), "slots with a frame")
""",
    "duckdb": """
import sys
import duckdb
con = duckdb.connect()
con.execute("PRAGMA threads=2")
q = f'''
WITH per_frame AS (SELECT video_id, frame, count(*) AS n FROM read_parquet('{sys.argv[1]}/faces.parquet')
                   GROUP BY video_id, frame)
SELECT count(*) FROM (SELECT video_id, frame // 10 AS slot, min(frame) FROM per_frame
                      WHERE n = 1 AND frame < 300 GROUP BY video_id, slot)
'''
print(con.execute(q).fetchone()[0], "slots with a frame")
""",
}


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def bench_scale(out: str | os.PathLike, n_videos: int = 120_000, seed: int = 0,
                engines: bool = True, n_test: int = 20_000) -> dict[str, Any]:
    """Generate the manifests, then time prepare, the training index, the sampler cores and
    evaluation's report on ``n_test`` test videos (0: not run)."""
    from pipeline.bench.evaluate import bench_evaluate

    folder = Path(out) / f"scale_{n_videos}"
    t0 = time.perf_counter()
    gen = generate(folder, n_videos, seed)
    gen["seconds"] = round(time.perf_counter() - t0, 1)
    env = {"PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1]),
                                                     os.environ.get("PYTHONPATH", "")] if p)}
    res: dict[str, Any] = {"generate": gen}
    res["prepare"] = run_child(_CLI, ["-q", "prepare", "--manifest-dir", str(folder)], env)
    res["train_index"] = run_child(_INDEX, [str(folder)], env)
    if engines:
        res["sampler_core"] = {
            name: (run_child(code, [str(folder)], env) if _installed(name.split("+")[0])
                   else {"error": f"{name} not installed"})
            for name, code in _CORE.items()}
    if n_test:
        res["evaluate"] = bench_evaluate(out, n_test, env=env)
    res["storage_mib"] = {p.name: round(p.stat().st_size / 2**20, 1)
                          for p in sorted(folder.glob("*.parquet"))}
    res["storage_mib"]["videos+faces"] = round(
        sum(res["storage_mib"].get(k, 0) for k in ("videos.parquet", "faces.parquet")), 1)
    return res


def markdown(r: dict[str, Any]) -> list[str]:
    """Markdown lines of a ``bench_scale`` result."""
    g = r["generate"]
    lines = ["## Scale (generated DFDC-size manifests)", "",
             f"{g['videos']} videos, {g['face_rows']} face rows (generated in {g['seconds']} s)",
             "", "| step | wall s | peak RSS MiB | exit | last line |", "|---|---|---|---|---|"]
    steps = [("prepare", r["prepare"]), ("training index", r["train_index"])]
    steps += [(f"sampler core: {k}", v) for k, v in r.get("sampler_core", {}).items()]
    if "evaluate" in r:
        steps.append((f"evaluate (build_report, {r['evaluate']['videos']} test videos)",
                      r["evaluate"]))
    for name, v in steps:
        if "error" in v:
            lines.append(f"| {name} | {v['error']} | | | |")
        else:
            tail = " ".join(v.get("tail", []))
            lines.append(f"| {name} | {v['seconds']} | {v['peak_rss_mib']} | {v['rc']} | {tail} |")
    lines += ["", "| manifest | MiB |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["storage_mib"].items()]
    return lines
