"""Cached encoder features: train a frame model's head in minutes when its encoder is frozen.

With the encoder fixed, its pooled features of a crop never change, so they are computed once and
kept on disk; head training then reads ``(F,)`` vectors instead of decoding and encoding images.

Cache layout: ``<cache>/<encoder key>/chunk-<n>.pt``, each chunk a plain dict
``{"ids": [crop identity, ...], "features": float16 (n, F), "view": "plain" | "flip"}`` written
atomically. The encoder key is a digest of everything that shapes a feature: backbone name, the
encoder's weights (a digest of its state dict, so a ``--weights`` file or another seed gets
another key), image size and normalization; the view (``plain`` or horizontally flipped) is part
of the key too. A crop's identity is its resolved path, size and modification time: an edited or
replaced file is encoded again. An interrupted run keeps every finished chunk and computes only
the crops still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.fsutil import atomic_path
from pipeline.models import checkpoint as ckpt_io
from pipeline.train.data import VideoRecord, crops_to_tensor, load_crop, nearest_valid_slot

logger = logging.getLogger(__name__)

CHUNK = 1024  # crops per chunk file: what an interruption can cost
VIEWS = ("plain", "flip")


def crop_identity(path: str | os.PathLike) -> str:
    """``<resolved path>|<size>|<mtime_ns>``: changes when the file is replaced or edited."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read face crop: {e}") from e
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def encoder_key(encoder: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float],
                view: str = "plain") -> str:
    """Digest naming one encoder + preprocessing + view (the cache sub-folder)."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    spec = {"backbone": getattr(encoder, "backbone_name", type(encoder).__name__),
            "weights": ckpt_io.payload_digest(encoder.state_dict()), "image_size": int(image_size),
            "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
            "view": view}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


class _Crops(Dataset):
    def __init__(self, paths: Sequence[str], image_size: int, mean: Sequence[float],
                 std: Sequence[float], flip: bool) -> None:
        self.paths, self.image_size, self.mean, self.std, self.flip = paths, image_size, mean, std, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = load_crop(self.paths[i])
        if self.flip:
            crop = crop[:, ::-1].copy()
        return crops_to_tensor([crop], self.image_size, self.mean, self.std)[0]  # (C, H, W)


def _read_chunks(folder: Path) -> dict[str, torch.Tensor]:
    """identity -> (F,) float16 from every readable chunk; unreadable chunks are recomputed."""
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("chunk-*.pt")):
        try:
            chunk = torch.load(path, map_location="cpu", weights_only=True)
            ids, feats = chunk["ids"], chunk["features"]
            if len(ids) != len(feats):
                raise ValueError(f"{len(ids)} ids for {len(feats)} feature rows")
        except Exception as e:  # a damaged chunk costs its crops being encoded again, no more
            logger.warning("%s: feature chunk unreadable, its crops are encoded again: %s", path, e)
            continue
        out.update(zip(ids, feats, strict=True))
    return out


@torch.no_grad()
def cached_features(encoder: nn.Module, paths: Sequence[str], cache_dir: str | os.PathLike, *,
                    image_size: int, mean: Sequence[float], std: Sequence[float],
                    view: str = "plain", batch_size: int = 64, workers: int = 0,
                    device: torch.device | str = "cpu", progress: bool = True) -> torch.Tensor:
    """Pooled features ``(len(paths), F)`` float32 of ``encoder`` on the crops ``paths``.

    Crops already in the cache (same encoder key and crop identity) are read, the others encoded
    (eval mode, no augmentation; ``view="flip"``: mirrored) and appended as new chunks.
    """
    folder = Path(cache_dir) / encoder_key(encoder, image_size, mean, std, view)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [crop_identity(p) for p in paths]
    have = _read_chunks(folder)
    todo = sorted({i: p for i, p in zip(ids, paths, strict=True) if i not in have}.items())
    logger.info("feature cache %s (%s): %d of %d crops cached, %d to encode", folder, view,
                len(ids) - len(todo), len(ids), len(todo))
    if todo:
        was_training = encoder.training
        encoder.eval()
        loader = DataLoader(_Crops([p for _, p in todo], image_size, mean, std, view == "flip"),
                            batch_size=batch_size, num_workers=workers,
                            multiprocessing_context="spawn" if workers else None)
        done = len(list(folder.glob("chunk-*.pt")))
        pending_ids: list[str] = []
        pending: list[torch.Tensor] = []
        pos = 0
        bar = tqdm(total=len(todo), desc=f"encode crops ({view})", disable=not progress,
                   dynamic_ncols=True, leave=False)
        for x in loader:
            x = x.to(device).contiguous(memory_format=torch.channels_last)  # (B, C, H, W)
            f = encoder(x).float().cpu().half()  # (B, F)
            pending_ids += [i for i, _ in todo[pos:pos + len(f)]]
            pending.append(f)
            pos += len(f)
            bar.update(len(f))
            if len(pending_ids) >= CHUNK or pos == len(todo):
                feats = torch.cat(pending)  # (n, F)
                with atomic_path(folder / f"chunk-{done:05d}.pt") as tmp:
                    torch.save({"ids": pending_ids, "features": feats, "view": view}, tmp)
                have.update(zip(pending_ids, feats, strict=True))
                done += 1
                pending_ids, pending = [], []
        bar.close()
        encoder.train(was_training)
    return torch.stack([have[i] for i in ids]).float()  # (N, F)


def record_paths(records: Sequence[VideoRecord], frame_index: int) -> list[str]:
    """The crop a frame model reads for each record (``frame_index`` or the nearest valid slot)."""
    return [r.paths[nearest_valid_slot(r.mask, frame_index)] for r in records]


class FeatureDataset(Dataset):
    """Cached features as samples ``{"features": (F,), "label", "video_id"}``.

    With ``flipped`` features, key ``(i, epoch)`` picks the mirrored view with probability 1/2,
    seeded by ``(seed, epoch, i)`` like ``ClipDataset``'s augmentation.
    """

    def __init__(self, records: Sequence[VideoRecord], features: torch.Tensor,
                 flipped: torch.Tensor | None = None, seed: int = 0) -> None:
        if len(records) != len(features) or (flipped is not None and flipped.shape != features.shape):
            raise ValueError("features must have one row per record")
        self.records, self.features, self.flipped, self.seed = list(records), features, flipped, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        feats = self.features
        if self.flipped is not None and isinstance(key, tuple):
            if np.random.default_rng([self.seed, epoch, index]).random() < 0.5:
                feats = self.flipped
        rec = self.records[index]
        return {"features": feats[index], "label": torch.tensor(float(rec.label)),
                "video_id": rec.video_id}


class HeadOnly(nn.Module):
    """A frame model's head on cached features: ``(B, F) -> (B,)`` logits (shares parameters)."""

    input_key = "features"

    def __init__(self, frame_model: nn.Module) -> None:
        super().__init__()
        self.head = frame_model.head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).squeeze(-1)  # (B,)
