"""Where a training process sits and how it stays reproducible: environment -> ``Dist``.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) ``setup_distributed`` joins the process group
(gloo on CPU, nccl on CUDA); alone it just picks the device. Also here: seeding, the RNG state a
``last.pt`` carries for ``--resume`` (plain types and tensors only), and the one reduction the
ranks share (a mean over their samples).
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.core.plaintypes import plain


@dataclass
class Dist:
    """Where this process sits: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """True on the process that writes files and logs progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1


def setup_distributed(cfg: TrainConfig) -> Dist:
    """Pick the device; under torchrun initialize the process group (gloo CPU / nccl CUDA)."""
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(world, 1))
    torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Dist(rank, world, local, device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as plain types/tensors (checkpoint-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {"python": plain(random.getstate()), "torch": torch.get_rng_state(),
             "numpy": plain(np_state)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"],
                         "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def reduce_device(d: Dist) -> torch.device:
    """Where a tensor must live for a collective of this process group: nccl only takes CUDA
    tensors (on this rank's device), gloo takes CPU ones."""
    return d.device if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(total: float, n: int, d: Dist) -> float:
    """Sum of ``total`` over the ranks divided by the sum of ``n`` (``total / n`` alone)."""
    if not d.enabled:
        return total / max(n, 1)
    t = torch.tensor([total, float(n)], dtype=torch.float64, device=reduce_device(d))
    dist.all_reduce(t)
    t = t.cpu()
    return float(t[0] / t[1].clamp_min(1))


