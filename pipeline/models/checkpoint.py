"""Checkpoints that rebuild their own model: payload dict <-> ``.pt`` file.

A checkpoint holds only plain types and tensors, so it loads with
``torch.load(weights_only=True)`` (no code runs on load). Keys:

- ``format_version`` (``FORMAT_VERSION``), ``kind`` ("dfpipe-checkpoint")
- ``model``: ``{"name", "kwargs"}`` -> ``create_model(name, **kwargs)``; ``state_dict``
- ``epoch`` (epochs completed), ``metrics`` (validation metrics of that epoch),
  ``best`` (``{"epoch", "loss", "metrics"}``), ``threshold`` + ``threshold_rule`` (chosen on
  validation at the best epoch: scoring uses it)
- ``config`` (resolved ``TrainConfig`` as a plain dict), ``train_data`` (clips/split manifest
  sha256, counts per label per split, ``synthetic`` flag), ``preprocess`` (image size,
  normalization, frame index), ``versions`` (dfpipe, torch, torchvision, python, numpy)
- ``history`` (one dict per epoch: ``train_loss``, ``val_loss``, ``val_roc_auc``, ...)
- resume state, in ``last.pt`` only: ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``stopper``
- release files only (``export_release``): float16 weights, no resume state, plus ``card`` (model
  card Markdown), ``crop`` (the crop recipe dict) and ``release`` (source digest, weight dtype)
- ``sha256``: digest of everything above (``payload_digest``), checked on load: the zip
  container does not check tensor bytes, so without it a flipped byte in the weights loads
  silently. Checkpoints without the key (written before it existed) load unchecked.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import CheckpointError
from pipeline.core.fsutil import atomic_path
from pipeline.core.plaintypes import plain  # noqa: F401  (re-exported: checkpoint.plain)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "dfpipe-checkpoint"
REQUIRED_KEYS = ("format_version", "model", "state_dict", "epoch", "config")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file + ``os.replace``); returns the path."""
    path = Path(path)
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    payload.pop(DIGEST_KEY, None)
    check_plain(payload)
    payload[DIGEST_KEY] = payload_digest(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


_PLAIN = (str, int, float, bool, type(None))
DIGEST_KEY = "sha256"


def payload_digest(obj: Any) -> str:
    """SHA-256 over a payload's structure, plain values and tensor bytes (dtype and shape too)."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # (numel * itemsize,) raw bytes
        elif isinstance(o, dict):
            h.update(b"{%d;" % len(o))
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(b"[%d;" % len(o))
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def check_plain(obj: Any, where: str = "payload") -> None:
    """Raise ``TypeError`` naming the key of anything a ``weights_only`` load would refuse."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if isinstance(obj, dict) and type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}: "
                    "only plain types and tensors are allowed (weights_only loading)")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = [ln for ln in lines if "Unsupported global" in ln or "Unsupported operand" in ln]
    return (hit or lines or [type(e).__name__])[0]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    expect_model: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; ``CheckpointError`` says what is wrong.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go.
        expect_model: if given, the stored model name must be this one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported operand" in text or "invalid load key" in text:  # not a pickle at all
            raise CheckpointError(f"{path}: unreadable checkpoint (not a torch file, truncated "
                                  f"or corrupt?): {_first_line(e)}") from e
        raise CheckpointError(f"{path}: refused: the file holds pickled objects that are not "
                              f"plain types/tensors (weights_only load): {_first_line(e)}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt?): "
                              f"{_first_line(e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a dfpipe checkpoint")
    stored = ckpt.get(DIGEST_KEY)
    if stored is not None and stored != payload_digest({k: v for k, v in ckpt.items() if k != DIGEST_KEY}):
        raise CheckpointError(f"{path}: refused: contents do not match the checkpoint's own SHA-256 "
                              "(tampered with or corrupt)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format_version']}, this dfpipe "
                              f"reads format {FORMAT_VERSION}")
    if expect_model is not None and ckpt["model"]["name"] != expect_model:
        raise CheckpointError(f"{path}: checkpoint is a '{ckpt['model']['name']}' model, "
                              f"expected '{expect_model}'")
    return ckpt


