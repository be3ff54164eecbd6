"""Face detection: the ``FaceDetector`` protocol and the MTCNN adapter.

Detection goes through the ``FaceDetector`` protocol; the MTCNN adapter (built from an ``ExtractConfig`` by
``detector_from_config``, for extract and score alike) runs facenet-pytorch's ``detect()`` (never
the keep_all=False path, which crashes on batches where some frames have no face) on downscaled
frames and rescales the boxes, and offers ``verify`` (R-Net + O-Net on given boxes) for the
default ``--detector-mode track`` (``pipeline.faces.track_verify``). One video's faces
(detections -> tracks -> crops) are ``pipeline.faces.video.extract_faces``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from pipeline.faces.crops import _padded
from pipeline.faces.tracks import Box

logger = logging.getLogger(__name__)

MAX_BATCH_BYTES = 16 * 2**20
"""Decoded frames per batch (2 frames of 1080p); with the decode thread one batch is in use,
one waits and one is being decoded, so a video holds at most ~3x this. Measured on widuwuoiur
(1080p, one process, one torch thread, the worker's malloc settings), peak RSS: earlier, track
mode 1765 MiB with 128 MiB batches, 1315 with 64, 1105 with 32 (MTCNN loaded: 792); on
2026-12-02 in a fresh venv (MTCNN loaded: 993 MiB) track mode 1409 with 32, 1292 with 16, 1265
with 8 (5.4, 5.2, 6.8 s) and full mode 1695 with 32, 1387 with 16 (18.2, 18.4 s)."""


def frames_per_batch(batch_size: int, info: Any) -> int:
    """``batch_size`` frames, capped so a batch of decoded RGB frames stays under
    ``MAX_BATCH_BYTES`` (at least one frame: 4K clips stay bounded)."""
    return max(1, min(int(batch_size), MAX_BATCH_BYTES // (info.width * info.height * 3)))


@dataclass(frozen=True)
class Detection:
    """One face in one frame."""

    box: Box
    prob: float  # NaN for a box carried along a track without detection


class FaceDetector(Protocol):
    """Anything that finds faces in a batch of RGB frames."""

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """Faces per frame of ``frames`` ``(N, H, W, 3)`` uint8 RGB, boxes in input pixels."""
        ...


def auto_scale(width: int, height: int) -> float:
    """Detection downscale factor by resolution: the long side is brought to ~480 px.

    1920x1080 (either orientation) -> 0.25, 1280x720 -> 0.375, 640x360 -> 0.75; small frames
    are never upscaled (1.0).
    """
    long_side = max(width, height)
    return min(1.0, 480.0 / long_side) if long_side > 0 else 1.0


def _resize(frames: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return frames
    h, w = frames.shape[1:3]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])  # (N, h', w', 3)


class MTCNNDetector:
    """facenet-pytorch MTCNN on downscaled frames, with a larger-scale retry for misses.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        min_face_size: MTCNN minimum face size, in detection (downscaled) pixels.
        thresholds: MTCNN P/R/O-net thresholds.
        scale: fixed downscale factor; 0 picks ``auto_scale`` per frame size.
        retry_scale: frames without a face are detected again at this factor times ``scale``
            (1 disables the retry); never above full resolution.
        min_prob: faces below this probability are dropped.
    """

    def __init__(
        self,
        device: str = "auto",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale: float = 0.0,
        retry_scale: float = 2.0,
        min_prob: float = 0.9,
    ) -> None:
        import torch
        from facenet_pytorch import MTCNN

        from pipeline.core.device import resolve_device

        self.device = resolve_device(device)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale = scale
        self.retry_scale = retry_scale
        self.min_prob = min_prob
        self._mtcnn = MTCNN(
            keep_all=True,
            min_face_size=min_face_size,
            thresholds=list(thresholds),
            post_process=False,
            device=self.device,
        )
        # NHWC weights: the convolutions and max-pools of the three nets run on channels-last
        # kernels (same boxes to ~1e-4 px). Measured on widuwuoiur frames, one torch thread:
        # full detection at 0.25x 39.6 -> 27.1 ms/frame.
        for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            net.to(memory_format=torch.channels_last)
        self.n_retried = 0  # frames re-detected at the larger scale (for measurements)

    def _detect_at(self, frames: np.ndarray, scale: float, stretch: bool = False) -> list[list[Detection]]:
        small = _resize(frames, scale)
        if stretch:
            small = autocontrast(small)
        boxes, probs = self._mtcnn.detect(self._host(small))  # per frame: (F, 4) array or None
        out: list[list[Detection]] = []
        for b, p in zip(boxes, probs, strict=True):
            dets = []
            if b is not None:
                for box, prob in zip(np.asarray(b, dtype=np.float64), np.asarray(p, dtype=np.float64), strict=True):
                    if prob is None or not np.isfinite(prob) or prob < self.min_prob:
                        continue
                    dets.append(Detection(tuple(float(v) / scale for v in box), float(prob)))
            out.append(dets)
        return out

    def _host(self, array: np.ndarray) -> Any:
        """``array`` as MTCNN's input: unchanged on the CPU; on CUDA a tensor in pinned (page-
        locked) host memory, which copies to the device faster than pageable memory."""
        if self.device.type != "cuda":
            return array
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).pin_memory()

    def _retry(self, frames: np.ndarray, out: list[list[Detection]], scale: float, stretch: bool) -> None:
        missed = [i for i, d in enumerate(out) if not d]
        if not missed:
            return
        if stretch:  # only frames the stretch would change (dark or low-contrast ones)
            missed = [i for i in missed if _needs_stretch(frames[i])]
            if not missed:
                return
        self.n_retried += len(missed)
        for i, d in zip(missed, self._detect_at(frames[missed], scale, stretch), strict=True):
            out[i] = d

    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """Faces per frame of ``frames`` ``(N, H, W, 3)``; boxes in full-resolution pixels.

        Frames where nothing is found are tried again: first contrast-stretched at the same scale
        (dark clips), then at ``retry_scale`` times the scale (small faces), stretched if dark.
        """
        if len(frames) == 0:
            return []
        h, w = frames.shape[1:3]
        scale = self.scale or auto_scale(w, h)
        out = self._detect_at(frames, scale)
        if self.retry_scale > 1:
            self._retry(frames, out, scale, stretch=True)
            big = min(1.0, scale * self.retry_scale)
            if big > scale:
                missed = [i for i, d in enumerate(out) if not d]
                dark = [i for i in missed if _needs_stretch(frames[i])]
                bright = [i for i in missed if i not in set(dark)]
                for idx, stretch in ((dark, True), (bright, False)):
                    if idx:
                        self.n_retried += len(idx)
                        for i, d in zip(idx, self._detect_at(frames[idx], big, stretch), strict=True):
                            out[i] = d
        return out


    def verify(self, frame: np.ndarray, boxes: Sequence[Box]) -> list[Detection | None]:
        """MTCNN's last two stages on given boxes of one full-resolution frame ``(H, W, 3)``.

        R-Net then O-Net each score a box and refine it with their regression, as inside
        ``detect`` after P-Net. Returns, per box, the refined box with O-Net's probability where
        both confirm a face (R-Net above its threshold, O-Net at least ``min_prob``), else None.
        Dark frames are contrast-stretched first, as ``detect`` retries them.
        """
        import torch
        from facenet_pytorch.models.utils.detect_face import bbreg, rerec

        if not len(boxes):
            return []
        img = autocontrast(frame[None])[0] if _needs_stretch(frame) else frame
        b = torch.tensor([[*box, 0.0] for box in boxes], dtype=torch.float32)  # (N, 5)
        with torch.no_grad():
            b = rerec(b)
            reg, prob = self._mtcnn.rnet(self._stage_input(img, b, 24))  # (N, 4), (N, 2)
            r_score = prob[:, 1].cpu()
            b = rerec(bbreg(b, reg.cpu()))
            reg, _points, prob = self._mtcnn.onet(self._stage_input(img, b, 48))  # (N, 4), .., (N, 2)
            o_score = prob[:, 1].cpu()
            b = bbreg(b, reg.cpu())
        out: list[Detection | None] = []
        for k in range(len(boxes)):
            ok = float(r_score[k]) > self.thresholds[1] and float(o_score[k]) >= self.min_prob
            out.append(Detection(tuple(float(v) for v in b[k, :4]), float(o_score[k]))
                       if ok else None)
        return out

    def _stage_input(self, img: np.ndarray, boxes: Any, size: int) -> Any:
        """``(N, 3, size, size)`` R-Net/O-Net input: zero-padded square crops, MTCNN-normalized."""
        import torch

        crops = []
        for x1, y1, x2, y2 in boxes[:, :4].round().int().tolist():
            w, h = max(x2 - x1, 1), max(y2 - y1, 1)
            crops.append(cv2.resize(_padded(img, x1, y1, w, h), (size, size),
                                    interpolation=cv2.INTER_AREA))
        x = torch.from_numpy(np.stack(crops))  # (N, size, size, 3) uint8
        if self.device.type == "cuda":  # copy the uint8 crops, then convert on the device
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()  # (N, 3, size, size)
        return (x - 127.5) * 0.0078125


def detector_from_config(cfg: Any) -> MTCNNDetector:
    """The MTCNN detector an ``ExtractConfig`` describes (device, minimum face size, scale,
    retry scale, minimum probability): the one construction extract and score share."""
    return MTCNNDetector(device=cfg.device, min_face_size=cfg.min_face_size, scale=cfg.scale,
                         retry_scale=cfg.retry_scale, min_prob=cfg.min_face_prob)


def _needs_stretch(frame: np.ndarray) -> bool:
    """True when the frame's 99th-percentile brightness is well below white (dark footage)."""
    return float(np.percentile(frame[::8, ::8], 99)) < 200


def autocontrast(frames: np.ndarray) -> np.ndarray:
    """Per-frame linear stretch so the 99th-percentile value becomes 255 ``(N, H, W, 3)`` uint8.

    Measured on the dark DFDC clip abofeumbvv (30 frames, MTCNN prob >= 0.9 at 0.25x): 3/30
    frames with a face as is, 30/30 stretched.
    """
    out = np.empty_like(frames)
    for k, f in enumerate(frames):
        p99 = max(float(np.percentile(f[::4, ::4], 99)), 1.0)
        out[k] = np.clip(f.astype(np.float32) * (255.0 / p99), 0, 255).astype(np.uint8)
    return out
