"""Scoring, step 1: read a video and find its faces on the plan's frames, cropped as in training.

Input: a video path, the detector, the ``ExtractConfig`` the scorer built (decoder, detector
mode, margin and size of the checkpoint's crop recipe) and the model's slot plan: MTCNN runs on
the slot start frames of the video's windows (``score.plan``), or on every frame without a plan. Output: ``faces.records.VideoFaces`` (the
extract stage's own per-video code, ``faces.video.extract_faces``), each crop through the
recipe's JPEG round trip when the training crops were JPEG files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import MIN_FRAMES
from pipeline.core.errors import VideoReadError
from pipeline.faces.crops import jpeg_round_trip
from pipeline.faces.records import VideoFaces
from pipeline.faces.video import extract_faces
from pipeline.io.video import open_video
from pipeline.score.plan import SlotPlan, score_windows, slot_spans


def find_faces(path: str | os.PathLike, detector: Any, cfg: Any, jpeg_quality: int,
               plan: SlotPlan | None) -> VideoFaces:
    """Decode, detect, track and crop one video.

    Args:
        path: the video.
        detector: a ``faces.detect.FaceDetector`` (the scorer's MTCNN).
        cfg: the ``ExtractConfig`` (decoder, detector mode, crop margin, size, square).
        jpeg_quality: the recipe's JPEG round trip (0: none).
        plan: search the slot start frames of the video's windows (``detect='slots'``);
            None: every frame.

    Raises:
        VideoReadError: a folder, an unreadable video, or one with under ``MIN_FRAMES`` frames
            (status ``too_short``).
    """
    path = Path(path)
    if path.is_dir():
        try:
            os.listdir(path)
            why = "a folder, not a video"
        except OSError as e:
            why = f"cannot list folder: {e.strerror or e}"
        raise VideoReadError(f"{path}: {why}")
    reader = open_video(path, cfg.decoder)
    try:
        n = reader.info.n_frames
        if n < MIN_FRAMES:
            raise VideoReadError(f"{path}: {n} frame(s), need at least {MIN_FRAMES}",
                                 status="too_short")
        spans = None if plan is None else slot_spans(score_windows(n, reader.info.fps, plan))
        faces = extract_faces(reader, detector, cfg, spans=spans)
    finally:
        reader.close()
    if jpeg_quality:  # the training crops were JPEG files
        faces.crops = [jpeg_round_trip(c, jpeg_quality) for c in faces.crops]
    return faces
