"""Synthetic clips, rendering: a ``ClipSpec`` -> RGB frames (the astronaut's head on a scene).

Used by ``pipeline.synth.dataset`` (the ``dfpipe synth`` stage: planning, writing, truth); the design of
the scene, the face lighting and the manipulation is documented there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Head crop from the 512x512 astronaut image (y0, y1, x0, x1) and the face box inside it.
_HEAD_CROP = (5, 225, 140, 310)  # 220 x 170 px
_FACE_BOX_IN_IMAGE = (181, 62, 268, 172)  # x1, y1, x2, y2 (MTCNN's box, measured)
FACE_BOX_IN_SPRITE = (
    _FACE_BOX_IN_IMAGE[0] - _HEAD_CROP[2],
    _FACE_BOX_IN_IMAGE[1] - _HEAD_CROP[0],
    _FACE_BOX_IN_IMAGE[2] - _HEAD_CROP[2],
    _FACE_BOX_IN_IMAGE[3] - _HEAD_CROP[0],
)
_FACE_H = _FACE_BOX_IN_IMAGE[3] - _FACE_BOX_IN_IMAGE[1]  # 110 px at scale 1




@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip (the plan of the dataset is a list of these).

    Attributes:
        video_id: 10 lowercase letters (file name ``<video_id>.mp4``).
        part: part folder name (``dfdc_train_part_N``).
        label: "REAL" or "FAKE".
        original: file name of the original for a FAKE, None for a REAL.
        n_frames, width, height, fps: video geometry.
        scene_seed: seeds background, motion, scale, lighting (shared by a group).
        fake_seed: seeds the fake's artefacts; None for a REAL.
        spatial_strength, temporal_strength: artefact strengths (0 for a REAL).
        two_face: [start, stop) frames showing a second face, or None.
        gap: [start, stop) frames showing no face, or None.
        outlier: the length was chosen outside 200-400 on purpose.
    """

    video_id: str
    part: str
    label: str
    original: str | None
    n_frames: int
    width: int
    height: int
    fps: float
    scene_seed: int
    fake_seed: int | None = None
    spatial_strength: float = 0.0
    temporal_strength: float = 0.0
    two_face: tuple[int, int] | None = None
    gap: tuple[int, int] | None = None
    outlier: bool = False

    @property
    def filename(self) -> str:
        return f"{self.video_id}.mp4"

    def no_face_frames(self) -> list[int]:
        """Frames in which no face is visible."""
        return list(range(*self.gap)) if self.gap else []

    def two_face_frames(self) -> list[int]:
        """Frames in which two faces are visible (gap frames excluded)."""
        if not self.two_face:
            return []
        gap = set(self.no_face_frames())
        return [t for t in range(*self.two_face) if t not in gap]

    def truth(self) -> dict[str, Any]:
        """The clip's row in ``synth_truth.json``."""
        return {
            "video_id": self.video_id,
            "filename": self.filename,
            "part": self.part,
            "label": self.label,
            "original": self.original,
            "n_frames": self.n_frames,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "outlier": self.outlier,
            "two_face_frames": self.two_face_frames(),
            "no_face_frames": self.no_face_frames(),
        }


# ------------------------------------------------------------------------------------------
# Planning (pure, deterministic)
# ------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _head_sprite() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB float32 head crop, soft head alpha, soft face mask), all at astronaut scale."""
    from skimage import data

    y0, y1, x0, x1 = _HEAD_CROP
    rgb = data.astronaut()[y0:y1, x0:x1].astype(np.float32)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # head + hair + neck: ellipse centred a little above the face centre
    head = ((xx - 85.0) / 76.0) ** 2 + ((yy - 108.0) / 108.0) ** 2
    alpha = np.clip((1.0 - head) / 0.12, 0.0, 1.0)
    fx1, fy1, fx2, fy2 = FACE_BOX_IN_SPRITE
    cx, cy = (fx1 + fx2) / 2, (fy1 + fy2) / 2 + 4
    face = ((xx - cx) / ((fx2 - fx1) * 0.52)) ** 2 + ((yy - cy) / ((fy2 - fy1) * 0.55)) ** 2
    mask = cv2.GaussianBlur((face <= 1.0).astype(np.float32), (0, 0), 5.0)
    return rgb, alpha, mask


