"""Evaluation at scale (the ``evaluate`` step of ``dfpipe bench --what scale``).

``eval_tables`` generates, seeded and deterministic, the tables ``evaluate.stage.build_report``
consumes for ``n_test`` DFDC-like test videos: one REAL per ~6 videos, ~2.7 videos per original
group; two models, ``cnn_lstm`` and ``frame`` (with its derived ``frame_mean``); a per-video
score ``y * 1.81 + N(0, 1)`` (binormal, ROC AUC ~0.9) that each scorer sees with its own noise;
30 per-frame predictions per video for ``frame`` (``FRAME_COLUMNS``; ``frame_mean`` is their
mean); and validation predictions for as many videos again. ``bench_evaluate`` times
``build_report`` on them with the default 1000 grouped-bootstrap resamples in a child process
(``bench.child.run_child``: wall seconds and the child's own peak RSS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FRAMES_PER_VIDEO = 30
VIDEOS_PER_GROUP = 2.7
MODELS = ("cnn_lstm", "frame", "frame_mean")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _split_tables(rng: np.random.Generator, n: int, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(video predictions of ``MODELS``, frame predictions of ``frame``) for ``n`` videos."""
    ids = np.array([f"{prefix}{i:07d}" for i in range(n)])
    n_groups = max(1, round(n / VIDEOS_PER_GROUP))
    group_of = rng.integers(0, n_groups, n)
    groups = np.array([f"{prefix}g{k:07d}" for k in range(n_groups)])[group_of]
    y = (rng.random(n) >= 1 / 6).astype(int)
    y[:2] = [0, 1]  # both classes, also at tiny n
    label = np.where(y == 1, "FAKE", "REAL")
    score = y * 1.81 + rng.normal(0, 1, n)  # (V,) binormal: ROC AUC ~0.9
    frame_logit = score[:, None] + rng.normal(0, 1, (n, FRAMES_PER_VIDEO)) - 0.9  # (V, 30)
    frame_p = _sigmoid(frame_logit)
    p = {"cnn_lstm": _sigmoid(score + rng.normal(0, 0.3, n) - 0.9),
         "frame": frame_p[:, FRAMES_PER_VIDEO // 2], "frame_mean": frame_p.mean(axis=1)}
    preds = pd.concat([pd.DataFrame({"video_id": ids, "label": label, "group": groups,
                                     "model": m, "p_fake": p[m]}) for m in MODELS],
                      ignore_index=True)
    frames = pd.DataFrame({
        "video_id": np.repeat(ids, FRAMES_PER_VIDEO), "label": np.repeat(label, FRAMES_PER_VIDEO),
        "group": np.repeat(groups, FRAMES_PER_VIDEO), "model": "frame",
        "slot": np.tile(np.arange(FRAMES_PER_VIDEO), n), "p_fake": frame_p.ravel()})
    return preds, frames


def eval_tables(n_test: int, seed: int = 0) -> dict[str, Any]:
    """``predictions``, ``val_predictions``, ``frame_predictions`` and ``model_infos`` for
    ``build_report`` (module docstring), deterministic in ``seed``."""
    from pipeline.evaluate.stats import ModelInfo

    rng = np.random.default_rng(seed)
    preds, frames = _split_tables(rng, n_test, "t")
    vals, _ = _split_tables(rng, n_test, "v")
    train = {"synthetic": False, "generated_by": "dfpipe bench --what scale"}
    infos = {"cnn_lstm": ModelInfo("cnn_lstm", "cnn_lstm", "bench/cnn_lstm.pt", train),
             "frame": ModelInfo("frame", "frame", "bench/frame.pt", train),
             "frame_mean": ModelInfo("frame_mean", "frame_mean", "bench/frame.pt", train,
                                     derived_from="frame")}
    return {"predictions": preds, "val_predictions": vals, "frame_predictions": frames,
            "model_infos": infos}


_EVAL = """
import json, sys, time
from pipeline.bench.evaluate import eval_tables
from pipeline.evaluate.stage import build_report
n, n_boot, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
t = eval_tables(n)
t1 = time.perf_counter()
s = build_report(t["predictions"], t["val_predictions"], t["model_infos"], out,
                 frame_predictions=t["frame_predictions"], n_bootstrap=n_boot)
t2 = time.perf_counter()
print(json.dumps({"generate_s": round(t1 - t0, 2), "build_report_s": round(t2 - t1, 2),
                  "auc": {m: round(v["at_0.5"]["metrics"]["roc_auc"]["value"], 3)
                          for m, v in s["models"].items()},
                  "frame_rows": len(t["frame_predictions"])}))
"""


def bench_evaluate(out: str | os.PathLike, n_test: int = 20_000, n_bootstrap: int = 1000,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """Time ``build_report`` on generated tables for ``n_test`` videos in a child process:
    ``run_child``'s fields plus the child's own ``generate_s``/``build_report_s``/AUCs."""
    from pipeline.bench.child import run_child

    folder = Path(out) / f"eval_report_{n_test}"
    res = run_child(_EVAL, [str(n_test), str(n_bootstrap), str(folder)], env)
    res.update({"videos": n_test, "bootstrap": n_bootstrap})
    if res["rc"] == 0 and res["tail"]:
        res.update(json.loads(res["tail"][0]))
        res["tail"] = [f"build_report {res['build_report_s']} s on {n_test} videos x 3 models, "
                       f"{res['frame_rows']} frame rows, {n_bootstrap} resamples"]
    return res
