"""The numbers of an evaluation report: prediction tables -> metrics with intervals.

Video-level metrics at a threshold with their grouped-bootstrap intervals and class counts
(``metrics_with_ci``), each model's validation threshold (``val_threshold``), paired differences
against the first model (``paired``) and the per-frame view of frame models (``frame_level``).
``ModelInfo`` is what the report says about one model. ``evaluate.stage.build_report`` puts them
together; ``evaluate.report`` renders them as Markdown.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.stats import bootstrap as B
from pipeline.stats import metrics as M
from pipeline.stats.bootstrap import iter_bootstrap_resamples


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


def metrics_with_ci(y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float,
                     n_bootstrap: int, seed: int) -> dict[str, Any]:
    point = M.video_metrics(y, p, threshold)
    ci = B.bootstrap_video_metrics(y, p, groups, threshold, n=n_bootstrap, seed=seed) \
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


def val_threshold(model: str, val: pd.DataFrame | None, info: ModelInfo, rule: str,
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


def paired(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], preds: pd.DataFrame,
            models: list[str], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Each model against the first one: paired grouped-bootstrap differences."""
    ref = models[0]
    rows = preds[preds["model"] == ref].sort_values("video_id")
    g = rows["group"].astype(str).to_numpy()
    y = curves[ref][0]
    out: dict[str, Any] = {}
    for m in models[1:]:
        out[f"{m} - {ref}"] = {
            name: B.paired_bootstrap(y, curves[m][1], curves[ref][1], g, fn, n_bootstrap, seed)
            for name, fn in PAIRED_METRICS.items()
        }
    return out


def _auc_ap_drawn(y_sorted: np.ndarray, p_sorted: np.ndarray, order: np.ndarray,
                  counts: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision of a resample given as per-row draw ``counts``, with
    ``order`` = ``argsort(-p)`` of all rows and ``y``/``p`` in that order: the numbers
    ``metrics.video_metrics`` gives on the materialised resample (the same ROC points, as
    integer counts), without sorting it again."""
    w = counts[order]
    keep = w > 0
    p_s, y_s, w_s = p_sorted[keep], y_sorted[keep], w[keep]
    if not (y_s == 0).any() or not (y_s == 1).any():
        return math.nan, math.nan
    last = np.r_[np.flatnonzero(np.diff(p_s)), p_s.size - 1]  # last row of each distinct score
    tps = np.cumsum(y_s * w_s)[last].astype(float)
    fps = np.cumsum(w_s)[last] - tps
    tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(tpr) * (tps / (tps + fps))))
    return auc, ap


def frame_level(frames: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, Any]:
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
        names = ("roc_auc", "average_precision", "log_loss")
        order = np.argsort(-p, kind="mergesort")  # one sort for every resample
        y_o, p_o = y[order], p[order]
        losses = M.per_video_log_loss(y, p)
        boot = [[*_auc_ap_drawn(y_o, p_o, order, np.bincount(i, minlength=len(p))),
                 float(losses[i].mean())]  # (resamples, 3), one resample in memory
                for i in iter_bootstrap_resamples(g, n_bootstrap, seed)]
        for j, name in enumerate(names):
            vals = np.array([b[j] for b in boot], dtype=float)
            lo, hi = B.percentile_interval(vals) if boot else (math.nan, math.nan)
            res["metrics"][name] = {"value": point[name], "lo": lo, "hi": hi,
                                    "bootstrap_skipped": int(np.sum(~np.isfinite(vals)))}
        out[str(model)] = res
    return out
