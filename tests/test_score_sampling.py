"""Sampling for scoring (``pipeline.score.plan``): exact frame lists for any length and fps."""

from __future__ import annotations

import pytest

from pipeline.core.errors import ConfigError
from pipeline.prepare.sampling import uniform_positions
from pipeline.score.plan import SlotPlan, Window, score_windows, slot_plan, window_frames
from pipeline.score.windows import sample_window

DFDC = SlotPlan(30, 1 / 3, "test")  # every 10th frame at 30 fps: a 10 s window


def test_a_dfdc_length_video_gets_exactly_the_training_slots():
    [w] = score_windows(300, 30.0, DFDC)
    assert w.starts == tuple(range(0, 300, 10))
    assert w.ends == tuple(range(10, 310, 10))
    assert (w.first, w.last) == (0, 299)
    # DFDC's 29.97 fps (a window of 299.7 frames) and 301 frames: still the one training window
    for n, fps in ((300, 29.97), (301, 30.0246), (309, 30.0)):
        [w] = score_windows(n, fps, DFDC)
        assert w.starts == tuple(range(0, 300, 10)) and w.last == n - 1


def test_short_clips_spread_the_slots_over_every_frame():
    [w] = score_windows(49, 12.5, DFDC)  # 3.9 s: shorter than the 10 s window
    assert w.starts == (0, 2, 3, 5, 7, 8, 10, 12, 13, 15, 17, 18, 20, 22, 23, 25, 26, 28, 30, 31,
                        33, 35, 36, 38, 40, 41, 43, 45, 46, 48)
    assert w.ends == (*w.starts[1:], 49)
    [w] = score_windows(60, 30.0, DFDC)  # a 2 s clip
    assert w.starts == tuple(uniform_positions(60, 30)) and w.starts[:4] == (0, 2, 4, 6)
    [w] = score_windows(20, 30.0, DFDC)  # fewer frames than slots: every frame, once
    assert w.starts == tuple(range(20)) and w.ends == (*range(1, 20), 20)
    assert score_windows(0, 30.0, DFDC) == []


def test_long_videos_get_consecutive_windows_over_their_whole_length():
    ws = score_windows(3000, 30.0, DFDC)
    assert [w.index for w in ws] == list(range(10))
    for k, w in enumerate(ws):
        assert w.starts == tuple(range(300 * k, 300 * k + 300, 10))
    assert ws[-1].last == 2999
    # not a multiple of the window: the windows spread evenly from 0 to n - 300, a window's last
    # slot running to the next window
    ws = score_windows(3001, 30.0, DFDC)
    assert [w.first for w in ws] == [0, 300, 600, 900, 1200, 1501, 1801, 2101, 2401, 2701]
    assert [w.last for w in ws] == [299, 599, 899, 1199, 1500, 1800, 2100, 2400, 2700, 3000]
    ws = score_windows(3301, 30.0, DFDC)  # 11 windows, overlapping a little
    assert [w.first for w in ws] == [0, 300, 600, 900, 1200, 1501, 1801, 2101, 2401, 2701, 3001]
    # 25 fps: the trained 1/3 s spacing is 8.33 frames, rounded half up per slot
    ws = score_windows(500, 25.0, DFDC)
    assert len(ws) == 2 and ws[0].starts[:5] == (0, 8, 17, 25, 33)
    assert ws[1].first == 500 - 250 and ws[1].last == 499


def test_low_frame_rates_take_every_frame_and_bad_fps_is_30():
    ws = score_windows(100, 2.0, DFDC)  # 1/3 s is under one frame at 2 fps: one frame per slot
    assert [w.first for w in ws] == [0, 23, 47, 70]
    assert ws[0].starts == tuple(range(30)) and ws[-1].last == 99
    assert score_windows(300, 0.0, DFDC) == score_windows(300, float("nan"), DFDC) \
        == score_windows(300, 30.0, DFDC)
    with pytest.raises(ConfigError):
        score_windows(300, 30.0, SlotPlan(0, 1 / 3, "bad"))