@dataclass(frozen=True)
class Scene:
    """Per-group scene: background, motion, scale and lighting (derived from ``scene_seed``)."""

    background: np.ndarray  # (H, W, 3) uint8
    cx: np.ndarray  # (T,) sprite centre x
    cy: np.ndarray  # (T,) sprite centre y
    scale: np.ndarray  # (T,) sprite scale (face height = 110 px * scale)
    gain: np.ndarray  # (3,) per-channel lighting gain of the head
    gamma: float
    second_cx: float  # second face's centre (two-face clips)
    second_cy: float
    face_z: np.ndarray  # (4,) the REAL's face-gain draw: brightness z, then 3 colour z (N(0,1))


def make_scene(spec: ClipSpec) -> Scene:
    """Derive the scene of ``spec``'s group (same for an original and its fakes)."""
    rng = np.random.default_rng(spec.scene_seed)
    h, w, n = spec.height, spec.width, spec.n_frames
    # background: two-colour gradient at a random angle + low-frequency texture
    c0, c1 = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    bg = c0 + (c1 - c0) * ramp[..., None]
    tex = rng.normal(0, 1, size=(6, 10, 3)).astype(np.float32)
    bg += 18.0 * cv2.resize(tex, (w, h), interpolation=cv2.INTER_CUBIC)
    bg += rng.normal(0, 3.0, size=bg.shape).astype(np.float32)
    background = np.clip(bg, 0, 255).astype(np.uint8)

    face_frac = rng.uniform(0.23, 0.40)  # face height / frame height
    s0 = face_frac * h / _FACE_H
    t = np.arange(n, dtype=np.float32) / spec.fps  # seconds
    scale = s0 * (1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 6.3)))
    sprite_h, sprite_w = (_HEAD_CROP[1] - _HEAD_CROP[0]) * scale.max(), (_HEAD_CROP[3] - _HEAD_CROP[2]) * scale.max()
    # the main face stays in the left part when a second face may appear on the right
    x_hi = w * (0.5 if spec.two_face else 1.0) - sprite_w / 2 - 2
    x_lo, y_lo, y_hi = sprite_w / 2 + 2, sprite_h / 2 + 2, h - sprite_h / 2 - 2
    if x_hi < x_lo or y_hi < y_lo:
        x_hi, y_hi = max(x_lo, x_hi), max(y_lo, y_hi)
    mid_x, amp_x = (x_lo + x_hi) / 2, (x_hi - x_lo) / 2
    mid_y, amp_y = (y_lo + y_hi) / 2, (y_hi - y_lo) / 2
    cx = mid_x + amp_x * rng.uniform(0.4, 1.0) * np.sin(
        2 * np.pi * rng.uniform(0.05, 0.25) * t + rng.uniform(0, 6.3))
    cy = mid_y + amp_y * rng.uniform(0.3, 1.0) * np.sin(
        2 * np.pi * rng.uniform(0.05, 0.25) * t + rng.uniform(0, 6.3))
    gain = (rng.uniform(0.75, 1.2) * rng.uniform(0.88, 1.12, size=3)).astype(np.float32)
    gamma = float(rng.uniform(0.85, 1.15))
    second_cx = w * 0.75
    second_cy = h / 2 + rng.uniform(-0.1, 0.1) * h
    face_z = rng.normal(size=4).astype(np.float32)  # drawn last: earlier draws unchanged
    return Scene(background, cx, cy, scale, gain, gamma, float(second_cx), float(second_cy), face_z)


FACE_BRIGHTNESS_SD = 0.25  # face gain: brightness 1 + 0.25 z
FACE_COLOUR_SD = 0.05  # and per channel 1 + 0.05 z_c
FACE_Z_CLIP = 2.0  # z clipped to +-2: up to +-50 % brightness, +-10 % colour


def face_gains(z: np.ndarray) -> np.ndarray:
    """Face gains (..., 3) from standard-normal draws (..., 4): brightness z then 3 colour z."""
    z = np.clip(z, -FACE_Z_CLIP, FACE_Z_CLIP)
    return ((1.0 + FACE_BRIGHTNESS_SD * z[..., :1])
            * (1.0 + FACE_COLOUR_SD * z[..., 1:])).astype(np.float32)


def _face_z(spec: ClipSpec, scene: Scene) -> np.ndarray:
    """(T, 4) face-gain draws: the scene's one draw for a REAL, flicker for a FAKE."""
    z = np.broadcast_to(scene.face_z, (spec.n_frames, 4))
    if spec.label != "FAKE":
        return z
    w = spec.temporal_strength
    fresh = np.random.default_rng(spec.fake_seed).normal(size=(spec.n_frames, 4))  # (T, 4)
    return (np.sqrt(1.0 - w) * z + np.sqrt(w) * fresh).astype(np.float32)


def _light(rgb: np.ndarray, gain: np.ndarray, gamma: float) -> np.ndarray:
    return 255.0 * np.power(np.clip(rgb * gain / 255.0, 0.0, 1.0), gamma)


