"""The shipped model (``--checkpoint default``), crops made as the training crops were (crop recipe
+ JPEG round trip), ``train --init-encoder``, the crop-margin measurement, the demo's real-model
step. Tiny checkpoints only; the real shipped model is tested when its file is present."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import release
from pipeline.core.errors import CheckpointError, ConfigError
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipeline" / "release" / release.DEFAULT_CHECKPOINT
CARD = "# tiny_release: tiny frame model on test crops (not a detector)\n\nMore text.\n"


def _with_keys(src: Path, dst: Path, **extra) -> Path:
    ckpt = load_checkpoint(src)
    ckpt.pop("sha256", None)
    save_checkpoint(dst, {**ckpt, **extra})
    return dst


@pytest.fixture
def release_dir(tmp_path, monkeypatch, tiny_frame_checkpoint) -> Path:
    """pipeline/release pointed at a folder holding a tiny frame checkpoint as the default."""
    folder = tmp_path / "release"
    folder.mkdir()
    data = dict(load_checkpoint(tiny_frame_checkpoint)["train_data"])
    data.update(synthetic=False, description="test crops (tiny)")
    _with_keys(tiny_frame_checkpoint, folder / release.DEFAULT_CHECKPOINT, card=CARD,
               train_data=data,
               crop={"margin": 0.1, "size": 64, "square": True, "jpeg_quality": 75})
    (folder / release.DEFAULT_CARD).write_text(CARD)
    monkeypatch.setattr(release, "RELEASE_DIR", folder)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from pipeline.synth.dataset import make_clip

    path = tmp_path_factory.mktemp("release_clip") / "one.mp4"
    make_clip(path, n_frames=120, seed=1)
    return path


# ------------------------------------------------------------------------ default resolution


def test_resolve_checkpoint(release_dir):
    shipped = str(release_dir / release.DEFAULT_CHECKPOINT)
    assert release.resolve_checkpoint("") == shipped
    assert release.resolve_checkpoint(None) == shipped
    assert release.resolve_checkpoint("default") == shipped
    assert release.resolve_checkpoint("runs/x/best.pt") == "runs/x/best.pt"
    assert release.card_title() == "tiny_release: tiny frame model on test crops (not a detector)"


def test_missing_default_is_a_clear_error(tmp_path, monkeypatch, clip, capsys):
    from pipeline.cli import main

    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="not part of this install.*--checkpoint PATH"):
        release.resolve_checkpoint("default")
    assert main(["score", str(clip), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and release.DEFAULT_CHECKPOINT in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def test_score_help_names_the_default_model_without_importing_torch():
    code = ("import sys, contextlib, io\n"
            "from pipeline.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "    main(['score', '--help'])\n"
            "print(buf.getvalue()); print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)}).stdout
    flat = " ".join(out.split())
    from pipeline.release import DEFAULT_CHECKPOINT

    assert f"pipeline/release/{DEFAULT_CHECKPOINT}" in flat and "dfdc_faces" in flat
    assert "TORCH False" in out


def test_score_without_checkpoint_uses_the_shipped_model(release_dir, clip, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "r.jsonl"
    assert main(["score", str(clip), "--out", str(out), "--device", "cpu"]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert row["status"] == "ok", row["reason"]
    ck = row["checkpoint"]
    assert ck["path"] == str(release_dir / release.DEFAULT_CHECKPOINT)
    assert ck["card_title"] == "tiny_release: tiny frame model on test crops (not a detector)"
    assert ck["model"] == "frame_mean"
    assert ck["trained_on"] == "real data: test crops (tiny), 6 REAL / 6 FAKE training videos"
    import pandas as pd

    csv = tmp_path / "r.csv"
    assert main(["score", str(clip), "--out", str(csv), "--device", "cpu"]) == 0
    table = pd.read_csv(csv)
    assert table.loc[0, "card_title"] == ck["card_title"]
    assert table.loc[0, "trained_on"] == ck["trained_on"]


def test_serve_without_the_default_model_exits_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from pipeline.cli import main

    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path)
    assert main(["serve", "--port", "1"]) == 2  # refused before anything binds
    assert "not part of this install" in capsys.readouterr().err


def test_trained_on_thousands_and_unknown():
    from pipeline.score.card import trained_on as _trained_on

    data = {"synthetic": False, "description": "DFDC face crops (dfdc_faces)",
            "counts": {"train": {"REAL": 4820, "FAKE": 8945}}}
    assert _trained_on(data) == ("real data: DFDC face crops (dfdc_faces), 4,820 REAL / 8,945 "
                                 "FAKE training videos")
    assert _trained_on({}) == "unknown"


def test_service_model_names_the_card(release_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pipeline.config import ServeConfig
    from pipeline.score.scorer import VideoScorer
    from pipeline.service.app import create_app

    app = create_app(lambda: VideoScorer.from_checkpoint("default", device="cpu"),
                     ServeConfig())
    with TestClient(app) as client:
        m = client.get("/model").json()
    assert m["card_title"].startswith("tiny_release")
    assert m["trained_on"].startswith("real data: test crops (tiny)")
    assert m["crop"]["margin"] == 0.1 and m["crop"]["jpeg_quality"] == 75


# ------------------------------------------------------------------------ crops without skew


def test_crop_face_square_and_not():
    import cv2

    from pipeline.faces.crops import crop_face

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    box = (40.0, 20.0, 60.0, 60.0)  # 20 wide, 40 tall, centre (50, 40)
    # not square, no margin: exactly the box, stretched to size x size
    tight = crop_face(frame, box, 0.0, 40, square=False)
    assert np.array_equal(tight, cv2.resize(frame[20:60, 40:60], (40, 40), interpolation=cv2.INTER_LINEAR))
    # square, no margin: the 40 x 40 square around the centre (the old behaviour)
    sq = crop_face(frame, box, 0.0, 40)
    assert np.array_equal(sq, frame[20:60, 30:70])
    # margin 0.25, not square: 30 x 60 source pixels
    wide = crop_face(frame, box, 0.25, 60, square=False)
    assert np.array_equal(wide, cv2.resize(frame[10:70, 35:65], (60, 60), interpolation=cv2.INTER_LINEAR))
    # a negative margin is tighter than the box
    inner = crop_face(frame, box, -0.25, 20)
    assert np.array_equal(inner, frame[30:50, 40:60])


def test_jpeg_round_trip_equals_a_written_and_read_training_crop(tmp_path):
    """Scoring's in-memory round trip gives the very pixels training reads from the crop file."""
    from pipeline.faces.crops import jpeg_round_trip
    from pipeline.faces.records import FaceRecord, VideoFaces
    from pipeline.faces.video import write_video_faces
    from pipeline.train.data import load_crop

    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8) for _ in range(2)]
    faces = VideoFaces(info=None, records=[FaceRecord(i, 0, (0, 0, 1, 1), 1.0) for i in range(2)],
                       crops=crops)
    for q in (95, 60):
        paths = write_video_faces(faces, tmp_path / f"q{q}", q)
        for c, p in zip(crops, paths, strict=True):
            assert np.array_equal(jpeg_round_trip(c, q), load_crop(p))
            assert not np.array_equal(jpeg_round_trip(c, q), c)


