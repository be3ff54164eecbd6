"""Uploads of ``dfpipe serve``: request body -> a file in a fresh temp folder, checked, and the
scorer's answer with every server path replaced by the client's file name.

Accepted bodies: ``multipart/form-data`` with the file in field ``file`` (``curl -F file=@x``,
an HTML form, ``requests.post(files=...)``), or the raw file as the body (``?filename=``
names it). Still images (jpg/png/webp, known by the client's file name, the part's or the
body's content type, or their bytes) are saved with their suffix so that the scorer treats them
as images; videos keep a known video suffix, else ``.bin``. The stored name is always
``upload<suffix>``: the client's name is display-only (``../../x.mp4`` writes nowhere else).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pipeline.core.errors import VideoReadError
from pipeline.io.video import VIDEO_EXTENSIONS

IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                  ".webp": "image/webp"}
CONTENT_TYPE_SUFFIX = {
    "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png",
    "image/webp": ".webp", "video/mp4": ".mp4", "video/quicktime": ".mov",
    "video/x-matroska": ".mkv", "video/webm": ".webm", "video/x-msvideo": ".avi",
    "video/avi": ".avi", "video/x-m4v": ".m4v",
}
PIL_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
UPLOAD_STEM = "upload"


class UploadError(Exception):
    """An upload refused before scoring: HTTP ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Upload:
    """One received upload: where it is stored, what the client called it, what it is."""

    tmp: Path
    dest: Path
    name: str
    kind: str = "video"  # or "image"
    media: dict[str, Any] | None = None

    def cleanup(self) -> None:
        """Delete the temp folder and everything in it."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def safe_display_name(name: str | None) -> str:
    """The last path component of a client-supplied file name, for display only."""
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "upload"


def choose_suffix(name: str, content_type: str | None) -> str:
    """The stored suffix: the client's name's (known image/video ones), else the content
    type's, else ``.bin`` (sniffed later)."""
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_EXTENSIONS:
        return suffix
    ctype = (content_type or "").split(";")[0].strip().lower()
    return CONTENT_TYPE_SUFFIX.get(ctype, ".bin")


async def limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """``stream``, raising ``UploadError(413)`` as soon as it exceeds ``max_bytes``."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, f"upload exceeds the limit of {max_bytes} bytes")
        yield chunk


async def receive(request: Any, filename: str | None, max_bytes: int) -> Upload:
    """Store the request's file (multipart field ``file`` or the raw body) in a temp folder.

    Raises:
        UploadError: 413 too large, 422 empty or a multipart body without ``file``.
    """
    ctype = request.headers.get("content-type", "")
    tmp = Path(tempfile.mkdtemp(prefix="dfpipe-upload-"))
    try:
        if ctype.lower().startswith("multipart/form-data"):
            upload = await _receive_multipart(request, filename, max_bytes, tmp)
        else:
            name = safe_display_name(filename)
            dest = tmp / (UPLOAD_STEM + choose_suffix(name, ctype))
            size = 0
            with open(dest, "wb") as f:
                async for chunk in limited(request.stream(), max_bytes):
                    size += len(chunk)
                    f.write(chunk)
            if size == 0:
                raise UploadError(422, f"{name}: empty upload")
            upload = Upload(tmp, dest, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _settle_kind(upload)


async def _receive_multipart(request: Any, filename: str | None, max_bytes: int,
                             tmp: Path) -> Upload:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(request.headers, limited(request.stream(), max_bytes),
                             max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise UploadError(422, f"malformed multipart upload: {e.message}") from None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise UploadError(422, "multipart upload without a file in the field 'file' "
                                   "(curl -F file=@video.mp4)")
        name = safe_display_name(filename or part.filename)
        dest = tmp / (UPLOAD_STEM + choose_suffix(name, part.content_type))
        await part.seek(0)
        with open(dest, "wb") as f:
            shutil.copyfileobj(part.file, f, 1 << 20)
        if dest.stat().st_size == 0:
            raise UploadError(422, f"{name}: empty upload")
        return Upload(tmp, dest, name)
    finally:
        await form.close()


def _settle_kind(upload: Upload) -> Upload:
    """Image or video: by suffix; a ``.bin`` whose bytes are a JPEG/PNG/WebP gets its suffix."""
    suffix = upload.dest.suffix
    if suffix == ".bin":
        fmt = _image_format(upload.dest)
        if fmt in PIL_FORMAT_SUFFIX:
            new = upload.dest.with_suffix(PIL_FORMAT_SUFFIX[fmt])
            upload.dest.rename(new)
            upload.dest, suffix = new, new.suffix
    upload.kind = "image" if suffix in IMAGE_SUFFIXES else "video"
    return upload


def _image_format(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    with contextlib.suppress(UnidentifiedImageError, OSError, ValueError), Image.open(path) as im:
        return im.format
    return None


def check(upload: Upload) -> dict[str, Any]:
    """What the upload is (``media``: kind, frames, fps, duration, size); sets ``upload.media``.

    Raises:
        UploadError: 415 not a decodable image/video; 422 a video stream without frames.
    """
    if upload.kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(upload.dest) as im:
                im.load()
                media = {"kind": "image", "width": im.width, "height": im.height,
                         "n_frames": 1, "fps": None, "duration_s": None}
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UploadError(415, f"{upload.name}: not a decodable image "
                                   f"({type(e).__name__})") from None
    else:
        try:
            media = _video_media(upload.dest)
        except VideoReadError as e:
            raise UploadError(415, f"{upload.name}: not a decodable video: "
                                   f"{scrub(reason(e), upload)}") from None
        except ValueError as e:
            raise UploadError(422, f"{upload.name}: {e}") from None
    upload.media = media
    return media


def reason(e: Exception) -> str:
    """The first line of an error's message (its type when it has none)."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _video_media(path: Path) -> dict[str, Any]:
    """Raise ValueError if ``path`` is a video container whose video stream has no frames (422),
    VideoReadError if it is not a decodable video at all (415); else its media info."""
    from pipeline.io.video import open_video

    try:
        reader = open_video(path)
    except VideoReadError:
        if _has_frameless_video_stream(path):
            raise ValueError("the video stream has no frames") from None
        raise
    try:
        reader.get_batch([0])
        info = reader.info
    finally:
        reader.close()
    fps = float(info.fps) if info.fps else None
    return {"kind": "video", "n_frames": int(info.n_frames), "fps": fps,
            "duration_s": round(info.n_frames / fps, 3) if fps else None,
            "width": int(info.width), "height": int(info.height)}


def _has_frameless_video_stream(path: Path) -> bool:
    """True when FFmpeg opens ``path``, finds a video stream, and decodes no frame from it."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False
            for _frame in container.decode(container.streams.video[0]):
                return False
    except Exception:  # noqa: BLE001 - not even a container: the caller's 415 stands
        return False
    return True


def scrub(value: Any, upload: Upload) -> Any:
    """``value`` (str, or dicts/lists of them) with the stored file's path -> the client's file
    name and any other mention of the temp folder -> ``<upload>``."""
    if isinstance(value, str):
        for p in {str(upload.dest), str(upload.dest.resolve())}:
            value = value.replace(p, upload.name)
        for p in {str(upload.tmp), str(upload.tmp.resolve())}:
            value = value.replace(p, "<upload>")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, upload) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, upload) for v in value]
    return value
