"""``dfpipe train``: clips + split manifests -> a run folder with checkpoints.

Run folder ``<out_dir>/<model>_<YYYYmmdd-HHMMSS>_s<seed>/`` (or ``--run-name``):
``best.pt`` (lowest validation loss), ``last.pt`` (resume state), ``history.csv`` (one row per
epoch), ``training_curve.png``, ``config.json`` (resolved config), all written atomically.

Recipe: AdamW, cosine learning-rate decay per epoch, early stopping on validation loss (the
class-balanced log loss, see ``engine.evaluate``), class imbalance by a weighted loss or a
balanced sampler, augmentation identical on every frame, optional backbone freeze for the first
epochs (encoder gradients dropped, its BatchNorm statistics kept), AMP on CUDA. ``--init-encoder``
starts the encoder from another checkpoint's trained encoder (e.g. a ``cnn_lstm`` whose encoder is
a fine-tuned ``frame`` model's); the checkpoint records which (``init_encoder``).

Every checkpoint records the crop recipe of its training crops (``crop``: margin, size, square,
JPEG quality; from the extract manifests' config) so scoring can crop videos the same way.

Distributed: launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the same code runs under DDP
(gloo on CPU, nccl on CUDA). ``engine.EpochSampler`` strides one order over the ranks and every
rank evaluates the whole validation split (identical weights -> identical decisions, no
communication); only rank 0 writes. ``--batch-size`` is per process.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from pipeline import checkpoint as ckpt_io
from pipeline import engine
from pipeline.config import TrainConfig, from_dict, to_dict
from pipeline.data import ClipDataset, build_records, read_clips_and_split
from pipeline.errors import ConfigError
from pipeline.features import FeatureDataset, HeadOnly, cached_features, record_paths
from pipeline.fsutil import atomic_write_json, atomic_write_text, sha256_file
from pipeline.manifest import manifest_path, read_meta
from pipeline.models import apply_preset, create_model
from pipeline.models.backbones import normalization
from pipeline.splits import check_checkpoint_split, split_fingerprint

logger = logging.getLogger(__name__)

# on --resume these come from the command line; everything else from the checkpoint's config
RESUME_OVERRIDES = ("epochs", "patience", "workers", "device", "amp", "max_steps", "resume", "threads",
                    "allow_other_split")
HISTORY_PLOT_KEYS = ("train_loss", "val_loss", "val_roc_auc", "val_balanced_accuracy")


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
    state = {"python": ckpt_io.plain(random.getstate()), "torch": torch.get_rng_state(),
             "numpy": ckpt_io.plain(np_state)}
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


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-typed registry kwargs for the configured model (preset applied)."""
    if cfg.model == "cnn_lstm":
        kw: dict[str, Any] = {"backbone": cfg.backbone, "lstm_hidden": cfg.lstm_hidden,
                              "lstm_layers": cfg.lstm_layers, "bidirectional": cfg.bidirectional,
                              "dense": cfg.dense, "dropout": cfg.dropout, "readout": cfg.readout}
        if cfg.lstm_sizes:
            kw["lstm_sizes"] = list(cfg.lstm_sizes)
        return apply_preset(cfg.preset, kw)
    if cfg.preset:
        raise ConfigError(f"preset '{cfg.preset}' applies to cnn_lstm, not {cfg.model}")
    return {"backbone": cfg.backbone, "dropout": cfg.dropout}


def detect_synthetic(manifest_dir: Path) -> tuple[bool | None, str]:
    """Was the training data synthetic? (flag, how we know).

    ``dfpipe synth`` writes ``synth_truth.json`` at the dataset root: a video whose folder or
    parent folder holds one is synthetic. Without a videos manifest, a ``synthetic`` key in the
    clips manifest's recorded config decides; otherwise unknown (None).
    """
    videos = manifest_path(manifest_dir, "videos")
    if videos.is_file():
        from pipeline.manifest import read_manifest

        folders = {Path(p).parent for p in read_manifest(videos, "videos")["path"] if p}
        for folder in folders:
            for d in (folder, folder.parent):
                if (d / "synth_truth.json").is_file():
                    return True, f"{d / 'synth_truth.json'} (written by dfpipe synth)"
        return False, f"no synth_truth.json beside the videos of {videos}"
    conf = read_meta(manifest_path(manifest_dir, "clips")).get("config", {})
    if "synthetic" in conf:
        return bool(conf["synthetic"]), "clips manifest sidecar config"
    return None, "unknown: no videos manifest and no flag in the clips sidecar"


