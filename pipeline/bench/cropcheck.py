"""Crop geometry of a face-crop data set vs ours: which crop recipe reproduces its crops.

A model trained on crops made elsewhere (the Kaggle ``deepfake_faces`` set: ``dfdc_faces``) must
be fed crops made the same way when it scores videos. Two measurements tell how they were made:

- ``match_crops``: for a video whose crop is in the set, our MTCNN boxes on its frames, cropped
  with each margin (square or not) and resized to the set's size, compared with the set's crop
  (normalized cross-correlation of the grey images, mean absolute error of the RGB ones); the
  best-matching frame also gives the margin implied by the crop's size in the source video
  (``original_width``: side = box side x (1 + 2 margin)).
- ``estimate_jpeg_quality``: a JPEG's luminance/chrominance quantization tables against the IJG
  standard tables scaled by quality (what libjpeg's ``quality`` setting writes).

``dfpipe bench --what crop-margin`` runs both on the ``real_samples`` clips that have their crop
in ``dfdc_faces`` and, with ``--checkpoint``, scores the labelled sample clips at each margin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# IJG (libjpeg) standard quantization tables, natural (row-major) order: ITU-T T.81 Annex K
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99, *[99] * 32])
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])
"""ZIGZAG[k] = natural index of the k-th coefficient in zig-zag order."""

# the two clips of real_samples whose crop is in dfdc_faces (see both folders' READMEs)
SAMPLE_CLIPS = {"widuwuoiur": "dfdc/dfdc_train_part_10/widuwuoiur.mp4",
                "lynaeydofd": "dfdc/notebook_samples/lynaeydofd.mp4"}
DEFAULT_MARGINS = (-0.15, -0.1, -0.075, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3)


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_set_quality`` scaling of a base table (values 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((base * scale + 50) // 100, 1, 255)


def estimate_jpeg_quality(path: str | os.PathLike) -> tuple[int, bool]:
    """(quality 1-100, exact) of a JPEG: the IJG quality whose scaled tables are nearest.

    ``exact`` is True when the file's tables equal the scaled standard ones (a libjpeg-style
    encoder at that quality); False means another encoder (custom tables): nearest match only.
    Tables are compared in natural and in zig-zag order (Pillow versions differ).
    """
    from PIL import Image

    with Image.open(path) as im:
        tables = getattr(im, "quantization", None)
        if not tables:
            raise ValueError(f"{path}: not a JPEG (no quantization tables)")
    ids = sorted(tables)
    got = [np.asarray(tables[i], dtype=np.int64) for i in ids[:2]]
    bases = [IJG_LUMA, IJG_CHROMA][: len(got)]
    best: tuple[int, int] = (10**9, 0)
    for order in (np.arange(64), ZIGZAG):
        for q in range(1, 101):
            err = sum(int(np.abs(g - ijg_table(b, q)[order]).sum()) for g, b in zip(got, bases, strict=True))
            best = min(best, (err, -q))
    return -best[1], best[0] == 0


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized cross-correlation of two same-size images (grey), in [-1, 1]."""
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64) if a.ndim == 3 else a.astype(np.float64)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64) if b.ndim == 3 else b.astype(np.float64)
    ga, gb = ga - ga.mean(), gb - gb.mean()
    den = float(np.sqrt((ga * ga).sum() * (gb * gb).sum()))
    return float((ga * gb).sum() / den) if den > 0 else 0.0


