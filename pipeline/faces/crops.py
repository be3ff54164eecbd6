"""Face crops: a full-resolution frame + a box -> a square (or box-shaped) crop, and the JPEG
encoding the extract stage writes it with (and the round trip scoring replays).

Re-exported by ``pipeline.faces.detect``, where the rest of the per-video face code lives.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.faces.tracks import Box


def crop_face(frame: np.ndarray, box: Box, margin: float = 0.3, size: int = 160,
              square: bool = True) -> np.ndarray:
    """``(size, size, 3)`` crop around ``box`` from a full-resolution frame.

    Square (default): the square's side is the box's larger side plus ``margin`` of it on each
    side, centred on the box. Not square: the box itself widened by ``margin`` of its width on
    the left and right and ``margin`` of its height at the top and bottom, then resized to
    ``size x size`` (the aspect ratio is not kept). Parts outside the frame are zero-padded (so
    faces at the border stay centred).
    """
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if square:
        side = max(max(x2 - x1, y2 - y1) * (1 + 2 * margin), 2.0)
        bw = bh = side
    else:
        bw, bh = max((x2 - x1) * (1 + 2 * margin), 2.0), max((y2 - y1) * (1 + 2 * margin), 2.0)
    left, top = int(math.floor(cx - bw / 2)), int(math.floor(cy - bh / 2))
    nw, nh = int(math.ceil(bw)), int(math.ceil(bh))
    interp = cv2.INTER_AREA if max(nw, nh) > size else cv2.INTER_LINEAR
    return cv2.resize(_padded(frame, left, top, nw, nh), (size, size),
                      interpolation=interp)  # (size, size, 3)


def _padded(frame: np.ndarray, left: int, top: int, w: int, h: int) -> np.ndarray:
    """The ``(h, w, 3)`` window of ``frame`` at ``left, top``: a view when it lies inside the
    frame, else a copy zero-padded where it sticks out."""
    fh, fw = frame.shape[:2]
    if left >= 0 and top >= 0 and left + w <= fw and top + h <= fh:
        return frame[top:top + h, left:left + w]
    out = np.zeros((h, w, 3), dtype=frame.dtype)
    sx1, sy1, sx2, sy2 = max(left, 0), max(top, 0), min(left + w, fw), min(top + h, fh)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - top:sy2 - top, sx1 - left:sx2 - left] = frame[sy1:sy2, sx1:sx2]
    return out


def encode_jpeg(crop: np.ndarray, quality: int = 95) -> bytes:
    """An RGB uint8 crop as JPEG bytes, encoded the way the extract stage writes its crops."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError("JPEG encoding failed")
    return buf.tobytes()


def jpeg_round_trip(crop: np.ndarray, quality: int) -> np.ndarray:
    """``crop`` after the JPEG round trip a training crop went through: encoded as
    ``write_video_faces`` writes it, decoded as ``data.load_crop`` reads it (PIL)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(encode_jpeg(crop, quality))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
