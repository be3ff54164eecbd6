"""``dfpipe synth``: config -> a synthetic DFDC-like dataset with a real face.

Output (``OUT_DIR``)::

    dfdc_train_part_0/metadata.json     exact DFDC schema: {"x.mp4": {"label", "split", "original"}}
    dfdc_train_part_0/<video_id>.mp4    H.264 (PyAV/libx264, yuv420p) or mp4v (OpenCV) clips
    synth_config.json                   the resolved SynthConfig (resume check)
    synth_truth.json                    per clip: id, part, label, original, n_frames, fps, size,
                                        frames showing two faces, frames showing no face

The face is the astronaut's head from ``skimage.data.astronaut()`` (a real face that MTCNN finds),
cut with a soft elliptical alpha and composited onto a per-clip background (two-colour gradient +
low-frequency texture). Every *group* (a REAL original and its fakes) shares one scene: background,
smooth motion path, per-clip face scale (face height 23-40 % of the frame height, i.e. about
62-108 px at the default 480x270) breathing +-6 % over time, and per-clip lighting (a colour gain
and gamma on the head) that is CONSTANT within a clip but differs between clips; the REAL's face
gain (below) is part of the scene, so a fake with no flicker equals its original.

Design of the manipulation (deliberate, so that a temporal model can beat a single-frame one):

* Face lighting. Every clip's face region (a feathered elliptical mask inside the head) carries a
  gain relative to the rest of the frame: brightness ``1 + 0.25 z`` and colour ``1 + 0.05 z_c``
  per channel, with ``z ~ N(0, 1)`` clipped to +-2 (so up to +-50 % brightness and +-10 % colour).
  Measured through H.264 + MTCNN + JPEG (48+48 clips): at brightness sd 0.09 and 0.15 a random-init
  tiny CNN+LSTM did not learn the flicker in 30-40 epochs (val AUC ~0.5) although a hand-made
  statistic separated the clips perfectly; at 0.25 it reached 0.89 val / 0.92 test AUC while the
  single-frame model stayed near chance. A REAL clip draws its gain ONCE (constant over time, like a face lit differently from
  its background). A FAKE draws it for EVERY frame from the same distribution, so one frame of a
  fake is distributed exactly like one frame of a real; only the frame-to-frame variation
  (flicker) differs. ``temporal_strength`` ``w`` in [0, 1] (default 1) sets the flicker: the fake's
  frame ``t`` uses ``sqrt(1 - w) z_orig + sqrt(w) e_t`` (``z_orig`` its original's draw, ``e_t``
  fresh each frame), which keeps the per-frame distribution N(0, 1) for every ``w`` while the
  frame-to-frame variance grows as ``2 w`` (``w = 0``: the fake equals its original).
* A FAKE is its original's exact scene; only pixels under the face mask change, so pixels outside
  it are identical to the original before encoding.
* Spatial artefact, ``spatial_strength`` (default 0): a per-clip constant colour shift of the face
  layer (up to +-12 % per channel at strength 1) and a Gaussian blur (sigma 1.2 px x strength x
  face scale). It is a single-frame cue, so it is off by default: with it at 0.5 (and the former
  per-frame positional jitter) a single-frame model reached 0.88 validation AUC and the mean of its
  frame scores 0.996, above the CNN+LSTM; the data would not test temporal modelling.
* There is no positional jitter of the pasted face relative to the head: a patch that moves
  against the head leaves a seam visible in every single frame (a single-frame cue again).

Scene properties are chosen per group, so fakes have the same length, two-face frames and face gaps
as their original; the shares (``outlier_share``, ``two_face_share``, ``gap_share``) are shares of
groups, rounded to a whole number of groups (two-face and gap groups are disjoint while possible).
Lengths: ``frames`` +- ``frames_jitter`` (uniform); outlier groups get exactly 150 (short) or 450
(long) frames, alternating short/long. Two-face groups show a mirrored, recoloured second head in
one contiguous stretch (30-60 % of the clip); gap groups hide every face in one stretch (15-30 % of
the clip, never at the very start or end). Groups are spread over ``parts`` folders round-robin;
a fake always sits in its original's part.

Determinism: all randomness comes from ``numpy.random.default_rng`` seeded by ``cfg.seed``, with a
sub-seed per group (scene) and per fake (its artefacts); H.264 is encoded with one thread and fixed
options, so the same config gives the same bytes. Rerunning on a finished folder with the same
config skips existing clips; a different config on a non-empty folder is refused.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.config import SynthConfig, to_dict
from pipeline.errors import ConfigError, MissingDependencyError
from pipeline.fsutil import atomic_path, atomic_write_json, remove_stale_temps

logger = logging.getLogger(__name__)

PART_PREFIX = "dfdc_train_part_"
CONFIG_FILE = "synth_config.json"
TRUTH_FILE = "synth_truth.json"
SHORT_OUTLIER_FRAMES = 150
LONG_OUTLIER_FRAMES = 450

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


def validate(cfg: SynthConfig) -> None:
    """Raise ``ConfigError`` for impossible settings."""
    problems = []
    if cfg.n_originals < 1:
        problems.append("n_originals must be >= 1")
    if cfg.fakes_per_original < 0:
        problems.append("fakes_per_original must be >= 0")
    if not 1 <= cfg.parts <= max(cfg.n_originals, 1):
        problems.append("parts must be between 1 and n_originals")
    if cfg.frames < 1:
        problems.append("frames must be >= 1")
    if not 0 <= cfg.frames_jitter < cfg.frames:
        problems.append("frames_jitter must be >= 0 and < frames")
    for name in ("outlier_share", "two_face_share", "gap_share"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1]")
    if cfg.width < 160 or cfg.height < 90 or cfg.width % 2 or cfg.height % 2:
        problems.append("width/height must be even and at least 160x90")
    if cfg.width < cfg.height:
        problems.append("width must be >= height (landscape frames)")
    if cfg.fps <= 0:
        problems.append("fps must be > 0")
    if cfg.spatial_strength < 0:
        problems.append("spatial_strength must be >= 0")
    if not 0.0 <= cfg.temporal_strength <= 1.0:
        problems.append("temporal_strength must be between 0 and 1")
    if cfg.codec not in ("auto", "h264", "mp4v"):
        problems.append("codec must be auto, h264 or mp4v")
    if problems:
        raise ConfigError("synth: " + "; ".join(problems))


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_lowercase))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        vid = "".join(letters[rng.integers(0, 26, size=10)])
        if vid not in seen:
            seen.add(vid)
            out.append(vid)
    return out


def _stretch(rng: np.random.Generator, n: int, lo: float, hi: float, edge: float) -> tuple[int, int]:
    """A [start, stop) stretch of ``lo..hi`` of ``n`` frames, ``edge`` of ``n`` away from both ends."""
    length = max(1, int(round(rng.uniform(lo, hi) * n)))
    first = int(np.ceil(edge * n))
    last = max(first, n - int(np.ceil(edge * n)) - length)
    start = int(rng.integers(first, last + 1))
    return start, min(n, start + length)


def plan_dataset(cfg: SynthConfig) -> list[ClipSpec]:
    """The deterministic plan: one ``ClipSpec`` per clip, REAL original first in each group."""
    validate(cfg)
    rng = np.random.default_rng(cfg.seed)
    n_groups = cfg.n_originals
    n_clips = n_groups * (1 + cfg.fakes_per_original)
    ids = _video_ids(rng, n_clips)
    scene_seeds = rng.integers(0, 2**31 - 1, size=n_groups)
    fake_seeds = rng.integers(0, 2**31 - 1, size=(n_groups, max(cfg.fakes_per_original, 1)))

    def pick(share: float) -> int:
        return min(n_groups, int(round(share * n_groups)))

    perm = [int(i) for i in rng.permutation(n_groups)]
    k2, kg = pick(cfg.two_face_share), pick(cfg.gap_share)
    two_face_groups = set(perm[:k2])
    gap_groups = set((perm[k2:] + perm[:k2])[:kg])  # disjoint from two-face while possible
    outlier_order = [int(i) for i in rng.permutation(n_groups)][: pick(cfg.outlier_share)]
    outlier_len = {g: (SHORT_OUTLIER_FRAMES if j % 2 == 0 else LONG_OUTLIER_FRAMES)
                   for j, g in enumerate(outlier_order)}

    specs: list[ClipSpec] = []
    for g in range(n_groups):
        grng = np.random.default_rng(int(scene_seeds[g]) + 1)  # group-level planning draws
        if g in outlier_len:
            n = outlier_len[g]
        elif cfg.frames_jitter:
            n = cfg.frames + int(grng.integers(-cfg.frames_jitter, cfg.frames_jitter + 1))
        else:
            n = cfg.frames
        two = _stretch(grng, n, 0.3, 0.6, 0.05) if g in two_face_groups else None
        gap = _stretch(grng, n, 0.15, 0.3, 0.1) if g in gap_groups else None
        part = f"{PART_PREFIX}{g % cfg.parts}"
        base = dict(part=part, n_frames=n, width=cfg.width, height=cfg.height, fps=cfg.fps,
                    scene_seed=int(scene_seeds[g]), two_face=two, gap=gap,
                    outlier=g in outlier_len)
        first = g * (1 + cfg.fakes_per_original)
        orig = ClipSpec(video_id=ids[first], label="REAL", original=None, **base)
        specs.append(orig)
        for k in range(cfg.fakes_per_original):
            specs.append(ClipSpec(
                video_id=ids[first + 1 + k], label="FAKE", original=orig.filename,
                fake_seed=int(fake_seeds[g, k]), spatial_strength=cfg.spatial_strength,
                temporal_strength=cfg.temporal_strength, **base))
    return specs


# ------------------------------------------------------------------------------------------
# Rendering (pure: spec -> frames)
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
                                  "g": "60", "bframes": "0"}
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


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------


def metadata_for(specs: Sequence[ClipSpec]) -> dict[str, dict[str, dict[str, Any]]]:
    """DFDC ``metadata.json`` content per part: ``{part: {"x.mp4": {...}}}``."""
    parts: dict[str, dict[str, dict[str, Any]]] = {}
    for s in specs:
        parts.setdefault(s.part, {})[s.filename] = {
            "label": s.label, "split": "train", "original": s.original}
    return parts


def _recorded_config(cfg: SynthConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    d.pop("out", None)
    d["codec"] = resolve_codec(cfg.codec)
    return d


def _check_out_dir(out: Path, cfg: SynthConfig) -> None:
    """Refuse a non-empty folder that holds another config (or is not a synth output)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose a folder for the dataset")
    if not out.exists() or not any(out.iterdir()):
        return
    rec = out / CONFIG_FILE
    if not rec.is_file():
        raise ConfigError(f"{out}: folder is not empty and has no {CONFIG_FILE}; "
                          "choose an empty or new folder")
    try:
        old = json.loads(rec.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{rec}: unreadable ({e}); delete the folder or choose another") from e
    new = _recorded_config(cfg)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{out}: holds a dataset made with another config (differs in {diff}); "
                          "choose another folder or delete it")


