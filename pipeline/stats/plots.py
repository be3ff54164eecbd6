"""Report figures: per-model predictions -> PNG files (matplotlib, Agg backend, atomic writes).

Every function takes plain arrays/dicts, draws one figure and writes it with
``pipeline.core.fsutil.atomic_path`` so a killed run never leaves half a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.core.fsutil import atomic_path  # noqa: E402
from pipeline.stats import metrics as M  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""model name -> (y_true 0/1, p_fake)."""


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _legend_below(ax: plt.Axes) -> None:
    """Legend under the axes: it never hides a curve, however many models there are."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)


def _style(i: int) -> str | tuple:
    """Line style per model: curves that coincide (e.g. two constant models) stay visible."""
    return ("-", (0, (5, 3)), (0, (1, 2)), "-.")[i % 4]


def roc_plot(curves: Curves, path: str | os.PathLike, title: str = "ROC (video level)") -> Path:
    """ROC curves of all models on one chart; AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (AUC 0.500)")
    for i, (name, (y, p)) in enumerate(curves.items()):
        pts = M.roc_points(y, p)
        auc = M.video_metrics(y, p)["roc_auc"]
        ax.plot(pts["fpr"], pts["tpr"], color=_color(i), lw=2, ls=_style(i),
                label=f"{name} (AUC {auc:.3f}, n={len(y)})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=title,
           xlabel="false-positive rate (REAL called FAKE)",
           ylabel="true-positive rate (FAKE caught)")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def pr_plot(curves: Curves, path: str | os.PathLike,
            title: str = "Precision-recall (FAKE = positive)") -> Path:
    """Precision-recall curves of all models on one chart; AP in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    prevalences = set()
    for i, (name, (y, p)) in enumerate(curves.items()):
        pts = M.roc_points(y, p)
        ap = M.video_metrics(y, p)["average_precision"]
        # keep the points where recall grows (only they weigh in the AP); precision P_n holds
        # over (R_{n-1}, R_n], so the area under the steps is the AP, without zero-width spikes
        grows = np.diff(pts["tpr"]) > 0
        recall = np.r_[0.0, pts["tpr"][1:][grows]]
        kept = pts["precision"][grows]
        precision = np.r_[kept[0] if kept.size else 1.0, kept]
        ax.step(recall, precision, where="pre", color=_color(i), lw=2, ls=_style(i),
                label=f"{name} (AP {ap:.3f})")
        prevalences.add(round(float(np.mean(y)), 4))
    for prev in sorted(prevalences):
        ax.axhline(prev, ls="--", color="0.6", lw=1, label=f"chance (share FAKE {prev:.2f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), title=title,
           xlabel="recall (FAKE caught)", ylabel="precision (called FAKE that are FAKE)")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def confusion_plot(
    cells: Mapping[str, Sequence[tuple[str, Mapping[str, int]]]], path: str | os.PathLike
) -> Path:
    """Confusion matrices: one row per model, one column per threshold.

    Args:
        cells: model -> [(column title, {"tp", "fp", "tn", "fn"}), ...].
        path: PNG destination.
    """
    names = list(cells)
    n_cols = max(len(v) for v in cells.values())
    fig, axes = plt.subplots(len(names), n_cols, figsize=(3.6 * n_cols, 3.2 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(cells[name]):
                ax.axis("off")
                continue
            col_title, k = cells[name][c]
            mat = np.array([[k["tn"], k["fp"]], [k["fn"], k["tp"]]], dtype=float)
            row_sum = mat.sum(axis=1, keepdims=True)
            share = np.divide(mat, row_sum, out=np.zeros_like(mat), where=row_sum > 0)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            for i in range(2):
                for j in range(2):
                    ax.text(j, i, f"{int(mat[i, j])}\n{share[i, j]:.0%}", ha="center",
                            va="center", fontsize=10,
                            color="white" if share[i, j] > 0.6 else "black")
            ax.set_xticks([0, 1], ["REAL", "FAKE"])
            ax.set_yticks([0, 1], ["REAL", "FAKE"])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{name}\n{col_title}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def calibration_plot(curves: Curves, path: str | os.PathLike, n_bins: int = 10) -> Path:
    """Reliability diagram (observed share of FAKE vs mean p_fake per bin) and p_fake histograms."""
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 7), height_ratios=[3, 1.4], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfectly calibrated")
    bins = np.linspace(0, 1, n_bins + 1)
    for i, (name, (y, p)) in enumerate(curves.items()):
        rc = M.reliability_curve(y, p, n_bins=n_bins)
        ax.plot(rc["mean_p"], rc["frac_fake"], marker="o", color=_color(i), lw=1.5, ls=_style(i),
                label=f"{name} (ECE {rc['ece']:.3f})")
        axh.hist(p, bins=bins, histtype="step", lw=1.8, color=_color(i), label=name,
                 ls=_style(i))
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="observed share of FAKE videos",
           title=f"Reliability ({n_bins} equal-width bins)")
    ax.grid(alpha=0.3)
    axh.set(xlabel="predicted p_fake", ylabel="videos")
    axh.grid(alpha=0.3)
    fig.tight_layout()
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8,
               frameon=False)  # under the whole figure, clear of the x label
    return _save(fig, path)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            xs.append(row.get("epoch", i))
            ys.append(v)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


TRAINING_METRICS = ("val_roc_auc", "val_balanced_accuracy", "val_average_precision")
"""History keys drawn in the right panel of the training curves (when present)."""


def training_curves_plot(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                         path: str | os.PathLike,
                         best_epochs: Mapping[str, int | None] | None = None) -> Path | None:
    """Training curves from checkpoint histories: losses left, validation metrics right.

    Args:
        histories: model -> list of per-epoch dicts (``epoch`` plus numeric values such as
            ``train_loss``, ``val_loss``, ``val_roc_auc``). Keys with ``loss`` in their name go
            left; ``TRAINING_METRICS`` go right; the rest (lr, seconds, threshold) is left out.
        path: PNG destination.
        best_epochs: model -> the epoch its checkpoint holds (a vertical line on both panels).

    Returns:
        The path, or None when no history has anything to plot.
    """
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return None
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(12, 4.4))
    plotted = False
    for i, (name, hist) in enumerate(histories.items()):
        keys = {k for row in hist for k in row}
        loss_keys = sorted(k for k in keys if "loss" in k)
        metric_keys = [k for k in TRAINING_METRICS if k in keys]
        for ax, group in ((ax_l, loss_keys), (ax_m, metric_keys)):
            for j, key in enumerate(group):
                x, y = _series(hist, key)
                if x.size:
                    ax.plot(x, y, color=_color(i), ls=_style(j), marker="o", ms=3,
                            label=f"{name}: {key}")
                    plotted = True
        best = (best_epochs or {}).get(name)
        if best is not None:
            for ax in (ax_l, ax_m):
                ax.axvline(best, color=_color(i), lw=1, ls=":", alpha=0.8,
                           label=f"{name}: best epoch {best}" if ax is ax_l else None)
    if not plotted:
        plt.close(fig)
        return None
    ax_l.set(title="Losses", xlabel="epoch", ylabel="loss")
    ax_m.set(title="Validation metrics", xlabel="epoch", ylabel="value", ylim=(-0.02, 1.02))
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)
