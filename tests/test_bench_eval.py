"""The scale benchmark's evaluation tables are what ``build_report`` accepts (a small size; the
timing itself lives in ``dfpipe bench --what scale``, never in tests)."""

from __future__ import annotations

import json

import pandas as pd

from pipeline.bench.evaluate import FRAMES_PER_VIDEO, MODELS, bench_evaluate, eval_tables
from pipeline.bench.scale import markdown
from pipeline.evaluate.stage import FRAME_COLUMNS, build_report


def test_eval_tables_are_deterministic_and_dfdc_like():
    a, b = eval_tables(300, seed=3), eval_tables(300, seed=3)
    pd.testing.assert_frame_equal(a["predictions"], b["predictions"])
    pd.testing.assert_frame_equal(a["frame_predictions"], b["frame_predictions"])
    assert not eval_tables(300, seed=4)["predictions"].equals(a["predictions"])
    preds, frames = a["predictions"], a["frame_predictions"]
    assert set(preds["model"]) == set(MODELS) and len(preds) == 3 * 300
    assert list(frames.columns) == list(FRAME_COLUMNS) and len(frames) == 300 * FRAMES_PER_VIDEO
    one = preds[preds["model"] == "cnn_lstm"]
    assert 2.2 < len(one) / one["group"].nunique() < 3.2
    assert 0.1 < (one["label"] == "REAL").mean() < 0.25
    mean = frames.groupby("video_id")["p_fake"].mean()
    fm = preds[preds["model"] == "frame_mean"].set_index("video_id")["p_fake"]
    assert (abs(fm - mean.reindex(fm.index)) < 1e-12).all()


def test_build_report_accepts_the_tables_and_the_step_reports_wall_and_peak(tmp_path):
    t = eval_tables(300)
    s = build_report(t["predictions"], t["val_predictions"], t["model_infos"], tmp_path / "r",
                     frame_predictions=t["frame_predictions"], n_bootstrap=50)
    assert list(s["models"]) == list(MODELS) and s["data"]["n_videos"] == 300
    assert 0.8 < s["models"]["cnn_lstm"]["at_0.5"]["metrics"]["roc_auc"]["value"] < 0.98
    assert "frame" in s["frame_level"] and "frame_mean - cnn_lstm" in s["paired"]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["bootstrap"] == 50

    res = bench_evaluate(tmp_path, 300, 50)
    assert res["rc"] == 0, res["tail"]
    assert res["seconds"] > 0 and res["peak_rss_mib"] > 50 and res["build_report_s"] > 0
    assert res["auc"]["cnn_lstm"] == round(
        s["models"]["cnn_lstm"]["at_0.5"]["metrics"]["roc_auc"]["value"], 3)
    lines = markdown({"generate": {"videos": 1, "face_rows": 2, "seconds": 0.1},
                      "prepare": res, "train_index": res, "evaluate": res,
                      "storage_mib": {"faces.parquet": 1}})
    assert any(line.startswith("| evaluate (build_report, 300 test videos) |") for line in lines)


def _frames(n_videos: int, seed: int = 0) -> pd.DataFrame:
    return eval_tables(n_videos, seed)["frame_predictions"]


def test_frame_level_bootstrap_gives_the_numbers_of_the_materialised_resamples():
    import numpy as np

    from pipeline.evaluate.stats import frame_level
    from pipeline.stats import bootstrap as B
    from pipeline.stats import metrics as M
    from pipeline.stats.bootstrap import iter_bootstrap_resamples

    frames = _frames(120, seed=2)
    frames["p_fake"] = frames["p_fake"].round(2)  # ties: distinct scores merge in the ROC
    got = frame_level(frames, 40, seed=5)["frame"]["metrics"]
    y = (frames["label"] == "FAKE").to_numpy(int)
    p, g = frames["p_fake"].to_numpy(float), frames["group"].to_numpy()
    listed = B.bootstrap_resamples(g, 40, 5)  # all resamples at once, as before
    assert all(np.array_equal(a, b) for a, b in
               zip(listed, iter_bootstrap_resamples(g, 40, 5), strict=True))
    boot = [M.video_metrics(y[i], p[i]) for i in listed]
    for name in ("roc_auc", "average_precision", "log_loss"):
        lo, hi = B.percentile_interval(np.array([b[name] for b in boot]))
        assert (got[name]["lo"], got[name]["hi"]) == (lo, hi)
    assert frame_level(frames, 0, seed=5)["frame"]["metrics"]["roc_auc"]["bootstrap_skipped"] == 0


def test_frame_level_bootstrap_memory_does_not_grow_with_resamples_x_rows():
    import tracemalloc

    from pipeline.evaluate.stats import frame_level

    frames = _frames(700)  # 21,000 frame rows
    n_boot = 150  # materialised: 150 x 21,000 int64 indices = 25 MB
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        frame_level(frames, n_boot, seed=0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < n_boot * len(frames) * 8 / 4, f"peak {peak / 2**20:.1f} MiB"
