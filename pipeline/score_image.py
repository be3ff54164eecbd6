"""Scoring a still image: an image file -> faces (MTCNN, the training crop recipe) -> one verdict.

Input: a JPEG/PNG/WebP file (any suffix case, or any name when its first bytes say so) and a
``scoring.VideoScorer``. Output: the scorer's result dict with ``kind = "image"``: one entry per
face in ``tracks`` (``track`` = face number, its box and p_fake), the image's p_fake = the maximum
over its faces (like tracks in a video: any fake face makes the image fake), ``frames_used`` 1.

The face(s) are found by the scorer's own MTCNN detector and cropped with the checkpoint's crop
recipe and JPEG round trip, exactly as video frames are. Each face is scored by the frame model
on its own, so the decision threshold is the checkpoint's ``frame`` threshold (chosen on
single-frame validation predictions), not the ``frame_mean`` one a video uses; for the same
reason an image is not ``low_evidence``: its verdict rests on what the threshold was chosen for.
A ``cnn_lstm`` checkpoint scores face tracks over time and cannot score an image: status
``needs_video``. The EXIF orientation of a phone photo is applied before detection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import engine
from pipeline.data import crops_to_tensor
from pipeline.discovery import IMAGE_EXTENSIONS
from pipeline.errors import VideoReadError
from pipeline.models import model_spec
from pipeline.score_evidence import image_sheet

_MAGIC = ((b"\xff\xd8\xff", 0), (b"\x89PNG\r\n\x1a\n", 0), (b"WEBP", 8))


def is_image(path: str | os.PathLike) -> bool:
    """True for a still image: an image suffix (any case), or JPEG/PNG/WebP magic bytes (an
    upload saved under another name)."""
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return any(head[at:at + len(m)] == m for m, at in _MAGIC)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image as shown (EXIF orientation applied): RGB uint8 ``(H, W, 3)``.

    Raises:
        VideoReadError: missing (``missing_file``), empty (``empty_file``) or undecodable
            (``read_error``) file; one line naming the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"{p}: file not found", status="missing_file")
    if p.stat().st_size == 0:
        raise VideoReadError(f"{p}: empty file (0 bytes)", status="empty_file")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoReadError(f"{p}: not a readable image ({' '.join(str(e).split())[:200]})") from e


def score_image(scorer: Any, path: Path, result: dict[str, Any],
                explain_dir: str | os.PathLike | None, display_name: str) -> None:
    """Fill ``result`` (a ``VideoScorer.score`` result) for the image at ``path``."""
    from pipeline.faces import crop_face, jpeg_round_trip

    result.update(kind="image", threshold=scorer.image_threshold)
    if not model_spec(scorer.card["scored_as"]).per_frame:  # a frame model, scored as frame_mean
        result.update(status="needs_video",
                      reason=f"{display_name}: a still image; the {scorer.model_name} model scores "
                             "a face track over time and needs a video (use a frame checkpoint, "
                             "e.g. --checkpoint default, for images)")
        return
    frame = read_image(path)
    h, w = frame.shape[:2]
    result.update(n_frames=1, width=w, height=h)
    dets = scorer.detector.detect(frame[None])[0]  # faces of the one frame
    result["faces_found"] = len(dets)
    if not dets:
        result.update(status="no_face", reason=f"{display_name}: no face found")
        return
    recipe = scorer.crop
    crops = [crop_face(frame, d.box, recipe["margin"], recipe["size"], recipe["square"])
             for d in dets]
    if recipe["jpeg_quality"]:  # the training crops were JPEG files
        crops = [jpeg_round_trip(c, recipe["jpeg_quality"]) for c in crops]
    x = crops_to_tensor(crops, scorer.image_size, scorer.mean, scorer.std)  # (n, C, H, W)
    x = x.to(scorer.device)
    with torch.no_grad():
        p = engine.probabilities(scorer.model.frame(x)).cpu().numpy()  # (n,)
    k = int(np.argmax(p))
    result["tracks"] = [
        {"track": i, "frames_used": 1, "faces": 1, "share": 1.0,
         "box": [round(float(v), 1) for v in d.box], "mean_face_prob": float(d.prob),
         "p_fake": float(pi), "status": "ok"}
        for i, (d, pi) in enumerate(zip(dets, p, strict=True))]
    p_image = float(p[k])
    result.update(status="ok", p_fake=p_image,
                  label="FAKE" if p_image >= scorer.image_threshold else "REAL",
                  deciding_track=k, frames_used=1, low_evidence=False,
                  verdict_rule="each face scored by the frame model; the image's p_fake = the max "
                               "over its faces",
                  timeline=[{"frame": 0, "slot": 0, "window": 0, "time_s": 0.0, "p_fake": p_image}])
    if explain_dir is not None:
        image_sheet(scorer, Path(explain_dir), result, crops, x[k:k + 1], display_name)
