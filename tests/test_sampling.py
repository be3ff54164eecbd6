"""Samplers: exact chosen frames and gaps on hand-built face tables."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.core.errors import ConfigError
from pipeline.io import manifest
from pipeline.prepare.sampling import (
    clip_rows,
    gap_rows,
    n_usable,
    sample_stride,
    sample_uniform,
    sample_video,
    uniform_positions,
)


def faces_table(frames_tracks: list[tuple[int, int]]) -> pd.DataFrame:
    """Face rows for one video; crop path encodes frame and track."""
    return pd.DataFrame(
        {
            "video_id": ["v"] * len(frames_tracks),
            "frame": [f for f, _ in frames_tracks],
            "track": [t for _, t in frames_tracks],
            "crop_path": [f"/c/v/{f:04d}_{t}.jpg" for f, t in frames_tracks],
        }
    )


def one_face(frames) -> list[tuple[int, int]]:
    return [(f, 0) for f in frames]


def test_stride_all_frames_have_one_face():
    ch = sample_stride(faces_table(one_face(range(300))))
    assert [c.frame for c in ch] == list(range(0, 300, 10))
    assert [c.slot for c in ch] == list(range(30))
    assert all(c.reason == "" and c.track == 0 for c in ch)
    assert ch[7].crop_path == "/c/v/0070_0.jpg"


def test_stride_advances_past_multi_face_and_missing_frames():
    rows = one_face(range(300))
    # frame 0: two faces -> slot 0 advances to 1
    rows += [(0, 1)]
    # frames 50..53 two faces -> slot 5 takes 54
    rows += [(f, 1) for f in range(50, 54)]
    # frames 100..102 missing -> slot 10 takes 103
    rows = [r for r in rows if r[0] not in (100, 101, 102)]
    # frame 200 missing, 201 two faces -> slot 20 takes 202
    rows = [r for r in rows if r[0] != 200] + [(201, 1)]
    ch = sample_stride(faces_table(rows))
    expected = list(range(0, 300, 10))
    expected[0], expected[5], expected[10], expected[20] = 1, 54, 103, 202
    assert [c.frame for c in ch] == expected
    assert [c.slot for c in ch if c.reason == "advanced"] == [0, 5, 10, 20]
    assert n_usable(ch) == 30


def test_stride_never_past_next_slot():
    # slot 3 window = frames 30..39: all two faces; frame 40 has one face but belongs to slot 4
    rows = one_face(range(300)) + [(f, 1) for f in range(30, 40)]
    ch = sample_stride(faces_table(rows))
    assert ch[3].frame is None and ch[3].reason == "multi_face" and ch[3].start_frame == 30
    assert ch[4].frame == 40 and ch[4].reason == ""
    # last usable frame of a window: 39 is taken, not 40
    rows = [r for r in one_face(range(300)) if not 30 <= r[0] <= 38]
    ch = sample_stride(faces_table(rows))
    assert ch[3].frame == 39 and ch[4].frame == 40


def test_stride_gap_reasons_and_track_choice():
    rows = [r for r in one_face(range(300)) if not 60 <= r[0] < 70]  # slot 6: no face
    rows = [r for r in rows if not 80 <= r[0] < 90] + [(85, 0), (85, 1)]  # slot 8: only multi
    rows = [(f, 1 if f == 120 else t) for f, t in rows]  # frame 120's only face is track 1
    ch = sample_stride(faces_table(rows))
    gaps = [(c.slot, c.start_frame, c.reason) for c in ch if c.is_gap]
    assert gaps == [(6, 60, "no_face"), (8, 80, "multi_face")]
    assert ch[12].frame == 120 and ch[12].track == 1 and ch[12].crop_path == "/c/v/0120_1.jpg"


def test_stride_short_video_past_end_and_long_video_ignores_tail():
    ch = sample_stride(faces_table(one_face(range(250))), video_frames=250)
    assert [c.frame for c in ch[:25]] == list(range(0, 250, 10))
    assert [(c.slot, c.reason) for c in ch if c.is_gap] == [(k, "past_end") for k in range(25, 30)]
    # same without the frame count: gaps are no_face
    ch = sample_stride(faces_table(one_face(range(250))))
    assert {c.reason for c in ch if c.is_gap} == {"no_face"}
    # a 400-frame video: slots stay at 0..290, frames 300+ never used
    ch = sample_stride(faces_table(one_face(range(400))), video_frames=400)
    assert [c.frame for c in ch] == list(range(0, 300, 10))


def test_stride_other_sizes():
    ch = sample_stride(faces_table(one_face(range(0, 100, 2))), n_frames=5, stride=4)
    assert [c.frame for c in ch] == [0, 4, 8, 12, 16]
    ch = sample_stride(faces_table(one_face(range(1, 100, 2))), n_frames=5, stride=4)
    assert [c.frame for c in ch] == [1, 5, 9, 13, 17]
    assert all(c.reason == "advanced" for c in ch)


def test_stride_empty_faces_all_gaps():
    ch = sample_stride(manifest.empty("faces"))
    assert n_usable(ch) == 0 and {c.reason for c in ch} == {"no_face"}


def test_uniform_positions_exact():
    assert uniform_positions(30, 30) == list(range(30))
    assert uniform_positions(5, 3) == [0, 2, 4]
    assert uniform_positions(4, 3) == [0, 2, 3]  # 1.5 rounds half up
    assert uniform_positions(11, 1) == [5]
    pos = uniform_positions(300, 30)
    assert pos[0] == 0 and pos[-1] == 299 and len(set(pos)) == 30
    assert pos[:4] == [0, 10, 21, 31]  # i * 299/29 = 0, 10.31, 20.62, 30.93


def test_uniform_uses_only_single_face_frames():
    # usable = even frames 0..118 (60 frames); odd frames have two faces
    rows = one_face(range(0, 120)) + [(f, 1) for f in range(1, 120, 2)]
    ch = sample_uniform(faces_table(rows), n_frames=30)
    usable = list(range(0, 120, 2))
    assert [c.frame for c in ch] == [usable[p] for p in uniform_positions(60, 30)]
    assert ch[0].frame == 0 and ch[-1].frame == 118
    assert all(c.start_frame is None for c in ch)


def test_uniform_too_few_frames_pads_tail():
    ch = sample_uniform(faces_table(one_face([3, 9, 40])), n_frames=5)
    assert [c.frame for c in ch] == [3, 9, 40, None, None]
    assert [c.reason for c in ch[3:]] == ["too_few_usable_frames"] * 2


def test_sample_video_dispatch_and_bad_args():
    t = faces_table(one_face(range(300)))
    assert [c.frame for c in sample_video(t, "uniform", 3)] == [0, 150, 299]
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample_video(t, "random")
    with pytest.raises(ConfigError):
        sample_stride(t, n_frames=0)
    with pytest.raises(ConfigError):
        sample_stride(t, stride=0)


def test_clip_and_gap_rows_validate_against_schemas():
    rows = [r for r in one_face(range(300)) if not 60 <= r[0] < 70]
    ch = sample_stride(faces_table(rows), video_frames=300)
    clips = manifest.validate(clip_rows("v", "FAKE", "o", ch), "clips")
    assert len(clips) == 30 and clips["slot"].tolist() == list(range(30))
    pad = clips[clips["mask"] == 0]
    assert pad["slot"].tolist() == [6]
    assert pad["frame"].isna().all() and pad["crop_path"].tolist() == [""]
    assert pad["track"].isna().all()
    assert clips.loc[clips["mask"] == 1, "crop_path"].str.len().min() > 0
    gaps = manifest.validate(gap_rows("v", ch), "gaps")
    assert gaps.to_dict("records") == [
        {"video_id": "v", "slot": 6, "start_frame": 60, "reason": "no_face"}
    ]
    ugaps = manifest.validate(gap_rows("v", sample_uniform(faces_table(rows[:10]), 12)), "gaps")
    assert ugaps["slot"].tolist() == [10, 11] and ugaps["start_frame"].isna().all()


def _random_faces(rng, n_videos):
    """Face rows of ``n_videos`` random videos (gaps, multi-face frames, frames past 300)."""
    rows = []
    for v in range(n_videos):
        length = int(rng.integers(0, 420))
        for f in range(length):
            k = rng.choice([0, 1, 2], p=[0.25, 0.65, 0.10])
            rows += [(v, f, t, f"v{v}/{f:04d}_{t}.jpg") for t in range(k)]
    return pd.DataFrame(rows, columns=["code", "frame", "track", "crop_path"])


@pytest.mark.parametrize("sampler,n_frames,stride", [("stride", 30, 10), ("stride", 7, 3),
                                                      ("uniform", 30, 10), ("uniform", 1, 10)])
def test_sample_columns_equals_sample_video(sampler, n_frames, stride):
    """The columnar sampler (what prepare runs) gives sample_video's choice for every video."""
    import numpy as np

    from pipeline.prepare.sampling import REASONS, sample_columns

    rng = np.random.default_rng(3)
    faces = _random_faces(rng, 40)
    videos = np.array([5, 0, 39, 12, 7, 41] + list(range(13, 30)))  # 41: a video without rows
    lengths = np.array([np.nan if i % 3 else 250 for i in range(len(videos))])
    got = sample_columns(faces["code"].to_numpy(), faces["frame"].to_numpy(),
                         faces["track"].to_numpy(), videos, lengths, sampler, n_frames, stride)
    for i, v in enumerate(videos):
        vf = None if np.isnan(lengths[i]) else int(lengths[i])
        want = sample_video(faces[faces["code"] == v], sampler, n_frames, stride, vf)
        cells = slice(i * n_frames, (i + 1) * n_frames)
        rows = got.row[cells]
        assert [c.frame if c.frame is not None else -1 for c in want] == got.frame[cells].tolist()
        assert [c.track if c.track is not None else -1 for c in want] == got.track[cells].tolist()
        assert [c.reason for c in want] == [REASONS[r] for r in got.reason[cells]]
        assert [c.start_frame if c.start_frame is not None else -1 for c in want] == \
            got.start[cells].tolist()
        crops = [faces["crop_path"].iloc[r] if r >= 0 else None for r in rows]
        assert [c.crop_path for c in want] == crops
