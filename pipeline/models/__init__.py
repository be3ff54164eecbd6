"""Model registry: one factory, one contract.

Every model returns raw logits of shape ``(B,)`` (label 1 = FAKE) and declares ``input_key``:
``"clip"`` models take ``(clip (B, T, C, H, W), mask (B, T) | None)``, ``"image"`` models take
``image (B, C, H, W)``. Models are built only through ``create_model(name, **kwargs)``; the
keyword arguments are plain types and are stored on the model as ``model_kwargs`` so that a
checkpoint can rebuild it (``pretrained``/``weights`` are not stored: the state dict replaces them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.backbones import create_backbone, list_backbones, register_backbone
from pipeline.models.registry import Registry

_MODELS = Registry("model")

PRESETS: dict[str, dict[str, Any]] = {
    # the seed study (Keras): TimeDistributed CNN -> LSTM(64) -> LSTM(256) -> Dense(512) -> sigmoid
    "seed_study": {"lstm_sizes": [64, 256], "dense": 512},
}


register_model = _MODELS.register
"""Decorator adding a model constructor to the registry; duplicate names are refused."""
list_models = _MODELS.names
"""Names of all registered models, sorted."""


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build model ``name`` with plain-typed ``kwargs``.

    Args:
        name: a name from ``list_models()``.
        pretrained: load pretrained backbone weights (offline only; see ``backbones``).
        weights: path of a backbone weights file.
        **kwargs: the model's own options (stored as ``model.model_kwargs``).
    """
    model = _MODELS.get(name)(pretrained=pretrained, weights=weights, **kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def apply_preset(preset: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` updated with the named preset's values (None: unchanged)."""
    if preset is None or preset == "":
        return dict(kwargs)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(sorted(PRESETS))}")
    return {**kwargs, **PRESETS[preset]}


# registers the models (import for side effect, after the registry exists)
from pipeline.models import temporal  # noqa: E402, F401

__all__ = [
    "PRESETS", "apply_preset", "create_backbone", "create_model", "list_backbones",
    "list_models", "register_backbone", "register_model",
]