def match_crops(video: str | os.PathLike, reference: str | os.PathLike, original_side: float,
                margins: Sequence[float] = DEFAULT_MARGINS, *, frames: Sequence[int] | None = None,
                detector: Any = None) -> dict[str, Any]:
    """How well our crops of ``video`` reproduce the data set's crop ``reference``.

    Args:
        video: the source video.
        reference: the data set's crop of it (JPEG).
        original_side: the crop's side in the source video (``original_width`` of metadata.csv).
        margins: margins to try, square and not square.
        frames: frames to detect on (default every 3rd of the first 300).
        detector: a ``FaceDetector`` (default: ``MTCNNDetector`` on CPU, dfpipe's settings).

    Returns:
        ``{"rows": [...], "best_frame", "box_side", "implied_margin"}``; one row per (margin,
        square): best NCC over frames and faces, the frame, MAE there, our crop's side in source
        pixels.
    """
    from pipeline.faces.crops import crop_face
    from pipeline.faces.detect import MTCNNDetector
    from pipeline.io.video import open_video
    from pipeline.train.data import load_crop

    ref = load_crop(reference)
    size = ref.shape[0]
    detector = detector or MTCNNDetector(device="cpu")
    combos = [(sq, float(m)) for sq in (True, False) for m in margins]
    best = {c: (-2.0, -1, 0.0, 0.0) for c in combos}  # ncc, frame, mae, side
    best_overall: tuple[float, int, Any] = (-2.0, -1, None)  # ncc, frame, box
    reader = open_video(video)
    try:
        n = reader.info.n_frames
        idx = [f for f in (frames if frames is not None else range(0, 300, 3)) if f < n]
        for start in range(0, len(idx), 20):  # 20 decoded frames at a time
            chunk = idx[start:start + 20]
            imgs = reader.get_batch(chunk)  # (N, H, W, 3)
            for f, img, faces in zip(chunk, imgs, detector.detect(imgs), strict=True):
                for d in faces:
                    x1, y1, x2, y2 = d.box
                    for sq, m in combos:
                        crop = crop_face(img, d.box, m, size, sq)
                        score = ncc(crop, ref)
                        if score > best[(sq, m)][0]:
                            mae = float(np.abs(crop.astype(np.int16) - ref.astype(np.int16)).mean())
                            best[(sq, m)] = (score, f, mae, max(x2 - x1, y2 - y1) * (1 + 2 * m))
                        if score > best_overall[0]:
                            best_overall = (score, f, d.box)
    finally:
        reader.close()
    rows = [{"margin": m, "square": sq, "ncc": round(b[0], 4), "frame": b[1], "mae": round(b[2], 2),
             "side_px": round(b[3], 1), "side_vs_original": round(b[3] / original_side, 3)}
            for (sq, m), b in best.items()]
    out: dict[str, Any] = {"video": str(video), "reference": str(reference),
                           "original_side": float(original_side), "frames": len(idx), "rows": rows}
    if best_overall[2] is not None:
        x1, y1, x2, y2 = best_overall[2]
        side = max(x2 - x1, y2 - y1)
        out.update(best_frame=best_overall[1], box_side=round(side, 1),
                   implied_margin=round((original_side / side - 1) / 2, 3))
    return out


