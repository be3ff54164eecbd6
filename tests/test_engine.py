"""The shared loop: sampler, forward dispatch, predict/evaluate (RANDOM INIT tiny models, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from train_fixtures import make_manifests

from pipeline.models import create_model
from pipeline.train import data, engine

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    return make_manifests(tmp_path_factory.mktemp("e"), n_frames=4, size=16)


def test_probabilities_is_sigmoid_in_float32():
    p = engine.probabilities(torch.tensor([0.0, 100.0, -100.0], dtype=torch.float16))
    assert p.dtype == torch.float32
    assert p.tolist() == [0.5, 1.0, 0.0]


def test_sampler_is_a_permutation_reproducible_per_epoch():
    s = engine.EpochSampler(np.array([0, 1] * 5), seed=3)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(2)
    assert list(s) == a and sorted(i for i, _ in a) == list(range(10))
    assert {e for _, e in a} == {2}
    s.set_epoch(3)
    assert [i for i, _ in s] != [i for i, _ in a]


def test_sampler_ranks_partition_the_single_process_order():
    labels = np.array([0, 1, 1, 1, 1, 1, 1, 0])
    single = engine.EpochSampler(labels, seed=1)
    ranks = [engine.EpochSampler(labels, seed=1, rank=r, world_size=2) for r in range(2)]
    order = [i for i, _ in single]
    got = [[i for i, _ in r] for r in ranks]
    assert got[0] == order[0::2] and got[1] == order[1::2]
    # batch b per rank at step k covers exactly the single-process batch 2b at step k
    b = 2
    for k in range(2):
        assert sorted(got[0][k * b:(k + 1) * b] + got[1][k * b:(k + 1) * b]) == \
            sorted(order[2 * b * k:2 * b * (k + 1)])
    odd = [list(engine.EpochSampler(np.arange(5) % 2, rank=r, world_size=2)) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 3  # padded by wrapping


def test_balanced_sampler_draws_both_classes_equally_often():
    labels = np.array([0] * 10 + [1] * 90)
    s = engine.EpochSampler(labels, balanced=True, seed=0)
    drawn = []
    for epoch in range(20):
        s.set_epoch(epoch)
        drawn += [labels[i] for i, _ in s]
    share = float(np.mean(drawn))
    assert 0.45 < share < 0.55


@pytest.mark.parametrize("name,mode", [("cnn_lstm", "clip"), ("frame", "image"),
                                       ("frame_mean", "clip")])
def test_predict_returns_one_row_per_video_with_probabilities(manifests, name, mode):
    torch.manual_seed(0)
    model = create_model(name, backbone="tiny")
    ds = data.split_dataset(manifests, "val", mode, image_size=16)
    preds = engine.predict(model, engine.make_loader(ds, 3), torch.device("cpu"))
    assert list(preds.columns) == ["video_id", "label", "p_fake"]
    assert sorted(preds["video_id"]) == sorted(r.video_id for r in ds.records)
    assert preds["p_fake"].between(0, 1).all()
    assert set(preds["label"]) == {0, 1}
    # same model, batch size 1: same probabilities (the loop does not depend on batching)
    again = engine.predict(model, engine.make_loader(ds, 1), torch.device("cpu"))
    np.testing.assert_allclose(again["p_fake"], preds["p_fake"], rtol=1e-5, atol=1e-6)


def test_evaluate_reports_auc_loss_and_threshold(manifests):
    torch.manual_seed(0)
    model = create_model("cnn_lstm", backbone="tiny")
    ds = data.split_dataset(manifests, "val", "clip", image_size=16)
    ev = engine.evaluate(model, engine.make_loader(ds, 4), torch.device("cpu"))
    assert 0 <= ev["roc_auc"] <= 1 and math.isfinite(ev["loss"]) and 0 < ev["threshold"] < 1
    assert ev["loss"] == pytest.approx(ev["balanced_log_loss"])
    assert len(ev["predictions"]) == 8


def test_single_class_validation_gives_nan_auc_and_a_warning(tmp_path):
    out = make_manifests(tmp_path, n_real={"val": 0}, n_fake={"val": 3}, n_frames=2, size=16)
    ds = data.split_dataset(out, "val", "clip", image_size=16)
    with pytest.warns(UserWarning, match="AUC undefined"):
        ev = engine.evaluate(create_model("cnn_lstm"), engine.make_loader(ds, 2), torch.device("cpu"))
    assert math.isnan(ev["roc_auc"]) and math.isfinite(ev["loss"])


def test_train_one_epoch_lowers_the_loss_and_frozen_encoder_stays_fixed(manifests):
    torch.manual_seed(0)
    model = create_model("cnn_lstm", backbone="tiny", lstm_hidden=16, dropout=0.0)
    ds = data.split_dataset(manifests, "train", "clip", image_size=16)
    loader = engine.make_loader(ds, 4, sampler=engine.EpochSampler(ds.labels, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    crit = torch.nn.BCEWithLogitsLoss()
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    head_before = [p.detach().clone() for p in model.head.parameters()]
    out = engine.train_one_epoch(model, loader, opt, crit, torch.device("cpu"),
                                 frozen=model.encoder, progress=False)
    assert out["steps"] == 3 and out["samples"] == 12
    assert all(torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))
    losses = [engine.train_one_epoch(model, loader, opt, crit, torch.device("cpu"), epoch=e,
                                     progress=False)["loss"] for e in range(8)]
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, model.encoder.parameters(), strict=True))


def test_inference_precision_follows_the_cpu_and_the_override(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(engine.PRECISION_ENV, raising=False)
    monkeypatch.setattr(engine, "_cpu_bf16", lambda: True)
    assert engine.inference_precision(cpu) == "bfloat16"
    monkeypatch.setattr(engine, "_cpu_bf16", lambda: False)
    assert engine.inference_precision(cpu) == "float32"
    monkeypatch.setenv(engine.PRECISION_ENV, "bfloat16")
    assert engine.inference_precision(cpu) == "bfloat16"
    monkeypatch.setenv(engine.PRECISION_ENV, " Float32 ")
    monkeypatch.setattr(engine, "_cpu_bf16", lambda: True)
    assert engine.inference_precision(cpu) == "float32"
    monkeypatch.setenv(engine.PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="DFPIPE_INFERENCE_PRECISION must be auto, float32 or bfloat16"):
        engine.inference_precision(cpu)


def test_bfloat16_inference_runs_convolutions_in_bfloat16_and_returns_float32_probabilities(
        monkeypatch, manifests):
    """Under the bfloat16 rule the model's convolutions see bfloat16 (autocast) and predict's
    p_fake stay float probabilities close to the float32 run's; float32 keeps float32."""
    model = create_model("frame", backbone="tiny").eval()
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loader = engine.make_loader(data.split_dataset(manifests, "val", "image", image_size=16), 4)
    runs = {}
    for precision in ("float32", "bfloat16"):
        monkeypatch.setenv(engine.PRECISION_ENV, precision)
        seen.clear()
        runs[precision] = engine.predict(model, loader, torch.device("cpu"))["p_fake"].to_numpy()
        assert set(seen) == {torch.float32 if precision == "float32" else torch.bfloat16}
    hook.remove()
    a, b = runs["float32"], runs["bfloat16"]
    assert a.dtype == b.dtype == np.float64 and ((b >= 0) & (b <= 1)).all()
    assert np.abs(a - b).max() < 0.05 and not np.array_equal(a, b)
