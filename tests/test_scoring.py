"""``dfpipe score``: whole videos -> verdicts, on synthetic clips with real MTCNN and a real
(tiny, random-init, 1-epoch) checkpoint; real sample clips when present."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.scoring import VideoScorer, discover_videos, read_journal


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> VideoScorer:
    return VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    from pipeline.synth import make_clip

    d = tmp_path_factory.mktemp("score_clips")
    out = {}
    out["one"] = d / "one.mp4"
    make_clip(out["one"], n_frames=150, seed=1)
    out["two"] = d / "two.mp4"
    make_clip(out["two"], n_frames=150, seed=2, two_face=(0, 150))
    out["none"] = d / "none.mp4"
    make_clip(out["none"], n_frames=60, seed=3, gap=(0, 60))
    out["text"] = d / "notes.mp4"
    out["text"].write_text("not a video\n" * 100)
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    return out


def test_one_face_clip_gets_a_verdict(scorer, clips):
    r = scorer.score(clips["one"])
    assert r["status"] == "ok", r["reason"]
    assert 0.0 <= r["p_fake"] <= 1.0
    assert r["label"] == ("FAKE" if r["p_fake"] >= r["threshold"] else "REAL")
    assert r["frames_used"] == 15  # 150 frames, slots at 0, 10, ..., 140
    assert [p["frame"] for p in r["timeline"]] == list(range(0, 150, 10))
    assert all(0.0 <= p["p_fake"] <= 1.0 for p in r["timeline"])
    assert len(r["tracks"]) == 1 and r["tracks"][0]["p_fake"] == pytest.approx(r["p_fake"])
    assert r["checkpoint"]["model"] == "cnn_lstm" and len(r["checkpoint"]["id"]) == 12
    # the LSTM's running verdict after the last slot is the video's verdict
    assert r["timeline"][-1]["p_fake"] == pytest.approx(r["p_fake"], abs=1e-5)


def test_two_faces_are_scored_per_track_and_max_wins(scorer, clips):
    r = scorer.score(clips["two"])
    assert r["status"] == "ok", r["reason"]
    scored = [t for t in r["tracks"] if t["p_fake"] is not None]
    assert len(scored) == 2
    assert r["p_fake"] == pytest.approx(max(t["p_fake"] for t in scored))
    assert r["deciding_track"] in {t["track"] for t in scored}


def test_failures_have_a_status_and_no_score(scorer, clips):
    expected = {"none": "no_face", "text": "read_error", "empty": "empty_file"}
    for key, status in expected.items():
        r = scorer.score(clips[key])
        assert r["status"] == status, (key, r)
        assert r["p_fake"] is None and r["label"] is None
        assert r["reason"] and "\n" not in r["reason"]
    r = scorer.score(clips["one"].with_name("missing.mp4"))
    assert r["status"] == "missing_file" and r["p_fake"] is None


def test_too_few_frames_when_no_track_fills_min_frames(tiny_checkpoint, clips):
    strict = VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu", min_frames=20)
    r = strict.score(clips["one"])  # only 15 slots exist in a 150-frame clip
    assert r["status"] == "too_few_frames" and r["p_fake"] is None
    assert "20" in r["reason"]


def test_frame_checkpoint_scores_as_frame_mean(tiny_frame_checkpoint, clips):
    s = VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu")
    assert s.info()["scored_as"] == "frame_mean"
    r = s.score(clips["one"])
    assert r["status"] == "ok"
    mean = float(np.mean([p["p_fake"] for p in r["timeline"]]))
    assert r["p_fake"] == pytest.approx(mean, abs=1e-4)


def test_explain_writes_png_and_html(scorer, clips, tmp_path):
    r = scorer.score(clips["one"], explain_dir=tmp_path / "ev")
    png, html = Path(r["evidence_png"]), Path(r["evidence_html"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert png.name in text and r["label"] in text
    from PIL import Image

    w, h = Image.open(png).size
    assert w > 600 and h > 400


def test_grad_cam_maps_are_per_frame_and_normalised(scorer, clips):
    import torch

    from pipeline.explain import grad_cam

    clip = torch.randn(1, 30, 3, scorer.image_size, scorer.image_size)
    mask = torch.ones(1, 30)
    cams = grad_cam(lambda: scorer.model(clip, mask), scorer.model,
                    (scorer.image_size, scorer.image_size))
    assert cams.shape == (30, scorer.image_size, scorer.image_size)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1


def test_batch_cli_resumes_and_exits_1_on_failures(tiny_checkpoint, clips, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for key in ("one", "text"):
        (folder / clips[key].name).write_bytes(clips[key].read_bytes())
    out = tmp_path / "results.jsonl"
    argv = ["score", str(folder), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--engine", "inline", "--device", "cpu"]
    assert cli.main(argv) == 1  # the text file failed
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    assert rows["one.mp4"]["status"] == "ok" and rows["notes.mp4"]["status"] == "read_error"
    first = out.read_text()
    assert cli.main(argv) == 1  # nothing rescored: the file is unchanged
    assert out.read_text() == first
    # a torn last line (a kill mid-write) is dropped and that video scored again
    out.write_text(first + '{"path": "half')
    assert len(read_journal(out)) == 2


def test_csv_output_and_good_batch_exit_0(tiny_checkpoint, clips, tmp_path):
    out = tmp_path / "r.csv"
    rc = cli.main(["score", str(clips["one"]), str(clips["none"]), "--checkpoint",
                   str(tiny_checkpoint), "--out", str(out), "--device", "cpu"])
    assert rc == 0  # no_face is an answer, not a failure
    text = out.read_text().splitlines()
    assert text[0].startswith("path,video_id,status")
    assert len(text) == 3


def test_bad_checkpoint_is_a_clear_error(tmp_path, clips, capfd):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    rc = cli.main(["score", str(clips["one"]), "--checkpoint", str(bad), "--out",
                   str(tmp_path / "r.jsonl")])
    assert rc == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]


def test_discover_videos(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "b.MOV").write_bytes(b"1")
    found = discover_videos([str(tmp_path), str(tmp_path / "a" / "x.mp4")])
    assert [p.name for p in found] == ["x.mp4", "b.MOV"] or [p.name for p in found] == ["b.MOV", "x.mp4"]
    assert len(found) == 2


@pytest.mark.slow
def test_pool_engine_matches_inline(tiny_checkpoint, clips, tmp_path):
    res = {}
    for engine in ("inline", "pool"):
        out = tmp_path / f"{engine}.jsonl"
        cli.main(["score", str(clips["one"]), str(clips["text"]), "--checkpoint",
                  str(tiny_checkpoint), "--out", str(out), "--engine", engine, "--workers", "2",
                  "--device", "cpu"])
        res[engine] = {Path(r["path"]).name: (r["status"], r["p_fake"]) for r in read_journal(out)}
    assert res["inline"].keys() == res["pool"].keys()
    for k, (status, p) in res["inline"].items():
        assert res["pool"][k][0] == status
        if p is not None:
            assert res["pool"][k][1] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
@pytest.mark.real_data
def test_every_real_sample_gets_a_status(real_samples, tiny_checkpoint, tmp_path):
    """Issue 7: every file of real_samples completes with a status (VFX film and street scene too)."""
    out = tmp_path / "real.jsonl"
    rc = cli.main(["score", str(real_samples), "--checkpoint", str(tiny_checkpoint), "--out",
                   str(out), "--device", "cpu", "--explain", str(tmp_path / "ev")])
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    videos = sorted(p.name for p in real_samples.rglob("*.mp4"))
    assert sorted(rows) == videos
    for name, r in rows.items():
        assert r["status"] in {"ok", "no_face", "too_few_frames"}, (name, r["reason"])
        if r["status"] == "ok":
            assert not math.isnan(r["p_fake"]) and Path(r["evidence_png"]).is_file()
    assert rows["abqwwspghj.mp4"]["status"] == "ok"
    assert rc == 0
    (tmp_path / "summary.json").write_text(json.dumps(rows, default=str))


def test_a_frame_checkpoint_scores_with_its_frame_mean_threshold(tiny_frame_checkpoint, caplog):
    """score uses a frame checkpoint as frame_mean, so it takes the frame_mean threshold; an
    older checkpoint (one threshold, chosen on middle frames) falls back to it with a warning."""
    import logging

    from pipeline.checkpoint import load_checkpoint
    from pipeline.scoring import checkpoint_threshold

    ck = load_checkpoint(tiny_frame_checkpoint)
    assert set(ck["thresholds"]) == {"frame", "frame_mean"}
    ck = {**ck, "threshold": 0.3, "thresholds": {"frame": 0.3, "frame_mean": 0.7}}
    s = VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu")
    assert s.threshold == 0.7 and s.info()["threshold"] == 0.7
    assert VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu", threshold=0.4).threshold == 0.4

    old = {k: v for k, v in ck.items() if k != "thresholds"}
    with caplog.at_level(logging.WARNING, logger="pipeline.scoring"):
        assert checkpoint_threshold(old, "frame_mean", "old.pt") == 0.3
    assert "old.pt: no frame_mean threshold" in caplog.text and "middle-frame" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.scoring"):
        assert checkpoint_threshold(old, "frame", "old.pt") == 0.3
    assert caplog.text == ""
