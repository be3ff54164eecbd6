"""Checkpoints and the split -> what ``evaluate.stage.build_report`` takes.

Prediction tables joined to the split's labels and groups (``attach_split``), a checkpoint's
whole training history (``full_history``), its preprocessing (``preprocess_of``), the warning
when ``--split all`` scores a model's own training data (``trained_here``) and unique report
names (``model_names``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import PipelineError

logger = logging.getLogger(__name__)


def as_label(v: Any) -> str:
    if isinstance(v, str):
        return v.upper()
    return "FAKE" if int(round(float(v))) == 1 else "REAL"


def attach_split(preds: pd.DataFrame, split_rows: pd.DataFrame, model: str,
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
        pred_labels = preds["label"].map(as_label).to_numpy()
        bad = out["video_id"][pred_labels != out["label"].to_numpy()]
        if len(bad):
            raise PipelineError(f"{source}: labels disagree with split.csv for {list(bad[:3])}")
    out["model"] = model
    return out


def full_history(path: Path, ckpt: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's history, or the longer one of ``last.pt`` beside it (same run).

    ``best.pt`` is written at the best epoch, so its history stops there; the run's ``last.pt``
    holds the epochs after it too. Used only when it extends the same history.
    """
    from pipeline.models.checkpoint import load_checkpoint

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


def preprocess_of(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """(image size, frame index) the model was trained with: ``preprocess``, else ``config``."""
    pre, cfg = ckpt.get("preprocess") or {}, ckpt.get("config") or {}
    size = pre.get("image_size", cfg.get("image_size", 160))
    index = pre.get("frame_index", cfg.get("frame_index", 15))
    return int(size), int(index)


def trained_here(path: Path, ckpt: Mapping[str, Any], split: pd.DataFrame,
                  manifest_dir: Path) -> str:
    """``--split all`` on the very manifests a model was trained on scores its training videos:
    a warning (logged) for the report's model note, "" otherwise."""
    from pipeline.core.fsutil import sha256_file
    from pipeline.io.manifest import manifest_path
    from pipeline.prepare.splits import split_fingerprint

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