def test_crop_recipe_from_checkpoint_or_extract_defaults():
    from pipeline.score.card import crop_recipe

    got = crop_recipe({"crop": {"margin": -0.05, "size": 224, "square": True, "jpeg_quality": 75}})
    assert got == {"margin": -0.05, "size": 224, "square": True, "jpeg_quality": 75,
                   "source": "checkpoint"}
    part = crop_recipe({"crop": {"margin": 0.0, "size": 224}})
    assert (part["square"], part["jpeg_quality"]) == (True, 95)
    assert part["source"] == "checkpoint (square, jpeg_quality: extract defaults)"
    old = crop_recipe({})
    assert (old["margin"], old["size"], old["square"], old["jpeg_quality"]) == (0.3, 160, True, 95)
    assert old["source"].startswith("extract defaults")


def test_scorer_crops_with_the_recipe_and_jpeg_round_trip(tiny_frame_checkpoint, tmp_path, clip):
    """The model sees crops of the recipe's size/margin/shape after the JPEG round trip."""
    from pipeline.faces.crops import jpeg_round_trip
    from pipeline.score.scorer import VideoScorer

    seen: dict[int, list[np.ndarray]] = {}

    def scorer(quality: int) -> VideoScorer:
        path = _with_keys(tiny_frame_checkpoint, tmp_path / f"q{quality}.pt",
                          crop={"margin": 0.0, "size": 48, "square": False,
                                "jpeg_quality": quality})
        s = VideoScorer.from_checkpoint(path, device="cpu")
        inputs = s.predictor.inputs

        def spy(tracks, crops):
            seen[quality] = list(crops)
            return inputs(tracks, crops)

        s.predictor.inputs = spy
        return s

    raw, jpg = scorer(0), scorer(40)
    assert (raw.extract_cfg.margin, raw.extract_cfg.crop_size, raw.extract_cfg.square) == (0.0, 48, False)
    r0, r40 = raw.score(clip), jpg.score(clip)
    assert r0["status"] == r40["status"] == "ok"
    assert all(c.shape == (48, 48, 3) for c in seen[0])
    assert len(seen[0]) == len(seen[40])
    for a, b in zip(seen[0], seen[40], strict=True):
        assert np.array_equal(b, jpeg_round_trip(a, 40))
    assert r0["checkpoint"]["path"] != r40["checkpoint"]["path"]


