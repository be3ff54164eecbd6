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


def _loss_and_grads(model, fixed, x, train, state):
    """The loss and the trained parameters' gradients of one step (fixed stages in eval mode).

    ``train=False`` puts the trained stages in eval mode too: their batch norms then use running
    statistics, so the gradients are well conditioned and can be compared to float rounding
    (batch statistics over a tiny batch amplify rounding by orders of magnitude, seed-dependent).
    """
    model.load_state_dict(state)  # a training-mode pass moves the batch norms' running statistics
    model.zero_grad(set_to_none=True)
    model.train(train)
    fixed.eval()
    torch.manual_seed(0)  # dropout / drop-connect draw the same masks in both runs
    logits = model(x).reshape(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_folded_fixed_prefix_trains_like_the_fixed_stages():
    """``--train-blocks``: the fixed stages run as a folded copy; their output, the loss (in
    training mode too), every trained parameter's gradient and the state dict are those of the
    unfolded model."""
    from pipeline.models import create_model
    from pipeline.models.fuse import fold_fixed_prefix
    from pipeline.train.stage import freeze_stages

    # ImageNet weights (from the pip package): random batch-norm statistics make a Lite whose
    # evaluation-mode output no longer depends on the input
    model = create_model("frame", backbone="efficientnet_lite0", pretrained=True)
    fixed = freeze_stages(model, 6)  # 18 stages: stem + first 11 blocks fixed
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    keys, n_params = list(model.state_dict()), len(list(model.parameters()))
    state = copy.deepcopy(model.state_dict())
    ref = {train: _loss_and_grads(model, fixed, x, train, state) for train in (True, False)}
    net = model.encoder.net
    fixed.eval()
    with torch.no_grad():
        want = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:11]:
            want = block(want, drop_connect_rate=0.0)

    prefix = fold_fixed_prefix(model.encoder, len(fixed))
    assert prefix is not None and len(prefix.blocks) == len(fixed) - 1 == 11
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prefix.modules())
    assert not any(p.requires_grad for p in prefix.parameters())
    assert list(model.state_dict()) == keys and len(list(model.parameters())) == n_params
    with torch.no_grad():
        assert torch.allclose(prefix(x), want, rtol=1e-4, atol=1e-4)
    loss, _ = _loss_and_grads(model, fixed, x, True, state)
    assert torch.allclose(loss, ref[True][0], atol=1e-5)
    loss, grads = _loss_and_grads(model, fixed, x, False, state)
    ref_loss, ref_grads = ref[False]
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads  # the same trained parameters
    assert not any(k.startswith("encoder.net._blocks.0.") for k in grads)
    for k in grads:
        assert torch.allclose(grads[k], ref_grads[k], rtol=1e-3, atol=1e-6)
    # the original fixed stages no longer run: changing them changes nothing
    state["encoder.net._conv_stem.weight"].zero_()
    head = "head.1.weight"
    same = _loss_and_grads(model, fixed, x, False, state)[1][head]
    assert torch.allclose(same, grads[head], rtol=1e-5, atol=1e-7)
    assert fold_fixed_prefix(model.encoder, 0) is None and "fixed_prefix" not in model.encoder.__dict__
    changed = _loss_and_grads(model, fixed, x, False, state)[1][head]  # the zeroed stem runs again
    assert float((changed - grads[head]).norm()) > 0.1 * float(grads[head].norm())
    with pytest.raises(ValueError, match="head conv"):
        fold_fixed_prefix(model.encoder, len(model.encoder.stages()))