def data_summary(manifest_dir: Path, clips: pd.DataFrame, split: pd.DataFrame) -> dict[str, Any]:
    """What the model was trained on: checksums, counts per split and label, synthetic flag."""
    counts = {s: {lab: int(((split["split"] == s) & (split["label"] == lab)).sum())
                  for lab in ("REAL", "FAKE")} for s in ("train", "val", "test")}
    synthetic, source = detect_synthetic(manifest_dir)
    return {"manifest_dir": str(manifest_dir),
            "clips_sha256": sha256_file(manifest_path(manifest_dir, "clips")),
            "split_sha256": sha256_file(manifest_path(manifest_dir, "split")),
            # what evaluate and --resume compare: which video is in which split
            "split_fingerprint": split_fingerprint(split),
            "prepare_id": read_meta(manifest_path(manifest_dir, "split")).get("prepare_id"),
            "counts": counts, "n_slots": int(clips.groupby("video_id").size().max()),
            "source": data_source(manifest_dir),
            "synthetic": synthetic, "synthetic_source": source,
            # the sampling rules the clips were made with: scoring must use the same ones
            "prepare": read_meta(manifest_path(manifest_dir, "clips")).get("config", {})}


def data_source(manifest_dir: Path) -> str:
    """Short names of the folders the training videos came from (the extract config's inputs)."""
    conf = read_meta(manifest_path(manifest_dir, "videos")).get("config") or {}
    names = [f"{Path(p).parent.name}/{Path(p).name}" if Path(p).parent.name else Path(p).name
             for p in conf.get("inputs") or []]
    if len(names) > 3:
        names = [*names[:3], f"... ({len(names)} inputs)"]
    return ", ".join(names)


def train_crop(manifest_dir: Path) -> dict[str, Any] | None:
    """The crop recipe of the training crops, from the videos manifest's extract config.

    ``{"margin", "size", "square", "jpeg_quality", "source"}``; None when unknown (no videos
    manifest, or faces imported with ``--from-faces``: their crops were made elsewhere).
    """
    videos = manifest_path(manifest_dir, "videos")
    conf = read_meta(videos).get("config") or {}
    if conf.get("from_faces"):
        logger.warning("%s: faces imported with --from-faces were cropped elsewhere: the "
                       "checkpoint records no crop recipe (set one when exporting it for release)",
                       videos)
        return None
    if "margin" not in conf:
        return None
    return {"margin": float(conf["margin"]), "size": int(conf["crop_size"]),
            "square": bool(conf.get("square", True)), "jpeg_quality": int(conf["jpeg_quality"]),
            "source": f"extract config of {videos}"}


