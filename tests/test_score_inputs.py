"""Issue #15: scoring covers any video length and frame rate, and still images.

Synthetic clips with a real detectable face (``pipeline.synth.dataset.make_clip``), real MTCNN, the tiny
random-init checkpoints of conftest; the shipped model on the real sample clips when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.prepare.sampling import uniform_positions
from pipeline.score.batch import read_journal
from pipeline.score.scorer import VideoScorer


@pytest.fixture(scope="module")
def lstm(tiny_checkpoint) -> VideoScorer:
    return VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def frame(tiny_frame_checkpoint) -> VideoScorer:
    return VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory) -> dict[str, Path]:
    from pipeline.synth.dataset import make_clip

    d = tmp_path_factory.mktemp("short")
    out = {"2s": d / "two_seconds.mp4", "49": d / "forty_nine.mp4", "few": d / "few.mp4"}
    make_clip(out["2s"], n_frames=60, fps=30.0, seed=11)
    make_clip(out["49"], n_frames=49, fps=12.5, seed=12)
    make_clip(out["few"], n_frames=60, fps=30.0, seed=13, gap=(10, 60))  # a face in frames 0-9
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One synthetic frame with a face, saved as JPEG, PNG and WebP (upper-case suffixes too)."""
    from PIL import Image

    from pipeline.synth.dataset import make_clip, render_frames

    d = tmp_path_factory.mktemp("images")
    spec = make_clip(d / "src.mp4", n_frames=1, seed=21)
    img = Image.fromarray(next(iter(render_frames(spec))))
    out = {}
    for name, fmt in (("face.jpg", "JPEG"), ("face.PNG", "PNG"), ("face.webp", "WEBP"),
                      ("face.JPEG", "JPEG")):
        out[name] = d / name
        img.save(out[name], format=fmt)
    two = make_clip(d / "two.mp4", n_frames=1, seed=22, two_face=(0, 1))
    out["two.png"] = d / "two.png"
    Image.fromarray(next(iter(render_frames(two)))).save(out["two.png"])
    out["upload.bin"] = d / "upload.bin"  # an upload saved without its suffix: sniffed
    out["upload.bin"].write_bytes(out["face.jpg"].read_bytes())
    out["bad.png"] = d / "bad.png"
    out["bad.png"].write_text("not an image\n")
    return out


@pytest.mark.parametrize("which", ["lstm", "frame"])
def test_a_2s_clip_and_a_49_frame_12_5fps_clip_get_verdicts(which, request, short_clips):
    """Both fill all 30 slots (denser than the trained 1/3 s): an ordinary, not low-evidence,
    verdict; with the old 0, 10, ..., 290 slots they got 6 and 5 slots (too_few_frames)."""
    scorer = request.getfixturevalue(which)
    for key, n in (("2s", 60), ("49", 49)):
        r = scorer.score(short_clips[key])
        assert r["status"] == "ok", (key, r["reason"])
        assert r["frames_used"] == 30 and r["low_evidence"] is False, key
        assert [p["frame"] for p in r["timeline"]] == uniform_positions(n, 30), key
        assert [(w["first_frame"], w["last_frame"]) for w in r["windows"]] == [(0, n - 1)]
        assert 0 <= r["p_fake"] <= 1 and r["label"] in ("FAKE", "REAL")


@pytest.mark.parametrize("which", ["lstm", "frame"])
def test_a_clip_with_a_few_face_frames_gets_a_low_evidence_verdict(which, request, short_clips):
    """5 sampled frames with a face (slots 0, 2, 4, 6, 8): a masked clip, scored and flagged."""
    scorer = request.getfixturevalue(which)
    r = scorer.score(short_clips["few"])
    assert r["status"] == "ok", r["reason"]
    assert r["frames_used"] == 5 and r["low_evidence"] is True
    assert [p["frame"] for p in r["timeline"]] == [0, 2, 4, 6, 8]
    if which == "frame":
        assert r["p_fake"] == pytest.approx(np.mean([p["p_fake"] for p in r["timeline"]]), abs=1e-5)
    else:  # the masked clip's verdict is the LSTM's running verdict after its last face
        assert r["p_fake"] == pytest.approx(r["timeline"][-1]["p_fake"], abs=1e-5)


def _long_faces(scorer: VideoScorer, n_frames: int, fps: float, seed: int = 0):
    """The faces ``find_faces`` would give for an ``n_frames`` video with one face on every
    slot frame (random crops: the sampling and the combining are under test, not detection)."""
    from pipeline.faces.records import FaceRecord, VideoFaces
    from pipeline.io.video import VideoInfo

    rng = np.random.default_rng(seed)
    frames = scorer.slot_frames(n_frames, fps)
    return VideoFaces(VideoInfo(n_frames, fps, 64, 64),
                      [FaceRecord(f, 0, (10.0, 10.0, 50.0, 50.0), 0.99) for f in frames],
                      [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in frames])


@pytest.mark.parametrize("which", ["lstm", "frame"])
def test_a_3000_frame_video_is_scored_over_its_whole_length(which, request, tmp_path):
    scorer = request.getfixturevalue(which)
    r = scorer.score(tmp_path / "long.mp4", faces=_long_faces(scorer, 3000, 30.0))
    assert r["status"] == "ok", r["reason"]
    assert [(w["first_frame"], w["last_frame"]) for w in r["windows"]] == [
        (300 * k, 300 * k + 299) for k in range(10)]
    assert r["windows"][-1]["end_s"] == 100.0
    assert [p["frame"] for p in r["timeline"]] == list(range(0, 3000, 10))
    assert r["frames_used"] == 300 and r["low_evidence"] is False
    assert "weighted" in r["verdict_rule"] and "max over its identity tracks" in r["verdict_rule"]
    # the track's p_fake: the mean of its windows' p_fake, weighted by the frames each rests on
    ps = [w["p_fake"] for w in r["windows"]]
    assert all(w["frames_used"] == 30 for w in r["windows"])
    assert r["p_fake"] == pytest.approx(float(np.mean(ps)), abs=1e-6)
    assert len(set(np.round(ps, 6))) > 1  # the windows saw different faces