def test_window_frames_are_the_sorted_union_of_slot_starts():
    ws = score_windows(3001, 30.0, DFDC)
    frames = window_frames(ws)
    assert frames == sorted(set(frames)) and frames[0] == 0 and frames[-1] == 2991
    assert len(frames) == len({f for w in ws for f in w.starts})


def test_sample_window_takes_the_first_face_frame_of_each_slot():
    w = Window(0, (0, 5, 10, 15), (5, 10, 15, 20))
    got = sample_window(frozenset({0, 7, 9, 19}), w)
    assert [(s.slot, s.frame, s.reason) for s in got] == [
        (0, 0, ""), (1, 7, "advanced"), (2, None, "no_face"), (3, 19, "advanced")]
    assert [s.is_gap for s in got] == [False, False, True, False]


def test_slot_plan_reads_the_checkpoint():
    prep = {"sampler": "stride", "n_frames": 30, "stride": 10}
    p = slot_plan({"train_data": {"prepare": prep}})
    assert (p.n_slots, p.slot_seconds) == (30, pytest.approx(1 / 3))
    assert "every 10th frame" in p.source and "30 fps (not recorded)" in p.source
    p = slot_plan({"train_data": {"prepare": {**prep, "stride": 5, "n_frames": 16}, "fps": 25.0}})
    assert (p.n_slots, p.slot_seconds) == (16, pytest.approx(0.2))
    assert "not recorded" not in p.source
    p = slot_plan({"train_data": {"prepare": {**prep, "sampler": "uniform"}}})
    assert p.slot_seconds == pytest.approx(300 / 30 / 30) and "uniform" in p.source
    p = slot_plan({})
    assert (p.n_slots, p.slot_seconds) == (30, pytest.approx(1 / 3))
    assert p.source.startswith("prepare defaults")


@pytest.mark.parametrize("fps", [2.0, 12.5, 24.0, 25.0, 29.97, 30.0, 60.0])
def test_every_frame_lies_in_a_window_whatever_the_length(fps):
    for n in range(1, 4000, 7):
        ws = score_windows(n, fps, DFDC)
        covered = {f for w in ws for f in range(w.first, w.last + 1)}
        assert covered == set(range(n)), (n, fps)
        for w in ws:
            assert len(w.starts) == min(30, n) and list(w.starts) == sorted(set(w.starts))
            assert all(s < e for s, e in zip(w.starts, w.ends, strict=True))


def test_training_records_its_videos_fps_for_the_slot_spacing(tmp_path):
    """``train_data.fps`` is the median fps of the training split's videos (not of val/test,
    not NaN/0 rows), so a model trained on 25 fps videos spaces its slots 10 / 25 s apart."""
    import pandas as pd

    from pipeline.io.manifest import empty, write_manifest
    from pipeline.prepare.provenance import train_fps

    assert train_fps(tmp_path, pd.DataFrame({"video_id": [], "split": []})) is None  # no manifest
    ids = ["a", "b", "c", "d", "e"]
    videos = empty("videos").reindex(range(len(ids)))
    videos = videos.assign(video_id=ids, part="p", path=[f"/x/{i}.mp4" for i in ids], label="REAL",
                           original="", fps=[25.0, 25.0, 0.0, float("nan"), 60.0], status="ok",
                           reason="")
    write_manifest(videos, tmp_path / "videos.parquet", "videos")
    split = pd.DataFrame({"video_id": ids, "split": ["train", "train", "train", "train", "test"]})
    fps = train_fps(tmp_path, split)
    assert fps == 25.0
    prep = {"sampler": "stride", "n_frames": 30, "stride": 10}
    p = slot_plan({"train_data": {"prepare": prep, "fps": fps}})
    assert p.slot_seconds == pytest.approx(10 / 25) and "not recorded" not in p.source
