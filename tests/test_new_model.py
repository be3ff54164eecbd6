"""Adding a model = one class plus its registration: a throwaway model, registered here only,
goes through train (the CLI) -> evaluate -> score (with evidence: Grad-CAM) with no other change.

Two kinds: a clip model (masked mean of per-frame features -> head, with the ``encoder`` /
``classify`` pair the scorer reads running verdicts from) and an image model (a two-layer head
on the tiny backbone) that offers ``frame_mean`` like the registered ``frame``. Each is
registered by a fixture that unregisters it afterwards, so other tests see the usual registry.
Random init, 1 epoch on 32 px synthetic crops: the numbers mean nothing, the route is the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from train_fixtures import make_manifests

from pipeline import cli
from pipeline.core.errors import ConfigError
from pipeline.models import (
    create_model,
    list_models,
    model_spec,
    register_model,
    trainable_models,
    unregister_model,
)
from pipeline.models.backbones import create_backbone
from pipeline.models.temporal import TimeDistributed


class MeanPoolClip(nn.Module):
    """Encoder per frame -> masked mean over the slots -> linear head: (clip, mask) -> (B,)."""

    input_key = "clip"

    def __init__(self, backbone: str = "tiny", dropout: float = 0.0, pretrained: bool = False,
                 weights: str | None = None) -> None:
        super().__init__()
        self.encoder = TimeDistributed(create_backbone(backbone, pretrained, weights))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.num_features, 1))

    def forward(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(clip.shape[:2], device=clip.device)
        return self.classify(self.encoder(clip), mask)

    def classify(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = mask.to(feats.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (feats * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, F)
        return self.head(pooled).squeeze(-1)  # (B,)


class MLPFrame(nn.Module):
    """The tiny backbone on one image -> a two-layer head: image (B, C, H, W) -> (B,)."""

    input_key = "image"

    def __init__(self, backbone: str = "tiny", dropout: float = 0.0, pretrained: bool = False,
                 weights: str | None = None) -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, pretrained, weights)
        width = self.encoder.num_features
        self.head = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(16, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(image)).squeeze(-1)  # (B,)


KINDS = {
    "throwaway_clip": (MeanPoolClip, {"input_key": "clip", "backbone": lambda m: m.encoder.encoder}),
    "throwaway_frame": (MLPFrame, {"input_key": "image", "derived": ("frame_mean",),
                                   "scores_as": "frame_mean"}),
}


@pytest.fixture(params=sorted(KINDS))
def throwaway(request):
    """Register one throwaway model for the test; unregister it afterwards."""
    name = request.param
    cls, spec = KINDS[name]
    register_model(name, **spec)(cls)
    try:
        yield name
    finally:
        unregister_model(name)
    assert name not in list_models()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    return make_manifests(tmp_path_factory.mktemp("new_model"), size=32, seed=3)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from pipeline.synth.dataset import make_clip

    path = tmp_path_factory.mktemp("new_model_video") / "one.mp4"
    make_clip(path, n_frames=60, seed=1)
    return path


@pytest.mark.slow  # ~25 s per kind: a training run, an evaluation and MTCNN on a clip
def test_a_registered_model_trains_evaluates_and_scores(throwaway, manifests, video, tmp_path):
    from pipeline.score.scorer import VideoScorer

    torch.set_num_threads(1)
    spec = model_spec(throwaway)
    assert throwaway in trainable_models()
    # train through the CLI: --model's choices come from the registry
    assert cli.main(["train", "--model", throwaway, "--backbone", "tiny", "--manifest-dir",
                     str(manifests), "--out-dir", str(tmp_path / "ckpt"), "--run-name", "run",
                     "--image-size", "32", "--epochs", "1", "--batch-size", "4",
                     "--device", "cpu"]) == 0
    ckpt_path = tmp_path / "ckpt" / "run" / "best.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["model"]["name"] == throwaway
    assert ckpt["preprocess"]["input_key"] == spec.input_key
    assert set(ckpt["thresholds"]) == {throwaway, *spec.derived}

    out = tmp_path / "report"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt_path), "--manifest-dir", str(manifests),
                     "--out", str(out), "--bootstrap", "0", "--device", "cpu",
                     "--batch-size", "4"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["models"]) == {throwaway, *spec.derived}
    assert summary["models"][throwaway]["info"]["arch"] == throwaway
    for derived in spec.derived:
        assert summary["models"][derived]["info"]["derived_from"] == throwaway

    scorer = VideoScorer.from_checkpoint(str(ckpt_path), device="cpu", min_frames=4)
    assert scorer.info()["model"] == throwaway
    assert scorer.info()["scored_as"] == (spec.scores_as or throwaway)
    r = scorer.score(video, explain_dir=tmp_path / "evidence")
    assert r["status"] == "ok", r["reason"]
    assert 0.0 <= r["p_fake"] <= 1.0 and r["checkpoint"]["model"] == (spec.scores_as or throwaway)
    assert len(r["timeline"]) == 30  # 60 frames (2 s): the 30 slots spread over the clip
    assert Path(r["evidence_png"]).is_file()  # Grad-CAM found the backbone the spec names


def test_unregistering_restores_the_registry():
    register_model("throwaway_tmp", input_key="image")(MLPFrame)
    assert "throwaway_tmp" in trainable_models()
    unregister_model("throwaway_tmp")
    with pytest.raises(ConfigError, match="unknown model 'throwaway_tmp'"):
        create_model("throwaway_tmp")
    with pytest.raises(ConfigError, match="unknown model"):
        model_spec("throwaway_tmp")


def test_a_registration_must_match_what_the_model_takes():
    register_model("throwaway_wrong", input_key="clip")(MLPFrame)
    try:
        with pytest.raises(ValueError, match="takes 'image' but is registered with input_key 'clip'"):
            create_model("throwaway_wrong")
    finally:
        unregister_model("throwaway_wrong")