def init_encoder(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Load the encoder weights of checkpoint ``cfg.init_encoder`` into ``model``'s encoder.

    Returns what the new checkpoint records: ``{path, checkpoint_id, model, backbone}``.

    Raises:
        ConfigError: the checkpoint's backbone is not ``cfg.backbone``.
        CheckpointError: the file is missing or not a dfpipe checkpoint.
    """
    path = Path(cfg.init_encoder)
    src = ckpt_io.load_checkpoint(path)
    name = src["model"]["name"]
    backbone = src["model"]["kwargs"].get("backbone")
    if backbone != cfg.backbone:
        raise ConfigError(f"{path}: --init-encoder needs the same backbone: that checkpoint's "
                          f"encoder is '{backbone}', this run trains '{cfg.backbone}' "
                          f"(pass --backbone {backbone})")
    size = (src.get("preprocess") or {}).get("image_size")
    if size is not None and int(size) != cfg.image_size:
        logger.warning("%s: its encoder was trained at %s px, this run uses %d px", path, size,
                       cfg.image_size)
    source = ckpt_io.build_model(src)
    _backbone(model).load_state_dict(_backbone(source).state_dict())
    logger.info("encoder initialized from %s (%s/%s, epoch %s)", path, name, backbone,
                src.get("epoch"))
    return {"path": str(path), "checkpoint_id": sha256_file(path)[:12], "model": name,
            "backbone": str(backbone)}


def _backbone(model: nn.Module) -> nn.Module:
    """The backbone inside a model: ``frame``'s encoder, or the one ``cnn_lstm``'s wraps."""
    enc = model.encoder
    return enc.encoder if hasattr(enc, "encoder") else enc


def resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With ``--resume``: the stored config (some fields from the command line) and the checkpoint."""
    if not cfg.resume:
        return cfg, None
    state = ckpt_io.load_checkpoint(cfg.resume, expect_model=cfg.model)
    if "optimizer" not in state:
        raise ConfigError(f"{cfg.resume}: has no optimizer state (resume from last.pt, not best.pt)")
    stored = from_dict(TrainConfig, state["config"])
    merged = dataclasses.replace(stored, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    logger.info("resuming %s after epoch %d with its stored config (from the command line: %s)",
                cfg.resume, state["epoch"], ", ".join(RESUME_OVERRIDES))
    return merged, state


def run_folder(cfg: TrainConfig) -> Path:
    """``out_dir/run_name`` or ``out_dir/<model>_<time>_s<seed>``; the resume's folder on resume."""
    if cfg.resume:
        return Path(cfg.resume).resolve().parent
    name = cfg.run_name or f"{cfg.model}_{_dt.datetime.now():%Y%m%d-%H%M%S}_s{cfg.seed}"
    folder = Path(cfg.out_dir) / name
    if (folder / "last.pt").exists():
        raise ConfigError(f"{folder} already holds a run; pass --resume {folder / 'last.pt'} "
                          "or another --run-name")
    return folder


def cosine(epoch: int, epochs: int) -> float:
    """Learning-rate factor of ``epoch`` (0-based): cosine from 1 down to 0.05."""
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))


def write_history(folder: Path, history: list[dict[str, Any]], title: str) -> None:
    """history.csv + training_curve.png (atomic)."""
    from pipeline import plots

    buf = pd.DataFrame(history).to_csv(index=False)
    atomic_write_text(folder / "history.csv", buf)
    rows = [{"epoch": h["epoch"], **{k: h[k] for k in HISTORY_PLOT_KEYS if k in h}} for h in history]
    plots.training_curves_plot({title: rows}, folder / "training_curve.png")


def reduce_device(d: Dist) -> torch.device:
    """Where a tensor must live for a collective of this process group: nccl only takes CUDA
    tensors (on this rank's device), gloo takes CPU ones."""
    return d.device if dist.get_backend() == "nccl" else torch.device("cpu")


def frame_mean_threshold(model: nn.Module, loader: Any, device: torch.device, rule: str,
                         target_fpr: float) -> dict[str, Any]:
    """Threshold and validation metrics of a frame model used as ``frame_mean`` (every valid
    frame, probabilities averaged: how ``dfpipe score`` uses a frame checkpoint).

    Args:
        model: the frame model (its current weights).
        loader: validation clips (``clip`` mode: all slots and their mask).
    """
    from pipeline import metrics as M
    from pipeline.evaluation import _frame_pass  # the one frame_mean computation evaluate uses

    videos, _ = _frame_pass(model, loader, device)
    labels = pd.Series({r.video_id: r.label for r in loader.dataset.records})  # 0/1, 1 = FAKE
    y = labels.loc[videos["video_id"]].to_numpy()
    p = videos["p_fake"].to_numpy(float)
    threshold = M.choose_threshold(y, p, rule=rule, target_fpr=target_fpr)
    metrics = {k: float(v) for k, v in M.video_metrics(y, p, threshold).items()}
    return {"threshold": float(threshold), "metrics": metrics}


