"""Video-level metrics from probabilities: (y_true, p_fake[, groups]) -> numbers and intervals.

Conventions: ``y_true`` is 0/1 with 1 = FAKE; ``p_fake`` are probabilities in [0, 1]; a video is
called FAKE when ``p_fake >= threshold``. Ranking metrics (ROC AUC, average precision, EER) use
the probabilities, never hard labels: an "AUC" computed from 0/1 predictions is balanced accuracy
in disguise. Every metric is NaN where it is undefined (e.g. AUC when only one class is present)
instead of raising, so a bootstrap resample or a tiny split never crashes a report.

Pure functions only; ``tests/test_metrics.py`` recomputes each one with scikit-learn. The
grouped-bootstrap intervals are in ``pipeline.stats.bootstrap``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

EPS = 1e-15
"""Probabilities are clipped to [EPS, 1 - EPS] for log losses (as the DFDC scorer did)."""

METRIC_NAMES: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "log_loss",
    "balanced_log_loss",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "eer",
)
"""The metrics ``video_metrics`` returns, in report order."""

THRESHOLD_FREE: frozenset[str] = frozenset(
    {"roc_auc", "average_precision", "log_loss", "balanced_log_loss", "eer"}
)
"""Metrics that do not depend on the decision threshold."""

NEEDS_BOTH_CLASSES: frozenset[str] = frozenset(
    {"roc_auc", "average_precision", "balanced_log_loss", "balanced_accuracy", "eer"}
)
"""Metrics that are NaN unless both REAL and FAKE videos are present."""


def _arrays(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p_fake, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but p_fake has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0 (REAL) or 1 (FAKE)")
    if np.isnan(p).any():
        raise ValueError("p_fake contains NaN")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("p_fake must be probabilities in [0, 1]")
    return y, p


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def per_video_log_loss(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each video (natural log, probabilities clipped to EPS)."""
    y, p = _arrays(y_true, p_fake)
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def log_loss(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> float:
    """Mean binary log loss over videos (the DFDC competition metric); NaN when empty."""
    losses = per_video_log_loss(y_true, p_fake)
    return float(losses.mean()) if losses.size else math.nan


def balanced_log_loss(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> float:
    """Class-balanced log loss: the mean of the REAL videos' mean loss and the FAKE videos' mean loss.

    Each class weighs one half whatever its size, so a 5:1 FAKE:REAL test set cannot hide poor
    REAL calibration (the variant used in DFDC-style write-ups; equals scikit-learn's
    ``log_loss`` with sample weights ``1 / (2 * n_class)``). NaN unless both classes are present.
    """
    y, _ = _arrays(y_true, p_fake)
    losses = per_video_log_loss(y_true, p_fake)
    if not (y == 0).any() or not (y == 1).any():
        return math.nan
    return float(0.5 * losses[y == 0].mean() + 0.5 * losses[y == 1].mean())


def confusion(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Counts ``tp, fp, tn, fn`` with FAKE = positive and ``p_fake >= threshold`` called FAKE."""
    y, p = _arrays(y_true, p_fake)
    pred = p >= threshold
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }


def roc_points(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> dict[str, np.ndarray]:
    """ROC and precision-recall points at every distinct score, highest threshold first.

    The same points as scikit-learn's ``roc_curve(drop_intermediate=False)`` (including the
    leading (0, 0) point at threshold +inf) and ``precision_recall_curve``, computed in numpy
    without input checks so that a thousand bootstrap resamples stay cheap.

    Returns:
        ``thresholds``, ``fpr``, ``tpr`` (with the leading point) and ``precision`` (one per
        distinct score, without it). Rates are NaN when a class is absent.
    """
    y, p = _arrays(y_true, p_fake)
    return _roc_points(y, p)


def _roc_points(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(-p, kind="mergesort")
    p_s, y_s = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p_s)), y_s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y_s)[last].astype(float)
    fps = (last + 1) - tps
    n_pos, n_neg = tps[-1] if tps.size else 0.0, fps[-1] if fps.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / n_pos]
        fpr = np.r_[0.0, fps / n_neg]
        precision = tps / (tps + fps)
    return {"thresholds": np.r_[np.inf, p_s[last]], "fpr": fpr, "tpr": tpr, "precision": precision}


def _auc_ap_eer(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    """ROC AUC (trapezoids), average precision (step sum, as scikit-learn) and EER."""
    if not (y == 0).any() or not (y == 1).any():
        return math.nan, math.nan, math.nan
    pts = _roc_points(y, p)
    fpr, tpr = pts["fpr"], pts["tpr"]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    ap = float(np.sum(np.diff(tpr) * pts["precision"]))  # sum of (R_n - R_{n-1}) * P_n
    return auc, ap, _eer_from_roc(fpr, tpr)


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    fnr = 1.0 - tpr
    diff = fpr - fnr  # goes from -1 (threshold above all scores) to +1, non-decreasing
    idx = int(np.argmax(diff >= 0))  # first point at or past the crossing
    if diff[idx] == 0 or idx == 0:
        return float(fpr[idx])
    # linear interpolation between points idx-1 (diff < 0) and idx (diff > 0)
    d0, d1 = diff[idx - 1], diff[idx]
    w = d0 / (d0 - d1)
    fpr_x = fpr[idx - 1] + w * (fpr[idx] - fpr[idx - 1])
    fnr_x = fnr[idx - 1] + w * (fnr[idx] - fnr[idx - 1])
    return float((fpr_x + fnr_x) / 2)


def eer(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> float:
    """Equal error rate: where FPR = FNR on the ROC curve, linearly interpolated between points.

    NaN unless both classes are present.
    """
    y, p = _arrays(y_true, p_fake)
    return _auc_ap_eer(y, p)[2]


def video_metrics(
    y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """All video-level metrics of one model at one threshold.

    Args:
        y_true: 0 = REAL, 1 = FAKE, one per video.
        p_fake: probability of FAKE, one per video.
        threshold: ``p_fake >= threshold`` is called FAKE (threshold-free metrics ignore it).

    Returns:
        ``METRIC_NAMES`` (NaN where undefined) plus ``threshold``, ``n_real``, ``n_fake`` and the
        confusion counts ``tp, fp, tn, fn``.
    """
    y, p = _arrays(y_true, p_fake)
    n_real, n_fake = int(np.sum(y == 0)), int(np.sum(y == 1))
    both = n_real > 0 and n_fake > 0
    c = confusion(y, p, threshold)
    auc, ap, eer_value = _auc_ap_eer(y, p)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    recall = _div(tp, tp + fn)
    specificity = _div(tn, tn + fp)
    out: dict[str, float] = {
        "roc_auc": auc,
        "average_precision": ap,
        "log_loss": log_loss(y, p),
        "balanced_log_loss": balanced_log_loss(y, p),
        "accuracy": _div(tp + tn, y.size),
        "balanced_accuracy": (recall + specificity) / 2 if both else math.nan,
        "precision": _div(tp, tp + fp),
        "recall": recall,
        "specificity": specificity,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "eer": eer_value,
        "threshold": float(threshold),
        "n_real": n_real,
        "n_fake": n_fake,
        **c,
    }
    return out


def _candidate_thresholds(p: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus one below all and one above all."""
    u = np.unique(p)
    mids = (u[:-1] + u[1:]) / 2
    below = u[0] / 2  # everything called FAKE (0.0 when u[0] == 0: p >= 0 holds for all)
    above = np.nextafter(u[-1], np.inf)  # nothing called FAKE
    return np.concatenate([[below], mids, [above]])


def choose_threshold(
    y_true: Sequence | np.ndarray,
    p_fake: Sequence | np.ndarray,
    rule: str = "balanced_accuracy",
    target_fpr: float = 0.1,
) -> float:
    """Pick a decision threshold on validation predictions.

    Candidates are the midpoints between consecutive distinct scores (so the threshold does not
    sit exactly on a validation video's score), plus one below and one above all scores.

    Args:
        y_true: 0 = REAL, 1 = FAKE.
        p_fake: probabilities of FAKE.
        rule: ``"balanced_accuracy"``: the candidate with the highest balanced accuracy (ties: the
            one closest to 0.5); ``"fpr"``: the lowest candidate whose false-positive rate (REAL
            called FAKE) is at most ``target_fpr``, i.e. the highest recall under that constraint.
        target_fpr: the FPR bound for ``rule="fpr"``.

    Returns:
        The threshold; 0.5 (with a warning) when the data lacks one of the classes.
    """
    if rule not in ("balanced_accuracy", "fpr"):
        raise ValueError(f"unknown threshold rule {rule!r}; known: balanced_accuracy, fpr")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    y, p = _arrays(y_true, p_fake)
    n_real, n_fake = int(np.sum(y == 0)), int(np.sum(y == 1))
    if n_real == 0 or n_fake == 0:
        logger.warning(
            "choose_threshold: need both REAL and FAKE videos (got %d REAL, %d FAKE); using 0.5",
            n_real, n_fake,
        )
        return 0.5
    cands = _candidate_thresholds(p)
    called = p[None, :] >= cands[:, None]  # (n_candidates, n_videos)
    tpr = called[:, y == 1].mean(axis=1)
    fpr = called[:, y == 0].mean(axis=1)
    if rule == "balanced_accuracy":
        bacc = (tpr + 1 - fpr) / 2
        best = np.flatnonzero(np.isclose(bacc, bacc.max(), rtol=0, atol=1e-12))
        return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])
    ok = np.flatnonzero(fpr <= target_fpr + 1e-12)  # the "above all" candidate always qualifies
    return float(cands[ok[0]])


def reliability_curve(
    y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray, n_bins: int = 10
) -> dict[str, np.ndarray | float]:
    """Calibration in equal-width probability bins.

    Returns:
        ``mean_p`` (mean predicted probability per non-empty bin), ``frac_fake`` (observed share of
        FAKE videos per bin), ``count`` (videos per bin) and ``ece`` (expected calibration error:
        the count-weighted mean of |frac_fake - mean_p|; NaN when empty).
    """
    y, p = _arrays(y_true, p_fake)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = count > 0
    mean_p = sum_p[keep] / count[keep]
    frac = sum_y[keep] / count[keep]
    ece = float(np.sum(count[keep] * np.abs(frac - mean_p)) / y.size) if y.size else math.nan
    return {"mean_p": mean_p, "frac_fake": frac, "count": count[keep], "ece": ece}


def roc_auc(y_true: Sequence | np.ndarray, p_fake: Sequence | np.ndarray) -> float:
    """ROC AUC from probabilities (NaN unless both classes are present)."""
    y, p = _arrays(y_true, p_fake)
    return _auc_ap_eer(y, p)[0]