def test_train_records_the_extract_crop_recipe(tmp_path):
    import pandas as pd

    from pipeline.config import ExtractConfig, to_dict
    from pipeline.io.manifest import SCHEMAS, manifest_path, write_manifest
    from pipeline.train.stage import train_crop

    empty = pd.DataFrame(columns=list(SCHEMAS["videos"].columns))
    cfg = ExtractConfig(margin=0.2, crop_size=128, jpeg_quality=90, square=False)
    write_manifest(empty, manifest_path(tmp_path, "videos"), "videos", config=to_dict(cfg))
    got = train_crop(tmp_path)
    assert {k: got[k] for k in ("margin", "size", "square", "jpeg_quality")} == {
        "margin": 0.2, "size": 128, "square": False, "jpeg_quality": 90}
    imported = tmp_path / "imported"
    write_manifest(empty, manifest_path(imported, "videos"), "videos",
                   config=to_dict(replace(cfg, from_faces=True)))
    assert train_crop(imported) is None  # crops made elsewhere: unknown
    assert train_crop(tmp_path / "nothing") is None


# ------------------------------------------------------------------------ --init-encoder


def _train_cfg(tiny_frame_checkpoint, tmp_path, **kw):
    from pipeline.config import TrainConfig

    frame = load_checkpoint(tiny_frame_checkpoint)
    mdir = frame["train_data"]["manifest_dir"]
    return TrainConfig(model="cnn_lstm", backbone="tiny", manifest_dir=mdir,
                       out_dir=str(tmp_path / "ckpt"), run_name="init", image_size=32, epochs=1,
                       batch_size=4, init_encoder=str(tiny_frame_checkpoint), **kw)


def _backbone_state(model):
    from pipeline.models import backbone_of

    return {k: v.clone() for k, v in backbone_of(model).state_dict().items()}


def test_init_encoder_copies_the_frame_encoder(tiny_frame_checkpoint, tmp_path):
    import torch

    from pipeline.models import create_model
    from pipeline.models.checkpoint import build_model
    from pipeline.train.stage import init_encoder, model_kwargs

    cfg = _train_cfg(tiny_frame_checkpoint, tmp_path)
    model = create_model("cnn_lstm", **model_kwargs(cfg))
    src = _backbone_state(build_model(load_checkpoint(tiny_frame_checkpoint)))
    before = _backbone_state(model)
    assert any(not torch.equal(before[k], src[k]) for k in src if src[k].is_floating_point())
    rec = init_encoder(model, cfg)
    after = _backbone_state(model)
    assert after.keys() == src.keys()
    assert all(torch.equal(after[k], src[k]) for k in src)
    assert rec["path"] == str(tiny_frame_checkpoint) and len(rec["checkpoint_id"]) == 12
    assert rec["model"] == "frame" and rec["backbone"] == "tiny"


def test_init_encoder_refuses_another_backbone(tiny_frame_checkpoint, tmp_path):
    from torch import nn

    from pipeline.train.stage import init_encoder

    cfg = _train_cfg(tiny_frame_checkpoint, tmp_path)
    cfg = replace(cfg, backbone="mobilenet_v3_small")
    with pytest.raises(ConfigError, match="'tiny'.*'mobilenet_v3_small'.*--backbone tiny"):
        init_encoder(nn.Linear(1, 1), cfg)