def _mean_over_ranks(total: float, n: int, d: Dist) -> float:
    """Sum of ``total`` over the ranks divided by the sum of ``n`` (``total / n`` alone)."""
    if not d.enabled:
        return total / max(n, 1)
    t = torch.tensor([total, float(n)], dtype=torch.float64, device=reduce_device(d))
    dist.all_reduce(t)
    t = t.cpu()
    return float(t[0] / t[1].clamp_min(1))


def freeze_stages(model: nn.Module, train_blocks: int) -> nn.Module | None:
    """With ``train_blocks`` N > 0: fix all but the encoder's last N stages; returns the fixed ones.

    Fixed parameters get ``requires_grad=False``, so backward stops at the first trained stage
    (that is where the time goes on CPU); ``train_one_epoch`` keeps their BatchNorm in eval mode.
    """
    if train_blocks <= 0:
        return None
    stages_of = getattr(model.encoder, "stages", None)
    if stages_of is None:
        raise ConfigError(f"--train-blocks: backbone '{model.model_kwargs.get('backbone')}' does "
                          "not list its stages (EfficientNet-Lite backbones do)")
    stages = stages_of()
    if train_blocks > len(stages):
        raise ConfigError(f"--train-blocks {train_blocks}: the encoder has {len(stages)} stages")
    fixed = nn.ModuleList(stages[: len(stages) - train_blocks])
    for p in fixed.parameters():
        p.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("--train-blocks %d: %d of %d stages fixed, %d parameters trained", train_blocks,
                len(fixed), len(stages), n_train)
    return fixed


def feature_datasets(cfg: TrainConfig, model: nn.Module, train_rec: list, val_rec: list,
                     mean: tuple[float, ...], std: tuple[float, ...],
                     d: Dist) -> tuple[FeatureDataset, FeatureDataset]:
    """Train/val ``FeatureDataset``s of cached encoder features (``--feature-cache``)."""
    if cfg.model != "frame":
        raise ConfigError(f"--feature-cache trains a frame model's head, not a {cfg.model}")
    if cfg.train_blocks or 0 < cfg.freeze_backbone_epochs < cfg.epochs:
        raise ConfigError("--feature-cache keeps the encoder frozen for the whole run: drop "
                          "--train-blocks / --freeze-backbone-epochs")
    extra = sorted(set(cfg.augment) - {"flip"})
    if extra:
        raise ConfigError(f"--feature-cache: augmentation {extra} changes the encoder's input; "
                          "with cached features only 'flip' (a second cached view) is possible")
    if d.enabled:
        raise ConfigError("--feature-cache runs in one process (the head trains in seconds)")
    kw = {"image_size": cfg.image_size, "mean": mean, "std": std, "batch_size": 64,
          "workers": cfg.workers, "device": d.device, "progress": d.main}
    enc = model.encoder
    tr_paths, val_paths = record_paths(train_rec, cfg.frame_index), record_paths(val_rec, cfg.frame_index)
    train_f = cached_features(enc, tr_paths, cfg.feature_cache, **kw)  # (N, F)
    flipped = (cached_features(enc, tr_paths, cfg.feature_cache, view="flip", **kw)
               if "flip" in cfg.augment else None)
    val_f = cached_features(enc, val_paths, cfg.feature_cache, **kw)
    return FeatureDataset(train_rec, train_f, flipped, cfg.seed), FeatureDataset(val_rec, val_f)


