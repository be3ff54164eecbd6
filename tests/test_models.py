"""Model and backbone registry. All models here are RANDOM INIT on CPU (no pretrained weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.models import (
    PRESETS,
    apply_preset,
    create_backbone,
    create_model,
    list_backbones,
    list_models,
    register_model,
)
from pipeline.models.temporal import FrameMean

torch.set_num_threads(1)

# the smallest size every backbone accepts (InceptionResnetV1 needs >= 96 px)
SIZE = {"inception_resnet_v1": 96}


def _size(backbone: str) -> int:
    return SIZE.get(backbone, 64)


def _inputs(model: nn.Module, b: int, t: int, size: int):
    if model.input_key == "clip":
        return (torch.randn(b, t, 3, size, size), torch.ones(b, t))
    return (torch.randn(b, 3, size, size),)


def _first_param(module: nn.Module) -> torch.Tensor:
    return next(p for p in module.parameters() if p.dim() == 4)  # the first conv weight


def test_registry_lists_every_required_model_and_backbone():
    assert {"cnn_lstm", "frame", "frame_mean"} <= set(list_models())
    required = {"tiny", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small",
                "mobilenet_v3_large", "inception_resnet_v1"} | {f"efficientnet_b{i}" for i in range(5)}
    assert required <= set(list_backbones())


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="known: cnn_lstm, frame"):
        create_model("nope")
    with pytest.raises(ConfigError, match="resnet18"):
        create_backbone("nope")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("cnn_lstm")(lambda **kw: nn.Identity())


@pytest.mark.parametrize("backbone", list_backbones())
def test_random_init_backbone_returns_pooled_features(backbone):
    enc = create_backbone(backbone).eval()
    with torch.no_grad():
        y = enc(torch.randn(2, 3, _size(backbone), _size(backbone)))
    assert y.shape == (2, enc.num_features)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("backbone", list_backbones())
def test_random_init_model_shape_finite_and_grad_reaches_encoder(name, backbone):
    torch.manual_seed(0)
    model = create_model(name, backbone=backbone).train()
    b, t = 2, 3
    logits = model(*_inputs(model, b, t, _size(backbone)))
    assert logits.shape == (b,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grad = _first_param(model).grad
    assert grad is not None and grad.abs().sum() > 0


def test_model_kwargs_are_plain_and_rebuild_the_same_architecture():
    m = create_model("cnn_lstm", backbone="tiny", lstm_hidden=8, bidirectional=True, dense=4)
    assert m.model_name == "cnn_lstm"
    assert m.model_kwargs == {"backbone": "tiny", "lstm_hidden": 8, "bidirectional": True, "dense": 4}
    m2 = create_model(m.model_name, **m.model_kwargs)
    m2.load_state_dict(m.state_dict())  # strict: same parameter names and shapes


def test_seed_study_preset_builds_lstm64_lstm256_dense512():
    kwargs = apply_preset("seed_study", {"backbone": "tiny", "lstm_hidden": 128})
    m = create_model("cnn_lstm", **kwargs)
    assert [lstm.hidden_size for lstm in m.lstms] == [64, 256]
    linears = [x for x in m.head if isinstance(x, nn.Linear)]
    assert [lin.out_features for lin in linears] == [512, 1]
    assert PRESETS["seed_study"] == {"lstm_sizes": [64, 256], "dense": 512}
    with pytest.raises(ConfigError, match="seed_study"):
        apply_preset("nope", {})


@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}, {"readout": "mean"},
                                {"lstm_layers": 2}])
def test_cnn_lstm_masking_all_ones_equals_no_mask_and_padding_content_is_ignored(kw):
    torch.manual_seed(0)
    m = create_model("cnn_lstm", backbone="tiny", lstm_hidden=8, **kw).eval()
    clip = torch.randn(3, 6, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(clip), m(clip, torch.ones(3, 6)))
        mask = torch.tensor([[1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1.0]])
        out = m(clip, mask)
        noisy = clip.clone()
        noisy[mask == 0] = torch.randn_like(noisy[mask == 0]) * 10  # change padded pixels only
        torch.testing.assert_close(m(noisy, mask), out)
        assert not torch.allclose(out[:2], m(clip)[:2])  # the mask does act on padded clips


def test_frame_mean_is_logit_of_masked_mean_probability():
    torch.manual_seed(0)
    frame = create_model("frame", backbone="tiny").eval()
    fm = FrameMean.from_frame(frame).eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0.0]])
    with torch.no_grad():
        per_frame = torch.sigmoid(frame(clip.reshape(8, 3, 32, 32))).reshape(2, 4)
        expect = torch.stack([per_frame[0].mean(), per_frame[1, [0, 2]].mean()])
        got = torch.sigmoid(fm(clip, mask))
    torch.testing.assert_close(got, expect)
    assert fm.model_name == "frame_mean"


def test_frame_mean_stays_finite_for_saturated_frames():
    frame = create_model("frame", backbone="tiny").eval()
    with torch.no_grad():
        frame.head[-1].bias.fill_(1e4)  # every frame says p = 1.0
    out = FrameMean.from_frame(frame)(torch.randn(1, 3, 3, 32, 32))
    assert torch.isfinite(out).all() and out.item() > 10


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "inception_resnet_v1"])
def test_pretrained_without_file_or_cache_names_what_to_download(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: nothing is downloaded
    with pytest.raises(ConfigError, match=r"not available offline: download https://.+ and put it at "
                                          + str(tmp_path)):
        create_backbone(backbone, pretrained=True)


def test_weights_file_is_loaded_and_a_bad_one_is_refused(tmp_path):
    src = create_backbone("resnet18")
    path = tmp_path / "r18.pt"
    torch.save({**src.state_dict(), "fc.weight": torch.zeros(10, 512)}, path)  # head keys ignored
    dst = create_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(dst.state_dict(), src.state_dict())
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="bad.pt"):
        create_backbone("resnet18", weights=str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="no published pretrained"):
        create_backbone("tiny", pretrained=True)


def test_frame_mean_p_is_the_masked_mean_clamped_in_the_input_dtype():
    from pipeline.models.temporal import FRAME_EPS, frame_mean_p

    probs = torch.tensor([[0.2, 0.4, 0.9, 0.6], [1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
                         dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 0]])
    got = frame_mean_p(probs, mask)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.4, 1 - FRAME_EPS, FRAME_EPS])  # no valid frame: 0/1
    assert frame_mean_p(probs[:1]).tolist() == pytest.approx([0.525])  # no mask: every slot


def test_the_registry_answers_what_callers_used_to_ask_by_name():
    from pipeline.models import backbone_of, model_spec, scorer_name, trainable_models

    assert model_spec("frame").input_key == "image" and model_spec("cnn_lstm").input_key == "clip"
    assert model_spec("frame").derived == ("frame_mean",) and model_spec("cnn_lstm").derived == ()
    assert scorer_name("frame") == "frame_mean" and scorer_name("cnn_lstm") == "cnn_lstm"
    assert model_spec("frame_mean").per_frame and not model_spec("cnn_lstm").per_frame
    assert trainable_models() == ["cnn_lstm", "frame"]  # frame_mean has no training of its own
    lstm, frame = create_model("cnn_lstm"), create_model("frame")
    assert backbone_of(lstm) is lstm.encoder.encoder and backbone_of(frame) is frame.encoder
    assert backbone_of(FrameMean.from_frame(frame)) is frame.encoder
    with pytest.raises(ConfigError, match="known: cnn_lstm, frame"):
        model_spec("nope")
