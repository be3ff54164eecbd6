"""Inference-only rewrites of a trained model that keep what it computes, faster on a CPU.

``fuse_for_inference(model)`` rewrites, in place, every EfficientNet-Lite backbone of an
evaluation-mode model:

- each batch norm that follows a convolution is folded into that convolution
  (``w' = w * g / sqrt(v + eps)``, ``b' = beta + (b - m) * g / sqrt(v + eps)``) and replaced by
  an identity: one pass over the feature map instead of two;
- a stride-1 convolution with an odd kernel and TensorFlow "SAME" padding (the package's
  ``Conv2dDynamicSamePadding``, which pads with ``F.pad`` on every call) becomes a plain
  ``nn.Conv2d`` with ``padding = k // 2``: the same symmetric padding, done inside the
  convolution. Stride-2 convolutions keep their dynamic padding (it is asymmetric on even sizes);
- each ReLU6 works in place: no new feature map per activation (none of them feeds a skip
  connection, and the convolution before it does not need its own output for gradients).

Measured on the shipped Lite2 (30 face crops at 224 px with flip test-time augmentation, 2 torch
threads, median of 5 interleaved runs): 2.35 s unfused, 1.45 s with the folds (scoring's model
passes); ``model.frame`` alone 1.84 s folded, 1.20 s with in-place ReLU6. Outputs identical to
float rounding (max difference 0.0 on those crops).

The outputs agree with the unfused model's to float rounding (``tests/test_fuse.py``). Grad-CAM
still works: nothing about gradients changes. Never for training: the running statistics are
gone and the batch norms no longer learn.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution (a new module; evaluation-mode statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    k = conv.kernel_size
    # the package's "SAME" convolution pads in forward; at stride 1 with an odd kernel that
    # padding is symmetric, so a plain convolution does it; at stride 2 it depends on the input
    keep_dynamic = _dynamic_same(conv) and not (tuple(conv.stride) == (1, 1)
                                               and all(n % 2 == 1 for n in k))
    if keep_dynamic:
        out = type(conv)(conv.in_channels, conv.out_channels, k, stride=conv.stride,
                         dilation=conv.dilation, groups=conv.groups, bias=True)
    else:
        padding = (k[0] // 2, k[1] // 2) if _dynamic_same(conv) else conv.padding
        out = nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=conv.stride,
                        padding=padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
        out.bias.copy_(bn.bias.detach() + (bias - bn.running_mean) * scale)
    return out.to(conv.weight.device, conv.weight.dtype)


def _dynamic_same(conv: nn.Module) -> bool:
    return type(conv).__name__ == "Conv2dDynamicSamePadding"


# (conv attribute, batch norm attribute) pairs of the package's modules, in forward order
_BLOCK_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
_NET_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))


def fuse_for_inference(model: nn.Module) -> int:
    """Fold batch norms and stride-1 padding, and make ReLU6 in place, in every EfficientNet-Lite
    of ``model`` (in place; the model must be in evaluation mode). Returns the number of batch
    norms folded."""
    from pipeline.models.backbones import EfficientNetLite

    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval() mode")
    n = 0
    for lite in [m for m in model.modules() if isinstance(m, EfficientNetLite)]:
        net = lite.net
        n += _fold_module(net, _NET_PAIRS)
        n += sum(_fold_module(block, _BLOCK_PAIRS) for block in net._blocks)
    return n


def _fold_module(owner: nn.Module, pairs: tuple[tuple[str, str], ...]) -> int:
    """Fold ``owner``'s (conv, batch norm) ``pairs`` in place and make its ReLU6 in place;
    returns the number folded."""
    n = 0
    for conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, nn.BatchNorm2d):
            continue
        setattr(owner, conv_name, fold_batchnorm(conv, bn))
        setattr(owner, bn_name, nn.Identity())
        n += 1
    if isinstance(getattr(owner, "_swish", None), nn.ReLU6):
        owner._swish = nn.ReLU6(inplace=True)
    return n


class _FoldedStem(nn.Module):
    """Stem conv + its batch norm folded + ReLU6, then the first MBConv blocks (folded)."""

    def __init__(self, conv: nn.Module, swish: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.conv, self.swish, self.blocks = conv, swish, nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.swish(self.conv(x))
        for block in self.blocks:
            x = block(x, drop_connect_rate=0.0)  # evaluation mode: no drop-connect anyway
        return x


def fold_fixed_prefix(lite: nn.Module, n_stages: int) -> nn.Module | None:
    """Let an EfficientNet-Lite's first ``n_stages`` stages (stem, then blocks) run as a folded,
    evaluation-mode copy in its forward pass; returns the copy (None for ``n_stages`` 0).

    For fine-tuning with those stages fixed for the whole run (``--train-blocks``): fixed, they
    run in evaluation mode and never change, so the copy computes what they do to float
    rounding, in about half the time (their batch norms folded, stride-1 padding in the
    convolution: ``fuse_for_inference``). They are most of a training step's forward pass on a
    CPU: they work at the highest resolutions. The copy is kept outside the module tree (not in
    ``parameters()`` or ``state_dict()``; checkpoints are unchanged) and its parameters never
    need gradients. Call it after the weights are final (after resuming) and again if the fixed
    stages change; ``fold_fixed_prefix(lite, 0)`` removes it.
    """
    blocks = lite.net._blocks
    if n_stages <= 0:
        lite.__dict__.pop("fixed_prefix", None)
        return None
    if n_stages > len(blocks) + 1:
        raise ValueError(f"fold_fixed_prefix: {n_stages} stages, but stem + {len(blocks)} blocks "
                         "(the head conv is not part of a prefix)")
    net = lite.net
    conv = fold_batchnorm(net._conv_stem, net._bn0)
    prefix = _FoldedStem(conv, nn.ReLU6(inplace=True), [deepcopy(b) for b in blocks[: n_stages - 1]])
    for block in prefix.blocks:
        _fold_module(block, _BLOCK_PAIRS)
    prefix.eval().requires_grad_(False)
    lite.__dict__["fixed_prefix"] = (prefix, n_stages - 1)
    return prefix
