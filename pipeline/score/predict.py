"""Scoring, step 3: crops in windows -> p_fake per window and per slot, from the checkpoint's model.

``Predictor`` holds the model and its preprocessing (input size, normalisation statistics, the
frame -> window rule): the training preprocessing (``train.data.crops_to_tensor``), so what the
model sees at scoring is what it saw in training. A window with gaps is a masked clip. Frame
models score each sampled frame and the window's p_fake is their ``frame_mean`` (or the
checkpoint's frame -> track rule, ``stats.aggregation``); a ``cnn_lstm`` gives one p_fake per
window and, per slot, its running verdict (p_fake after the LSTM has seen the slots up to it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.models import model_spec
from pipeline.models.temporal import frame_mean_p
from pipeline.score.plan import WindowSlot
from pipeline.stats.aggregation import aggregate
from pipeline.train import engine
from pipeline.train.data import crops_to_tensor

CLIPS_PER_PASS = 8
"""Windows per forward pass: a long video's windows go through the model in chunks (memory)."""

FRAMES_PER_PASS = 4
"""Crops per encoder pass of a frame model (8 images with the flip). Small batches keep the
activations in the CPU's caches: 30 crops of the shipped Lite2 with the flip took 0.9-1.1 s in
passes of 4 against 1.6-1.8 s in one pass (float32, 2 threads, AMD EPYC, 2026-12-07), with the
same logits."""

Slots = list[list[tuple[WindowSlot, np.ndarray]]]
"""Per clip, its used slots and their crops."""


def window_clips(scorable: list[dict[str, Any]], crop_of: dict[int, dict[int, np.ndarray]]
                 ) -> tuple[list[tuple[int, list[WindowSlot]]], Slots]:
    """One clip per (scorable track, window with a face): ``(track index, its used slots)`` and
    the slots with their crops."""
    clips = [(ti, ws) for ti, t in enumerate(scorable) for ws in t["per_window"] if ws]
    slots = [[(s, crop_of[scorable[ti]["track"]][s.frame]) for s in ws] for ti, ws in clips]
    return clips, slots


class Predictor:
    """The model of a checkpoint, with the preprocessing it was trained with."""

    def __init__(self, model: nn.Module, device: torch.device, *, scored_as: str,
                 image_size: int, mean: tuple[float, ...], std: tuple[float, ...], n_slots: int,
                 aggregation: dict[str, Any]) -> None:
        self.model = model
        self.device = device
        self.scored_as = scored_as
        self.per_frame = model_spec(scored_as).per_frame
        self.image_size = int(image_size)
        self.mean, self.std = mean, std
        self.n_slots = int(n_slots)
        self.aggregation = aggregation

    @property
    def rule(self) -> str:
        """The frame -> window rule of a frame model (``mean``: ``frame_mean``)."""
        return self.aggregation.get("rule", "mean")

    def predict(self, slots: Slots) -> tuple[np.ndarray, np.ndarray]:
        """p_fake per clip (B,) and per slot (B, T), ``CLIPS_PER_PASS`` clips per forward pass."""
        p_clip, per_slot = [], []
        for i in range(0, len(slots), CLIPS_PER_PASS):
            chunk = slots[i:i + CLIPS_PER_PASS]
            where = [(c, s.slot) for c, clip in enumerate(chunk) for s, _ in clip]
            clip, mask = self.inputs(where, [crop for clip in chunk for _, crop in clip])
            with torch.no_grad(), engine.inference_autocast(self.device):
                ps = self.per_slot(clip, mask)  # (b, T)
                if self.per_frame and self.rule != "mean":
                    m = mask.cpu().numpy() > 0  # (b, T)
                    p = np.array([aggregate(ps[i][m[i]], self.rule, self.aggregation.get("params"))
                                  for i in range(len(ps))])  # (b,)
                elif self.per_frame:  # the frame_mean rule
                    p = frame_mean_p(torch.from_numpy(ps), mask.cpu()).numpy()  # (b,)
                else:
                    p = engine.probabilities(self.model(clip, mask)).cpu().numpy()  # (b,)
            p_clip.append(p)
            per_slot.append(ps)
        return np.concatenate(p_clip), np.concatenate(per_slot)

    def inputs(self, where: list[tuple[int, int]], crops: list[np.ndarray]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops placed at ``(clip, slot)``: (B, T, C, H, W) clips and (B, T) masks (gaps 0)."""
        b, t, s = max(c for c, _ in where) + 1, self.n_slots, self.image_size
        clip = torch.zeros(b, t, 3, s, s)
        mask = torch.zeros(b, t)
        x = crops_to_tensor(crops, s, self.mean, self.std)  # (n, C, H, W)
        idx_b = torch.tensor([c for c, _ in where])
        idx_t = torch.tensor([k for _, k in where])
        clip[idx_b, idx_t] = x
        mask[idx_b, idx_t] = 1.0
        return clip.to(self.device), mask.to(self.device)

    def per_slot(self, clip: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """(B, T) per-slot p_fake: frame models score each frame (gaps 0); cnn_lstm gives running
        verdicts."""
        b, t = mask.shape
        if self.per_frame:
            valid = mask.bool()  # (B, T)
            out = torch.zeros(b, t)
            out[valid.cpu()] = self.frame_probabilities(clip[valid]).cpu()  # (n,)
            return out.numpy()  # (B, T)
        feats = self.model.encoder(clip)  # (B, T, F), once
        out = np.zeros((b, t), dtype=np.float32)
        for s in range(t):
            prefix = mask.clone()
            prefix[:, s + 1:] = 0  # the LSTM has seen slots 0..s
            logits = self.model.classify(feats, prefix)  # (B,)
            out[:, s] = engine.probabilities(logits).float().cpu().numpy()
        return out

    def faces(self, crops: list[np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        """A still image's face crops, each scored by the frame model on its own: the model
        inputs (n, C, H, W) and p_fake (n,)."""
        x = crops_to_tensor(crops, self.image_size, self.mean, self.std).to(self.device)
        with torch.no_grad(), engine.inference_autocast(self.device):
            p = self.frame_probabilities(x).cpu().numpy()  # (n,)
        return x, p

    def frame_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """p_fake (n,) of each image (n, C, H, W) by the frame model, ``FRAMES_PER_PASS`` images
        per pass (the caller holds ``no_grad`` and the inference autocast)."""
        return torch.cat([engine.probabilities(self.model.frame(images[i:i + FRAMES_PER_PASS]))
                          for i in range(0, len(images), FRAMES_PER_PASS)]
                         or [torch.zeros(0)])
