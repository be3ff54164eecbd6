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
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import TrainConfig, from_dict, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import atomic_write_json, atomic_write_text, sha256_file
from pipeline.io.manifest import manifest_path
from pipeline.models import (
    backbone_of,
    create_model,
    list_models,
    model_kwargs_from,
    model_spec,
)
from pipeline.models import checkpoint as ckpt_io
from pipeline.models.backbones import normalization
from pipeline.models.fuse import fold_fixed_prefix, fuse_for_inference
from pipeline.prepare.provenance import data_summary, train_crop
from pipeline.prepare.splits import check_checkpoint_split
from pipeline.train import engine
from pipeline.train.data import BLEND_P, ClipDataset, build_records, read_clips_and_split
from pipeline.train.distributed import (
    Dist,
    mean_over_ranks,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_distributed,
)
from pipeline.train.features import FeatureDataset, HeadOnly, cached_features, record_paths

logger = logging.getLogger(__name__)

# on --resume these come from the command line; everything else from the checkpoint's config
RESUME_OVERRIDES = ("epochs", "patience", "workers", "device", "amp", "max_steps", "resume", "threads",
                    "allow_other_split")
HISTORY_PLOT_KEYS = ("train_loss", "val_loss", "val_roc_auc", "val_balanced_accuracy")


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-typed registry kwargs for the configured model (its spec's ``kwargs_from``,
    preset applied where the model takes presets)."""
    return model_kwargs_from(cfg)


def init_encoder(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Load the encoder weights of checkpoint ``cfg.init_encoder`` into ``model``'s encoder.

    Returns what the new checkpoint records: ``{path, checkpoint_id, model, backbone}``.

    Raises:
        ConfigError: the checkpoint's backbone is not ``cfg.backbone``.
        CheckpointError: the file is missing or not a dfpipe checkpoint.
    """
    from pipeline.release import resolve_checkpoint

    path = Path(resolve_checkpoint(cfg.init_encoder))  # 'default': the shipped model's encoder
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
    backbone_of(model).load_state_dict(backbone_of(source).state_dict())
    logger.info("encoder initialized from %s (%s/%s, epoch %s)", path, name, backbone,
                src.get("epoch"))
    return {"path": str(path), "checkpoint_id": sha256_file(path)[:12], "model": name,
            "backbone": str(backbone)}


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
    from pipeline.stats import plots

    buf = pd.DataFrame(history).to_csv(index=False)
    atomic_write_text(folder / "history.csv", buf)
    rows = [{"epoch": h["epoch"], **{k: h[k] for k in HISTORY_PLOT_KEYS if k in h}} for h in history]
    plots.training_curves_plot({title: rows}, folder / "training_curve.png")


def derived_thresholds(model: nn.Module, loader: Any, device: torch.device, rule: str,
                       target_fpr: float, predictions: pd.DataFrame | None = None
                       ) -> dict[str, dict[str, Any]]:
    """Threshold and validation metrics of each derived scorer the model offers (a frame model
    as ``frame_mean``: every valid frame, probabilities averaged, as ``dfpipe score`` uses it).

    Args:
        model: the trained model (its current weights).
        loader: validation clips (``clip`` mode: all slots and their mask).
        predictions: the model's own validation predictions (``engine.predict``). When every
            clip has exactly one valid frame (single-image videos, e.g. ``dfdc_faces``), the
            per-frame mean is that frame's p_fake: these are used instead of a second pass.

    Returns:
        derived name -> ``{"threshold", "metrics"}`` (empty when the model offers none).
    """
    from pipeline.models.temporal import frame_mean_p
    from pipeline.stats import metrics as M
    from pipeline.stats.aggregation import choose_rule, video_probs

    out: dict[str, dict[str, Any]] = {}
    one_frame = predictions is not None and all(
        sum(1 for m in r.mask if m) == 1 for r in loader.dataset.records)
    labels = pd.Series({r.video_id: r.label for r in loader.dataset.records})  # 1 = FAKE
    for name in model_spec(model.model_name).derived:
        if one_frame:  # the mean of one frame's p_fake (clamped as frame_mean_p clamps it)
            p1 = torch.tensor(predictions["p_fake"].to_numpy(np.float64))[:, None]  # (V, 1)
            videos = pd.DataFrame({"video_id": predictions["video_id"].astype(str).to_numpy(),
                                   "p_fake": frame_mean_p(p1).numpy()})
            frames = videos
        else:
            videos, frames = engine.frame_pass(model, loader, device)  # the mean evaluate uses
        # the frame -> video rule, chosen on these validation frames (mean or confident frames)
        agg = choose_rule(frames, labels)
        if agg["rule"] != "mean":
            by_rule = video_probs(frames, agg["rule"], agg["params"])
            videos = pd.DataFrame({"video_id": by_rule.index, "p_fake": by_rule.to_numpy()})
        y = labels.loc[videos["video_id"]].to_numpy()
        p = videos["p_fake"].to_numpy(float)
        threshold = M.choose_threshold(y, p, rule=rule, target_fpr=target_fpr)
        metrics = {k: float(v) for k, v in M.video_metrics(y, p, threshold).items()}
        out[name] = {"threshold": float(threshold), "metrics": metrics, "aggregation": agg}
    return out


