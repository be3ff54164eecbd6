"""``dfpipe evaluate``: checkpoints + clips/split manifests -> one comparison report folder.

Every model is scored on the same split of the same clips manifest. The report folder holds:

- ``predictions.csv`` (manifest kind ``predictions``: video_id, label, group, model, p_fake) for
  the evaluated split, ``val_predictions.csv`` for the validation split the thresholds come from,
  ``frame_predictions.csv`` (one row per valid frame) for frame models;
- ``metrics.json``: every metric at threshold 0.5 and at the validation-chosen threshold, each
  with its grouped-bootstrap 95% interval and its count of videos per class;
- ``report.md`` with the models and their training data, a comparison table, paired
  differences against the first model, the frame-level view, and the plots (``roc.png``,
  ``pr.png``, ``confusion.png``, ``calibration.png``, ``training_curves.png``). Its first line
  is a WARNING when any model was trained on synthetic data.

A model with derived scorers also yields them (a ``frame`` checkpoint: ``frame_mean``, the same
model on every valid frame, probabilities averaged; no training of its own) and the per-frame
view (frame label = video label), both from one pass over the clips.

``--split all`` evaluates every labelled video of the manifest folder (an external test set
imported with ``extract`` + ``prepare``): no validation split is used, so each model's decision
threshold is the one stored in its checkpoint (0.5 where it stores none) and the report says so.

The pure core is ``build_report`` (prediction tables in, report folder out); ``evaluate`` loads
the checkpoints, predicts, and calls it (``run`` logs its summary, ``dfpipe evaluate`` prints
it). The whole folder is replaced atomically. The parts: ``evaluate.inputs`` (checkpoints and
split -> tables), ``evaluate.stats`` (tables -> numbers), ``evaluate.report`` (numbers ->
Markdown). Which derived scorers a model brings comes from the registry (``model_spec``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.config import EvaluateConfig, to_dict
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.fsutil import atomic_path, atomic_write_json, atomic_write_text
from pipeline.core.plaintypes import plain
from pipeline.evaluate.inputs import (
    attach_split,
    full_history,
    model_names,
    preprocess_of,
    trained_here,
)
from pipeline.evaluate.report import cell, fmt, render_markdown
from pipeline.evaluate.stats import (
    ModelInfo,
    frame_level,
    labels_to_y,
    metrics_with_ci,
    paired,
    val_threshold,
)
from pipeline.io.manifest import validate, write_manifest
from pipeline.stats import plots

logger = logging.getLogger(__name__)

__all__ = ["FRAME_COLUMNS", "ModelInfo", "build_report", "check_out_dir", "evaluate",
           "labels_to_y", "model_names", "run", "summary_lines"]

FRAME_COLUMNS = ("video_id", "label", "group", "model", "slot", "p_fake")
"""Columns of ``frame_predictions.csv``: one row per valid slot of each clip."""


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """The report folder, refused when it exists, is not empty and is not an earlier report.

    The report folder is replaced whole, so ``--out .`` must never wipe a working folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise ConfigError(f"{out}: --out exists, is not empty and is not a dfpipe report "
                          "(it would be replaced whole); choose another folder")
    return out