class _SpriteCache:
    """Lit head sprites (and fake face layers) per pixel size; the scale changes slowly."""

    def __init__(self, rgb: np.ndarray, alpha: np.ndarray, mask: np.ndarray,
                 shift: np.ndarray | None = None, blur: float = 0.0) -> None:
        self.rgb, self.alpha, self.mask = rgb, alpha, mask
        self.shift, self.blur = shift, blur
        self._cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def get(self, scale: float) -> tuple[np.ndarray, ...]:
        """(rgb, alpha, face mask, face layer) at ``scale`` (the layer is ``rgb`` when unshifted)."""
        h, w = self.rgb.shape[:2]
        size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
        hit = self._cache.get(size)
        if hit is None:
            rgb = cv2.resize(self.rgb, size, interpolation=cv2.INTER_AREA)
            layer = rgb * self.shift if self.shift is not None else rgb
            sigma = self.blur * scale
            if sigma > 0.05:
                layer = cv2.GaussianBlur(layer, (0, 0), sigma)
            hit = (rgb, cv2.resize(self.alpha, size, interpolation=cv2.INTER_AREA),
                   cv2.resize(self.mask, size, interpolation=cv2.INTER_AREA), layer)
            self._cache[size] = hit
        return hit


def _paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, cx: float, cy: float) -> None:
    """Alpha-composite float ``rgb`` centred at (cx, cy) into uint8 ``frame`` in place."""
    h, w = rgb.shape[:2]
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + w), min(frame.shape[0], y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    sub = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0, None]
    sub += a * (rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] - sub)
    frame[fy0:fy1, fx0:fx1] = np.clip(sub + 0.5, 0, 255).astype(np.uint8)


def face_box(spec: ClipSpec, scene: Scene, t: int) -> tuple[int, int, int, int] | None:
    """Pixel box (x1, y1, x2, y2) of the main face in frame ``t``; None in gap frames."""
    if spec.gap and spec.gap[0] <= t < spec.gap[1]:
        return None
    s = float(scene.scale[t])
    rgb, _, _ = _head_sprite()
    h, w = rgb.shape[:2]
    sw, sh = max(2, int(round(w * s))), max(2, int(round(h * s)))
    x0, y0 = int(round(scene.cx[t] - sw / 2)), int(round(scene.cy[t] - sh / 2))
    fx1, fy1, fx2, fy2 = FACE_BOX_IN_SPRITE
    return (x0 + int(fx1 * s), y0 + int(fy1 * s), x0 + int(np.ceil(fx2 * s)), y0 + int(np.ceil(fy2 * s)))


def render_frames(spec: ClipSpec) -> Iterator[np.ndarray]:
    """Yield the clip's ``n_frames`` RGB uint8 frames of shape (H, W, 3)."""
    scene = make_scene(spec)
    base_rgb, base_alpha, base_mask = _head_sprite()
    lit = _light(base_rgb, scene.gain, scene.gamma)  # constant lighting within the clip
    shift, blur = np.ones(3, np.float32), 0.0
    if spec.label == "FAKE" and spec.spatial_strength > 0:
        frng = np.random.default_rng([spec.fake_seed, 1])
        shift = 1.0 + spec.spatial_strength * frng.uniform(-0.12, 0.12, size=3).astype(np.float32)
        blur = 1.2 * spec.spatial_strength
    gains = face_gains(_face_z(spec, scene))  # (T, 3)
    sprites = _SpriteCache(lit, base_alpha, base_mask, shift, blur)
    if spec.two_face:
        # the second face: mirrored, channel-mixed, a bit smaller, at a fixed place
        rgb0, alpha0, _, _ = sprites.get(float(scene.scale[0]) * 0.9)
        second_rgb = np.ascontiguousarray(rgb0[:, ::-1, ::-1] * 0.6 + rgb0[:, ::-1] * 0.4)
        second_alpha = np.ascontiguousarray(alpha0[:, ::-1])
    gap = spec.gap or (0, 0)
    two = spec.two_face or (0, 0)
    for t in range(spec.n_frames):
        frame = scene.background.copy()
        if not gap[0] <= t < gap[1]:
            rgb, alpha, mask, layer = sprites.get(float(scene.scale[t]))
            face = rgb + mask[..., None] * (layer * gains[t] - rgb)  # (h, w, 3)
            _paste(frame, face, alpha, float(scene.cx[t]), float(scene.cy[t]))
            if two[0] <= t < two[1]:
                _paste(frame, second_rgb, second_alpha, scene.second_cx, scene.second_cy)
        yield frame
