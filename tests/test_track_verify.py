"""Track-and-verify extraction (``--detector-mode track``): faces are verified on every frame,
not carried; a face that leaves is gone, one that enters is found within ``track_every`` frames;
per-frame face presence agrees with full detection."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import ExtractConfig
from pipeline.faces import Detection, MTCNNDetector, Tracker, extract_faces
from pipeline.track_verify import _dedupe, predict


def test_predict_is_constant_velocity():
    assert predict([(0, 0, 10, 10)]) == (0, 0, 10, 10)
    assert predict([(0, 0, 10, 10), (2, 1, 12, 11)]) == (4, 2, 14, 12)


def test_dedupe_keeps_the_stronger_of_two_tracks_on_one_face():
    seen = {0: Detection((0, 0, 10, 10), 0.95), 1: Detection((1, 0, 11, 10), 0.99),
            2: Detection((50, 50, 60, 60), 0.9)}
    assert sorted(_dedupe(seen)) == [1, 2]


def test_tracker_observe_moves_known_tracks_without_matching():
    tr = Tracker()
    assert tr.update([(0, 0, 10, 10), (100, 0, 110, 10)]) == [0, 1]
    tr.observe({0: (3, 0, 13, 10)})
    assert tr.last[0] == (3, 0, 13, 10) and tr.age == {0: 0, 1: 1}


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector("cpu")


def _presence(vf) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in vf.records:
        out[r.frame] = out.get(r.frame, 0) + 1
    return out


def test_a_face_that_leaves_is_gone_and_one_that_enters_is_found(tmp_path, clip_factory, detector):
    path = tmp_path / "clip.mp4"
    # one face throughout except frames 20-34 (no face); a second face in frames 40-59
    clip_factory(path, 70, gap=(20, 35), two_face=(40, 60))
    cfg = replace(ExtractConfig(), detector_mode="track", track_every=10)
    vf = extract_faces(path, detector, cfg)
    n = _presence(vf)
    assert all(f not in n for f in range(20, 35))  # verified, not carried into the gap
    assert all(n.get(f) == 1 for f in range(0, 20))
    assert all(n.get(f) == 2 for f in range(41, 60))  # found at frame 40 (a full detection)
    assert all(np.isfinite(r.prob) and r.prob >= cfg.min_face_prob for r in vf.records)
    assert vf.stats["detect_scheduled"] == 7 and vf.stats["verified"] > 40
    # against full detection on every frame: the same frames have faces
    full = _presence(extract_faces(path, detector, ExtractConfig()))
    frames = range(70)
    agree = sum(n.get(f, 0) == full.get(f, 0) for f in frames) / len(frames)
    assert agree >= 0.95, agree


def _real_tracks(vf, min_frames: int = 10) -> int:
    counts: dict[int, int] = {}
    for r in vf.records:
        counts[r.track] = counts.get(r.track, 0) + 1
    return sum(c >= min_frames for c in counts.values())


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["dfdc/dfdc_train_part_10/widuwuoiur.mp4",
                                  "dfdc/train_sample_videos/abofeumbvv.mp4"])
def test_track_mode_agrees_with_full_detection_on_real_clips(real_samples, clip, detector):
    """Per-frame face presence agrees on >= 98 % of frames, with the same number of real
    tracks (>= 10 frames), on a 1080p DFDC clip and the dark one. (The multi-face street scene
    does not agree yet: its small faces lose and regain tracks; track mode is not the default.)"""
    path = real_samples / clip
    full = extract_faces(path, detector, ExtractConfig())
    track = extract_faces(path, detector, replace(ExtractConfig(), detector_mode="track"))
    n_frames = full.info.n_frames
    a, b = _presence(full), _presence(track)
    present = sum((f in a) == (f in b) for f in range(n_frames)) / n_frames
    assert present >= 0.98, (clip, present)
    assert _real_tracks(track) == _real_tracks(full), (clip, track.stats)
