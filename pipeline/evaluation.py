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

A ``frame`` checkpoint also yields ``frame_mean`` (the same model on every valid frame,
probabilities averaged; no training of its own) and the per-frame view (frame label = video
label), both from one pass over the clips.

``--split all`` evaluates every labelled video of the manifest folder (an external test set
imported with ``extract`` + ``prepare``): no validation split is used, so each model's decision
threshold is the one stored in its checkpoint (0.5 where it stores none) and the report says so.

The pure core is ``build_report`` (prediction tables in, report folder out); ``run`` loads the
checkpoints, predicts, and calls it. The whole folder is replaced atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import __version__, plots
from pipeline import metrics as M
from pipeline.config import EvaluateConfig, to_dict
from pipeline.errors import ConfigError, PipelineError
from pipeline.fsutil import atomic_path, atomic_write_json, atomic_write_text
from pipeline.manifest import validate, write_manifest

logger = logging.getLogger(__name__)

METRIC_LABELS: dict[str, str] = {
    "roc_auc": "ROC AUC",
    "average_precision": "average precision",
    "log_loss": "log loss (DFDC)",
    "balanced_log_loss": "class-balanced log loss",
    "eer": "EER",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "precision": "precision",
    "recall": "recall (TPR)",
    "specificity": "specificity (TNR)",
    "f1": "F1",
}
"""Report names of ``pipeline.metrics.METRIC_NAMES``, threshold-free ones first."""

FRAME_COLUMNS = ("video_id", "label", "group", "model", "slot", "p_fake")
"""Columns of ``frame_predictions.csv``: one row per valid slot of each clip."""


