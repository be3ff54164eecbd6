"""ONE train/predict loop for every model: batches of dicts -> losses, probabilities, metrics.

The batch key the model declares (``model.input_key``: ``"clip"`` or ``"image"``) decides the
forward call; everything else is shared. ``probabilities`` is the only place where logits become
``p_fake``. Metrics come from ``pipeline.stats.metrics`` (probabilities only, never hard labels).

``EpochSampler`` yields ``(index, epoch)`` keys so that augmentation is seeded per clip and epoch,
and splits one shuffled (or class-balanced) order across DDP ranks by striding: with ``W``
processes of batch ``b`` each, a step sees exactly the clips one process with batch ``W*b`` sees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from pipeline.stats import metrics as M

logger = logging.getLogger(__name__)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """p_fake = sigmoid(logit), in float32: the one place logits become probabilities."""
    return torch.sigmoid(logits.detach().float())


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def input_key(model: nn.Module) -> str:
    """``"clip"`` or ``"image"``: which batch entry the model takes."""
    return unwrap(model).input_key


def forward_batch(model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Run ``model`` on a batch dict; returns logits (B,)."""
    key = input_key(model)
    x = batch[key].to(device, non_blocking=True)
    if key == "clip":
        return model(x, batch["mask"].to(device, non_blocking=True))
    return model(x)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when supported (fp16 otherwise); nothing on CPU (training steps)."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


PRECISION_ENV = "DFPIPE_INFERENCE_PRECISION"
"""``float32`` or ``bfloat16`` forces the CPU inference precision; unset or ``auto``: bfloat16
where the CPU computes it natively (AVX-512 BF16), float32 elsewhere."""


def inference_precision(device: torch.device, amp: bool = False) -> str:
    """The precision every prediction (validation, threshold, evaluation, scoring) runs in.

    On a CPU with native bfloat16 (AVX-512 BF16) the model runs under bfloat16 autocast: convolutions
    in bfloat16 with float32 accumulation, the logits back in float32. Measured on the shipped
    Lite2 (30 face crops at 224 px, flip TTA, 2 threads): 1.0 s -> 0.48 s; logits within 0.02 of
    float32. Training steps stay float32 (bfloat16 did not speed them up here). On CUDA: ``amp``.
    """
    if device.type == "cuda":
        return "amp" if amp else "float32"
    forced = os.environ.get(PRECISION_ENV, "auto").strip().lower()
    if forced in ("float32", "bfloat16"):
        return forced
    if forced not in ("", "auto"):
        raise ValueError(f"{PRECISION_ENV} must be auto, float32 or bfloat16, got {forced!r}")
    return "bfloat16" if _cpu_bf16() else "float32"


