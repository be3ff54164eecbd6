"""Datasets for training and evaluation: clips + split manifests -> tensors in dicts.

One preprocessing path for every consumer: ``load_crop`` reads a JPEG crop as RGB uint8, and
``crops_to_tensor`` turns a list of RGB uint8 crops into a normalized ``(T, C, H, W)`` float
tensor. Training, evaluation and scoring (crops held in memory) all go through it, so the
normalization constants below exist once.

Samples are dicts:
- clip mode (``cnn_lstm``, ``frame_mean``): ``{"clip": (T, C, H, W), "mask": (T,), "label", "video_id"}``;
  padded slots (mask 0) are all-zero tensors.
- image mode (``frame``): ``{"image": (C, H, W), "label", "video_id"}`` from slot ``frame_index``
  (or the nearest valid slot when that one is padding; ties go to the earlier slot).

``label`` is a float 0/1 tensor (1 = FAKE). Augmentation is sampled once per clip, from a seed
made of (seed, epoch, index), and applied identically to every frame: results do not depend on
DataLoader workers or on the number of DDP processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.core.errors import ManifestError, PipelineError
from pipeline.models.backbones import MEAN, STD  # ImageNet's: the default normalization

logger = logging.getLogger(__name__)


AUGMENTATIONS = ("flip", "color", "jpeg", "blur", "crop", "rescale", "compress", "noise", "gray",
                 "blend", "rotate")
"""``rescale``: a smaller face upscaled back (the face sizes scoring sees: 30-100 % of the crop's
side); ``compress``: strong JPEG (quality 30-90), the block artefacts and lost detail of a heavily
compressed video (FaceForensics++ c40, a re-upload), drawn more often than ``jpeg``'s 40-95;
``noise``: Gaussian sensor noise (sigma 1-6 grey levels, a new draw on every frame) before the
last encode, so a clean studio camera and a noisy phone look alike to the model; ``gray``: the
crop in grey levels, i.e. saturation 0 in the colour step (a colour cast or a saturated set
carries no verdict). ``noise`` and ``gray``
follow the DFDC winner's augmentations (GaussNoise, ToGray). ``blend``: self-blended images
(Shiohara and Yamasaki, CVPR 2022): a share of the REAL clips becomes FAKE, the crop's own face
blended into itself after a small colour, sharpness and position change (``SelfBlend``), so the
model learns the traces of face blending from real faces and not only the set's own fakes.
``rotate``: the crop turned about its centre by up to ``ROTATE_DEG`` (head roll: DFDC's faces are
mostly upright, and 15 degrees of roll doubled the release's false alarms on real crops), the
corners filled by reflection so no black wedge marks a rotated crop."""
RESCALE_RANGE = (0.3, 1.0)
"""``rescale``: side share the crop is shrunk to (log-uniform), before it is upscaled back."""
COMPRESS_QUALITY = (30, 90)
"""``compress``: JPEG quality range (inclusive)."""
NOISE_SIGMA = (1.0, 6.0)
"""``noise``: range of the Gaussian noise's standard deviation, in grey levels (uniform)."""
NOISE_P, GRAY_P = 0.3, 0.1
"""Shares of clips that get ``noise`` / ``gray`` when those are on."""
BLEND_P = 0.3
"""``blend``: share of the REAL clips turned into self-blended FAKE clips."""
ROTATE_DEG, ROTATE_P = 15.0, 0.5
"""``rotate``: largest angle in degrees (uniform in +-) and the share of clips rotated."""
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights: grey level of an RGB pixel."""


class CropReadError(PipelineError):
    """A face crop listed in a manifest cannot be read."""


def load_crop(path: str | os.PathLike) -> np.ndarray:
    """Read a face crop as an RGB uint8 array (H, W, 3); ``CropReadError`` names the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise CropReadError(f"{path}: cannot read face crop: {e}") from e


def crops_to_tensor(crops: Sequence[np.ndarray], image_size: int,
                    mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """RGB uint8 crops (H, W, 3) -> normalized float tensor (T, C, image_size, image_size).

    Crops of another size are resized (area interpolation when shrinking, linear otherwise);
    ``(x / 255 - mean) / std`` per channel (the model's own pair: ``normalization_of``).
    """
    frames = []
    for c in crops:
        if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) crop, got {c.dtype} {c.shape}")
        if c.shape[:2] != (image_size, image_size):
            interp = cv2.INTER_AREA if c.shape[0] > image_size else cv2.INTER_LINEAR
            c = cv2.resize(c, (image_size, image_size), interpolation=interp)
        frames.append(c)
    x = torch.from_numpy(np.stack(frames))  # (T, H, W, C) uint8
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (T, C, H, W) in [0, 1]
    m = torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s  # (T, C, H, W)


def normalization_of(preprocess: Mapping[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) recorded in a checkpoint's ``preprocess``; ImageNet's when absent (old files)."""
    pre = preprocess or {}
    mean = tuple(float(v) for v in pre.get("mean") or MEAN)
    std = tuple(float(v) for v in pre.get("std") or STD)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"preprocess mean/std must be 3 values (std > 0), got {mean} / {std}")
    return mean, std


# --------------------------------------------------------------------------------------------
# augmentation: sampled once per clip, the same on every frame
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipAugment:
    """Parameters of one clip's augmentation (``identity()`` changes nothing)."""

    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    jpeg_quality: int = 0  # 0: no re-compression
    blur_sigma: float = 0.0  # Gaussian blur sigma in pixels of the crop; 0: none
    crop: tuple[float, float, float] = (1.0, 0.0, 0.0)  # (side share, x0 share, y0 share) kept
    scale: float = 1.0  # side share the crop is shrunk to before it is upscaled back; 1: none
    noise_sigma: float = 0.0  # Gaussian noise std in grey levels; 0: none
    noise_seed: int = 0  # with the frame index: the noise of one frame
    angle: float = 0.0  # rotation about the crop's centre, degrees counter-clockwise; 0: none

    @classmethod
    def identity(cls) -> ClipAugment:
        """No-op augmentation."""
        return cls()

    @classmethod
    def sample(cls, ops: Sequence[str], rng: np.random.Generator) -> ClipAugment:
        """Draw parameters for the enabled ``ops`` (subset of ``AUGMENTATIONS``)."""
        unknown = sorted(set(ops) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(AUGMENTATIONS)}")
        kw: dict[str, Any] = {}
        if "flip" in ops:
            kw["flip"] = bool(rng.random() < 0.5)
        if "color" in ops:
            kw["brightness"], kw["contrast"], kw["saturation"] = (
                float(x) for x in rng.uniform(0.8, 1.2, size=3))
        if "jpeg" in ops and rng.random() < 0.5:
            kw["jpeg_quality"] = int(rng.integers(40, 96))
        if "blur" in ops and rng.random() < 0.3:
            kw["blur_sigma"] = float(rng.uniform(0.3, 1.5))
        if "crop" in ops:  # a square window of 80-100 % of the side, anywhere inside the crop
            side = float(rng.uniform(0.8, 1.0))
            x0, y0 = (float(v) for v in rng.uniform(0.0, 1.0 - side, size=2))
            kw["crop"] = (side, x0, y0)
        if "rescale" in ops and rng.random() < 0.5:
            lo, hi = RESCALE_RANGE
            kw["scale"] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if "compress" in ops and rng.random() < 0.6:  # wins over a "jpeg" draw: the last encode
            kw["jpeg_quality"] = int(rng.integers(COMPRESS_QUALITY[0], COMPRESS_QUALITY[1] + 1))
        if "noise" in ops and rng.random() < NOISE_P:
            kw["noise_sigma"] = float(rng.uniform(*NOISE_SIGMA))
            kw["noise_seed"] = int(rng.integers(2**31))
        if "gray" in ops and rng.random() < GRAY_P:  # grey levels: the colour step, saturation 0
            kw["saturation"] = 0.0
        if "rotate" in ops and rng.random() < ROTATE_P:  # drawn last: the other draws stay as they were
            kw["angle"] = float(rng.uniform(-ROTATE_DEG, ROTATE_DEG))
        return cls(**kw)

    def __call__(self, crop: np.ndarray, frame: int = 0) -> np.ndarray:
        """Apply to one RGB uint8 crop: rotation, window, rescale, flip, colour, blur, noise, JPEG
        (the order of a camera pipeline: the head's pose and a smaller face first, re-compression
        last); the output has the input's size. ``frame``: the crop's slot in its clip, so each
        frame gets its own noise."""
        x = crop
        if self.angle:
            x = rotate(x, self.angle)
        side, x0, y0 = self.crop
        if side < 1.0:
            h, w = x.shape[:2]
            ch, cw = max(1, round(side * h)), max(1, round(side * w))
            top, left = min(round(y0 * h), h - ch), min(round(x0 * w), w - cw)
            x = cv2.resize(np.ascontiguousarray(x[top:top + ch, left:left + cw]), (w, h),
                           interpolation=cv2.INTER_LINEAR)
        if self.scale < 1.0:
            x = rescale(x, self.scale)
        if self.flip:
            x = x[:, ::-1]
        if (self.brightness, self.contrast, self.saturation) != (1.0, 1.0, 1.0):
            f = x.astype(np.float32) * self.brightness
            gray = f @ LUMA  # (H, W)
            f = gray.mean() + self.contrast * (f - gray.mean())
            gray = f @ LUMA
            f = gray[..., None] + self.saturation * (f - gray[..., None])
            x = np.clip(f, 0, 255).astype(np.uint8)
        if self.blur_sigma > 0:
            x = cv2.GaussianBlur(np.ascontiguousarray(x), (0, 0), self.blur_sigma)
        if self.noise_sigma > 0:
            rng = np.random.default_rng([self.noise_seed, int(frame)])
            f = x.astype(np.float32) + rng.normal(0.0, self.noise_sigma, x.shape).astype(np.float32)
            x = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        if self.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(x[..., ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            x = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        return np.ascontiguousarray(x)


def rotate(crop: np.ndarray, angle: float) -> np.ndarray:
    """An RGB crop turned ``angle`` degrees counter-clockwise about its centre (bilinear, the
    same size; the corners filled by reflecting the crop at its border)."""
    h, w = crop.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), float(angle), 1.0)  # (2, 3)
    return cv2.warpAffine(np.ascontiguousarray(crop), m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def rescale(crop: np.ndarray, scale: float) -> np.ndarray:
    """Shrink an RGB crop to ``scale`` of its side (area averaging, at least 8 px) and upscale it
    back to its size (bilinear): the detail a face of that size in the video would have."""
    h, w = crop.shape[:2]
    small = cv2.resize(np.ascontiguousarray(crop), (max(8, round(w * scale)), max(8, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class SelfBlend:
    """A self-blended image (SBI, Shiohara and Yamasaki, CVPR 2022) of one tight face crop.

    The source is the crop itself, slightly changed: per-channel colour shift, brightness, a
    blur or a sharpening (the smoother or crisper face a generator renders), a stretch and a
    shift of a few per cent (a misaligned paste). It is pasted back onto the unchanged crop
    through a soft ellipse around the inner face (the crops are MTCNN boxes, eyebrows to chin,
    so no landmarks are needed), at ``ratio`` opacity. Every share is of the crop's side, so the
    same parameters fit any crop size. Drawn once per clip, the same on every frame.
    """

    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to R, G, B, in grey levels
    brightness: float = 1.0
    sharpness: float = 0.0  # < 0: Gaussian blur of sigma -sharpness px; > 0: unsharp amount
    stretch: tuple[float, float] = (1.0, 1.0)  # source scale in x, y about the centre
    offset: tuple[float, float] = (0.0, 0.0)  # source shift in x, y, share of the side
    center: tuple[float, float] = (0.5, 0.55)  # ellipse centre, shares of width, height
    axes: tuple[float, float] = (0.36, 0.42)  # ellipse half-axes, shares of width, height
    feather: float = 0.05  # Gaussian blur of the mask, sigma as a share of the side
    ratio: float = 1.0  # opacity of the pasted face

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SelfBlend:
        """Draw one blend: the ranges of SBI's source-target augmentation and mask."""
        sharp = 0.0
        r = rng.random()
        if r < 0.25:
            sharp = -float(rng.uniform(0.5, 1.5))
        elif r < 0.5:
            sharp = float(rng.uniform(0.3, 1.0))
        return cls(
            shift=tuple(float(v) for v in rng.uniform(-15.0, 15.0, size=3)),
            brightness=float(rng.uniform(0.9, 1.1)), sharpness=sharp,
            stretch=tuple(float(v) for v in rng.uniform(0.95, 1.05, size=2)),
            offset=tuple(float(v) for v in rng.uniform(-0.03, 0.03, size=2)),
            center=(float(0.5 + rng.uniform(-0.03, 0.03)), float(0.55 + rng.uniform(-0.03, 0.03))),
            axes=(float(rng.uniform(0.30, 0.42)), float(rng.uniform(0.36, 0.48))),
            feather=float(rng.uniform(0.02, 0.08)),
            ratio=float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])))

    def mask(self, h: int, w: int) -> np.ndarray:
        """The blend weight per pixel, float32 (H, W) in [0, ``ratio``]: 1 inside the ellipse
        before feathering, 0 outside."""
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cx, cy = self.center[0] * w - 0.5, self.center[1] * h - 0.5
        inside = ((xx - cx) / (self.axes[0] * w)) ** 2 + ((yy - cy) / (self.axes[1] * h)) ** 2 <= 1.0
        m = inside.astype(np.float32)
        if self.feather > 0:
            m = cv2.GaussianBlur(m, (0, 0), self.feather * max(h, w))
        return m * np.float32(self.ratio)

    def source(self, crop: np.ndarray) -> np.ndarray:
        """The changed copy of ``crop`` that is pasted, float32 (H, W, 3), not clipped."""
        h, w = crop.shape[:2]
        x = crop
        if (self.stretch, self.offset) != ((1.0, 1.0), (0.0, 0.0)):
            cx, cy = (w - 1) / 2, (h - 1) / 2
            sx, sy = self.stretch
            affine = np.float32([[sx, 0, cx - sx * cx + self.offset[0] * w],
                                 [0, sy, cy - sy * cy + self.offset[1] * h]])
            x = cv2.warpAffine(np.ascontiguousarray(x), affine, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        f = x.astype(np.float32)
        if self.sharpness < 0:
            f = cv2.GaussianBlur(f, (0, 0), -self.sharpness)
        elif self.sharpness > 0:
            f = f + self.sharpness * (f - cv2.GaussianBlur(f, (0, 0), 1.0))
        return f * np.float32(self.brightness) + np.float32(self.shift)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """Blend the changed face into ``crop`` (RGB uint8); same size and dtype."""
        h, w = crop.shape[:2]
        m = self.mask(h, w)[..., None]
        out = m * self.source(crop) + (1.0 - m) * crop.astype(np.float32)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# manifests -> per-video records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoRecord:
    """One video's clip: crop paths per slot ("" = padding), mask, label (1 = FAKE)."""

    video_id: str
    label: int
    paths: tuple[str, ...]
    mask: tuple[int, ...]


def label_to_int(label: str) -> int:
    """REAL -> 0, FAKE -> 1."""
    if label not in ("REAL", "FAKE"):
        raise ManifestError(f"label must be REAL or FAKE, got {label!r}")
    return int(label == "FAKE")


def build_records(clips: pd.DataFrame, split: pd.DataFrame, which: str) -> list[VideoRecord]:
    """Records of the videos in split ``which`` (sorted by video_id), from validated manifests.

    Columnar: one sort of the split's clip rows, no per-video table (120k videos x 30 slots in
    seconds). Raises ``ManifestError`` when a video of the split has no clip rows, rows with gaps
    in the slot numbering, or a different number of slots than the others.
    """
    ids = np.sort(split.loc[split["split"] == which, "video_id"].astype(str).to_numpy())
    code = pd.Index(ids, dtype=clips["video_id"].dtype).get_indexer(clips["video_id"])  # (R,)
    rows = np.flatnonzero(code >= 0)
    code = code[rows]
    slot = clips["slot"].to_numpy(np.int64)[rows]
    order = np.lexsort((slot, code))
    rows, code, slot = rows[order], code[order], slot[order]
    counts = np.bincount(code, minlength=len(ids))  # (V,)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    bad_slot = np.bincount(code[slot != np.arange(len(rows)) - offsets[code]],
                           minlength=len(ids)) > 0
    mask = clips["mask"].to_numpy(np.int64)[rows]
    # only this split's rows become Python strings (not the whole column)
    paths = clips["crop_path"].iloc[rows].astype("string").fillna("").to_numpy(dtype=object)
    no_path = np.bincount(code[(mask != 0) & (paths == "")], minlength=len(ids)) > 0
    bad = np.flatnonzero((counts == 0) | bad_slot | no_path)
    if len(bad):
        i = int(bad[0])
        vid = ids[i]
        if counts[i] == 0:
            raise ManifestError(f"clips manifest has no rows for video {vid} (split {which})")
        if bad_slot[i]:
            got = slot[offsets[i]:offsets[i + 1]].tolist()
            raise ManifestError(f"clips manifest: video {vid} has slots {got}, "
                                f"expected 0..{counts[i] - 1}")
        raise ManifestError(f"clips manifest: video {vid} has a valid slot without crop_path")
    lengths = sorted(set(counts.tolist()))
    if len(lengths) > 1:
        raise ManifestError(f"clips manifest: videos have different slot counts {lengths}")
    paths = np.where(mask != 0, paths, "")
    labels = (clips["label"].iloc[rows[offsets[:-1]]].astype(str).to_numpy() if len(ids)
              else [])
    records = []
    for i, vid in enumerate(ids):
        lo, hi = offsets[i], offsets[i + 1]
        records.append(VideoRecord(str(vid), label_to_int(str(labels[i])),
                                   tuple(paths[lo:hi].tolist()), tuple(mask[lo:hi].tolist())))
    return records


def nearest_valid_slot(mask: Sequence[int], index: int) -> int:
    """``index`` if valid, else the nearest slot with mask 1 (ties: the earlier one)."""
    valid = [i for i, m in enumerate(mask) if m]
    if not valid:
        raise ManifestError("clip has no valid frame")
    return min(valid, key=lambda i: (abs(i - index), i))


class ClipDataset(Dataset):
    """Videos of one split as clip or image samples (see the module docstring).

    Indexable by ``i`` (no augmentation unless ``augment`` is set, then epoch 0) or by
    ``(i, epoch)`` as yielded by ``pipeline.train.engine.EpochSampler`` (augmentation seeded by
    ``(seed, epoch, i)``).
    """

    def __init__(self, records: Sequence[VideoRecord], mode: str = "clip", image_size: int = 160,
                 frame_index: int = 15, augment: Sequence[str] = (), seed: int = 0,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        if mode not in ("clip", "image"):
            raise ValueError(f"mode must be 'clip' or 'image', not {mode!r}")
        unknown = sorted(set(augment) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(AUGMENTATIONS)}")
        self.records = list(records)
        self.mode = mode
        self.image_size = image_size
        self.frame_index = frame_index
        self.augment = tuple(augment)
        self.seed = seed
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        """0/1 label per sample."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    def _augmenter(self, index: int, epoch: int) -> ClipAugment:
        if not self.augment:
            return ClipAugment.identity()
        rng = np.random.default_rng([self.seed, epoch, index])
        return ClipAugment.sample(self.augment, rng)

    def _blend(self, index: int, epoch: int, label: int) -> SelfBlend | None:
        """The self-blend that turns this REAL sample into a FAKE one this epoch, or None
        (its own random stream: the other augmentations draw what they drew without it)."""
        if "blend" not in self.augment or label != 0:
            return None
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        return SelfBlend.sample(rng) if rng.random() < BLEND_P else None

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        rec = self.records[index]
        aug = self._augmenter(int(index), int(epoch))
        blend = self._blend(int(index), int(epoch), rec.label)

        def view(slot: int) -> np.ndarray:  # the blend first, then the camera pipeline
            crop = load_crop(rec.paths[slot])
            return aug(crop if blend is None else blend(crop), slot)

        label = torch.tensor(1.0 if blend is not None else float(rec.label))
        if self.mode == "image":
            slot = nearest_valid_slot(rec.mask, self.frame_index)
            image = crops_to_tensor([view(slot)], self.image_size, self.mean, self.std)[0]
            return {"image": image, "label": label, "video_id": rec.video_id}
        valid = [i for i, m in enumerate(rec.mask) if m]
        clip = torch.zeros(len(rec.mask), 3, self.image_size, self.image_size)  # (T, C, H, W)
        if valid:
            clip[valid] = crops_to_tensor([view(i) for i in valid],
                                          self.image_size, self.mean, self.std)
        mask = torch.tensor(rec.mask, dtype=torch.float32)  # (T,)
        return {"clip": clip, "mask": mask, "label": label, "video_id": rec.video_id}


def check_one_prepare_run(clips_path: Path, split_path: Path) -> None:
    """Raise ``ManifestError`` unless clips and split are one set written by one prepare run.

    ``dfpipe prepare`` writes the same ``prepare_id`` into the sidecars of its four manifests
    and each sidecar's ``sha256`` of its file. Refused: different ids (e.g. a prepare run that
    stopped between the two files, or one file copied from elsewhere), one with an id and one
    without, and a file whose bytes no longer match its sidecar. Manifests where neither
    sidecar has an id (written by an older dfpipe or by hand with ``write_manifest``) pass.
    """
    from pipeline.core.errors import ManifestError
    from pipeline.core.fsutil import sha256_file
    from pipeline.io.manifest import meta_path, read_meta

    metas = {p: read_meta(p) for p in (clips_path, split_path)}
    ids = {p: m.get("prepare_id") for p, m in metas.items()}
    if all(v is None for v in ids.values()):
        return
    if ids[clips_path] != ids[split_path]:
        raise ManifestError(
            f"{clips_path} and {split_path} are not from one `dfpipe prepare` run (prepare_id "
            f"{ids[clips_path]} vs {ids[split_path]}): rerun `dfpipe prepare --manifest-dir "
            f"{clips_path.parent}`")
    for p, m in metas.items():
        if m.get("sha256") and sha256_file(p) != m["sha256"]:
            raise ManifestError(
                f"{p}: changed after `dfpipe prepare` wrote it (sha256 differs from "
                f"{meta_path(p)}): rerun `dfpipe prepare --manifest-dir {p.parent}`")


def read_clips_and_split(manifest_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validated clips and split manifests of a manifest folder, checked to be one set
    (``check_one_prepare_run``)."""
    from pipeline.io.manifest import manifest_path, read_manifest

    clips_path, split_path = manifest_path(manifest_dir, "clips"), manifest_path(manifest_dir, "split")
    clips = read_manifest(clips_path, "clips")
    split = read_manifest(split_path, "split")
    check_one_prepare_run(clips_path, split_path)
    return clips, split


def split_dataset(manifest_dir: str | os.PathLike | None, which: str, mode: str, *,
                  clips: pd.DataFrame | None = None, split: pd.DataFrame | None = None,
                  **kwargs: Any) -> ClipDataset:
    """A ``ClipDataset`` for split ``which`` (manifests read from ``manifest_dir`` unless given)."""
    if clips is None or split is None:
        clips, split = read_clips_and_split(Path(manifest_dir))
    return ClipDataset(build_records(clips, split, which), mode=mode, **kwargs)
