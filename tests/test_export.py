"""``export_release`` / ``dfpipe export``: a small inference-only release checkpoint."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import make_manifests

from pipeline import cli
from pipeline.core.errors import CheckpointError
from pipeline.models import checkpoint as C
from pipeline.train import data, engine

CROP = {"margin": 0.0, "size": 224, "square": True, "jpeg_quality": None}


def test_release_is_float16_inference_only_and_rebuilds_the_same_model(tiny_frame_checkpoint,
                                                                       tmp_path):
    dst = C.export_release(tiny_frame_checkpoint, tmp_path / "rel.pt", card_md="# card\n", crop=CROP)
    rel = C.load_checkpoint(dst, expect_model="frame")
    src = C.load_checkpoint(tiny_frame_checkpoint)
    assert not set(C.RELEASE_DROP) & set(rel)
    assert rel["card"] == "# card\n" and rel["crop"] == CROP
    assert rel["release"]["weights_dtype"] == "float16"
    for k in ("model", "config", "preprocess", "threshold", "train_data", "best", "epoch"):
        assert rel[k] == src[k]
    floats = [v for v in rel["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    model, ref = C.build_model(rel), C.build_model(src)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    manifests = make_manifests(tmp_path / "m", size=32, seed=3)
    ds = data.split_dataset(manifests, "val", "image", image_size=32)
    a = engine.predict(model, engine.make_loader(ds, 4), torch.device("cpu"))
    b = engine.predict(ref, engine.make_loader(ds, 4), torch.device("cpu"))
    assert (a["p_fake"] - b["p_fake"]).abs().max() < 5e-3


def test_release_of_a_lite0_frame_model_is_small(tmp_path):
    from pipeline.models import create_model

    model = create_model("frame", backbone="efficientnet_lite0")
    src = C.save_checkpoint(tmp_path / "src.pt", {
        "model": {"name": "frame", "kwargs": model.model_kwargs}, "state_dict": model.state_dict(),
        "epoch": 1, "config": {}, "optimizer": {"state": {}, "param_groups": []}})
    dst = C.export_release(src, tmp_path / "rel.pt", card_md="card", crop=CROP)
    assert dst.stat().st_size < 8e6  # 3.4 M parameters in float16: about 7 MB
    assert dst.stat().st_size < 0.6 * src.stat().st_size


@pytest.mark.parametrize("crop, match", [
    ({**CROP, "margin": -0.5}, "margin"),
    ({**CROP, "size": 8}, "size"),
    ({**CROP, "square": "yes"}, "square"),
    ({**CROP, "jpeg_quality": 0}, "jpeg_quality"),
    ({"margin": 0.0}, "keys"),
    ({**CROP, "colour": "rgb"}, "keys"),
])
def test_bad_crop_recipe_is_refused(tiny_frame_checkpoint, tmp_path, crop, match):
    with pytest.raises(CheckpointError, match=match):
        C.export_release(tiny_frame_checkpoint, tmp_path / "rel.pt", card_md="c", crop=crop)
    assert not (tmp_path / "rel.pt").exists()


def test_cli_export_writes_card_and_crop(tiny_frame_checkpoint, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# tiny\nnot a detector\n", encoding="utf-8")
    out = tmp_path / "rel.pt"
    rc = cli.main(["-q", "export", "--checkpoint", str(tiny_frame_checkpoint), "--out", str(out),
                   "--card", str(card), "--margin", "0.1", "--jpeg-quality", "90", "--no-square",
                   "--crop-source", "measured", "--data-description", "tiny synthetic blobs"])
    assert rc == 0
    rel = C.load_checkpoint(out)
    assert rel["card"] == card.read_text(encoding="utf-8")
    assert rel["crop"] == {"margin": 0.1, "size": 224, "square": False, "jpeg_quality": 90,
                           "source": "measured"}
    assert rel["train_data"]["description"] == "tiny synthetic blobs"
    src = C.load_checkpoint(tiny_frame_checkpoint)["train_data"]
    assert {k: v for k, v in rel["train_data"].items() if k != "description"} == {
        k: v for k, v in src.items() if k != "description"}
    assert cli.main(["-q", "export", "--checkpoint", str(tiny_frame_checkpoint), "--out",
                     str(tmp_path / "x.pt"), "--card", str(tmp_path / "none.md")]) == 2