def build_report(
    predictions: pd.DataFrame,
    val_predictions: pd.DataFrame | None,
    model_infos: Mapping[str, ModelInfo],
    out_dir: str | os.PathLike,
    *,
    frame_predictions: pd.DataFrame | None = None,
    split: str = "test",
    threshold_rule: str = "balanced_accuracy",
    target_fpr: float = 0.1,
    n_bootstrap: int = 1000,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the report folder from prediction tables; return the metrics summary.

    Args:
        predictions: rows of manifest kind ``predictions`` for the evaluated split.
        val_predictions: the same for the validation split (thresholds), or None.
        model_infos: model name -> ``ModelInfo``; its order is the report's column order. Every
            model in ``predictions`` needs one.
        out_dir: report folder (replaced atomically as a whole).
        frame_predictions: optional per-frame rows (``FRAME_COLUMNS``) for the frame-level view.
        split: name of the evaluated split (for the report).
        threshold_rule: ``balanced_accuracy`` or ``fpr`` (see ``metrics.choose_threshold``).
        target_fpr: the bound for ``threshold_rule="fpr"``.
        n_bootstrap: grouped bootstrap resamples (0: no intervals).
        seed: bootstrap seed; every model uses the same resamples.
        config: resolved config written to ``config.json``.

    Raises:
        ValueError: models scored on different videos, unknown labels or missing model infos.
        ConfigError: ``out_dir`` is a non-empty folder that is not an earlier report.
    """
    out_dir = check_out_dir(out_dir)
    preds = validate(predictions, "predictions", "predictions")
    if preds.empty:
        raise ValueError("no predictions to evaluate")
    vals = validate(val_predictions, "predictions", "val predictions") \
        if val_predictions is not None and len(val_predictions) else None
    models = [m for m in model_infos if m in set(preds["model"])]
    missing = sorted(set(preds["model"]) - set(model_infos))
    if missing:
        raise ValueError(f"predictions for model(s) {missing} without a ModelInfo")
    reference: set[str] | None = None
    for m in models:
        ids = preds.loc[preds["model"] == m, "video_id"]
        if ids.duplicated().any():
            raise ValueError(f"model {m}: duplicate video_id(s) {sorted(set(ids[ids.duplicated()]))[:5]}")
        if reference is None:
            reference, ref_model = set(ids), m
        elif set(ids) != reference:
            diff = sorted(set(ids) ^ reference)[:5]
            raise ValueError(f"models {ref_model} and {m} were scored on different videos: {diff}")

    base = preds[preds["model"] == models[0]]
    y_all = labels_to_y(base["label"])
    summary: dict[str, Any] = {
        "split": split,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dfpipe_version": __version__,
        "threshold_rule": threshold_rule,
        "target_fpr": target_fpr,
        "bootstrap": n_bootstrap,
        "seed": seed,
        "data": {"n_videos": len(base), "n_real": int((y_all == 0).sum()),
                 "n_fake": int((y_all == 1).sum()), "n_groups": int(base["group"].nunique())},
        "any_synthetic": any(model_infos[m].synthetic for m in models),
        "other_split": {m: model_infos[m].other_split for m in models
                        if model_infos[m].other_split},
        "models": {},
    }
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    conf_cells: dict[str, list] = {}
    for m in models:
        rows = preds[preds["model"] == m].sort_values("video_id")
        y = labels_to_y(rows["label"])
        p = rows["p_fake"].to_numpy(float)
        g = rows["group"].astype(str).to_numpy()
        thr, source = val_threshold(m, vals, model_infos[m], threshold_rule, target_fpr,
                                     no_val=split == "all")
        logger.info("%s: %d videos, validation threshold %.4f (%s)", m, len(rows), thr, source)
        at_05 = metrics_with_ci(y, p, g, 0.5, n_bootstrap, seed)
        at_val = metrics_with_ci(y, p, g, thr, n_bootstrap, seed)
        summary["models"][m] = {
            "info": model_infos[m].to_dict(),
            "val_threshold": thr,
            "val_threshold_source": source,
            "at_0.5": at_05,
            "at_val": at_val,
        }
        curves[m] = (y, p)
        conf_cells[m] = [("threshold 0.5", at_05["confusion"]),
                         (f"val threshold {thr:.3f}", at_val["confusion"])]

    if len(models) > 1 and n_bootstrap > 0:
        summary["paired"] = paired(curves, preds, models, n_bootstrap, seed)

    frames = None
    if frame_predictions is not None and len(frame_predictions):
        miss = [c for c in FRAME_COLUMNS if c not in frame_predictions.columns]
        if miss:
            raise ValueError(f"frame predictions: missing column(s) {miss}")
        frames = frame_predictions[list(FRAME_COLUMNS)].copy()
        summary["frame_level"] = frame_level(frames, n_bootstrap, seed)

    with atomic_path(out_dir, is_dir=True) as tmp:
        figures = ["roc.png", "pr.png", "confusion.png", "calibration.png"]
        plots.roc_plot(curves, tmp / "roc.png", title=f"ROC, video level ({split} split)")
        plots.pr_plot(curves, tmp / "pr.png",
                      title=f"Precision-recall, video level ({split} split, FAKE = positive)")
        plots.confusion_plot(conf_cells, tmp / "confusion.png")
        plots.calibration_plot(curves, tmp / "calibration.png")
        histories = {m: model_infos[m].history for m in models
                     if model_infos[m].history and not model_infos[m].derived_from}
        best_epochs = {m: model_infos[m].best_epoch for m in histories}
        if plots.training_curves_plot(histories, tmp / "training_curves.png",
                                      best_epochs=best_epochs) is not None:
            figures.append("training_curves.png")
        cfg = dict(config or {})
        write_manifest(preds, tmp / "predictions.csv", "predictions", config=cfg,
                       counts={"models": models, **summary["data"]})
        if vals is not None:
            write_manifest(vals, tmp / "val_predictions.csv", "predictions", config=cfg)
        if frames is not None:
            buf = io.StringIO()
            frames.to_csv(buf, index=False)
            atomic_write_text(tmp / "frame_predictions.csv", buf.getvalue())
        summary["figures"] = figures
        atomic_write_json(tmp / "metrics.json", plain(summary, finite=True))
        atomic_write_json(tmp / "config.json", cfg)
        atomic_write_text(tmp / "report.md", render_markdown(summary, model_infos, figures))
    logger.info("report written to %s", out_dir)
    return summary


# ------------------------------------------------------------------------------------------
# dfpipe evaluate: checkpoints -> predictions -> build_report
# ------------------------------------------------------------------------------------------


def run(cfg: EvaluateConfig) -> int:
    """``evaluate`` + its summary lines logged (``dfpipe evaluate`` prints them instead)."""
    summary = evaluate(cfg)
    for line in summary_lines(summary, cfg.out):
        (logger.warning if line.startswith("WARNING") else logger.info)("%s", line)
    return 0


def summary_lines(summary: Mapping[str, Any], out: str | os.PathLike) -> list[str]:
    """The short summary of a report for the terminal: warnings, one line per model, the path."""
    lines = []
    if summary["any_synthetic"]:
        lines.append("WARNING: some models were trained on synthetic data (see the report's "
                     "first line)")
    if summary["other_split"]:
        lines.append("WARNING: --allow-other-split: some models were evaluated on a split they "
                     "were not trained on (see the report's first lines)")
    width = max(len(n) for n in summary["models"])
    for name, m in summary["models"].items():
        mm = m["at_0.5"]["metrics"]
        lines.append(f"{name:>{width}}: ROC AUC {cell(mm['roc_auc'])}  log loss "
                     f"{cell(mm['log_loss'])}  balanced acc @val "
                     f"{cell(m['at_val']['metrics']['balanced_accuracy'])}")
    lines.append(f"report: {Path(out) / 'report.md'}")
    return lines


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score every checkpoint on ``cfg.split`` (thresholds from ``val``), write the report and
    return its summary (see ``build_report``)."""
    from pipeline.core.device import resolve_device
    from pipeline.io.manifest import manifest_path
    from pipeline.models import model_spec
    from pipeline.models.checkpoint import build_model, load_checkpoint
    from pipeline.models.fuse import fuse_for_inference
    from pipeline.prepare.splits import check_checkpoint_split
    from pipeline.train.data import (
        ClipDataset,
        build_records,
        normalization_of,
        read_clips_and_split,
    )
    from pipeline.train.engine import frame_pass, inference_precision, make_loader, predict

    if not cfg.checkpoint:
        raise ConfigError("evaluate: give at least one --checkpoint (or --checkpoint default: "
                          "the shipped model)")
    from pipeline.release import DEFAULT_ALIAS, resolve_checkpoint

    cfg = dataclasses.replace(cfg, checkpoint=tuple(
        resolve_checkpoint(c) if c == DEFAULT_ALIAS else c for c in cfg.checkpoint))
    if cfg.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {cfg.bootstrap}")
    device = resolve_device(cfg.device)
    check_out_dir(cfg.out)  # before the slow part
    clips, split = read_clips_and_split(cfg.manifest_dir)
    labelled = split  # as prepared (train/val/test), for the checkpoints' split checks
    if cfg.split == "all":  # every labelled video; thresholds from the checkpoints
        split = split.assign(split="all")
        splits = {"all": split}
    else:
        splits = {s: split[split["split"] == s] for s in dict.fromkeys([cfg.split, "val"])}
    if splits[cfg.split].empty:
        raise PipelineError(f"{cfg.manifest_dir}: split '{cfg.split}' has no videos")
    records = {s: build_records(clips, split, s) for s, rows in splits.items() if len(rows)}

    def loader(which: str, mode: str, image_size: int, frame_index: int,
               norm: tuple[tuple[float, ...], tuple[float, ...]]) -> Any:
        ds = ClipDataset(records[which], mode=mode, image_size=image_size, frame_index=frame_index,
                         mean=norm[0], std=norm[1])
        return make_loader(ds, cfg.batch_size, workers=cfg.workers)

    infos: dict[str, ModelInfo] = {}
    tables: dict[str, list[pd.DataFrame]] = {s: [] for s in records}
    frame_tables: list[pd.DataFrame] = []
    paths = [Path(ck) for ck in cfg.checkpoint]
    archs, other_split = [], []
    for p in paths:  # all readable, and trained on this split, before the slow part
        ck = load_checkpoint(p)
        archs.append(str(ck["model"]["name"]))
        if cfg.split == "all":  # another data set, not another split of the training one
            other_split.append("")
            continue
        other_split.append(check_checkpoint_split(
            dict(ck.get("train_data") or {}), labelled, checkpoint=str(p),
            manifest=str(manifest_path(cfg.manifest_dir, "split")), use="evaluated on",
            allow=cfg.allow_other_split))
    # derived scorers (frame -> frame_mean) and the frame view come with their model
    derived = [(i, d) for i, a in enumerate(archs) if cfg.frame_level for d in model_spec(a).derived]
    all_names = model_names(archs + [d for _, d in derived], paths + [paths[i] for i, _ in derived])
    names = all_names[: len(paths)]
    derived_names: dict[int, list[tuple[str, str]]] = {}
    for (i, d), n in zip(derived, all_names[len(paths):], strict=True):
        derived_names.setdefault(i, []).append((d, n))
    for i, (path, arch) in enumerate(zip(paths, archs, strict=True)):
        ckpt = load_checkpoint(path, map_location="cpu")
        here_note = trained_here(path, ckpt, labelled, Path(cfg.manifest_dir)) \
            if cfg.split == "all" else ""
        model = build_model(ckpt).to(device).eval()
        fuse_for_inference(model)  # batch norms folded: the same outputs, faster
        image_size, frame_index = preprocess_of(ckpt)
        norm = normalization_of(ckpt.get("preprocess"))  # the statistics it was trained with
        mode = getattr(model, "input_key", "clip")
        name = names[i]
        thr = ckpt.get("threshold")
        best = ckpt.get("best") or {}
        info = ModelInfo(name=name, arch=arch, checkpoint=str(path),
                         train_data=dict(ckpt.get("train_data") or {}),
                         history=full_history(path, ckpt),
                         best_epoch=best.get("epoch"),
                         checkpoint_threshold=None if thr is None else float(thr),
                         other_split=other_split[i],
                         note=f"{ckpt.get('epoch', '?')} epoch(s) trained, best epoch "
                              f"{best.get('epoch', '?')}; checkpoint threshold "
                              f"{fmt(float(thr)) if thr is not None else 'n/a'} "
                              f"({ckpt.get('threshold_rule', '?')}, "
                              + ("used as is: --split all has no val split)" if cfg.split == "all"
                                 else "informational: the report re-chooses it on this "
                                      "manifest's val split)") + here_note
                              + f"; inference in {inference_precision(device)}")
        infos[name] = info
        for which in records:
            logger.info("%s: predicting %d %s videos", name, len(records[which]), which)
            df = predict(model, loader(which, mode, image_size, frame_index, norm), device,
                         progress=True, desc=f"{name} {which}")
            tables[which].append(attach_split(df, splits[which], name, f"{path} on {which}"))
        stored = ckpt.get("thresholds") or {}
        aggregations = ckpt.get("aggregations") or {}  # frame -> video rules chosen on val
        for k, (kind, mean_name) in enumerate(derived_names.get(i, [])):
            infos[mean_name] = ModelInfo(
                name=mean_name, arch=kind, checkpoint=str(path),
                train_data=info.train_data, derived_from=name, other_split=info.other_split,
                checkpoint_threshold=stored.get(kind),
                note=f"`{name}` applied to every valid frame, probabilities averaged "
                     "(no training of its own; threshold "
                     + ((f"the checkpoint's {kind} threshold)" if kind in stored
                         else "0.5: the checkpoint stores none for it)")
                        if cfg.split == "all" else "chosen on val like the others)"))
            for which in records:
                vids, frames = frame_pass(model, loader(which, "clip", image_size, frame_index, norm),
                                          device, aggregation=aggregations.get(kind))
                tables[which].append(attach_split(vids, splits[which], mean_name,
                                                  f"{path} ({kind}) on {which}"))
                if which == cfg.split and k == 0:  # one frame view per model
                    ref = splits[which].set_index("video_id")
                    frames["label"] = ref.loc[frames["video_id"], "label"].astype(str).to_numpy()
                    frames["group"] = ref.loc[frames["video_id"], "group"].astype(str).to_numpy()
                    frames["model"] = name
                    frame_tables.append(frames[list(FRAME_COLUMNS)])
        del model

    val = pd.concat(tables["val"]) if cfg.split != "val" and "val" in tables else None
    if cfg.split == "val":
        logger.warning("evaluating on the val split: the thresholds are chosen on the same videos")
        val = pd.concat(tables["val"])
    summary = build_report(
        pd.concat(tables[cfg.split]), val, infos, cfg.out,
        frame_predictions=pd.concat(frame_tables) if frame_tables else None,
        split=cfg.split, threshold_rule=cfg.threshold_rule, target_fpr=cfg.target_fpr,
        n_bootstrap=cfg.bootstrap, seed=cfg.seed, config=to_dict(cfg),
    )
    return summary