def inference_copy(model: nn.Module) -> nn.Module:
    """An evaluation-mode copy of ``model`` with its batch norms folded (``models.fuse``)."""
    copy = deepcopy(model).eval()
    fuse_for_inference(copy)
    return copy


def gather_predictions(d: Any) -> Any:
    """Under torchrun: a function that joins every process's validation predictions (each
    predicted its share, ``records[rank::world_size]``) into one table, sorted by video_id."""

    def gather(preds: pd.DataFrame) -> pd.DataFrame:
        parts: list[Any] = [None] * d.world_size
        dist.all_gather_object(parts, preds)
        return pd.concat(parts, ignore_index=True).sort_values("video_id", ignore_index=True)

    return gather


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
    if not model_spec(cfg.model).feature_cache:
        takes = [n for n in list_models() if model_spec(n).feature_cache]
        raise ConfigError(f"--feature-cache trains a frame model's head ({', '.join(takes)}), "
                          f"not a {cfg.model}")
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
    mean, std = normalization(backbone_of(model))  # the backbone's own input statistics
    tail_frozen = freeze_stages(model, cfg.train_blocks)
    if cfg.feature_cache:  # head only, on features encoded once
        train_ds, val_ds = feature_datasets(cfg, model, train_rec, val_rec, mean, std, d)
        net_model = HeadOnly(model)  # shares the head's parameters with ``model``
    else:
        train_ds = ClipDataset(train_rec, mode, cfg.image_size, cfg.frame_index, cfg.augment,
                               cfg.seed, mean=mean, std=std)
        # under torchrun each process predicts its share of the validation videos (gathered)
        val_ds = ClipDataset(val_rec[d.rank::d.world_size], mode, cfg.image_size,
                             cfg.frame_index, mean=mean, std=std)
        net_model = model
    sampler = engine.EpochSampler(labels, balanced=cfg.balance == "balanced_sampler",
                                  rank=d.rank, world_size=d.world_size, seed=cfg.seed)
    pin = d.device.type == "cuda"
    workers = 0 if cfg.feature_cache else cfg.workers  # features are in memory already
    train_loader = engine.make_loader(train_ds, cfg.batch_size, sampler=sampler,
                                      workers=workers, pin_memory=pin)
    val_loader = engine.make_loader(val_ds, cfg.batch_size, workers=workers, pin_memory=pin)
    # a model with derived scorers (frame -> frame_mean, all frames) is scored as one: their
    # thresholds are chosen on validation clips too
    spec = model_spec(cfg.model)
    mean_loader = None
    if spec.derived and d.main:
        mean_loader = engine.make_loader(
            ClipDataset(val_rec, "clip", cfg.image_size, cfg.frame_index, mean=mean, std=std),
            cfg.batch_size, workers=cfg.workers, pin_memory=pin)

    # ``blend`` turns a share of the REAL samples into FAKE ones: weigh the classes as trained
    shown = BLEND_P * n_real if "blend" in cfg.augment else 0.0
    pos_weight = (torch.tensor((n_real - shown) / (n_fake + shown))
                  if cfg.balance == "weighted_loss" else None)
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
    if tail_frozen is not None and not cfg.feature_cache:
        # the fixed stages never change: they run as a folded copy (models.fuse), ~25 % less time
        # per training step on a CPU; made after resuming, from the final weights
        fold_fixed_prefix(model.encoder, len(tail_frozen))
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
                    folder, cfg.model, cfg.backbone, d.device, d.world_size, len(train_ds), len(val_rec))
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
        train_loss = mean_over_ranks(tr["loss"] * tr["samples"], tr["samples"], d)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        # validation on a folded copy (the same outputs, ~2x faster on a CPU; the model trains on)
        ev = engine.evaluate(inference_copy(net_model), val_loader, d.device, amp=use_amp,
                             threshold_rule=cfg.threshold_rule, target_fpr=cfg.target_fpr,
                             gather=gather_predictions(d) if len(val_ds) < len(val_rec) else None)
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
                best.update(derived_thresholds(model, mean_loader, d.device,
                                               cfg.threshold_rule, cfg.target_fpr,
                                               predictions=ev["predictions"]))
        else:
            stopper["bad_epochs"] += 1
        if d.main:
            own = best.get("metrics", metrics)["threshold"]
            # one threshold per way the model is used (score uses frame_mean for a frame model)
            thresholds = {cfg.model: own}
            thresholds.update({n: best[n]["threshold"] for n in spec.derived if n in best})
            # the frame -> video rule of each derived scorer, chosen on validation with its threshold
            aggregations = {n: best[n]["aggregation"] for n in spec.derived
                            if "aggregation" in best.get(n, {})}
            state = {**common, "state_dict": model.state_dict(), "epoch": epoch + 1,
                     "metrics": metrics, "history": history, "best": best,
                     "threshold": own, "thresholds": thresholds, "aggregations": aggregations,
                     "stopper": stopper}
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