def make_clip(path: str | os.PathLike, n_frames: int = 30, *, width: int = 480, height: int = 270,
              fps: float = 30.0, seed: int = 0, fake: bool = False,
              two_face: tuple[int, int] | None = None, gap: tuple[int, int] | None = None,
              spatial_strength: float = 0.0, temporal_strength: float = 1.0,
              codec: str = "auto") -> ClipSpec:
    """Write one synthetic clip with a face to ``path`` (for tests and benchmarks).

    Returns:
        The clip's spec (``render_frames(spec)`` reproduces its frames before encoding).
    """
    spec = ClipSpec(
        video_id=Path(path).stem, part="", label="FAKE" if fake else "REAL",
        original="original.mp4" if fake else None, n_frames=n_frames, width=width, height=height,
        fps=fps, scene_seed=seed, fake_seed=seed + 1 if fake else None,
        spatial_strength=spatial_strength if fake else 0.0,
        temporal_strength=temporal_strength if fake else 0.0, two_face=two_face, gap=gap)
    write_clip(render_frames(spec), path, fps, codec)
    return spec


def write_dataset(cfg: SynthConfig, out: str | os.PathLike | None = None) -> Path:
    """Write (or finish) the dataset described by ``cfg``; return the output folder."""
    out = Path(out if out is not None else cfg.out)
    if not str(out):
        raise ConfigError("synth: an output folder is required")
    specs = plan_dataset(cfg)
    codec = resolve_codec(cfg.codec)
    _check_out_dir(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, _recorded_config(cfg))
    meta = metadata_for(specs)
    for part in meta:
        (out / part).mkdir(exist_ok=True)
        remove_stale_temps(out / part)
    done = 0
    for spec in tqdm(specs, desc="synth clips", unit="clip"):
        path = out / spec.part / spec.filename
        if path.is_file():
            done += 1
            continue
        write_clip(render_frames(spec), path, spec.fps, codec)
    for part, entries in meta.items():
        atomic_write_json(out / part / "metadata.json", entries)
    atomic_write_json(out / TRUTH_FILE, {"clips": [s.truth() for s in specs]})
    n_real = sum(s.label == "REAL" for s in specs)
    logger.info(
        "synth: %d clips (%d REAL, %d FAKE) in %d part(s) at %s; %d outliers, %d two-face, "
        "%d with face gaps; %d already present; codec %s",
        len(specs), n_real, len(specs) - n_real, len(meta), out,
        sum(s.outlier for s in specs), sum(s.two_face is not None for s in specs),
        sum(s.gap is not None for s in specs), done, codec)
    return out


def load_truth(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-clip rows of ``OUT_DIR/synth_truth.json``."""
    return json.loads((Path(out) / TRUTH_FILE).read_text())["clips"]


def run(cfg: SynthConfig) -> int:
    """CLI entry: write the dataset; 0 on success (errors raise typed exceptions)."""
    write_dataset(cfg)
    return 0


__all__ = [
    "ClipSpec", "Scene", "plan_dataset", "make_scene", "render_frames", "face_box", "write_clip",
    "write_dataset", "make_clip", "metadata_for", "load_truth", "resolve_codec", "run", "face_gains",
]
