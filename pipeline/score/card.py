"""What a checkpoint says about how to use it: checkpoint -> crop recipe, thresholds, card lines.

Pure functions over a loaded checkpoint dict (``checkpoint.load_checkpoint``), shared by the
per-video scorer (``score.scorer``) and the batch runner (``score.batch``).
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import ExtractConfig
from pipeline.core.fsutil import sha256_file
from pipeline.models import model_spec, scorer_name

log = logging.getLogger(__name__)

CROP_KEYS = ("margin", "size", "square", "jpeg_quality")


def scored_as(ckpt: dict[str, Any]) -> str:
    """How a checkpoint scores videos (the registry's ``scorer_name``: a ``frame`` model as
    ``frame_mean``, others as themselves)."""
    return scorer_name(ckpt["model"]["name"])


def crop_recipe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """How the model's training crops were made: ``{margin, size, square, jpeg_quality, source}``.

    From the checkpoint's ``crop`` key (written by ``dfpipe train`` from the extract manifests'
    config, or by the release export); a checkpoint without one gets the extract stage's
    defaults, and ``source`` says so. ``jpeg_quality`` 0 means no JPEG round trip.
    """
    stored = ckpt.get("crop")
    d = ExtractConfig()
    out = {"margin": d.margin, "size": d.crop_size, "square": d.square,
           "jpeg_quality": d.jpeg_quality}
    if isinstance(stored, dict):
        missing = [k for k in CROP_KEYS if stored.get(k) is None]
        out.update({k: stored[k] for k in CROP_KEYS if k not in missing})
        source = str(stored.get("source") or "checkpoint")
        if missing:
            source += f" ({', '.join(missing)}: extract defaults)"
    else:
        source = "extract defaults (the checkpoint records no crop recipe)"
    return {"margin": float(out["margin"]), "size": int(out["size"]), "square": bool(out["square"]),
            "jpeg_quality": int(out["jpeg_quality"] or 0), "source": source}


def checkpoint_threshold(ckpt: dict[str, Any], scored_as: str, path: str = "") -> float:
    """The checkpoint's decision threshold for the way it scores (``scored_as``).

    Training stores ``thresholds`` (one per use: ``frame`` and ``frame_mean`` for a frame model,
    each chosen on validation predictions made that way). An older checkpoint has only
    ``threshold``, chosen on the model's own predictions: used with a warning when it scores
    another way (a frame model as ``frame_mean``); 0.5 when it has neither.
    """
    thresholds = ckpt.get("thresholds") or {}
    if scored_as in thresholds:
        return float(thresholds[scored_as])
    own = ckpt.get("threshold")
    if scored_as != ckpt["model"]["name"]:
        log.warning("%s: no %s threshold in the checkpoint (trained before dfpipe stored one per "
                       "use); using the %s model's own threshold %s, chosen on %s predictions",
                       path or "checkpoint", scored_as, ckpt["model"]["name"],
                       "0.5" if own is None else f"{float(own):.4f}",
                       "middle-frame" if model_spec(ckpt["model"]["name"]).input_key == "image"
                       else "its own")
    return float(own if own is not None else 0.5)


def file_id(path: str) -> str:
    """Short content id of a checkpoint file (first 12 hex of its SHA-256)."""
    return sha256_file(path)[:12]


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def trained_on(data: dict[str, Any]) -> str:
    """E.g. ``real data: DFDC face crops (dfdc_faces), 4,820 REAL / 8,945 FAKE training videos``."""
    if not data:
        return "unknown"
    counts = data.get("counts", {}).get("train", {})
    kind = {True: "SYNTHETIC data", False: "real data"}.get(data.get("synthetic"), "data of unknown origin")
    what = data.get("description") or data.get("source") or ""
    what = f" {what}," if what else ""
    return (f"{kind}:{what} {_count(counts.get('REAL'))} REAL / {_count(counts.get('FAKE'))} FAKE "
            "training videos")


def card_title(card: Any) -> str:
    """First non-empty line of a model card (markdown ``#`` stripped); "" without a card."""
    for line in str(card or "").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return ""
