"""``dfpipe bench --what score --checkpoint CK``: the checkpoint measured as ``dfpipe score`` runs
it, interleaved with the decode floor and a float32 run (structure and precision, not speed)."""

from __future__ import annotations

import os

from pipeline.bench.run import bench_score
from pipeline.train import engine


def test_checkpoint_score_bench_runs_each_precision_and_restores_the_setting(
        tmp_path, clip_factory, tiny_frame_checkpoint, monkeypatch):
    video = tmp_path / "clip.mp4"
    clip_factory(video, n_frames=40)
    monkeypatch.setenv(engine.PRECISION_ENV, "bfloat16")
    res = bench_score(video, 2, str(tiny_frame_checkpoint))
    assert os.environ[engine.PRECISION_ENV] == "bfloat16"  # restored after each run
    assert list(res["models"]) == ["score, bfloat16", "score, float32"]
    assert res["checkpoint"] == str(tiny_frame_checkpoint) and res["decode_only_s"] > 0
    for name, run in res["models"].items():
        assert run["precision"] == name.split(", ")[1] and run["status"] == "ok"
        assert len(run["runs_s"]) == 2 and run["s_per_video"] > 0
        assert 0 <= run["p_fake"] <= 1 and run["label"] in ("REAL", "FAKE")
