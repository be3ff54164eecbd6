"""Inference rewrites (``pipeline.models.fuse``): same outputs, no batch norm, no stride-1 F.pad."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models.backbones import create_backbone
from pipeline.models.fuse import fold_batchnorm, fuse_for_inference


def _random_stats(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def test_fold_batchnorm_exact_on_a_small_conv():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(3).eval()
    _random_stats(bn)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(conv, bn)(x), bn(conv(x)), atol=1e-6)


@pytest.mark.parametrize("size", [96, 97])  # even and odd sizes: stride-2 "SAME" padding differs
def test_fused_lite_computes_the_same_features(size):
    net = create_backbone("efficientnet_lite0").eval()
    _random_stats(net)
    fused = copy.deepcopy(net)
    n = fuse_for_inference(fused)
    blocks = fused.net._blocks
    assert n == 2 + sum(3 if b._block_args.expand_ratio != 1 else 2 for b in blocks)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    dynamic = [m for m in fused.modules() if type(m).__name__ == "Conv2dDynamicSamePadding"]
    assert dynamic and all(tuple(m.stride) == (2, 2) for m in dynamic)  # only stride 2 left
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a, b = net(x), fused(x)  # (2, 1280)
    assert a.shape == b.shape == (2, 1280)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert all(m.inplace for m in fused.modules() if isinstance(m, nn.ReLU6))


def test_grad_cam_is_unchanged_by_fusing():
    from pipeline.models import create_model
    from pipeline.score.explain import grad_cam

    model = create_model("frame", backbone="efficientnet_lite0").eval()
    _random_stats(model)
    fused = copy.deepcopy(model)
    assert fuse_for_inference(fused) > 0
    x = torch.randn(2, 3, 64, 64)
    a = grad_cam(lambda: model(x), model, (64, 64))  # (2, 64, 64)
    b = grad_cam(lambda: fused(x), fused, (64, 64))
    assert a.shape == b.shape == (2, 64, 64)
    assert np.allclose(a, b, atol=1e-3)


def test_fuse_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval"):
        fuse_for_inference(create_backbone("efficientnet_lite0").train())


def test_fuse_leaves_other_models_alone():
    tiny = create_backbone("tiny").eval()
    assert fuse_for_inference(tiny) == 0