def _cpu_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def inference_autocast(device: torch.device, amp: bool = False) -> contextlib.AbstractContextManager:
    """The context of every prediction: ``inference_precision``'s autocast (or none)."""
    precision = inference_precision(device, amp)
    if precision == "amp":
        return autocast(device, True)
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EpochSampler(Sampler):
    """Shuffled or class-balanced order of one epoch, strided across DDP ranks.

    Yields ``(index, epoch)`` pairs. The order depends only on ``(seed, epoch)``; rank ``r`` of
    ``W`` takes positions ``r, r+W, ...`` (the order is padded by wrapping so every rank gets the
    same count, as ``DistributedSampler`` does).

    Args:
        labels: 0/1 label per sample (used by ``balanced``).
        shuffle: random order (else sequential).
        balanced: draw ``len(labels)`` samples with replacement, each class with equal total
            probability (the ``balanced_sampler`` option).
        rank, world_size: this process's place in the DDP group.
        seed: base seed.
    """

    def __init__(self, labels: np.ndarray, *, shuffle: bool = True, balanced: bool = False,
                 rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.shuffle, self.balanced = shuffle, balanced
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` next."""
        self.epoch = epoch

    def order(self) -> list[int]:
        """The full (all ranks) order of this epoch, before padding."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.balanced:
            counts = np.bincount(self.labels, minlength=2).astype(float)
            w = torch.tensor([1.0 / counts[y] if counts[y] else 0.0 for y in self.labels])
            return torch.multinomial(w, n, replacement=True, generator=g).tolist()
        if self.shuffle:
            return torch.randperm(n, generator=g).tolist()
        return list(range(n))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        total = len(self) * self.world_size
        order = (order * math.ceil(total / max(len(order), 1)))[:total]  # pad by wrapping
        for i in order[self.rank::self.world_size]:
            yield (i, self.epoch)


def make_loader(dataset, batch_size: int, *, sampler: Sampler | None = None, workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over dict samples; worker processes are spawned (not forked), one thread each."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"multiprocessing_context": "spawn", "persistent_workers": True,
              "worker_init_fn": _worker_init}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory, **kw)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    criterion: nn.Module, device: torch.device, *, epoch: int = 0,
                    amp: bool = False, scaler: torch.amp.GradScaler | None = None,
                    max_steps: int = 0, progress: bool = True,
                    frozen: nn.Module | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean training loss, steps and samples seen (this rank).

    ``frozen``: a sub-module (the encoder) kept fixed this epoch: eval mode (BatchNorm statistics
    unchanged) and its gradients dropped before the optimizer step (AdamW skips it entirely).
    """
    model.train()
    if frozen is not None:
        frozen.eval()
    total, n, steps = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", leave=False, disable=not progress,
               dynamic_ncols=True)
    for batch in bar:
        y = batch["label"].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = forward_batch(model, batch, device)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaled = scaler is not None and scaler.is_enabled()
        (scaler.scale(loss) if scaled else loss).backward()
        if frozen is not None:
            for p in frozen.parameters():
                p.grad = None
        if scaled:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}")
        total += loss.item() * len(y)
        n += len(y)
        steps += 1
        bar.set_postfix(loss=f"{total / n:.4f}")
        if max_steps and steps >= max_steps:
            break
    return {"loss": total / max(n, 1), "steps": steps, "samples": n}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
            progress: bool = False, desc: str = "predict") -> pd.DataFrame:
    """Per-video probabilities: DataFrame(video_id, label (0/1), p_fake)."""
    model.eval()
    ids, labels, probs = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        with inference_autocast(device, amp):
            logits = forward_batch(model, batch, device)
        probs.append(probabilities(logits).cpu())
        labels.append(batch["label"].to(torch.int64))
        ids.extend(batch["video_id"])
    p = torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
    y = torch.cat(labels).numpy() if labels else np.zeros(0, np.int64)
    return pd.DataFrame({"video_id": ids, "label": y, "p_fake": p.astype(np.float64)})


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
             threshold_rule: str = "balanced_accuracy", target_fpr: float = 0.1,
             progress: bool = False,
             gather: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> dict[str, Any]:
    """Validation metrics from probabilities, plus the threshold chosen on these predictions.

    Returns ``loss`` (class-balanced log loss: the mean of the per-class mean log losses, so the
    88% FAKE majority does not dominate early stopping; plain ``log_loss`` when one class is
    absent), every ``pipeline.stats.metrics.video_metrics`` entry at the chosen ``threshold``, and
    ``predictions`` (the DataFrame from ``predict``). ``gather``: joins the predictions of
    every process when each predicted a share of the videos (distributed training).
    """
    preds = predict(model, loader, device, amp=amp, progress=progress, desc="validate")
    if gather is not None:
        preds = gather(preds)
    y, p = preds["label"].to_numpy(), preds["p_fake"].to_numpy()
    threshold = M.choose_threshold(y, p, rule=threshold_rule, target_fpr=target_fpr)
    out: dict[str, Any] = {k: float(v) for k, v in M.video_metrics(y, p, threshold).items()}
    if math.isnan(out["roc_auc"]):
        warnings.warn(f"validation AUC undefined: {out['n_real']:.0f} REAL and "
                      f"{out['n_fake']:.0f} FAKE videos (need both classes)", stacklevel=2)
    bll = out["balanced_log_loss"]
    out["loss"] = bll if math.isfinite(bll) else out["log_loss"]
    out["predictions"] = preds
    return out


@torch.no_grad()
def frame_pass(frame_model: nn.Module, loader: DataLoader, device: torch.device, *,
               progress: bool = True, aggregation: dict[str, Any] | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An image model on every valid slot of every clip: the ``frame_mean`` view, and per frame.

    Args:
        frame_model: an ``input_key == "image"`` model.
        loader: clips (``clip`` mode: all slots and their mask).

        aggregation: the checkpoint's frame -> video rule (``{"rule", "params"}``, see
            ``pipeline.stats.aggregation``); None or ``mean``: ``frame_mean_p``.

    Returns:
        (video table: video_id, p_fake by ``models.temporal.frame_mean_p`` (in float64), as
        the ``frame_mean`` wrapper computes it, or by the checkpoint's rule; frame table:
        video_id, slot, p_fake).
    """
    from pipeline.models.temporal import frame_mean_p
    from pipeline.stats.aggregation import aggregate

    frame_model.eval()
    videos, frames = [], []
    for batch in tqdm(loader, desc="frames", unit="batch", leave=False, disable=not progress):
        clip, mask = batch["clip"], batch["mask"]  # (B, T, C, H, W), (B, T)
        b, t = clip.shape[:2]
        valid = mask.reshape(-1) > 0  # (B*T,)
        flat = clip.reshape(b * t, *clip.shape[2:])[valid].to(device)  # (N_valid, C, H, W)
        probs = torch.zeros(b * t, dtype=torch.float64)  # (B*T,)
        if flat.shape[0]:
            with inference_autocast(device):
                logits = frame_model(flat)
            probs[valid] = probabilities(logits).cpu().double()  # (N_valid,)
        probs = probs.reshape(b, t)  # (B, T)
        p_video = frame_mean_p(probs, mask)  # (B,)
        rule = (aggregation or {}).get("rule", "mean")
        for i, vid in enumerate(batch["video_id"]):
            p = (float(p_video[i]) if rule == "mean" else
                 aggregate(probs[i][mask[i] > 0].numpy(), rule, aggregation.get("params")))
            videos.append({"video_id": str(vid), "p_fake": p})
            for slot in torch.nonzero(mask[i] > 0).flatten().tolist():
                frames.append({"video_id": str(vid), "slot": int(slot),
                               "p_fake": float(probs[i, slot])})
    return pd.DataFrame(videos), pd.DataFrame(frames)
