"""Faces in one video: frames -> detections -> IoU tracks -> square crops.

The per-video core ``extract_faces(reader, detector, cfg) -> VideoFaces`` writes nothing itself
so the scoring stage reuses it; the extract stage passes a ``sink`` (``crop_writer``) that writes
each crop as ``<frame:04d>_<track>.jpg`` as it is made. Detectors are ``pipeline.faces.detect``;
the default ``--detector-mode track`` is ``pipeline.faces.track_verify``; tracks are linked by
``pipeline.faces.tracks``; crops are cut by ``pipeline.faces.crops``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.faces.crops import crop_face, encode_jpeg
from pipeline.faces.detect import FaceDetector, frames_per_batch
from pipeline.faces.records import FaceRecord, VideoFaces
from pipeline.faces.track_verify import extract_faces_tracked
from pipeline.faces.tracks import Box, Tracker
from pipeline.io.video import VideoReader, open_video, prefetch


def extract_faces(
    reader_or_path: VideoReader | str | os.PathLike,
    detector: FaceDetector,
    cfg: Any,
    *,
    frames: Sequence[int] | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
    sink: Callable[[FaceRecord, np.ndarray], None] | None = None,
) -> VideoFaces:
    """Detect, track and crop every face of one video (nothing written to disk).

    Args:
        reader_or_path: an open ``VideoReader`` or a path (opened with ``cfg.decoder``).
        detector: e.g. ``MTCNNDetector``.
        cfg: an ``ExtractConfig`` (uses batch_size, detect_every, iou_threshold, margin,
            crop_size, square, decoder).
        frames: frame indices to process (default: all).
        spans: instead of ``frames``, one frame per ``[start, end)`` span, as the reader picks
            it (``VideoReader.iter_spans``: the first frame of the span it decodes anyway, or the
            start); scoring's slots.
        sink: called with each face's record and crop as it is made, instead of keeping the
            crops (``VideoFaces.sink``).

    ``detector_mode="track"`` (the default) runs ``pipeline.faces.track_verify`` on consecutive
    frames; on a sparse ``frames`` list (scoring's slot starts) faces move too far between frames
    for a predicted box, so every given frame is fully detected, as with ``"full"`` (and so
    with a detector that has only ``detect``, no ``verify``).

    With ``detect_every = K > 1`` (in either mode) the detector runs on every K-th processed frame; the frames in
    between get the boxes of the tracks seen at the last detection (prob NaN).

    Raises:
        VideoReadError: the video cannot be decoded.
    """
    reader = (
        open_video(reader_or_path, getattr(cfg, "decoder", "decord"))
        if isinstance(reader_or_path, (str, os.PathLike))
        else reader_or_path
    )
    if spans is not None:
        frames = [start for start, _ in spans]
    if (spans is None and getattr(cfg, "detector_mode", "full") == "track"
            and int(cfg.detect_every) == 1 and _consecutive(frames) and hasattr(detector, "verify")):
        return extract_faces_tracked(reader, detector, cfg, frames=frames, sink=sink)
    every = max(1, int(cfg.detect_every))
    batch_size = frames_per_batch(cfg.batch_size, reader.info)
    tracker = Tracker(cfg.iou_threshold)
    result = VideoFaces(info=reader.info, sink=sink)
    carried: list[tuple[int, Box]] = []  # (track, box) from the last detection
    k = 0  # position among processed frames
    stream = (reader.iter_spans(batch_size, spans) if spans is not None and hasattr(reader, "iter_spans")
              else reader.iter_batches(batch_size, frames))
    for idx, batch in prefetch(stream):
        det_pos = [j for j in range(len(idx)) if (k + j) % every == 0]
        dets = detector.detect(batch[det_pos]) if det_pos else []
        by_pos = dict(zip(det_pos, dets, strict=True))
        for j, frame_idx in enumerate(idx):
            if j in by_pos:
                found = by_pos[j]
                ids = tracker.update([d.box for d in found])
                faces = [(t, d.box, d.prob) for t, d in zip(ids, found, strict=True)]
                carried = [(t, d.box) for t, d in zip(ids, found, strict=True)]
            else:
                faces = [(t, b, float("nan")) for t, b in carried]
            for t, b, p in sorted(faces, key=lambda x: x[0]):
                result.add(FaceRecord(int(frame_idx), int(t), b, p),
                           crop_face(batch[j], b, cfg.margin, cfg.crop_size,
                                     getattr(cfg, "square", True)))
        k += len(idx)
    return result


def _consecutive(frames: Sequence[int] | None) -> bool:
    """True for all frames (None) or a run of consecutive indices."""
    return frames is None or all(b == a + 1 for a, b in zip(frames, frames[1:], strict=False))


def crop_writer(out_dir: str | os.PathLike, jpeg_quality: int = 95
                ) -> Callable[[FaceRecord, np.ndarray], None]:
    """A ``sink`` that writes each crop as ``out_dir/<frame:04d>_<track>.jpg`` (JPEG)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(rec: FaceRecord, crop: np.ndarray) -> None:
        p = out_dir / rec.name
        try:
            data = encode_jpeg(crop, jpeg_quality)
        except OSError as e:
            raise OSError(f"{p}: {e}") from e
        p.write_bytes(data)

    return write


def write_video_faces(video_faces: VideoFaces, out_dir: str | os.PathLike, jpeg_quality: int = 95) -> list[Path]:
    """Write each kept crop as ``out_dir/<frame:04d>_<track>.jpg``; return the paths."""
    write = crop_writer(out_dir, jpeg_quality)
    for rec, crop in zip(video_faces.records, video_faces.crops, strict=True):
        write(rec, crop)
    return [Path(out_dir) / rec.name for rec in video_faces.records]
