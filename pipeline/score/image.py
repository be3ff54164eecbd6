"""Scoring a still image: an image file -> faces (MTCNN, the training crop recipe) -> one verdict.

Input: a JPEG/PNG/WebP file (any suffix case, or any name when its first bytes say so,
``io.images.is_image``), the scorer's predictor, detector, crop recipe, image threshold and model
card. Output: the scorer's result dict with ``kind = "image"``: one entry per
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

from pipeline.faces.crops import crop_face, jpeg_round_trip
from pipeline.io.images import read_image
from pipeline.score.evidence import image_sheet
from pipeline.score.predict import Predictor


def score_image(path: Path, result: dict[str, Any], explain_dir: str | os.PathLike | None,
                display_name: str, *, predictor: Predictor, detector: Any, crop: dict[str, Any],
                threshold: float, card: dict[str, Any]) -> None:
    """Fill ``result`` (a ``VideoScorer.score`` result) for the image at ``path``: faces found
    by ``detector``, cut by the ``crop`` recipe, scored by ``predictor``; FAKE at ``threshold``."""
    result.update(kind="image", threshold=threshold)
    if not predictor.per_frame:  # a frame model, scored as frame_mean
        result.update(status="needs_video",
                      reason=f"{display_name}: a still image; the {card['model']} model scores "
                             "a face track over time and needs a video (use a frame checkpoint, "
                             "e.g. --checkpoint default, for images)")
        return
    frame = read_image(path)
    h, w = frame.shape[:2]
    result.update(n_frames=1, width=w, height=h)
    dets = detector.detect(frame[None])[0]  # faces of the one frame
    result["faces_found"] = len(dets)
    if not dets:
        result.update(status="no_face", reason=f"{display_name}: no face found")
        return
    recipe = crop
    crops = [crop_face(frame, d.box, recipe["margin"], recipe["size"], recipe["square"])
             for d in dets]
    if recipe["jpeg_quality"]:  # the training crops were JPEG files
        crops = [jpeg_round_trip(c, recipe["jpeg_quality"]) for c in crops]
    x, p = predictor.faces(crops)  # (n, C, H, W), (n,)
    k = int(np.argmax(p))
    result["tracks"] = [
        {"track": i, "frames_used": 1, "faces": 1, "share": 1.0,
         "box": [round(float(v), 1) for v in d.box], "mean_face_prob": float(d.prob),
         "p_fake": float(pi), "status": "ok"}
        for i, (d, pi) in enumerate(zip(dets, p, strict=True))]
    p_image = float(p[k])
    result.update(status="ok", p_fake=p_image,
                  label="FAKE" if p_image >= threshold else "REAL",
                  deciding_track=k, frames_used=1, low_evidence=False,
                  verdict_rule="each face scored by the frame model; the image's p_fake = the max "
                               "over its faces",
                  timeline=[{"frame": 0, "slot": 0, "window": 0, "time_s": 0.0, "p_fake": p_image}])
    if explain_dir is not None:
        image_sheet(predictor.model, card, threshold, Path(explain_dir), result, crops,
                    x[k:k + 1], display_name)