def test_train_with_init_encoder_frozen_records_it(tiny_frame_checkpoint, tmp_path):
    import torch

    from pipeline.models.checkpoint import build_model
    from pipeline.train.stage import run

    cfg = _train_cfg(tiny_frame_checkpoint, tmp_path, freeze_backbone_epochs=1,
                     data_description="blobs (train_fixtures)")
    assert run(cfg) == 0
    best = load_checkpoint(tmp_path / "ckpt" / "init" / "best.pt")
    assert best["train_data"]["description"] == "blobs (train_fixtures)"
    assert best["init_encoder"]["path"] == str(tiny_frame_checkpoint)
    assert best["init_encoder"]["checkpoint_id"] == release_id(tiny_frame_checkpoint)
    src = _backbone_state(build_model(load_checkpoint(tiny_frame_checkpoint)))
    got = _backbone_state(build_model(best))
    # frozen for the whole run: the encoder's weights are still the frame model's
    assert all(torch.equal(got[k], src[k]) for k in src if k.endswith(("weight", "bias")))


def release_id(path: Path) -> str:
    from pipeline.core.fsutil import sha256_file

    return sha256_file(path)[:12]


# ------------------------------------------------------------------------ crop-margin bench


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_estimate_jpeg_quality_pil_and_opencv(tmp_path, quality):
    import cv2
    from PIL import Image

    from pipeline.bench.cropcheck import estimate_jpeg_quality

    img = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=quality)
    assert estimate_jpeg_quality(tmp_path / "a.jpg") == (quality, True)
    cv2.imwrite(str(tmp_path / "b.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert estimate_jpeg_quality(tmp_path / "b.jpg") == (quality, True)
    Image.fromarray(img).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="not a JPEG"):
        estimate_jpeg_quality(tmp_path / "c.png")


def test_match_crops_finds_the_margin_a_reference_was_made_with(clip, tmp_path):
    """A reference cropped by our own code at margin 0.1 is matched best at margin 0.1."""
    from PIL import Image

    from pipeline.bench.cropcheck import match_crops
    from pipeline.faces.crops import crop_face
    from pipeline.faces.detect import MTCNNDetector
    from pipeline.io.video import open_video

    det = MTCNNDetector(device="cpu")
    reader = open_video(clip)
    frame = reader.get_batch([30])[0]
    reader.close()
    box = det.detect(frame[None])[0][0].box
    Image.fromarray(crop_face(frame, box, 0.1, 96)).save(tmp_path / "ref.png")
    side = max(box[2] - box[0], box[3] - box[1]) * 1.2
    res = match_crops(clip, tmp_path / "ref.png", side, (0.0, 0.1, 0.3), frames=[0, 30, 60],
                      detector=det)
    rows = {(r["margin"], r["square"]): r for r in res["rows"]}
    assert rows[(0.1, True)]["ncc"] > 0.999 and rows[(0.1, True)]["frame"] == 30
    assert rows[(0.1, True)]["ncc"] > max(r["ncc"] for k, r in rows.items() if k != (0.1, True))
    assert rows[(0.1, True)]["side_vs_original"] == pytest.approx(1.0, abs=1e-3)
    assert res["best_frame"] == 30 and res["implied_margin"] == pytest.approx(0.1, abs=1e-3)


def test_scores_by_margin(tiny_frame_checkpoint, clip):
    from pipeline.bench.cropcheck import scores_by_margin
    from pipeline.score.scorer import VideoScorer

    res = scores_by_margin(str(tiny_frame_checkpoint), [clip, clip.with_name("gone.mp4")],
                           (0.0, 0.3))
    assert [(r["video"], r["margin"], r["status"]) for r in res["rows"]] == [
        ("one", 0.0, "ok"), ("one", 0.3, "ok"), ("gone", 0.0, "missing_file"),
        ("gone", 0.3, "missing_file")]
    ok = res["rows"][:2]
    assert all(0 <= r["p_fake"] <= 1 and 0 <= r["frame_mean"] <= 1 for r in ok)
    assert ok[0]["p_fake"] != ok[1]["p_fake"]  # the crops changed
    assert res["recipe"]["size"] == 160  # the tiny checkpoint has no recipe: extract defaults
    # detect once, re-crop per margin == scoring the video from scratch at that margin
    for row in ok:
        ref = VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu",
                                          crop={"margin": row["margin"]}).score(clip)
        assert row["p_fake"] == pytest.approx(ref["p_fake"], abs=1e-6)


