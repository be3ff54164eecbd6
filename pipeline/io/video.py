"""Video decoding behind one small interface: a video file -> RGB frame batches.

Frames come out as a player shows them: a container's display rotation (phones store portrait
video as landscape pixels plus a display matrix) is applied by every backend, and ``.info``
reports the displayed width and height (``info.rotation`` keeps the applied angle).

``open_video(path, backend)`` returns a ``VideoReader`` with ``.info`` (frame count, fps, size),
``.get_batch(indices)`` and ``.iter_batches(batch_size, indices)``; the latter streams the video
in order so that only one batch of frames is in memory at a time (4K clips stay bounded; every
backend streams with sequential PyAV/OpenCV decoding, as decord keeps all decoded frames).
decord is the default backend; PyAV and OpenCV are drop-in alternatives (``dfpipe bench``
compares them). Every decoder failure becomes a ``VideoReadError`` with a one-line reason.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.core.errors import VideoReadError
from pipeline.io.prefetch import prefetch  # noqa: F401 - decoding ahead, re-exported

logger = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "cv2")
MAX_LOST_SHARE = 0.5
"""A video with more than this share of its frames undecodable is a ``read_error``; below it
the lost frames are skipped and counted (``frames_lost``)."""
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its video stream."""

    n_frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0  # display rotation applied to the decoded pixels (degrees, counter-clockwise)


def rotation_steps(degrees: float | None) -> int:
    """Counter-clockwise quarter turns (``np.rot90``'s ``k``) that show a frame as a player does.

    ``degrees`` is FFmpeg's display-matrix rotation (counter-clockwise); phones write -90 for
    portrait video stored as landscape pixels, which a player turns a quarter clockwise (k = 3).
    """
    if not degrees:
        return 0
    return int(round(float(degrees) / 90.0)) % 4


def rotate_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """``(N, H, W, 3)`` or ``(H, W, 3)`` frames turned ``k`` quarter turns counter-clockwise."""
    if k == 0:
        return frames
    axes = (1, 2) if frames.ndim == 4 else (0, 1)
    return np.ascontiguousarray(np.rot90(frames, k, axes=axes))


def _first_rotation(container: object, stream: object) -> int:
    for frame in container.decode(stream):  # type: ignore[attr-defined]
        return int(round(float(getattr(frame, "rotation", 0) or 0)))
    return 0


def _displayed(width: int, height: int, k: int) -> tuple[int, int]:
    return (height, width) if k % 2 else (width, height)


