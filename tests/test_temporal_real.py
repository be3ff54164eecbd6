"""The temporal model on real footage: ``dfpipe train --model cnn_lstm --init-encoder default``.

No multi-frame real training set ships with dfpipe (``dfdc_faces`` is one crop per video), so the
LSTM's real training happens on a user's DFDC parts. This test runs that flow end to end through
the CLI on the FaceForensics++ c23 sample clips (3 originals, 4 fakes: tiny, but real faces, real
H.264): extract -> prepare -> train a ``cnn_lstm`` whose encoder starts from the shipped model's ->
evaluate. It checks that the flow works and records what it should, not that 7 clips teach an
LSTM anything.
"""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from pipeline.models import backbone_of
from pipeline.models.checkpoint import build_model, load_checkpoint
from pipeline.release import default_checkpoint_path

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_cnn_lstm_on_the_shipped_encoder_trains_on_real_clips(real_samples, tmp_path):
    import torch

    src = real_samples / "ffpp_c23"
    m, ck = tmp_path / "manifests", tmp_path / "checkpoints"
    assert main(["extract", str(src), "--manifest-dir", str(m), "--out",
                 str(tmp_path / "faces"), "--workers", "1"]) == 0
    # FF++ clips run 309-751 frames at 25 fps: a face-count window that keeps them all
    assert main(["prepare", "--manifest-dir", str(m), "--min-faces", "100", "--max-faces", "2000",
                 "--orphan-fakes", "keep"]) == 0
    release = load_checkpoint(default_checkpoint_path())
    size = int(release["preprocess"]["image_size"])
    backbone = release["model"]["kwargs"]["backbone"]  # --init-encoder needs the same one
    assert main(["train", "--model", "cnn_lstm", "--backbone", backbone,
                 "--init-encoder", "default", "--manifest-dir", str(m), "--out-dir", str(ck),
                 "--run-name", "lstm", "--image-size", str(size), "--epochs", "1",
                 "--freeze-backbone-epochs", "1", "--batch-size", "2", "--threads", "2",
                 "--data-description", "FF++ c23 sample clips"]) == 0
    best = load_checkpoint(ck / "lstm" / "best.pt")
    assert best["init_encoder"]["path"] == str(default_checkpoint_path())
    assert best["train_data"]["description"] == "FF++ c23 sample clips"
    # the encoder was frozen for the only epoch: it is still the shipped model's encoder
    want = backbone_of(build_model(release)).state_dict()
    got = backbone_of(build_model(best)).state_dict()
    assert all(torch.equal(got[k].float(), want[k].float()) for k in want
               if k.endswith(("weight", "bias")))
    out = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(ck / "lstm" / "best.pt"), "--manifest-dir",
                 str(m), "--split", "test", "--out", str(out), "--bootstrap", "50"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics  # a report with the LSTM's numbers (meaningless on a handful of clips)
