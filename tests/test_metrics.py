"""Every metric recomputed with scikit-learn on known inputs; thresholds; grouped bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.stats import bootstrap as B
from pipeline.stats import metrics as M


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    n = 200
    y = (rng.random(n) < 0.7).astype(int)  # imbalanced: mostly FAKE, as in DFDC
    p = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    return y, p


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.71])
def test_video_metrics_match_sklearn(data, threshold):
    y, p = data
    got = M.video_metrics(y, p, threshold)
    pred = (p >= threshold).astype(int)
    w = np.where(y == 1, 1 / (2 * y.sum()), 1 / (2 * (1 - y).sum()))
    expected = {
        "roc_auc": skm.roc_auc_score(y, p),
        "average_precision": skm.average_precision_score(y, p),
        "log_loss": skm.log_loss(y, p),
        "balanced_log_loss": skm.log_loss(y, p, sample_weight=w),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "f1": skm.f1_score(y, pred),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-10), name
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (got["tn"], got["fp"], got["fn"], got["tp"]) == (tn, fp, fn, tp)
    assert got["n_real"] == int((y == 0).sum()) and got["n_fake"] == int(y.sum())
    assert got["threshold"] == threshold


def test_threshold_free_metrics_ignore_threshold(data):
    y, p = data
    a, b = M.video_metrics(y, p, 0.2), M.video_metrics(y, p, 0.8)
    for name in M.THRESHOLD_FREE:
        assert a[name] == b[name]
    assert a["recall"] > b["recall"]


def test_auc_uses_probabilities_not_hard_labels(data):
    y, p = data
    got = M.video_metrics(y, p)
    hard_auc = skm.roc_auc_score(y, (p >= 0.5).astype(int))
    # the "AUC from hard labels" of the original study is balanced accuracy, not ROC AUC
    assert hard_auc == pytest.approx(got["balanced_accuracy"])
    assert got["roc_auc"] != pytest.approx(hard_auc, abs=1e-3)


def test_eer_exact_and_against_roc(data):
    # scores 0.1..0.4 REAL, 0.3..0.6 FAKE: a threshold of 0.35 gives FPR = FNR = 1/4
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.45, 0.5, 0.6])
    assert M.eer(y, p) == pytest.approx(0.25)
    y, p = data
    fpr, tpr, _ = skm.roc_curve(y, p)
    e = M.eer(y, p)
    fnr = 1 - tpr
    # the EER lies between FPR and FNR at the ROC point nearest to the crossing
    i = np.argmin(np.abs(fpr - fnr))
    assert min(fpr[i], fnr[i]) - 0.02 <= e <= max(fpr[i], fnr[i]) + 0.02
    assert M.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0  # perfect separation
    assert M.eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 1.0  # perfectly wrong


def test_one_class_gives_nan_not_crash():
    res = M.video_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    for name in M.NEEDS_BOTH_CLASSES:
        assert math.isnan(res[name]), name
    assert math.isnan(res["specificity"])
    assert res["recall"] == pytest.approx(2 / 3)
    assert res["log_loss"] == pytest.approx(skm.log_loss([1, 1, 1], [0.2, 0.7, 0.9], labels=[0, 1]))
    assert res["n_real"] == 0 and res["n_fake"] == 3
    none_called = M.video_metrics([0, 1], [0.1, 0.2], threshold=0.9)
    assert math.isnan(none_called["precision"]) and none_called["f1"] == 0.0
    empty = M.video_metrics([], [])
    assert math.isnan(empty["accuracy"]) and math.isnan(empty["log_loss"])


def test_log_loss_clips_extremes():
    assert math.isfinite(M.log_loss([1, 0], [0.0, 1.0]))
    assert M.log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(M.EPS), rel=1e-4)  # 1 - (1 - EPS) rounds


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0 \\(REAL\\) or 1"):
        M.video_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="probabilities"):
        M.video_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="values"):
        M.video_metrics([0, 1, 1], [0.1, 0.2])


def test_choose_threshold_balanced_accuracy():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
    t = M.choose_threshold(y, p)
    # 0.3 < t <= 0.4 separates all REAL (max 0.3) from all FAKE but one (0.2): bacc = (1 + 6/7) / 2
    assert 0.3 < t < 0.4
    assert t == pytest.approx(0.35)
    best = max(
        skm.balanced_accuracy_score(y, (p >= c).astype(int)) for c in np.linspace(0, 1, 1001)
    )
    assert skm.balanced_accuracy_score(y, (p >= t).astype(int)) == pytest.approx(best)


def test_choose_threshold_target_fpr(data):
    y, p = data
    for target in (0.0, 0.05, 0.1, 0.3):
        t = M.choose_threshold(y, p, rule="fpr", target_fpr=target)
        res = M.video_metrics(y, p, t)
        fpr = 1 - res["specificity"]
        assert fpr <= target + 1e-12
        # no lower candidate keeps the bound: the next REAL score below t would push it over
        lower = p[(y == 0) & (p < t)]
        if lower.size:
            fpr_lower = np.mean(p[y == 0] >= lower.max())
            assert fpr_lower > target
    assert M.choose_threshold([0, 0, 1], [0.9, 0.95, 0.1], rule="fpr", target_fpr=0.0) > 0.95


def test_choose_threshold_one_class_and_bad_rule():
    assert M.choose_threshold([1, 1], [0.2, 0.9]) == 0.5
    with pytest.raises(ValueError, match="unknown threshold rule"):
        M.choose_threshold([0, 1], [0.2, 0.9], rule="youden")


def test_reliability_curve_matches_sklearn(data):
    from sklearn.calibration import calibration_curve

    y, p = data
    rc = M.reliability_curve(y, p, n_bins=10)
    frac, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(rc["frac_fake"], frac)
    np.testing.assert_allclose(rc["mean_p"], mean_p)
    assert rc["count"].sum() == y.size
    assert 0 <= rc["ece"] <= 1


def _grouped(n_groups, seed=0):
    """One REAL original + two correlated FAKEs per group."""
    rng = np.random.default_rng(seed)
    y, p, g = [], [], []
    for i in range(n_groups):
        shift = rng.normal(0, 0.15)  # shared by the group: related videos are not independent
        y += [0, 1, 1]
        p += [0.35 + shift + rng.normal(0, 0.1), 0.6 + shift + rng.normal(0, 0.1),
              0.62 + shift + rng.normal(0, 0.1)]
        g += [f"orig{i}"] * 3
    return np.array(y), np.clip(np.array(p), 0.001, 0.999), np.array(g)


def test_bootstrap_resamples_keep_groups_together():
    y, p, g = _grouped(10)
    for idx in B.bootstrap_resamples(g, n=20, seed=1):
        assert len(idx) == 30
        drawn = g[idx]
        for grp in np.unique(drawn):
            # a drawn group comes with all three of its videos, k times over
            assert np.sum(drawn == grp) % 3 == 0
    a = B.bootstrap_resamples(g, n=5, seed=7)
    b = B.bootstrap_resamples(g, n=5, seed=7)
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))


def test_bootstrap_interval_contains_estimate_and_shrinks():
    widths = []
    for n_groups in (15, 240):
        y, p, g = _grouped(n_groups)
        for name, fn in [("auc", skm.roc_auc_score), ("ll", M.log_loss)]:
            est = fn(y, p)
            lo, hi = B.grouped_bootstrap(y, p, g, fn, n=300, seed=0)
            assert lo <= est <= hi, (name, n_groups)
            if name == "auc":
                widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # 16x the data: about 4x narrower


def test_bootstrap_skips_one_class_resamples():
    # 3 groups, one of them holds the only REAL video: many resamples have no REAL at all
    y = np.array([0, 1, 1, 1, 1])
    p = np.array([0.2, 0.7, 0.8, 0.6, 0.9])
    g = np.array(["a", "a", "b", "c", "c"])
    auc = lambda yy, pp: M.video_metrics(yy, pp)["roc_auc"]  # noqa: E731
    vals = B.grouped_bootstrap_values(y, p, g, auc, n=200, seed=0)
    skipped = np.isnan(vals).sum()
    assert 0 < skipped < 200
    # P(group "a" never drawn in 3 draws) = (2/3)^3 ~ 0.30
    assert 0.15 < skipped / 200 < 0.45
    lo, hi = B.grouped_bootstrap(y, p, g, auc, n=200, seed=0)
    assert lo == hi == 1.0
    res = B.bootstrap_video_metrics(y, p, g, n=200, seed=0)
    assert res["roc_auc"]["n_skipped"] == skipped
    assert res["log_loss"]["n_skipped"] == 0


def test_bootstrap_video_metrics_intervals_contain_estimates():
    y, p, g = _grouped(60)
    est = M.video_metrics(y, p, 0.5)
    ci = B.bootstrap_video_metrics(y, p, g, threshold=0.5, n=200, seed=0)
    assert set(ci) == set(M.METRIC_NAMES)
    for name in M.METRIC_NAMES:
        assert ci[name]["lo"] <= est[name] <= ci[name]["hi"], name
        assert ci[name]["n_valid"] + ci[name]["n_skipped"] == 200


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_ranking_metrics_with_ties_match_sklearn(data, decimals):
    y, p = data
    p = np.round(p, decimals)  # many tied scores at 1 decimal
    got = M.video_metrics(y, p)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert got["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    pts = M.roc_points(y, p)
    np.testing.assert_allclose(pts["fpr"], fpr)
    np.testing.assert_allclose(pts["tpr"], tpr)
    np.testing.assert_allclose(pts["thresholds"][1:], thr[1:])
    prec, rec, _ = skm.precision_recall_curve(y, p)
    # scikit-learn lists PR points lowest threshold first and appends (recall 0, precision 1)
    np.testing.assert_allclose(pts["precision"], prec[:-1][::-1])
    np.testing.assert_allclose(pts["tpr"][1:], rec[:-1][::-1])


def test_paired_bootstrap_difference():
    y, p, g = _grouped(60)
    same = B.paired_bootstrap(y, p, p, g, M.roc_auc, n=100, seed=0)
    assert same["value"] == same["lo"] == same["hi"] == 0.0
    rng = np.random.default_rng(5)
    noisy = np.clip(p + rng.normal(0, 0.3, p.size), 0, 1)  # a clearly worse model
    d = B.paired_bootstrap(y, p, noisy, g, M.roc_auc, n=200, seed=0)
    assert d["value"] == pytest.approx(skm.roc_auc_score(y, p) - skm.roc_auc_score(y, noisy))
    assert 0 < d["lo"] <= d["value"] <= d["hi"]
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