@dataclass
class ModelInfo:
    """What the report says about one evaluated model.

    Attributes:
        name: the model's name in tables and plots (unique in one report).
        arch: registry name (``cnn_lstm``, ``frame``) or ``frame_mean`` for the derived wrapper.
        checkpoint: path of the checkpoint file.
        train_data: the checkpoint's training-data summary (``synthetic`` flag included).
        history: per-epoch dicts from the checkpoint (for training curves).
        derived_from: for ``frame_mean``: the frame model it wraps (no training of its own).
        best_epoch: the epoch whose weights the checkpoint holds (marked on training curves).
        checkpoint_threshold: the threshold stored in the checkpoint at training time, if any.
        note: one line shown under the model in the report.
        other_split: why the evaluated split is not the one the model was trained on, when
            ``--allow-other-split`` let it through ("" otherwise); the report opens with it.
    """

    name: str
    arch: str
    checkpoint: str = ""
    train_data: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    derived_from: str | None = None
    best_epoch: int | None = None
    checkpoint_threshold: float | None = None
    note: str = ""
    other_split: str = ""

    @property
    def synthetic(self) -> bool:
        """True when the training data summary says the data was synthetic (None: unknown)."""
        return self.train_data.get("synthetic") is True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (history left out: it is in the checkpoint)."""
        d = dataclasses.asdict(self)
        d.pop("history")
        d["synthetic"] = self.synthetic
        d["history_epochs"] = len(self.history)
        return d


def labels_to_y(labels: pd.Series, source: str = "predictions") -> np.ndarray:
    """REAL/FAKE strings -> 0/1 (1 = FAKE); anything else raises ``ValueError``."""
    lab = labels.astype("string").str.upper()
    bad = sorted(set(lab[~lab.isin(["REAL", "FAKE"])].astype(str)))
    if bad:
        raise ValueError(f"{source}: labels must be REAL or FAKE, got {bad[:5]}")
    return (lab == "FAKE").to_numpy(dtype=int)


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


FEW_VALID = 0.9
"""Intervals from fewer than this share of the resamples get a dagger in the report."""


def _cell(m: Mapping[str, Any], n_bootstrap: int = 0) -> str:
    if m["value"] is None or not math.isfinite(m["value"]):
        return "n/a"
    ci = f" [{_fmt(m['lo'])}, {_fmt(m['hi'])}]" if math.isfinite(m["lo"]) else " [n/a]"
    valid = m.get("bootstrap_valid")
    dagger = "†" if n_bootstrap and valid is not None and valid < FEW_VALID * n_bootstrap else ""
    return f"{_fmt(m['value'])}{ci}{dagger}"


def _metrics_with_ci(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float,
                     n_bootstrap: int, seed: int) -> dict[str, Any]:
    point = M.video_metrics(y, p, threshold)
    ci = M.bootstrap_video_metrics(y, p, groups, threshold, n=n_bootstrap, seed=seed) \
        if n_bootstrap > 0 else {}
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "n_real": point["n_real"],
        "n_fake": point["n_fake"],
        "confusion": {k: point[k] for k in ("tp", "fp", "tn", "fn")},
        "metrics": {},
    }
    for name in M.METRIC_NAMES:
        c = ci.get(name, {"lo": math.nan, "hi": math.nan, "n_valid": 0, "n_skipped": 0})
        out["metrics"][name] = {"value": point[name], "lo": c["lo"], "hi": c["hi"],
                                "n_real": point["n_real"], "n_fake": point["n_fake"],
                                "bootstrap_valid": c["n_valid"],
                                "bootstrap_skipped": c["n_skipped"]}
    return out


def _val_threshold(model: str, val: pd.DataFrame | None, info: ModelInfo, rule: str,
                   target_fpr: float, no_val: bool = False) -> tuple[float, str]:
    """(threshold, where it came from) for one model (``no_val``: ``--split all``, none asked)."""
    rows = val[val["model"] == model] if val is not None and len(val) else None
    if rows is not None and len(rows):
        y = labels_to_y(rows["label"], "val predictions")
        n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
        if n_real and n_fake:
            t = M.choose_threshold(y, rows["p_fake"].to_numpy(float), rule, target_fpr)
            what = "max balanced accuracy" if rule == "balanced_accuracy" else \
                f"FPR <= {target_fpr:g}"
            return t, f"val split ({n_real} REAL / {n_fake} FAKE), {what}"
    why = "no val split used" if no_val else "no usable val predictions"
    if info.checkpoint_threshold is not None and math.isfinite(info.checkpoint_threshold):
        return float(info.checkpoint_threshold), f"checkpoint (stored at training; {why})"
    return 0.5, f"0.5 (the checkpoint stores none for this model; {why})"


PAIRED_METRICS: dict[str, Any] = {"roc_auc": M.roc_auc, "log_loss": M.log_loss}
"""Threshold-free metrics compared pairwise on the same resamples."""


def _paired(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], preds: pd.DataFrame,
            models: list[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Each model against the first one: paired grouped-bootstrap differences."""
    ref = models[0]
    rows = preds[preds["model"] == ref].sort_values("video_id")
    g = rows["group"].astype(str).to_numpy()
    y = curves[ref][0]
    out: dict[str, Any] = {}
    for m in models[1:]:
        out[f"{m} - {ref}"] = {
            name: M.paired_bootstrap(y, curves[m][1], curves[ref][1], g, fn, n_bootstrap, seed)
            for name, fn in PAIRED_METRICS.items()
        }
    return out


