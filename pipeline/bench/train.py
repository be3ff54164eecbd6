"""Training-speed benchmark: backbone names -> clips/s and peak memory of ``cnn_lstm`` training.

Each backbone is measured in its own spawned process (so its peak RSS is its own), on random
tensors shaped like real batches (``(B, 30, 3, 160, 160)``), random-init weights, AdamW steps
with the same forward/backward as ``engine.train_one_epoch``. Speed lives here, never in tests.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


def _measure(backbone: str, image_size: int, frames: int, batch_size: int, steps: int,
             warmup: int, threads: int, channels_last: bool, model: str) -> dict[str, Any]:
    import torch

    from pipeline.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = create_model(model, backbone=backbone)
    for m in net.modules():
        if hasattr(type(m), "channels_last"):
            m.channels_last = channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    crit = torch.nn.BCEWithLogitsLoss()
    if net.input_key == "clip":
        x = (torch.randn(batch_size, frames, 3, image_size, image_size), torch.ones(batch_size, frames))
    else:
        x = (torch.randn(batch_size, 3, image_size, image_size),)
    y = torch.randint(0, 2, (batch_size,)).float()

    def step() -> None:
        loss = crit(net(*x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    rss_kib = _peak_rss_kib()
    return {"backbone": backbone, "model": model, "clips_per_s": batch_size * steps / dt,
            "seconds_per_step": dt / steps, "peak_rss_mib": rss_kib / 1024,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "image_size": image_size, "frames": frames, "batch_size": batch_size,
            "steps": steps, "threads": threads, "channels_last": channels_last}


def _peak_rss_kib() -> int:
    """This process's peak RSS in KiB. ``VmHWM`` belongs to the process's own address space;
    ``ru_maxrss`` survives exec, so in a spawned child it would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB


def bench_train(backbones: Sequence[str], image_size: int = 160, *, frames: int = 30,
                batch_size: int = 2, steps: int = 3, warmup: int = 1, threads: int = 1,
                channels_last: bool = True, model: str = "cnn_lstm") -> dict[str, dict[str, Any]]:
    """Training clips/s and peak RSS per backbone on CPU (random init, random tensors).

    Args:
        backbones: names from ``pipeline.models.list_backbones()``.
        image_size: crop size in pixels (160: the extract stage's crops).
        frames: frames per clip (30 in the pipeline).
        batch_size: clips per step.
        steps: timed optimizer steps (after ``warmup`` untimed ones).
        threads: torch CPU threads in the measuring process.
        channels_last: channels_last layout for weights and frames.
        model: registry model to train (``cnn_lstm`` or ``frame``).

    Returns:
        backbone -> {clips_per_s, seconds_per_step, peak_rss_mib, params_m, and the settings};
        a backbone that fails gets {"error": reason}.
    """
    ctx = mp.get_context("spawn")
    out: dict[str, dict[str, Any]] = {}
    for name in backbones:
        with ctx.Pool(1) as pool:
            try:
                out[name] = pool.apply(_measure, (name, image_size, frames, batch_size, steps,
                                                  warmup, threads, channels_last, model))
            except Exception as e:  # one backbone's failure must not hide the others' numbers
                out[name] = {"backbone": name, "error": f"{type(e).__name__}: {e}"}
        r = out[name]
        if "error" in r:
            logger.warning("bench_train %s: %s", name, r["error"])
        else:
            logger.info("bench_train %s: %.2f clips/s, %.2f s/step, peak RSS %.0f MiB",
                        name, r["clips_per_s"], r["seconds_per_step"], r["peak_rss_mib"])
    return out