@pytest.mark.slow
def test_a_3000_frame_video_file_timeline_spans_its_length(lstm, tmp_path):
    """End to end on an encoded 3,000-frame clip (100 s at 30 fps, 320x180): MTCNN runs on the
    300 slot frames of 10 windows and the timeline covers the whole video."""
    from pipeline.synth.dataset import make_clip

    clip = tmp_path / "long.mp4"
    make_clip(clip, n_frames=3000, width=320, height=180, seed=31)
    r = lstm.score(clip)
    assert r["status"] == "ok", r["reason"]
    assert r["n_frames"] == 3000 and len(r["windows"]) == 10
    assert r["windows"][0]["first_frame"] == 0 and r["windows"][-1]["last_frame"] == 2999
    frames = [p["frame"] for p in r["timeline"]]
    assert frames[0] == 0 and frames[-1] == 2990 and r["frames_used"] >= 250
    assert all(w["p_fake"] is not None for w in r["windows"])


def test_images_are_scored_with_the_frame_model(frame, images):
    for name in ("face.jpg", "face.PNG", "face.webp", "face.JPEG", "upload.bin"):
        r = frame.score(images[name])
        assert r["status"] == "ok", (name, r["reason"])
        assert r["kind"] == "image" and r["frames_used"] == 1 and r["faces_found"] == 1
        assert "max over its faces" in r["verdict_rule"]
        assert r["threshold"] == frame.image_threshold
        assert r["label"] == ("FAKE" if r["p_fake"] >= frame.image_threshold else "REAL")
        [face] = r["tracks"]
        assert face["p_fake"] == r["p_fake"] and len(face["box"]) == 4
    # the same bytes under an image suffix and as an upload without one: the same score
    assert frame.score(images["face.jpg"])["p_fake"] == frame.score(images["upload.bin"])["p_fake"]
    r = frame.score(images["bad.png"])
    assert r["status"] == "read_error" and "bad.png" in r["reason"] and r["p_fake"] is None


def test_an_image_with_two_faces_takes_the_max(frame, images):
    r = frame.score(images["two.png"])
    assert r["status"] == "ok" and r["faces_found"] == 2 and len(r["tracks"]) == 2
    ps = [t["p_fake"] for t in r["tracks"]]
    assert r["p_fake"] == max(ps) and r["deciding_track"] == ps.index(max(ps))
    assert ps[0] != ps[1]  # two different faces, two scores


def test_image_evidence_sheet(frame, images, tmp_path):
    r = frame.score(images["face.jpg"], explain_dir=tmp_path / "ev")
    assert Path(r["evidence_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["label"] in Path(r["evidence_html"]).read_text()


def test_a_cnn_lstm_checkpoint_refuses_an_image_clearly(lstm, images):
    r = lstm.score(images["face.jpg"], display_name="holiday.jpg")
    assert r["status"] == "needs_video" and r["p_fake"] is None and r["label"] is None
    assert r["reason"].startswith("holiday.jpg: a still image") and "needs a video" in r["reason"]


def test_a_batch_folder_scores_videos_and_images(tiny_frame_checkpoint, short_clips, images,
                                                 tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for src in (short_clips["2s"], images["face.JPEG"], images["face.webp"]):
        (folder / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "r.csv"
    rc = cli.main(["score", str(folder), "--checkpoint", str(tiny_frame_checkpoint), "--out",
                   str(out), "--device", "cpu"])
    assert rc == 0
    rows = {Path(r["path"]).name: r for r in read_journal(tmp_path / "r.csv.journal.jsonl")}
    assert sorted(rows) == ["face.JPEG", "face.webp", "two_seconds.mp4"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["face.webp"]["kind"] == "image" and rows["two_seconds.mp4"]["kind"] == "video"
    import csv

    table = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert table["two_seconds.mp4"]["frames_used"] == "30"
    assert table["two_seconds.mp4"]["low_evidence"] == "False"
    assert table["face.webp"]["kind"] == "image"


@pytest.mark.slow
@pytest.mark.real_data
def test_every_labelled_real_sample_gets_a_verdict(real_samples, tmp_path):
    """Every clip listed with a label in a metadata.json of real_samples (DFDC and FF++ clips)
    gets a verdict from the shipped model."""
    labelled = []
    for meta in sorted(real_samples.rglob("metadata.json")):
        for name, entry in json.loads(meta.read_text()).items():
            if entry.get("label") and (meta.parent / name).is_file():
                labelled.append(meta.parent / name)
    assert len(labelled) >= 10
    out = tmp_path / "real.jsonl"
    rc = cli.main(["score", *map(str, labelled), "--checkpoint", "default", "--out", str(out),
                   "--device", "cpu"])
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    assert sorted(rows) == sorted(p.name for p in labelled)
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r["status"], r["reason"])
        assert 0 <= r["p_fake"] <= 1 and r["frames_used"] >= 3
        assert r["windows"][-1]["last_frame"] == r["n_frames"] - 1  # the whole clip looked at
    assert rc == 0
    (tmp_path / "summary.json").write_text(json.dumps(rows, default=str))
