"""The evaluation report as Markdown: metrics summary + model infos -> ``report.md`` text.

``render_markdown`` takes the summary ``evaluate.stage.build_report`` computed (see
``evaluate.stats``) and writes nothing itself; ``cell`` formats one "value [95% interval]".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.stats import metrics as M

if TYPE_CHECKING:
    from pipeline.evaluate.stats import ModelInfo


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
"""Report names of ``pipeline.stats.metrics.METRIC_NAMES``, threshold-free ones first."""

def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


FEW_VALID = 0.9
"""Intervals from fewer than this share of the resamples get a dagger in the report."""


def cell(m: Mapping[str, Any], n_bootstrap: int = 0) -> str:
    if m["value"] is None or not math.isfinite(m["value"]):
        return "n/a"
    ci = f" [{fmt(m['lo'])}, {fmt(m['hi'])}]" if math.isfinite(m["lo"]) else " [n/a]"
    valid = m.get("bootstrap_valid")
    dagger = "†" if n_bootstrap and valid is not None and valid < FEW_VALID * n_bootstrap else ""
    return f"{fmt(m['value'])}{ci}{dagger}"


def train_data_items(td: Mapping[str, Any]) -> list[str]:
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


def render_markdown(summary: dict[str, Any], infos: Mapping[str, ModelInfo], figures: list[str]) -> str:
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
        lines += [f"  - {item}" for item in train_data_items(info.train_data)]
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
            cells = [cell(summary["models"][n][key]["metrics"][metric], summary["bootstrap"])
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
            lines.append(f"| {pair} | {cell(d['roc_auc'])} | {cell(d['log_loss'])} |")
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
                f"{cell(mm['roc_auc'])} | {cell(mm['average_precision'])} | "
                f"{cell(mm['log_loss'])} |"
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
