"""Models: the registry and its factory (``factory``), image backbones (``backbones``), the
TimeDistributed CNN -> LSTM and single-frame models (``temporal``), checkpoints (``checkpoint``).

Entry points: ``create_model(name, **kwargs)``, ``model_spec(name)``, ``list_models()``,
``create_backbone(name)``; ``checkpoint.load_checkpoint`` / ``build_model`` rebuild a trained one.
"""

# registers the models (import for side effect, after the registry exists)
from pipeline.models import temporal  # noqa: F401
from pipeline.models.backbones import create_backbone, list_backbones, register_backbone
from pipeline.models.factory import (
    PRESETS,
    ModelSpec,
    apply_preset,
    backbone_of,
    create_model,
    derive,
    list_models,
    model_kwargs_from,
    model_spec,
    register_model,
    scorer_name,
    trainable_models,
    unregister_model,
)

__all__ = [
    "PRESETS", "ModelSpec", "apply_preset", "backbone_of", "create_backbone", "create_model",
    "derive", "list_backbones", "list_models", "model_kwargs_from", "model_spec",
    "register_backbone", "register_model", "scorer_name", "trainable_models", "unregister_model",
]
