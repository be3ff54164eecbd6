"""The model registry: one factory, one contract, and what each model is (its ``ModelSpec``).

Every model returns raw logits of shape ``(B,)`` (label 1 = FAKE) and declares ``input_key``:
``"clip"`` models take ``(clip (B, T, C, H, W), mask (B, T) | None)``, ``"image"`` models take
``image (B, C, H, W)``. Models are built only through ``create_model(name, **kwargs)``; the
keyword arguments are plain types and are stored on the model as ``model_kwargs`` so that a
checkpoint can rebuild it (``pretrained``/``weights`` are not stored: the state dict replaces them).

A registration also says what the model *is* (``ModelSpec``): what it consumes, which derived
scorers it offers (a frame model offers ``frame_mean``), where its image backbone sits (Grad-CAM
and ``--init-encoder`` read it), which ``TrainConfig`` fields become its keyword arguments, and
whether it can be trained. Training, evaluation, checkpoint rebuild, scoring and the CLI ask
``model_spec(name)`` instead of comparing names, so adding a model is one file plus its
``@register_model(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.models.registry import Registry

_MODELS = Registry("model")
_SPECS: dict[str, ModelSpec] = {}

PRESETS: dict[str, dict[str, Any]] = {
    # the seed study (Keras): TimeDistributed CNN -> LSTM(64) -> LSTM(256) -> Dense(512) -> sigmoid
    "seed_study": {"lstm_sizes": [64, 256], "dense": 512},
}


def _encoder(model: nn.Module) -> nn.Module:
    return model.encoder


def _backbone_and_dropout(cfg: Any) -> dict[str, Any]:
    return {"backbone": cfg.backbone, "dropout": cfg.dropout}


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is: the questions callers would otherwise answer by its name.

    Attributes:
        name: registry name.
        input_key: ``"clip"`` (clip + mask) or ``"image"`` (one frame); the batch key it takes.
        derived: names of derived scorers built from a trained model of this kind without
            training of their own (a frame model offers ``("frame_mean",)``).
        scores_as: the name whole videos are scored as (``frame_mean`` for a frame model);
            None: the model itself.
        wraps: for a derived scorer: the input key of the models it wraps (``"image"``).
        from_base: for a derived scorer: trained base model -> the derived model (shares weights).
        per_frame: the per-slot timeline of a scored video holds each frame's own p_fake (True)
            or the running verdict over the slots seen so far (False, a sequence model).
        trainable: offered by ``dfpipe train`` (a derived scorer is not).
        presets: accepts ``--preset`` (``PRESETS``).
        feature_cache: can train its head on cached encoder features (``--feature-cache``:
            an image model with ``encoder`` and ``head``).
        kwargs_from: ``TrainConfig`` -> the model's keyword arguments (its defaults).
        backbone: model -> its image backbone (the module ``create_backbone`` made): Grad-CAM
            reads that backbone's last feature map, ``--init-encoder`` copies its weights.
    """

    name: str
    input_key: str = "clip"
    derived: tuple[str, ...] = ()
    scores_as: str | None = None
    wraps: str | None = None
    from_base: Callable[[nn.Module], nn.Module] | None = None
    per_frame: bool = False
    trainable: bool = True
    presets: bool = False
    feature_cache: bool = False
    kwargs_from: Callable[[Any], dict[str, Any]] = _backbone_and_dropout
    backbone: Callable[[nn.Module], nn.Module] = _encoder


def register_model(name: str, **spec: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model constructor (and its ``ModelSpec`` fields) under ``name``.

    A duplicate ``name`` raises ``ValueError``; undo a registration with ``unregister_model``.
    """
    add = _MODELS.register(name)
    model_spec_ = ModelSpec(name=name, **spec)
    if model_spec_.input_key not in ("clip", "image"):
        raise ValueError(f"model '{name}': input_key must be 'clip' or 'image', "
                         f"not {model_spec_.input_key!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        add(fn)
        _SPECS[name] = model_spec_
        return fn

    return deco


def unregister_model(name: str) -> None:
    """Remove ``name`` (tests that register a throwaway model clean up with it)."""
    _MODELS.unregister(name)
    _SPECS.pop(name, None)


list_models = _MODELS.names
"""Names of all registered models, sorted."""


def model_spec(name: str) -> ModelSpec:
    """The ``ModelSpec`` of ``name``; ``ConfigError`` listing the known names otherwise."""
    _MODELS.get(name)  # the one unknown-name message
    return _SPECS[name]


def trainable_models() -> list[str]:
    """Names ``dfpipe train --model`` accepts (derived scorers left out), sorted."""
    return [n for n in list_models() if _SPECS[n].trainable]


def scorer_name(name: str) -> str:
    """The name a ``name`` model scores whole videos as (``frame`` -> ``frame_mean``)."""
    return model_spec(name).scores_as or name


def backbone_of(model: nn.Module) -> nn.Module:
    """The image backbone inside a built model (per its spec; ``model.encoder`` without one)."""
    name = getattr(model, "model_name", None)
    if name in _SPECS:
        return _SPECS[name].backbone(model)
    return model.encoder


def derive(model: nn.Module, as_model: str) -> nn.Module:
    """The derived scorer ``as_model`` built from trained ``model`` (``ConfigError`` if it has none).

    Raises:
        ConfigError: ``model``'s kind does not offer ``as_model``.
    """
    name = getattr(model, "model_name", "?")
    if name in _SPECS and as_model in _SPECS[name].derived:
        target = model_spec(as_model)
        if target.from_base is None or target.wraps != _SPECS[name].input_key:
            raise ConfigError(f"'{as_model}' does not wrap '{_SPECS[name].input_key}' models "
                              f"like '{name}' (wraps: {target.wraps})")
        return target.from_base(model)
    offered = ", ".join(_SPECS[name].derived) if name in _SPECS and _SPECS[name].derived else "none"
    raise ConfigError(f"a '{name}' model cannot be used as '{as_model}' (it offers: {offered})")


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
    declared = getattr(model, "input_key", None)
    if declared != _SPECS[name].input_key:
        raise ValueError(f"model '{name}' takes {declared!r} but is registered with input_key "
                         f"{_SPECS[name].input_key!r}")
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def model_kwargs_from(cfg: Any) -> dict[str, Any]:
    """Plain-typed registry kwargs of ``cfg.model`` from a ``TrainConfig`` (preset applied)."""
    spec = model_spec(cfg.model)
    kwargs = spec.kwargs_from(cfg)
    if spec.presets:
        return apply_preset(cfg.preset, kwargs)
    if cfg.preset:
        takes = [n for n in list_models() if _SPECS[n].presets]
        raise ConfigError(f"preset '{cfg.preset}' applies to {', '.join(takes) or 'no model'}, "
                          f"not {cfg.model}")
    return kwargs


def apply_preset(preset: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` updated with the named preset's values (None: unchanged)."""
    if preset is None or preset == "":
        return dict(kwargs)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(sorted(PRESETS))}")
    return {**kwargs, **PRESETS[preset]}
