"""Frame-count filter: window boundaries, reasons, orphan fakes."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.core.errors import ConfigError, ManifestError
from pipeline.io import manifest
from pipeline.prepare.filtering import filter_videos, orphan_filter, reason_code, window_filter


def videos_table(rows: list[tuple]) -> pd.DataFrame:
    """rows: (video_id, label, original, n_faces[, status])."""
    recs = []
    for r in rows:
        vid, label, orig, n = r[:4]
        status = r[4] if len(r) > 4 else "ok"
        recs.append({"video_id": vid, "part": "p0", "path": f"/d/{vid}.mp4", "label": label,
                     "original": orig, "fps": 30.0, "n_frames": 300, "width": 480, "height": 270,
                     "n_face_frames": n, "n_faces": n, "n_multi_face_frames": 0, "n_tracks": 1,
                     "status": status, "reason": "" if status == "ok" else "boom",
                     "seconds": 1.0})
    return manifest.validate(pd.DataFrame(recs), "videos")


def test_boundaries_199_200_400_401():
    v = videos_table([("a", "REAL", "", 199), ("b", "REAL", "", 200), ("c", "REAL", "", 400),
                      ("d", "REAL", "", 401), ("e", "REAL", "", 300), ("f", "REAL", "", 0)])
    kept, out = window_filter(v, 200, 400)
    assert kept["video_id"].tolist() == ["b", "c", "e"]
    assert out["video_id"].tolist() == ["a", "d", "f"]
    assert out["reason"].tolist() == ["too_few_faces: 199 < 200", "too_many_faces: 401 > 400",
                                      "too_few_faces: 0 < 200"]
    assert out["n_faces"].tolist() == [199, 401, 0]
    manifest.validate(out, "outliers")


def test_bounds_are_options():
    v = videos_table([("a", "REAL", "", 199), ("b", "REAL", "", 600)])
    kept, _ = window_filter(v, 150, 650)
    assert kept["video_id"].tolist() == ["a", "b"]
    kept, _ = window_filter(v, 199, 199)
    assert kept["video_id"].tolist() == ["a"]
    with pytest.raises(ConfigError):
        window_filter(v, 300, 200)


def test_not_ok_and_unlabelled_come_first():
    v = videos_table([("a", "REAL", "", 0, "read_error"), ("b", "", "", 300),
                      ("c", "FAKE", "x", 999, "no_face"), ("d", "REAL", "", 300)])
    kept, out = window_filter(v)
    assert kept["video_id"].tolist() == ["d"]
    assert [reason_code(r) for r in out["reason"]] == ["not_ok", "no_label", "not_ok"]
    assert out["reason"][0] == "not_ok: status read_error (boom)"


def test_orphan_fakes_dropped_by_default_and_counted():
    v = videos_table([
        ("r1", "REAL", "", 300), ("f1", "FAKE", "r1", 300),
        ("r2", "REAL", "", 150), ("f2", "FAKE", "r2", 300), ("f3", "FAKE", "r2", 310),
        ("f4", "FAKE", "absent", 300),  # original never provided: kept, counted separately
    ])
    res = filter_videos(v)
    assert res.kept["video_id"].tolist() == ["r1", "f1", "f4"]
    assert res.outliers["video_id"].tolist() == ["r2", "f2", "f3"]
    assert res.outliers["reason"].tolist()[1:] == ["orphan_fake: original r2 was left out"] * 2
    assert res.summary == {"videos_in": 6, "kept": 3, "outliers": 3,
                           "by_reason": {"orphan_fake": 2, "too_few_faces": 1},
                           "orphan_fakes": 2, "orphan_fakes_dropped": 2,
                           "fakes_original_absent": 1}


def test_orphan_fakes_keep():
    v = videos_table([("r2", "REAL", "", 150), ("f2", "FAKE", "r2", 300)])
    res = filter_videos(v, orphan_fakes="keep")
    assert res.kept["video_id"].tolist() == ["f2"]
    assert res.summary["orphan_fakes"] == 1 and res.summary["orphan_fakes_dropped"] == 0
    with pytest.raises(ConfigError):
        orphan_filter(v, set(v["video_id"]), "maybe")


def test_duplicate_ids_refused():
    v = videos_table([("a", "REAL", "", 300), ("a", "REAL", "", 300)])
    with pytest.raises(ManifestError, match="duplicate"):
        filter_videos(v)
