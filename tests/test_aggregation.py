"""Frame -> video aggregation rules (``pipeline.stats.aggregation``): exact values on small arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stats.aggregation import EPS, aggregate, choose_rule, describe, video_probs

SMALL = {"fake_min": 2}  # so that 5-frame arrays can reach the fake branch


def test_mean_rule_is_the_plain_mean_and_ignores_nan():
    assert aggregate(np.array([0.2, 0.4, 0.9])) == pytest.approx(0.5)
    assert aggregate(np.array([0.2, np.nan, 0.4])) == pytest.approx(0.3)
    assert np.isnan(aggregate(np.array([np.nan])))
    assert aggregate(np.array([0.0, 0.0])) == EPS and aggregate(np.array([1.0])) == 1 - EPS


def test_confident_takes_the_clearly_fake_frames_when_there_are_enough():
    p = np.array([0.9, 0.85, 0.1, 0.3, 0.5])  # 2 of 5 >= 0.8: share 0.4, and >= fake_min 2
    assert aggregate(p, "confident", SMALL) == pytest.approx(0.875)
    assert aggregate(p, "mean") == pytest.approx(0.53)
    # one clearly fake frame of five is not enough (share 0.2 < 0.4): the mean of all
    q = np.array([0.9, 0.5, 0.1, 0.3, 0.5])
    assert aggregate(q, "confident", SMALL) == pytest.approx(0.46)
    # the default fake_min 8: two fake frames are not enough even at a share of 0.4
    assert aggregate(p, "confident") == pytest.approx(0.53)


def test_confident_takes_the_clearly_real_frames_when_nearly_all_are():
    p = np.array([0.1] * 9 + [0.7])  # 9 of 10 <= 0.2 (share 0.9)
    assert aggregate(p, "confident") == pytest.approx(0.1)
    q = np.array([0.1] * 8 + [0.7, 0.7])  # 8 of 10: not nearly all
    assert aggregate(q, "confident") == pytest.approx(0.22)


def test_confident_fake_branch_wins_over_the_real_one():
    p = np.array([0.95] * 8 + [0.05] * 12)  # 8 >= fake_min, share 0.4: fake branch first
    assert aggregate(p, "confident") == pytest.approx(0.95)


def test_unknown_rule_and_description():
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        aggregate(np.array([0.5]), "median")
    assert "mean" in describe("mean")
    assert "0.8" in describe("confident") and "40%" in describe("confident")


def test_video_probs_groups_frames_by_video():
    frames = pd.DataFrame({"video_id": ["b", "a", "a", "b", "b"],
                           "p_fake": [0.9, 0.2, 0.4, 0.85, 0.1]})
    got = video_probs(frames, "confident", {"fake_min": 2, "fake_share": 0.5})
    assert list(got.index) == ["a", "b"]
    assert got["a"] == pytest.approx(0.3) and got["b"] == pytest.approx(0.875)


def test_choose_rule_picks_the_lower_validation_loss():
    # FAKE videos: the face swap shows on 4 of 10 frames; REAL videos: all frames low
    rows = []
    for i in range(4):
        rows += [{"video_id": f"f{i}", "p_fake": p} for p in [0.95] * 4 + [0.3] * 6]
        rows += [{"video_id": f"r{i}", "p_fake": p} for p in [0.1] * 10]
    labels = {**{f"f{i}": 1 for i in range(4)}, **{f"r{i}": 0 for i in range(4)}}
    got = choose_rule(pd.DataFrame(rows), labels, {"fake_min": 4})
    assert got["rule"] == "confident" and got["params"]["fake_min"] == 4
    assert got["val_balanced_log_loss"]["confident"] < got["val_balanced_log_loss"]["mean"]
    # when the clearly fake frames are on REAL videos, averaging them away is better
    labels_flipped = {k: 1 - v for k, v in labels.items()}
    got = choose_rule(pd.DataFrame(rows), labels_flipped, {"fake_min": 4})
    assert got["rule"] == "mean" and got["params"] == {}


def test_choose_rule_with_one_frame_per_video_keeps_the_mean():
    frames = pd.DataFrame({"video_id": ["a", "b"], "p_fake": [0.9, 0.1]})
    got = choose_rule(frames, {"a": 1, "b": 0})
    assert got["rule"] == "mean" and "one frame per video" in got["chosen_on"]


def test_training_chooses_and_stores_the_rule_on_validation(tiny_frame_checkpoint):
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.stats.aggregation import RULES

    ck = load_checkpoint(tiny_frame_checkpoint)
    agg = ck["aggregations"]["frame_mean"]
    assert agg["rule"] in RULES and agg["chosen_on"].startswith("validation: ")
    assert set(agg["val_balanced_log_loss"]) == set(RULES)
    best = min(RULES, key=lambda r: (agg["val_balanced_log_loss"][r], RULES.index(r)))
    assert agg["rule"] == best
    # the frame_mean threshold was chosen on p_fake made by that rule
    assert ck["best"]["frame_mean"]["aggregation"] == agg