def main(cfg: TrainConfig, d: Dist) -> int:
    """Train one model; see the module docstring."""
    cfg, resume_state = resolve_resume(cfg)
    folder = run_folder(cfg)
    manifest_dir = Path(cfg.manifest_dir)
    clips, split = read_clips_and_split(manifest_dir)
    split_notes: list[str] = []
    if resume_state is not None:
        previous = resume_state.get("train_data") or {}
        split_notes = list(previous.get("other_split_on_resume") or [])
        note = check_checkpoint_split(previous, split, checkpoint=str(cfg.resume),
                                      manifest=str(manifest_path(manifest_dir, "split")),
                                      use="resumed with", allow=cfg.allow_other_split)
        if note:
            split_notes.append(f"after epoch {resume_state['epoch']}: {note}")
    train_rec, val_rec = build_records(clips, split, "train"), build_records(clips, split, "val")
    labels = np.array([r.label for r in train_rec])
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    if n_real == 0 or n_fake == 0:
        raise ConfigError(f"{manifest_dir}: the train split needs REAL and FAKE videos "
                          f"(has {n_real} REAL, {n_fake} FAKE)")
    if not val_rec:
        raise ConfigError(f"{manifest_dir}: the val split is empty (early stopping needs it)")

    seed_everything(cfg.seed)
    kwargs = model_kwargs(cfg)
    model = create_model(cfg.model, pretrained=cfg.pretrained, weights=cfg.weights, **kwargs)
    init = init_encoder(model, cfg) if cfg.init_encoder and resume_state is None else None
    if not (cfg.pretrained or cfg.weights or cfg.init_encoder):
        logger.info("backbone %s: random init (no --pretrained/--weights)", cfg.backbone)
    model = model.to(d.device, memory_format=torch.channels_last)
    seed_everything(cfg.seed + d.rank)  # dropout differs per rank; the order is in the sampler
    mode = engine.input_key(model)
    mean, std = normalization(model.encoder)  # the backbone's own input statistics
    tail_frozen = freeze_stages(model, cfg.train_blocks)
    if cfg.feature_cache:  # head only, on features encoded once
        train_ds, val_ds = feature_datasets(cfg, model, train_rec, val_rec, mean, std, d)
        net_model = HeadOnly(model)  # shares the head's parameters with ``model``
    else:
        train_ds = ClipDataset(train_rec, mode, cfg.image_size, cfg.frame_index, cfg.augment,
                               cfg.seed, mean=mean, std=std)
        val_ds = ClipDataset(val_rec, mode, cfg.image_size, cfg.frame_index, mean=mean, std=std)
        net_model = model
    sampler = engine.EpochSampler(labels, balanced=cfg.balance == "balanced_sampler",
                                  rank=d.rank, world_size=d.world_size, seed=cfg.seed)
    pin = d.device.type == "cuda"
    workers = 0 if cfg.feature_cache else cfg.workers  # features are in memory already
    train_loader = engine.make_loader(train_ds, cfg.batch_size, sampler=sampler,
                                      workers=workers, pin_memory=pin)
    val_loader = engine.make_loader(val_ds, cfg.batch_size, workers=workers, pin_memory=pin)
    # a frame model is scored as frame_mean (all frames): its threshold is chosen on that too
    mean_loader = None
    if mode == "image" and d.main:
        mean_loader = engine.make_loader(
            ClipDataset(val_rec, "clip", cfg.image_size, cfg.frame_index, mean=mean, std=std),
            cfg.batch_size, workers=cfg.workers, pin_memory=pin)

    pos_weight = torch.tensor(n_real / n_fake) if cfg.balance == "weighted_loss" else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight).to(d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine(e, cfg.epochs))
    use_amp = cfg.amp and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    history: list[dict[str, Any]] = []
    stopper = {"best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0}
    best: dict[str, Any] = {}
    start = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        history = list(resume_state["history"])
        stopper = dict(resume_state["stopper"])
        best = dict(resume_state.get("best", {}))
        start = int(resume_state["epoch"])
        set_rng_state(resume_state["rng"])
        if d.rank:
            torch.manual_seed(cfg.seed + d.rank + 1000 * start)
    net = net_model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(
            net_model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    common = {"model": {"name": cfg.model, "kwargs": kwargs}, "config": to_dict(cfg),
              "train_data": {**data_summary(manifest_dir, clips, split),
                             "description": cfg.data_description,
                             **({"other_split_on_resume": split_notes} if split_notes else {})},
              "preprocess": {"image_size": cfg.image_size, "mean": list(mean),
                             "std": list(std), "frame_index": cfg.frame_index,
                             "input_key": mode},
              "versions": ckpt_io.library_versions(), "threshold_rule": cfg.threshold_rule,
              "crop": train_crop(manifest_dir),
              "init_encoder": init if resume_state is None else resume_state.get("init_encoder")}
    if d.main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", to_dict(cfg))
        logger.info("run folder %s: %s/%s on %s (%d process(es)), %d train / %d val videos",
                    folder, cfg.model, cfg.backbone, d.device, d.world_size, len(train_ds), len(val_ds))
    if stopper["bad_epochs"] >= cfg.patience and start > 0:
        logger.info("run had already stopped early at epoch %d; nothing to do", start)
        return 0

    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        if cfg.feature_cache:
            frozen = None  # the encoder does not run at all
        elif epoch < cfg.freeze_backbone_epochs:
            frozen = model.encoder
        else:
            frozen = tail_frozen  # the stages --train-blocks leaves fixed (None: all train)
        tr = engine.train_one_epoch(net, train_loader, optimizer, criterion, d.device, epoch=epoch,
                                    amp=use_amp, scaler=scaler, max_steps=cfg.max_steps,
                                    progress=d.main, frozen=frozen)
        train_loss = _mean_over_ranks(tr["loss"] * tr["samples"], tr["samples"], d)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        ev = engine.evaluate(net_model, val_loader, d.device, amp=use_amp,
                             threshold_rule=cfg.threshold_rule, target_fpr=cfg.target_fpr)
        metrics = {k: v for k, v in ev.items() if k != "predictions"}
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": metrics["loss"],
               **{f"val_{k}": metrics[k] for k in ("log_loss", "roc_auc", "average_precision",
                                                   "balanced_accuracy", "threshold")},
               "lr": lr, "frozen_backbone": bool(cfg.feature_cache) or frozen is model.encoder,
               "seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        improved = metrics["loss"] < stopper["best_loss"] - 1e-6
        if improved:
            stopper.update(best_loss=metrics["loss"], best_epoch=epoch + 1, bad_epochs=0)
            best = {"epoch": epoch + 1, "loss": metrics["loss"], "metrics": metrics}
            if mean_loader is not None:
                best["frame_mean"] = frame_mean_threshold(model, mean_loader, d.device,
                                                          cfg.threshold_rule, cfg.target_fpr)
        else:
            stopper["bad_epochs"] += 1
        if d.main:
            own = best.get("metrics", metrics)["threshold"]
            # one threshold per way the model is used (score uses frame_mean for a frame model)
            thresholds = {cfg.model: own}
            if "frame_mean" in best:
                thresholds["frame_mean"] = best["frame_mean"]["threshold"]
            state = {**common, "state_dict": model.state_dict(), "epoch": epoch + 1,
                     "metrics": metrics, "history": history, "best": best,
                     "threshold": own, "thresholds": thresholds, "stopper": stopper}
            if improved:
                ckpt_io.save_checkpoint(folder / "best.pt", state)
            ckpt_io.save_checkpoint(folder / "last.pt", {
                **state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state()})
            write_history(folder, history, f"{cfg.model}/{cfg.backbone}")
            logger.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_auc %.3f  "
                        "val_bacc %.3f  lr %.2e  %.1fs%s", epoch + 1, cfg.epochs, train_loss,
                        metrics["loss"], metrics["roc_auc"], metrics["balanced_accuracy"], lr,
                        row["seconds"], "  *best*" if improved else "")
        if stopper["bad_epochs"] >= cfg.patience:
            if d.main:
                logger.info("early stop: no validation-loss improvement for %d epochs "
                            "(best epoch %d)", cfg.patience, stopper["best_epoch"])
            break
    if d.enabled:
        dist.barrier()
    if d.main:
        logger.info("best epoch %d (val_loss %.4f): %s", stopper["best_epoch"],
                    stopper["best_loss"], folder / "best.pt")
    return 0


def run(cfg: TrainConfig) -> int:
    """CLI entry: set up (and tear down) the process group around ``main``."""
    d = setup_distributed(cfg)
    try:
        return main(cfg, d)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()