def _frame_level(frames: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Per-frame ROC AUC, AP and log loss of each frame model (frame label = video label)."""
    out: dict[str, Any] = {}
    for model, rows in frames.groupby("model", sort=False):
        y = labels_to_y(rows["label"], "frame predictions")
        p = rows["p_fake"].to_numpy(float)
        g = rows["group"].astype(str).to_numpy()
        point = M.video_metrics(y, p)
        res: dict[str, Any] = {
            "n_real_frames": point["n_real"], "n_fake_frames": point["n_fake"],
            "n_videos": int(rows["video_id"].nunique()), "metrics": {},
        }
        resamples = M.bootstrap_resamples(g, n_bootstrap, seed) if n_bootstrap > 0 else []
        boot = [M.video_metrics(y[i], p[i]) for i in resamples]
        for name in ("roc_auc", "average_precision", "log_loss"):
            vals = np.array([b[name] for b in boot], dtype=float)
            lo, hi = M.percentile_interval(vals) if resamples else (math.nan, math.nan)
            res["metrics"][name] = {"value": point[name], "lo": lo, "hi": hi,
                                    "bootstrap_skipped": int(np.sum(~np.isfinite(vals)))}
        out[str(model)] = res
    return out


def _train_data_items(td: Mapping[str, Any]) -> list[str]:
    """``key: value`` lines of a training-data summary (nested dicts on one line, hashes short)."""
    items = []
    for k, v in td.items():
        name = k
        if isinstance(v, Mapping) and v and all(
                isinstance(c, Mapping) and set(c) <= {"REAL", "FAKE"} for c in v.values()):
            # per-split label counts: "train 6 REAL / 12 FAKE; val ..."
            v = "; ".join(f"{s} {c.get('REAL', 0)} REAL / {c.get('FAKE', 0)} FAKE"
                          for s, c in v.items())
        elif isinstance(v, Mapping) and v:  # e.g. the prepare config: one line
            v = ", ".join(f"{a}={b}" for a, b in v.items())
            v = v if len(v) <= 200 else v[:197] + "..."
        elif k == "synthetic":
            v = "**YES**" if v is True else "no" if v is False else "unknown"
        elif isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            v = f"`{v[:12]}...`"  # a sha256
        elif isinstance(v, (list, tuple)):
            v = json.dumps(v, default=str)
            v = v if len(v) <= 120 else v[:117] + "..."
        items.append(f"{name}: {v}")
    return items


def _markdown(summary: dict[str, Any], infos: Mapping[str, ModelInfo], figures: list[str]) -> str:
    models = list(summary["models"])
    lines: list[str] = []
    synthetic = [n for n in models if infos[n].synthetic]
    if synthetic:
        verb = "was" if len(synthetic) == 1 else "were"
        lines.append(
            f"**WARNING: {', '.join(synthetic)} {verb} trained on SYNTHETIC data: these numbers "
            "measure the synthetic artefacts, not real deepfakes.**"
        )
        lines.append("")
    other = [n for n in models if infos[n].other_split]
    if other:
        lines.append(
            f"**WARNING: {', '.join(other)} evaluated on a split other than the one "
            f"{'it was' if len(other) == 1 else 'they were'} trained on (--allow-other-split): "
            "training videos may be among the evaluated ones, so these numbers may be too "
            "good.**")
        lines += [f"- {n}: {infos[n].other_split}" for n in other]
        lines.append("")
    d = summary["data"]
    lines += [
        f"# dfpipe evaluation: `{summary['split']}` split",
        "",
        f"{d['n_videos']} videos ({d['n_real']} REAL / {d['n_fake']} FAKE) in {d['n_groups']} "
        f"groups (an original and its fakes). Created {summary['created']} by dfpipe "
        f"{summary['dfpipe_version']}.",
        f"Intervals: 95% percentile bootstrap over groups ({summary['bootstrap']} resamples, "
        f"seed {summary['seed']}), so related fakes do not inflate confidence.",
        *([("Split `all`: every labelled video of the manifest folder; no validation split is "
            "used, so the `val` threshold of each model is the one stored in its checkpoint "
            "(see the thresholds column for where each came from).")]
          if summary["split"] == "all" else []),
        "",
        "## Models",
        "",
        "| model | architecture | checkpoint | thresholds (0.5 and validation) | trained on |",
        "|---|---|---|---|---|",
    ]
    for n in models:
        info, m = infos[n], summary["models"][n]
        ck = f"`{info.checkpoint}`" if info.checkpoint else "-"
        if info.derived_from:
            ck += f" (derived from `{info.derived_from}`, no training of its own)"
        flag = info.train_data.get("synthetic")
        trained = ("**SYNTHETIC data**" if flag is True else "real data" if flag is False
                   else "unknown (see below)")
        lines.append(
            f"| {n} | {info.arch} | {ck} | 0.5; val {m['val_threshold']:.4f} from "
            f"{m['val_threshold_source']} | {trained} |"
        )
    notes = [f"- **{n}**: {infos[n].note}" for n in models if infos[n].note]
    if notes:
        lines += [""] + notes
    lines += ["", "### Training data (from the checkpoints)", ""]
    shown: dict[str, str] = {}
    for n in models:
        info = infos[n]
        if info.derived_from:
            lines.append(f"- **{n}**: the training data of `{info.derived_from}`")
            continue
        key = json.dumps(info.train_data, sort_keys=True, default=str)
        if key in shown:
            lines.append(f"- **{n}**: the same data as `{shown[key]}`")
            continue
        shown[key] = n
        lines.append(f"- **{n}**:" + ("" if info.train_data else " no summary in the checkpoint"))
        lines += [f"  - {item}" for item in _train_data_items(info.train_data)]
    lines += [
        "",
        "## Comparison (video level)",
        "",
        "Each cell: value [95% interval]. The threshold column says which decision threshold a "
        "number uses: `-` none (ranking/probability metrics), `0.5`, or `val` ("
        + ("here, with split `all`: the threshold stored in each checkpoint" if summary["split"] == "all"
           else "chosen per model on the validation split") + ", value in the first row).",
        "",
        "| metric | threshold | videos REAL / FAKE | " + " | ".join(models) + " |",
        "|---|---|---|" + "---|" * len(models),
        "| validation threshold | - | - | "
        + " | ".join(f"{summary['models'][n]['val_threshold']:.4f}" for n in models) + " |",
    ]
    first = summary["models"][models[0]]
    counts = f"{first['at_0.5']['n_real']} / {first['at_0.5']['n_fake']}"
    for metric, label in METRIC_LABELS.items():
        keys = ["at_0.5"] if metric in M.THRESHOLD_FREE else ["at_0.5", "at_val"]
        for key in keys:
            thr = "-" if metric in M.THRESHOLD_FREE else key.removeprefix("at_")
            cells = [_cell(summary["models"][n][key]["metrics"][metric], summary["bootstrap"])
                     for n in models]
            lines.append(f"| {label} | {thr} | {counts} | " + " | ".join(cells) + " |")
    daggers = any("†" in line for line in lines)
    lines += [
        "",
        "ROC AUC, average precision and EER are computed from probabilities, never from hard "
        "labels. Log loss is the DFDC competition metric (natural log, probabilities clipped to "
        "1e-15); the class-balanced log loss is the mean of the REAL videos' mean loss and the "
        "FAKE videos' mean loss (each class weighs one half). EER: the error rate where "
        "false-positive rate = false-negative rate, interpolated on the ROC curve.",
    ]
    lines.append(
        "A resample where a metric is undefined (only one class drawn, or for precision no "
        "video called FAKE) is left out of that metric's interval (counts in metrics.json); "
        "`n/a`: undefined on the whole split."
    )
    if daggers:
        lines.append(f"†: interval from fewer than {FEW_VALID:.0%} of the resamples: treat it "
                     "with care.")
    if summary.get("paired"):
        lines += [
            "",
            "## Paired differences",
            "",
            "Each model minus the first, on the same grouped resamples (an interval that excludes "
            "0 is a difference this test set can see). Higher ROC AUC is better, lower log loss "
            "is better.",
            "",
            "| comparison | Δ ROC AUC | Δ log loss |",
            "|---|---|---|",
        ]
        for pair, d in summary["paired"].items():
            lines.append(f"| {pair} | {_cell(d['roc_auc'])} | {_cell(d['log_loss'])} |")
    if summary.get("frame_level"):
        lines += [
            "",
            "## Frame level",
            "",
            "Frame models applied to every valid frame of each clip; a frame carries its video's "
            "label. Intervals resample groups of videos, as above.",
            "",
            "| model | frames REAL / FAKE | videos | per-frame ROC AUC | per-frame AP | "
            "per-frame log loss |",
            "|---|---|---|---|---|---|",
        ]
        for n, fl in summary["frame_level"].items():
            mm = fl["metrics"]
            lines.append(
                f"| {n} | {fl['n_real_frames']} / {fl['n_fake_frames']} | {fl['n_videos']} | "
                f"{_cell(mm['roc_auc'])} | {_cell(mm['average_precision'])} | "
                f"{_cell(mm['log_loss'])} |"
            )
    captions = {
        "roc.png": "ROC curves (video level)",
        "pr.png": "Precision-recall curves (video level)",
        "confusion.png": "Confusion matrices at 0.5 and at the validation threshold",
        "calibration.png": "Reliability (calibration) and p_fake histograms",
        "training_curves.png": "Training curves from the checkpoints' history",
    }
    lines += ["", "## Plots", ""]
    for fig in figures:
        lines += [f"### {captions.get(fig, fig)}", "", f"![{captions.get(fig, fig)}]({fig})", ""]
    lines += [
        "## Files",
        "",
        "- `predictions.csv`: per-video p_fake of every model on this split "
        "(video_id, label, group, model, p_fake)",
        "- `val_predictions.csv`: the same on the validation split (thresholds come from it)",
        "- `metrics.json`: every number above, with bootstrap details",
        "",
    ]
    return "\n".join(lines)


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
        thr, source = _val_threshold(m, vals, model_infos[m], threshold_rule, target_fpr,
                                     no_val=split == "all")
        logger.info("%s: %d videos, validation threshold %.4f (%s)", m, len(rows), thr, source)
        at_05 = _metrics_with_ci(y, p, g, 0.5, n_bootstrap, seed)
        at_val = _metrics_with_ci(y, p, g, thr, n_bootstrap, seed)
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
        summary["paired"] = _paired(curves, preds, models, n_bootstrap, seed)

    frames = None
    if frame_predictions is not None and len(frame_predictions):
        miss = [c for c in FRAME_COLUMNS if c not in frame_predictions.columns]
        if miss:
            raise ValueError(f"frame predictions: missing column(s) {miss}")
        frames = frame_predictions[list(FRAME_COLUMNS)].copy()
        summary["frame_level"] = _frame_level(frames, n_bootstrap, seed)

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
        atomic_write_json(tmp / "metrics.json", _json_safe(summary))
        atomic_write_json(tmp / "config.json", cfg)
        atomic_write_text(tmp / "report.md", _markdown(summary, model_infos, figures))
    logger.info("report written to %s", out_dir)
    return summary


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ------------------------------------------------------------------------------------------
# dfpipe evaluate: checkpoints -> predictions -> build_report
# ------------------------------------------------------------------------------------------


def _as_label(v: Any) -> str:
    if isinstance(v, str):
        return v.upper()
    return "FAKE" if int(round(float(v))) == 1 else "REAL"


def _attach_split(preds: pd.DataFrame, split_rows: pd.DataFrame, model: str,
                  source: str) -> pd.DataFrame:
    """Predictions (video_id, [label,] p_fake) -> manifest rows with the split's label and group."""
    ref = split_rows.set_index("video_id")
    missing = sorted(set(ref.index) - set(preds["video_id"].astype(str)))
    if missing:
        raise PipelineError(f"{source}: no prediction for {len(missing)} video(s), e.g. {missing[:3]}")
    out = pd.DataFrame({"video_id": preds["video_id"].astype(str).to_numpy(),
                        "p_fake": preds["p_fake"].astype(float).to_numpy()})
    out["label"] = ref.loc[out["video_id"], "label"].astype(str).to_numpy()
    out["group"] = ref.loc[out["video_id"], "group"].astype(str).to_numpy()
    if "label" in preds.columns:
        pred_labels = preds["label"].map(_as_label).to_numpy()
        bad = out["video_id"][pred_labels != out["label"].to_numpy()]
        if len(bad):
            raise PipelineError(f"{source}: labels disagree with split.csv for {list(bad[:3])}")
    out["model"] = model
    return out


def _frame_pass(frame_model: Any, loader: Any, device: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A frame model on every valid slot of every clip.

    Returns:
        (video table: video_id, p_fake as the ``frame_mean`` wrapper computes it: the mean of
        per-frame probabilities over valid slots, clamped like ``FrameMean``;
        frame table: video_id, slot, p_fake).
    """
    import torch
    from tqdm import tqdm

    from pipeline.engine import probabilities
    from pipeline.models.temporal import FRAME_EPS

    frame_model.eval()
    videos, frames = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc="frames", unit="batch", leave=False):
            clip, mask = batch["clip"], batch["mask"]  # (B, T, C, H, W), (B, T)
            b, t = clip.shape[:2]
            valid = mask.reshape(-1) > 0  # (B*T,)
            flat = clip.reshape(b * t, *clip.shape[2:])[valid].to(device)  # (N_valid, C, H, W)
            probs = torch.zeros(b * t, dtype=torch.float64)  # (B*T,)
            if flat.shape[0]:
                probs[valid] = probabilities(frame_model(flat)).cpu().double()  # (N_valid,)
            probs = probs.reshape(b, t)  # (B, T)
            m = mask.to(torch.float64)  # (B, T)
            p_video = ((probs * m).sum(1) / m.sum(1).clamp_min(1.0)).clamp(FRAME_EPS, 1 - FRAME_EPS)
            for i, vid in enumerate(batch["video_id"]):
                videos.append({"video_id": str(vid), "p_fake": float(p_video[i])})
                for slot in torch.nonzero(mask[i] > 0).flatten().tolist():
                    frames.append({"video_id": str(vid), "slot": int(slot),
                                   "p_fake": float(probs[i, slot])})
    return pd.DataFrame(videos), pd.DataFrame(frames)


def _full_history(path: Path, ckpt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's history, or the longer one of ``last.pt`` beside it (same run).

    ``best.pt`` is written at the best epoch, so its history stops there; the run's ``last.pt``
    holds the epochs after it too. Used only when it extends the same history.
    """
    from pipeline.checkpoint import load_checkpoint

    history = list(ckpt.get("history") or [])
    last = path.parent / "last.pt"
    if not last.is_file() or last.resolve() == path.resolve():
        return history
    try:
        longer = list(load_checkpoint(last).get("history") or [])
    except PipelineError as e:
        logger.warning("%s: history of %s not used: %s", path, last, e)
        return history
    if len(longer) > len(history) and longer[: len(history)] == history:
        return longer
    return history


def _preprocess(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """(image size, frame index) the model was trained with: ``preprocess``, else ``config``."""
    pre, cfg = ckpt.get("preprocess") or {}, ckpt.get("config") or {}
    size = pre.get("image_size", cfg.get("image_size", 160))
    index = pre.get("frame_index", cfg.get("frame_index", 15))
    return int(size), int(index)


def _trained_here(path: Path, ckpt: Mapping[str, Any], split: pd.DataFrame,
                  manifest_dir: Path) -> str:
    """``--split all`` on the very manifests a model was trained on scores its training videos:
    a warning (logged) for the report's model note, "" otherwise."""
    from pipeline.fsutil import sha256_file
    from pipeline.manifest import manifest_path
    from pipeline.splits import split_fingerprint

    data = ckpt.get("train_data") or {}
    split_file = manifest_path(manifest_dir, "split")
    same = (data.get("split_fingerprint") == split_fingerprint(split)
            if data.get("split_fingerprint") is not None
            else bool(data.get("split_sha256")) and data.get("split_sha256") == sha256_file(split_file))
    if not same:
        return ""
    logger.warning("%s was trained on %s: --split all includes its training and validation videos, "
                   "so these numbers are not held-out evidence", path, split_file)
    return (f". **WARNING: trained on these manifests ({split_file}): the evaluated videos include "
            "its training and validation videos; not held-out evidence.**")


def model_names(archs: list[str], paths: list[Path]) -> list[str]:
    """Report names: the architecture, or ``arch@run-folder`` for every model of an
    architecture that appears more than once (``#2``, ``#3`` appended if still ambiguous)."""
    counts = {a: archs.count(a) for a in archs}
    names: list[str] = []
    for arch, path in zip(archs, paths, strict=True):
        name = arch if counts[arch] == 1 else f"{arch}@{path.parent.name or path.stem}"
        base, k = name, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def run(cfg: EvaluateConfig) -> int:
    """Score every checkpoint on ``cfg.split`` (thresholds from ``val``) and write the report."""
    from pipeline.checkpoint import build_model, load_checkpoint
    from pipeline.data import ClipDataset, build_records, normalization_of, read_clips_and_split
    from pipeline.engine import make_loader, predict, resolve_device
    from pipeline.manifest import manifest_path
    from pipeline.splits import check_checkpoint_split

    if not cfg.checkpoint:
        raise ConfigError("evaluate: give at least one --checkpoint")
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
    derive = [a == "frame" and cfg.frame_level for a in archs]  # also frame_mean + frame view
    mean_idx = [i for i, d in enumerate(derive) if d]
    all_names = model_names(archs + ["frame_mean"] * len(mean_idx),
                            paths + [paths[i] for i in mean_idx])
    names = all_names[: len(paths)]
    mean_names = dict(zip(mean_idx, all_names[len(paths):], strict=True))
    for i, (path, arch) in enumerate(zip(paths, archs, strict=True)):
        ckpt = load_checkpoint(path, map_location="cpu")
        trained_here = _trained_here(path, ckpt, labelled, Path(cfg.manifest_dir)) \
            if cfg.split == "all" else ""
        model = build_model(ckpt).to(device).eval()
        image_size, frame_index = _preprocess(ckpt)
        norm = normalization_of(ckpt.get("preprocess"))  # the statistics it was trained with
        mode = getattr(model, "input_key", "clip")
        name = names[i]
        thr = ckpt.get("threshold")
        best = ckpt.get("best") or {}
        info = ModelInfo(name=name, arch=arch, checkpoint=str(path),
                         train_data=dict(ckpt.get("train_data") or {}),
                         history=_full_history(path, ckpt),
                         best_epoch=best.get("epoch"),
                         checkpoint_threshold=None if thr is None else float(thr),
                         other_split=other_split[i],
                         note=f"{ckpt.get('epoch', '?')} epoch(s) trained, best epoch "
                              f"{best.get('epoch', '?')}; checkpoint threshold "
                              f"{_fmt(float(thr)) if thr is not None else 'n/a'} "
                              f"({ckpt.get('threshold_rule', '?')}, "
                              + ("used as is: --split all has no val split)" if cfg.split == "all"
                                 else "informational: the report re-chooses it on this "
                                      "manifest's val split)") + trained_here)
        infos[name] = info
        for which in records:
            logger.info("%s: predicting %d %s videos", name, len(records[which]), which)
            df = predict(model, loader(which, mode, image_size, frame_index, norm), device,
                         progress=True, desc=f"{name} {which}")
            tables[which].append(_attach_split(df, splits[which], name, f"{path} on {which}"))
        if derive[i]:
            mean_name = mean_names[i]
            infos[mean_name] = ModelInfo(
                name=mean_name, arch="frame_mean", checkpoint=str(path),
                train_data=info.train_data, derived_from=name, other_split=info.other_split,
                checkpoint_threshold=(ckpt.get("thresholds") or {}).get("frame_mean"),
                note=f"`{name}` applied to every valid frame, probabilities averaged "
                     "(no training of its own; threshold "
                     + (("the checkpoint's frame_mean threshold)" if "frame_mean" in
                         (ckpt.get("thresholds") or {}) else "0.5: the checkpoint stores none for it)")
                        if cfg.split == "all" else "chosen on val like the others)"))
            for which in records:
                vids, frames = _frame_pass(model, loader(which, "clip", image_size, frame_index, norm),
                                           device)
                tables[which].append(_attach_split(vids, splits[which], mean_name,
                                                   f"{path} (frame_mean) on {which}"))
                if which == cfg.split:
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
    if summary["any_synthetic"]:
        print("WARNING: some models were trained on synthetic data (see the report's first line)")
    if summary["other_split"]:
        print("WARNING: --allow-other-split: some models were evaluated on a split they were not "
              "trained on (see the report's first lines)")
    width = max(len(n) for n in summary["models"])
    for name, m in summary["models"].items():
        mm = m["at_0.5"]["metrics"]
        print(f"{name:>{width}}: ROC AUC {_cell(mm['roc_auc'])}  log loss {_cell(mm['log_loss'])}  "
              f"balanced acc @val {_cell(m['at_val']['metrics']['balanced_accuracy'])}")
    print(f"report: {Path(cfg.out) / 'report.md'}")
    return 0