def dataset_jpeg_qualities(faces_dir: str | os.PathLike, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Estimated JPEG quality of ``n`` crops drawn at random (seeded) from ``faces_dir``."""
    files = sorted(Path(faces_dir).glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"{faces_dir}: no .jpg crops")
    rng = np.random.default_rng(seed)
    pick = [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]
    counts: dict[str, int] = {}
    for p in pick:
        q, exact = estimate_jpeg_quality(p)
        key = f"{q}" + ("" if exact else " (nearest)")
        counts[key] = counts.get(key, 0) + 1
    return {"folder": str(faces_dir), "files": len(pick), "of": len(files),
            "qualities": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def measure(samples: str | os.PathLike, dataset: str | os.PathLike,
            margins: Sequence[float] = DEFAULT_MARGINS, n_jpeg: int = 200) -> dict[str, Any]:
    """``match_crops`` on the sample clips whose crop is in ``dataset`` + its JPEG quality."""
    import pandas as pd

    from pipeline.faces.detect import MTCNNDetector

    samples, dataset = Path(samples), Path(dataset)
    meta = pd.read_csv(dataset / "metadata.csv").set_index("videoname")
    detector = MTCNNDetector(device="cpu")
    clips = {}
    for vid, rel in SAMPLE_CLIPS.items():
        video, ref = samples / rel, dataset / "faces_224" / f"{vid}.jpg"
        if not video.is_file() or not ref.is_file():
            logger.warning("crop-margin: %s or %s missing; skipped", video, ref)
            continue
        row = meta.loc[f"{vid}.mp4"]
        side = (float(row["original_width"]) + float(row["original_height"])) / 2
        res = match_crops(video, ref, side, margins, detector=detector)
        res["label"] = str(row["label"])
        res["reference_jpeg_quality"] = estimate_jpeg_quality(ref)[0]
        clips[vid] = res
    return {"clips": clips, "jpeg": dataset_jpeg_qualities(dataset / "faces_224", n_jpeg)}


class _DecodedVideo:
    """Frames of one video decoded once, served like a ``VideoReader`` (for ``extract_faces``)."""

    def __init__(self, path: str | os.PathLike, decoder: str, pick: Any) -> None:
        from pipeline.io.video import open_video

        reader = open_video(path, decoder)
        try:
            self.path, self.info = str(path), reader.info
            idx = pick(self.info.n_frames, self.info.fps) or list(range(self.info.n_frames))
            self.frames = dict(zip(idx, reader.get_batch(idx), strict=True))
        finally:
            reader.close()

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.frames[i] for i in indices])  # (N, H, W, 3)

    def iter_batches(self, batch_size: int, indices: Sequence[int] | None = None) -> Any:
        idx = sorted(self.frames if indices is None else indices)
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size], self.get_batch(idx[k:k + batch_size])

    def close(self) -> None:
        pass


def scores_by_margin(checkpoint: str, videos: Sequence[str | os.PathLike],
                     margins: Sequence[float] = DEFAULT_MARGINS, device: str = "cpu") -> dict[str, Any]:
    """p_fake of each video at each crop margin, all else as the checkpoint's crop recipe.

    Each video is decoded and its faces detected and tracked once; only the crops change with
    the margin (``faces.crops.crop_face``, then the recipe's JPEG round trip), scored by
    ``VideoScorer.score(faces=...)``.

    Returns ``{"recipe": ..., "rows": [{"video", "margin", "p_fake", "frame_mean", "status"}]}``;
    ``frame_mean`` is the mean of the deciding track's per-frame scores (``frame_mean_p``).
    """
    import torch

    from pipeline.core.errors import VideoReadError
    from pipeline.faces.crops import crop_face, jpeg_round_trip
    from pipeline.faces.records import VideoFaces
    from pipeline.faces.video import extract_faces
    from pipeline.models.temporal import frame_mean_p
    from pipeline.score.scorer import VideoScorer

    scorer = VideoScorer.from_checkpoint(checkpoint, device=device)
    recipe = {k: v for k, v in scorer.crop.items() if k != "margin"}
    rows = []
    for v in videos:
        try:
            video = _DecodedVideo(v, scorer.extract_cfg.decoder, scorer.slot_frames)
            found = extract_faces(video, scorer.detector, scorer.extract_cfg,
                                  frames=scorer.slot_frames(video.info.n_frames, video.info.fps))
        except VideoReadError as e:
            rows += [{"video": Path(v).stem, "margin": float(m), "status": e.status, "p_fake": None,
                      "frame_mean": None} for m in margins]
            continue
        for m in margins:
            crops = [crop_face(video.frames[r.frame], r.box, float(m), recipe["size"], recipe["square"])
                     for r in found.records]
            if recipe["jpeg_quality"]:
                crops = [jpeg_round_trip(c, recipe["jpeg_quality"]) for c in crops]
            r = scorer.score(v, faces=VideoFaces(found.info, found.records, crops))
            tl = [p["p_fake"] for p in r.get("timeline") or []]
            mean = float(frame_mean_p(torch.tensor([tl], dtype=torch.float64))[0]) if tl else None
            rows.append({"video": Path(v).stem, "margin": float(m), "status": r["status"],
                         "p_fake": r["p_fake"], "frame_mean": mean})
        logger.info("crop-margin: %s scored at %d margins", v, len(margins))
    return {"checkpoint": str(checkpoint), "recipe": recipe, "rows": rows}


def labelled_samples(samples: str | os.PathLike) -> list[dict[str, Any]]:
    """``{"path", "label", "group"}`` of every sample clip listed in a DFDC-style metadata.json
    that exists; ``group`` = its original's id (its own id for an original)."""
    import json

    out = []
    for meta in sorted(Path(samples).rglob("metadata.json")):
        for name, entry in json.loads(meta.read_text()).items():
            p = meta.parent / name
            if p.is_file():
                original = entry.get("original") or name
                out.append({"path": p, "label": str(entry.get("label", "")),
                            "group": Path(str(original)).stem})
    return out


def margin_summary(rows: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]],
                   exclude: Sequence[str] = tuple(SAMPLE_CLIPS), n_bootstrap: int = 1000,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Per margin: mean p_fake of the REAL and FAKE clips and ROC AUC with its 95% interval
    (grouped bootstrap over originals), leaving out ``exclude`` (clips in the training set)."""
    from pipeline.stats import bootstrap as B
    from pipeline.stats import metrics as M

    info = {Path(s["path"]).stem: s for s in samples}
    out = []
    for m in sorted({r["margin"] for r in rows}):
        use = [r for r in rows if r["margin"] == m and r["p_fake"] is not None
               and r["video"] in info and r["video"] not in exclude
               and info[r["video"]]["label"] in ("REAL", "FAKE")]
        y = np.array([info[r["video"]]["label"] == "FAKE" for r in use], dtype=int)
        p = np.array([r["p_fake"] for r in use], dtype=float)
        g = np.array([info[r["video"]]["group"] for r in use])
        auc = M.roc_auc(y, p) if len(use) else float("nan")
        lo, hi = (B.percentile_interval(B.grouped_bootstrap_values(y, p, g, M.roc_auc, n_bootstrap, seed))
                  if len(use) else (float("nan"), float("nan")))
        out.append({"margin": m, "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
                    "mean_p_real": float(p[y == 0].mean()) if (y == 0).any() else None,
                    "mean_p_fake": float(p[y == 1].mean()) if (y == 1).any() else None,
                    "roc_auc": auc, "roc_auc_lo": lo, "roc_auc_hi": hi,
                    "excluded": [v for v in exclude if v in info]})
    return out
