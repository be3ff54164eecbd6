"""Synthetic clips, encoding: RGB frames -> an mp4 file (H.264 with PyAV, or OpenCV's mp4v).

H.264 is encoded with one thread and fixed options, so the same frames give the same bytes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import ConfigError, MissingDependencyError
from pipeline.core.fsutil import atomic_path

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------


def h264_available() -> bool:
    """Whether PyAV with an libx264 encoder is importable."""
    try:
        import av

        av.codec.Codec("libx264", "w")
        return True
    except Exception:  # ImportError, or the codec is missing from this FFmpeg build
        return False


def resolve_codec(codec: str) -> str:
    """``auto`` -> ``h264`` when libx264 is available else ``mp4v``; ``h264`` checked."""
    if codec == "auto":
        return "h264" if h264_available() else "mp4v"
    if codec == "h264" and not h264_available():
        raise MissingDependencyError("codec h264 needs PyAV with libx264: pip install av "
                                     "(or use --codec mp4v)")
    if codec not in ("h264", "mp4v"):
        raise ConfigError(f"unknown codec {codec!r}; choose auto, h264 or mp4v")
    return codec


def write_clip(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float,
               codec: str = "auto") -> int:
    """Encode RGB uint8 frames to an mp4 at ``path`` atomically; return the frame count.

    Args:
        frames: (H, W, 3) RGB uint8 frames, all the same (even) size.
        path: destination ``.mp4``.
        fps: frame rate.
        codec: ``h264`` (PyAV/libx264, yuv420p, one thread, deterministic), ``mp4v`` (OpenCV)
            or ``auto``.
    """
    codec = resolve_codec(codec)
    path = Path(path)
    with atomic_path(path) as tmp:
        if codec == "h264":
            return _write_h264(frames, tmp, fps)
        # OpenCV picks the container from the extension, so write "<tmp>.mp4" then move it
        tmp_mp4 = tmp.with_name(tmp.name + ".mp4")
        try:
            n = _write_mp4v(frames, tmp_mp4, fps)
            os.replace(tmp_mp4, tmp)
        finally:
            tmp_mp4.unlink(missing_ok=True)
        return n


def _write_h264(frames: Iterable[np.ndarray], path: Path, fps: float) -> int:
    import av

    n = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.thread_count = 1
                stream.options = {"preset": "veryfast", "crf": "18", "threads": "1",
                                  "g": "60", "bf": "0"}  # no B-frames (the generic option: "bframes" is not one)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    if n == 0:
        raise ConfigError(f"{path}: no frames to encode")
    return n


def _write_mp4v(frames: Iterable[np.ndarray], path: Path, fps: float) -> int:
    writer = None
    n = 0
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise MissingDependencyError(f"{path}: OpenCV cannot open an mp4v writer")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            n += 1
    finally:
        if writer is not None:
            writer.release()
    if n == 0:
        raise ConfigError(f"{path}: no frames to encode")
    return n