def build_model(ckpt: dict[str, Any], as_model: str | None = None) -> nn.Module:
    """Rebuild the model from a loaded checkpoint alone (registry + kwargs + state dict), eval mode.

    Args:
        ckpt: a dict from ``load_checkpoint``.
        as_model: a derived scorer the stored model offers (``model_spec(name).derived``, e.g.
            ``"frame_mean"`` wraps a stored ``frame`` model as the all-frames average).
    """
    from pipeline.core.errors import ConfigError
    from pipeline.models import create_model, derive

    name, kwargs = ckpt["model"]["name"], dict(ckpt["model"]["kwargs"])
    model = create_model(name, **kwargs)
    # a release stores float16 weights: back to float32 for computing
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint state dict does not fit model '{name}': "
                              f"{str(e).splitlines()[0]}") from e
    if as_model is not None and as_model != name:
        try:
            model = derive(model, as_model)
        except ConfigError as e:
            raise CheckpointError(f"checkpoint: {e}") from e
    return model.eval()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint."""
    import torchvision

    from pipeline import __version__

    return {"dfpipe": str(__version__), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


# --------------------------------------------------------------------------------------------
# release export: a small inference-only file
# --------------------------------------------------------------------------------------------

RELEASE_DROP = ("optimizer", "scheduler", "scaler", "rng", "stopper")
"""Resume state that an inference-only release leaves out."""


def check_crop_recipe(crop: dict[str, Any]) -> dict[str, Any]:
    """The crop recipe of a release (how faces are cut before the model sees them), validated.

    Keys: ``margin`` (share of the box's larger side added around it on each side; negative
    cuts inside the box, down to -0.4), ``size`` (crop side in pixels), ``square`` (square box
    before the margin), ``jpeg_quality`` (1-100, or None when crops are not JPEG-encoded), and
    optionally ``source`` (how the recipe was chosen, in words).
    """
    keys = {"margin", "size", "square", "jpeg_quality"}
    if not keys <= set(crop) <= keys | {"source"}:
        raise CheckpointError(f"crop recipe needs the keys {sorted(keys)} (and optionally "
                              f"'source'), got {sorted(crop)}")
    margin, size, square, quality = crop["margin"], crop["size"], crop["square"], crop["jpeg_quality"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not -0.4 <= margin <= 2:
        raise CheckpointError(f"crop margin must be a number in [-0.4, 2], got {margin!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise CheckpointError(f"crop size must be an integer >= 16, got {size!r}")
    if not isinstance(square, bool):
        raise CheckpointError(f"crop square must be true or false, got {square!r}")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int)
                                or not 1 <= quality <= 100):
        raise CheckpointError(f"crop jpeg_quality must be 1-100 or None, got {quality!r}")
    out = {"margin": float(margin), "size": size, "square": square, "jpeg_quality": quality}
    if crop.get("source"):
        out["source"] = str(crop["source"])
    return out


def export_release(src: str | os.PathLike, dst: str | os.PathLike, *, card_md: str,
                   crop: dict[str, Any], data_description: str = "") -> Path:
    """Write an inference-only copy of checkpoint ``src`` to ``dst`` (atomic); returns ``dst``.

    Floating-point weights are stored as float16 (``build_model`` casts them back to float32);
    optimizer and other resume state are dropped; everything ``load_checkpoint``/``build_model``
    and the scorer read is kept. Added keys: ``card`` (the model card, Markdown), ``crop`` (the
    crop recipe, see ``check_crop_recipe``) and ``release`` (source file digest, weight dtype).
    """
    from pipeline.core.fsutil import sha256_file

    if not card_md.strip():
        raise CheckpointError("export: the model card is empty")
    recipe = check_crop_recipe(crop)
    ckpt = load_checkpoint(src)
    out = {k: v for k, v in ckpt.items() if k not in RELEASE_DROP and k not in (DIGEST_KEY, "kind",
                                                                                 "format_version")}
    out["state_dict"] = collections.OrderedDict(
        (k, v.detach().to(torch.float16) if v.is_floating_point() else v)
        for k, v in ckpt["state_dict"].items())
    out["card"] = card_md
    out["crop"] = recipe
    if data_description:  # words for the training data, repeated by every verdict
        out["train_data"] = {**out.get("train_data", {}), "description": data_description}
    out["release"] = {"source_sha256": sha256_file(src), "weights_dtype": "float16",
                      "source_epoch": int(ckpt["epoch"])}
    path = save_checkpoint(dst, out)
    logger.info("release %s: %.1f MB from %s (epoch %d)", path, path.stat().st_size / 1e6, src,
                ckpt["epoch"])
    return path


def run_export(cfg: Any) -> int:
    """CLI entry of ``dfpipe export`` (``pipeline.config.ExportConfig``)."""
    card = Path(cfg.card)
    if not card.is_file():
        raise CheckpointError(f"{card}: model card not found")
    crop = {"margin": cfg.margin, "size": cfg.size, "square": cfg.square,
            "jpeg_quality": cfg.jpeg_quality or None}
    if cfg.crop_source:
        crop["source"] = cfg.crop_source
    export_release(cfg.checkpoint, cfg.out, card_md=card.read_text(encoding="utf-8"), crop=crop,
                   data_description=cfg.data_description)
    return 0