class VideoReader(Protocol):
    """Decoded access to one video; frames are ``(N, H, W, 3)`` uint8 RGB."""

    path: str
    info: VideoInfo
    frames_lost: int  # frames the last ``iter_batches`` could not decode (damaged packets)

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed)."""
        ...

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream ``(frame_indices, frames)`` batches in increasing frame order."""
        ...

    def iter_spans(
        self, batch_size: int, spans: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """One frame per ``[start, end)`` span, in increasing order: its start frame, or (where
        the decoder can skip frames nothing depends on) the first frame of the span that it
        decodes anyway."""
        ...

    def close(self) -> None:
        """Release the decoder."""
        ...


# decord's C++ log prefix "[15:04:53] /github/workspace/src/video/video_reader.cc:151: "
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.cc:\d+: (Check failed: .*? ERROR )?")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # decord prepends long C++ stack traces; keep the message readable
    text = _DECORD_PREFIX.sub("", text)
    if "cannot find video stream" in text:
        return "no video stream"
    return text[:300]


def _check_indices(indices: Sequence[int], n: int, path: str) -> None:
    bad = [i for i in indices if i < 0 or i >= n]
    if bad:
        raise VideoReadError(f"{path}: frame index {bad[0]} out of range (video has {n} frames)")


class DecordReader:
    """decord backend (random access by index, batched)."""

    def __init__(self, path: str, num_threads: int = 1) -> None:
        import decord

        self.path = path
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
            n = len(self._vr)
            if n == 0:
                raise VideoReadError(f"{path}: no video frames")
            fps = float(self._vr.get_avg_fps())
        except VideoReadError:
            raise
        except Exception as e:  # decord raises DECORDError/RuntimeError with C++ traces
            raise VideoReadError(f"{path}: cannot open video: {_one_line(e)}") from e
        # decord counts the frames; the PyAV stream that streams for it is opened once, for the
        # displayed size and rotation (from its first decoded frame, kept for the stream: decord
        # decoding frame 0 for the size and a second open for the rotation cost 0.05 s a video).
        # decord applies the rotation itself (its frames are as displayed), PyAV's frames are turned
        self._stream = PyAVReader(path, num_threads, n_frames=n, fps=fps)
        self.info = self._stream.info
        self.frames_lost = 0

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        _check_indices(indices, self.info.n_frames, self.path)
        try:
            return self._vr.get_batch(list(indices)).asnumpy()  # (N, H, W, 3) as displayed
        except Exception as e:  # e.g. a damaged packet on the way: decode sequentially instead
            logger.debug("%s: decord random access failed (%s); decoding with PyAV", self.path,
                         _one_line(e))
        return self._stream.get_batch(indices)

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        # Streaming goes through PyAV (the same FFmpeg decoding: identical pixels on our clips):
        # decord keeps every frame it decoded until the reader is closed. Measured on a 48-frame
        # 3840x2160 clip, batches of 10: decord peak RSS 1373 MiB, i.e. the whole video (48 x 24 MiB).
        _check_indices(range(self.info.n_frames) if indices is None else indices,
                       self.info.n_frames, self.path)
        try:
            yield from self._stream.iter_batches(batch_size, indices)
        finally:
            self.frames_lost = self._stream.frames_lost

    def iter_spans(
        self, batch_size: int, spans: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        try:
            yield from self._stream.iter_spans(batch_size, spans)
        finally:
            self.frames_lost = self._stream.frames_lost

    def close(self) -> None:
        self._vr = None
        self._stream.close()


class _Opened:
    """A PyAV container opened for probing, kept for the first stream: its demuxer positioned
    after the packet that gave the first frames, and those frames (no second open, no frame
    decoded twice)."""

    def __init__(self, container: Any, packets: Iterator[Any], pending: list) -> None:
        self.container, self.packets, self.pending = container, packets, pending


def _set_threads(stream: Any, threads: int) -> None:
    stream.thread_count = threads  # 0: FFmpeg picks
    stream.thread_type = "AUTO"  # frame + slice threads (measured: 3.2 s -> 1.7 s, 1080p)


def _probe_pyav(path: str, threads: int, n_frames: int | None = None,
                fps: float | None = None) -> tuple[VideoInfo, _Opened | None]:
    """The video stream's frame count, fps, displayed size and rotation, in one open; the open
    container is returned for streaming (None when it had to be rewound: a container without a
    frame count is counted by demuxing it). ``n_frames``/``fps``: already known (decord's)."""
    import av

    c = None
    try:
        c = av.open(path)
        if not c.streams.video:
            raise VideoReadError(f"{path}: no video stream")
        s = c.streams.video[0]
        _set_threads(s, threads)
        n = int(n_frames if n_frames is not None else (s.frames or 0))
        rate = fps if fps is not None else float(s.average_rate or s.guessed_rate or 0.0)
        w, h = int(s.codec_context.width), int(s.codec_context.height)
        rewound = False
        if n == 0:  # container without a frame count: count packets with data
            n = sum(1 for p in c.demux(s) if p.size)
            rewound = True
        opened = None
        try:
            if rewound:
                c.seek(0)
                rotation = _first_rotation(c, s)
            else:
                packets = c.demux(s)
                pending: list = []
                for packet in packets:
                    pending = list(packet.decode())
                    if pending:
                        break
                rotation = int(round(float(getattr(pending[0], "rotation", 0) or 0))) if pending else 0
                opened = _Opened(c, packets, pending)
        except Exception:  # noqa: BLE001 - the stream's own decoding reports bad frames
            rotation, opened = 0, None
    except VideoReadError:
        if c is not None:
            c.close()
        raise
    except Exception as e:
        if c is not None:
            c.close()
        raise VideoReadError(f"{path}: cannot open video: {_one_line(e)}") from e
    if n == 0 or w == 0 or h == 0:
        c.close()
        raise VideoReadError(f"{path}: no video frames")
    if opened is None:
        c.close()
    w, h = _displayed(w, h, rotation_steps(rotation))
    return VideoInfo(n_frames=n, fps=rate, width=w, height=h, rotation=rotation), opened


def _batch(frames: list[np.ndarray]) -> np.ndarray:
    """``(N, H, W, 3)`` from decoded frames: a view for one frame (no copy), else stacked."""
    return frames[0][None] if len(frames) == 1 else np.stack(frames)


class _Sequential:
    """Shared streaming for decoders that read a video front to back (``_frames``)."""

    path: str
    info: VideoInfo
    frames_lost: int

    def _frames(self, wanted: set[int] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(frame index, frame)`` in display order; a frame not in ``wanted`` (when given)
        comes as None: it is decoded, not converted to RGB."""
        raise NotImplementedError

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream the wanted frames in order. Frames that cannot be decoded (damaged packets, a
        stream that ends early) are skipped and counted in ``frames_lost``; more than
        ``MAX_LOST_SHARE`` of the video lost is a ``VideoReadError`` (damaged or truncated)."""
        wanted = sorted(set(range(self.info.n_frames) if indices is None else indices))
        _check_indices(wanted, self.info.n_frames, self.path)
        self.frames_lost = 0
        if not wanted:
            return
        pos = 0
        end = 0  # frames the stream has delivered or lost so far
        buf_idx: list[int] = []
        buf: list[np.ndarray] = []
        for i, frame in self._frames(None if indices is None else set(wanted)):
            end = i + 1
            while pos < len(wanted) and wanted[pos] < i:  # wanted but lost
                pos += 1
            if pos == len(wanted):
                break
            if i == wanted[pos]:
                buf_idx.append(i)
                buf.append(frame)
                pos += 1
                if len(buf) == batch_size:
                    yield buf_idx, _batch(buf)  # (N, H, W, 3)
                    buf_idx, buf = [], []
            if pos == len(wanted):
                break
        if pos < len(wanted):  # the stream ended early
            self.frames_lost += max(0, self.info.n_frames - max(end, self.frames_lost))
        lost_share = self.frames_lost / max(self.info.n_frames, 1)
        if lost_share > MAX_LOST_SHARE:
            raise VideoReadError(
                f"{self.path}: only {self.info.n_frames - self.frames_lost} of "
                f"{self.info.n_frames} frames decodable (damaged or truncated)")
        if buf:
            yield buf_idx, _batch(buf)  # (N, H, W, 3)

    def iter_spans(
        self, batch_size: int, spans: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Each span's start frame (``VideoReader.iter_spans``; PyAV can do better)."""
        yield from self.iter_batches(batch_size, [start for start, _ in spans])

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        got = {}
        for idx, frames in self.iter_batches(64, indices):
            got.update(zip(idx, frames, strict=True))
        lost = [i for i in indices if i not in got]
        if lost:
            raise VideoReadError(f"{self.path}: frame {lost[0]} cannot be decoded")
        return np.stack([got[i] for i in indices])  # (N, H, W, 3)

    def close(self) -> None:
        pass


class PyAVReader(_Sequential):
    """PyAV backend: sequential decoding (fastest full decode; no seeking).

    The file is opened once to probe it, and that open container streams the first pass (its
    first decoded frames kept); a later pass opens the file again. ``info``: the video's, when
    already known: the file is then not probed. ``n_frames``/``fps``: known from another
    decoder (decord's count), the rest is probed.
    """

    def __init__(self, path: str, num_threads: int = 1, info: VideoInfo | None = None,
                 n_frames: int | None = None, fps: float | None = None) -> None:
        self.path = path
        self._threads = num_threads
        self._opened: _Opened | None = None
        if info is None:
            info, self._opened = _probe_pyav(path, num_threads, n_frames, fps)
        self.info = info
        self.frames_lost = 0

    def _take_opened(self) -> _Opened:
        """The probe's open container (once: its first frames are pending), else a new open."""
        import av

        opened, self._opened = self._opened, None
        if opened is None:
            c = av.open(self.path)
            s = c.streams.video[0]
            _set_threads(s, self._threads)
            opened = _Opened(c, c.demux(s), [])
        return opened

    def _frames(self, wanted: set[int] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
        """``(frame index, frame)`` in display order; a packet that does not decode loses its
        frame (counted in ``frames_lost``; the index moves on) instead of ending the stream. Only
        ``wanted`` frames are converted to RGB (a sparse read of 30 of 300 1080p frames: ~0.25 s
        less); the others come as None."""
        import av

        def rgb(i: int, frame: Any) -> np.ndarray | None:
            if wanted is not None and i not in wanted:
                return None
            return rotate_frames(frame.to_ndarray(format="rgb24"), k)  # (H, W, 3) as displayed

        k = rotation_steps(self.info.rotation)
        i = 0
        try:
            opened = self._take_opened()
            with opened.container:
                for frame in opened.pending:  # decoded while probing
                    yield i, rgb(i, frame)
                    i += 1
                opened.pending = []
                for packet in opened.packets:
                    try:
                        decoded = packet.decode()
                    except av.error.InvalidDataError as e:  # a damaged packet
                        if packet.size:
                            logger.debug("%s: packet at frame ~%d lost: %s", self.path, i,
                                         _one_line(e))
                            self.frames_lost += 1
                            i += 1
                        continue
                    for frame in decoded:
                        yield i, rgb(i, frame)
                        i += 1
        except Exception as e:
            raise VideoReadError(f"{self.path}: decoding failed: {_one_line(e)}") from e

    def iter_spans(
        self, batch_size: int, spans: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """One frame per ``[start, end)`` span: the first *reference* frame in it.

        FFmpeg skips the frames no other frame is predicted from (``skip_frame = "NONREF"``:
        H.264/HEVC B-frames, about half of a DFDC clip's 300). What it decodes is exactly what
        a full decode gives for those frames, since nothing they depend on is skipped. A frame's
        index comes from its timestamp, at the stream's frame rate. Measured on a 10 s 1080p
        DFDC clip: 155 of 300 frames decoded, in 0.6 of the full decode's time. Where that does
        not work (a span with no reference frame, such as a 1-frame span on a B-frame,
        timestamps that do not increase, a damaged packet), every span gets its start frame
        from a full decode instead, as ``_Sequential.iter_spans`` does.
        """
        spans = sorted((int(a), int(b)) for a, b in spans)
        _check_indices([a for a, _ in spans], self.info.n_frames, self.path)
        chosen = self._reference_frames(spans)
        if chosen is None:
            yield from super().iter_spans(batch_size, spans)
            return
        self.frames_lost = 0
        for i in range(0, len(chosen), batch_size):
            part = chosen[i : i + batch_size]
            yield [f for f, _ in part], _batch([x for _, x in part])  # (N, H, W, 3)

    def _reference_frames(self, spans: list[tuple[int, int]]) -> list[tuple[int, np.ndarray]] | None:
        """``(frame index, frame)`` for each span from a reference-frames-only decode, or None
        where that cannot serve every span. Spans must be sorted and not overlap."""

        if any(a2 < b1 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False)) \
                or not self.info.fps or not math.isfinite(self.info.fps):
            return None
        k = rotation_steps(self.info.rotation)
        out: list[tuple[int, np.ndarray]] = []
        j, first_pts, last = 0, None, -1
        try:
            opened = self._take_opened()
            stream = opened.container.streams.video[0]
            stream.codec_context.skip_frame = "NONREF"
            tb = stream.time_base
            with opened.container:
                def decoded() -> Iterator[Any]:
                    yield from opened.pending
                    for packet in opened.packets:
                        yield from packet.decode()

                for frame in decoded():
                    if frame.pts is None or tb is None:
                        return None
                    if first_pts is None:
                        first_pts = frame.pts
                    idx = int(round(float((frame.pts - first_pts) * tb) * self.info.fps))
                    if idx <= last:
                        return None  # timestamps that do not increase: no index to trust
                    last = idx
                    if idx >= max(spans[j][1], spans[j][0] + 1):
                        return None  # a span passed with no reference frame in it
                    if j < len(spans) and idx >= spans[j][0]:
                        out.append((idx, rotate_frames(frame.to_ndarray(format="rgb24"), k)))
                        j += 1
                        if j == len(spans):
                            return out
        except Exception as e:  # noqa: BLE001 - a damaged stream: the full decode reports it
            logger.debug("%s: reference-frame decode failed (%s); decoding every frame",
                         self.path, _one_line(e))
            return None
        return None  # the stream ended before the last span

    def close(self) -> None:
        if self._opened is not None:
            self._opened.container.close()
            self._opened = None


_CV2_MAX_MISSES = 32  # consecutive failed reads after which OpenCV's stream counts as ended


class CV2Reader(_Sequential):
    """OpenCV backend: sequential ``read()`` only (never seeks with POS_FRAMES)."""

    def __init__(self, path: str, num_threads: int = 1) -> None:
        import cv2

        self.path = path
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise VideoReadError(f"{path}: cannot open video (OpenCV)")
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            # OpenCV applies the display rotation itself (CAP_PROP_ORIENTATION_AUTO, on by
            # default) and reports the displayed size
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            rotation = -int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0))
        finally:
            cap.release()
        if n <= 0 or w == 0 or h == 0:
            raise VideoReadError(f"{path}: no video frames")
        self.frames_lost = 0
        self.info = VideoInfo(n_frames=n, fps=fps, width=w, height=h,
                              rotation=((rotation + 180) % 360) - 180)

    def _frames(self, wanted: set[int] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
        import cv2

        cap = cv2.VideoCapture(self.path)
        try:
            i = misses = 0
            while i < self.info.n_frames and misses < _CV2_MAX_MISSES:
                ok, frame = cap.read()
                if not ok:  # a damaged packet or the end: OpenCV cannot tell, so read on
                    misses += 1
                    i += 1
                    continue
                self.frames_lost += misses
                misses = 0
                keep = wanted is None or i in wanted
                yield i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if keep else None  # (H, W, 3)
                i += 1
        finally:
            cap.release()


def open_video(path: str | os.PathLike, backend: str = "decord", num_threads: int = 1) -> VideoReader:
    """Open ``path`` with a decoder backend.

    Args:
        path: video file.
        backend: ``decord`` (default), ``pyav`` or ``cv2``.
        num_threads: decoder threads (1 inside pool workers).

    Raises:
        VideoReadError: missing, empty or undecodable file (one-line reason naming the file).
    """
    path = str(path)
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"{path}: file not found", status="missing_file")
    if p.stat().st_size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)", status="empty_file")
    if backend == "decord":
        return DecordReader(path, num_threads)
    if backend == "pyav":
        return PyAVReader(path, num_threads)
    if backend == "cv2":
        return CV2Reader(path, num_threads)
    raise ValueError(f"unknown video backend {backend!r}; known: {list(BACKENDS)}")
