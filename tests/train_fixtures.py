"""Tiny clips/split manifests with real JPEG crops, for the training-side tests.

``make_manifests`` writes ``clips.csv`` + ``split.csv`` (validated, with sidecars) and one small
JPEG per valid slot. FAKE clips carry a *temporal* artefact only: every frame of a clip is the
same face-like blob, REAL clips keep one brightness for all frames, FAKE clips flicker (each
frame's brightness drawn independently from the same range). Any single frame of a FAKE is
distributed exactly like a frame of a REAL, so a single-frame model cannot beat chance, while a
model that looks across frames can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.io.manifest import write_manifest


def _base_image(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35)
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))  # (H, W)
    colour = rng.uniform(0.3, 0.9, size=3)
    bg = rng.uniform(0.1, 0.4, size=3)
    img = blob[..., None] * colour + (1 - blob[..., None]) * bg  # (H, W, 3) in [0, 1]
    return img + rng.normal(0, 0.03, size=img.shape)


def make_manifests(root: str | Path, *, n_real: dict[str, int] | None = None,
                   n_fake: dict[str, int] | None = None, n_frames: int = 30, size: int = 32,
                   pad_slots: dict[str, list[int]] | None = None, seed: int = 0,
                   flicker: float = 0.35) -> Path:
    """Write crops + manifests under ``root``; return the manifest folder.

    Args:
        root: folder for ``crops/`` and ``manifests/``.
        n_real, n_fake: videos per split (``{"train": 6, "val": 4, "test": 2}`` by default).
        n_frames: slots per clip.
        size: crop size in pixels.
        pad_slots: video_id -> slots that are padding (mask 0, no crop).
        seed: data seed.
        flicker: brightness range half-width (REAL: one value per clip, FAKE: one per frame).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_real = {"train": 6, "val": 4, "test": 2} if n_real is None else n_real
    n_fake = {"train": 6, "val": 4, "test": 2} if n_fake is None else n_fake
    pad_slots = pad_slots or {}
    clip_rows, split_rows = [], []
    for split in ("train", "val", "test"):
        for label, count in (("REAL", n_real.get(split, 0)), ("FAKE", n_fake.get(split, 0))):
            for k in range(count):
                vid = f"{split}_{label.lower()}_{k:03d}"
                base = _base_image(rng, size)
                gains = (np.full(n_frames, rng.uniform(1 - flicker, 1 + flicker)) if label == "REAL"
                         else rng.uniform(1 - flicker, 1 + flicker, size=n_frames))
                folder = root / "crops" / vid
                folder.mkdir(parents=True, exist_ok=True)
                for slot in range(n_frames):
                    padded = slot in pad_slots.get(vid, [])
                    path = ""
                    if not padded:
                        img = np.clip(base * gains[slot], 0, 1)
                        path = str(folder / f"{slot:03d}.jpg")
                        Image.fromarray((img * 255).astype(np.uint8)).save(path, quality=95)
                    clip_rows.append({"video_id": vid, "label": label, "original": "",
                                      "slot": slot, "frame": None if padded else slot * 10,
                                      "track": None if padded else 0, "crop_path": path,
                                      "mask": 0 if padded else 1})
                split_rows.append({"video_id": vid, "label": label, "group": vid, "split": split})
    out = root / "manifests"
    write_manifest(pd.DataFrame(clip_rows), out / "clips.csv", "clips",
                   config={"synthetic": True})
    write_manifest(pd.DataFrame(split_rows), out / "split.csv", "split")
    return out
