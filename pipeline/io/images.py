"""Still images: is a file an image (suffix or first bytes), and read it as shown."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.core.errors import VideoReadError
from pipeline.io.discovery import IMAGE_EXTENSIONS

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