# ------------------------------------------------------------------------ the real shipped model


@pytest.mark.real_data
@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"{SHIPPED} not present (the shipped model is "
                    "written by the release export)")
def test_shipped_model_scores_a_real_clip(real_samples, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "r.jsonl"
    video = real_samples / "dfdc" / "dfdc_train_part_0" / "brtujopkby.mp4"
    assert main(["score", str(video), "--out", str(out), "--device", "cpu"]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert row["status"] == "ok" and row["label"] in ("REAL", "FAKE")
    assert row["checkpoint"]["path"] == str(SHIPPED)
    assert row["checkpoint"]["card_title"]
    assert row["checkpoint"]["trained_on"].startswith("real data")
    assert "dfdc_faces" in row["checkpoint"]["trained_on"] + row["checkpoint"]["card_title"]


# ------------------------------------------------------------------------ the demo


def test_demo_scores_with_the_shipped_model_when_present(release_dir, clip, tmp_path, caplog):
    from pipeline.run import score_with_shipped

    out = tmp_path / "shipped"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert score_with_shipped((str(clip),), out, synthetic=True) == 0
    from pipeline.release import DEFAULT_CHECKPOINT

    assert f"shipped real model {DEFAULT_CHECKPOINT}: tiny_release" in caplog.text
    assert "mean little" in caplog.text and f"{clip}\t" in caplog.text  # the verdict line
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["checkpoint"]["path"] == str(release_dir / release.DEFAULT_CHECKPOINT)
    assert Path(row["evidence_png"]).is_file() and Path(row["evidence_png"]).parent == out / "evidence"


def test_demo_without_the_shipped_model_skips_that_step(tmp_path, monkeypatch, clip):
    from pipeline.run import score_with_shipped

    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path)
    assert score_with_shipped((str(clip),), tmp_path / "shipped", synthetic=True) is None
    assert not (tmp_path / "shipped").exists()


def test_extract_redoes_videos_cropped_with_another_shape():
    """--no-square changes the crops, so a video's record made with square crops is redone."""
    from pipeline.config import ExtractConfig
    from pipeline.extract.worker import result_params

    assert result_params(ExtractConfig(square=False)) != result_params(ExtractConfig())


def test_margin_summary_auc_per_margin_without_training_clips():
    from pipeline.bench.cropcheck import margin_summary

    samples = [{"path": Path(f"x/{v}.mp4"), "label": lab, "group": g} for v, lab, g in (
        ("ra", "REAL", "a"), ("fa", "FAKE", "a"), ("rb", "REAL", "b"), ("fb", "FAKE", "b"),
        ("widuwuoiur", "FAKE", "w"))]
    p = {0.0: (0.2, 0.8, 0.3, 0.6, 0.1), 0.1: (0.7, 0.4, 0.3, 0.6, 0.9)}
    rows = [{"video": s["path"].stem, "margin": m, "p_fake": q, "status": "ok"}
            for m, ps in p.items() for s, q in zip(samples, ps, strict=True)]
    rows.append({"video": "rb", "margin": 0.2, "p_fake": None, "status": "no_face"})
    out = {s["margin"]: s for s in margin_summary(rows, samples, n_bootstrap=50)}
    assert out[0.0]["roc_auc"] == 1.0 and out[0.1]["roc_auc"] == 0.5  # widuwuoiur left out
    assert (out[0.0]["n_real"], out[0.0]["n_fake"]) == (2, 2)
    assert out[0.0]["mean_p_real"] == pytest.approx(0.25) and out[0.0]["mean_p_fake"] == pytest.approx(0.7)
    assert out[0.0]["roc_auc_lo"] <= 1.0 <= out[0.0]["roc_auc_hi"]
    assert out[0.0]["excluded"] == ["widuwuoiur"]
    assert out[0.2]["n_real"] == 0 and math.isnan(out[0.2]["roc_auc"])


def test_release_files_are_package_data():
    """setup.cfg ships pipeline/release/*.pt and *.md inside the installed package."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    globs = {g.strip() for g in cfg["options.package_data"]["pipeline.release"].split(",")}
    assert {"*.pt", "*.md"} <= globs
