"""Grouped bootstrap: (y_true, p_fake, groups) -> 95 % intervals that resample whole groups.

A group is an original and its fakes: resampling groups, not videos, keeps related fakes together,
so they cannot make an interval look tighter than the number of independent originals allows.
Pure functions; metrics come from ``pipeline.stats.metrics``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from pipeline.stats.metrics import METRIC_NAMES, _arrays, video_metrics

logger = logging.getLogger(__name__)

def _group_index(groups: Sequence | np.ndarray) -> list[np.ndarray]:
    g = np.asarray(groups).astype(str)
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, splits)


def iter_bootstrap_resamples(groups: Sequence | np.ndarray, n: int = 1000,
                             seed: int = 0) -> Iterator[np.ndarray]:
    """The resamples of ``bootstrap_resamples``, one at a time (same draws, same order).

    Only the (n, groups) matrix of drawn group numbers is held, not the row indices of every
    resample: those are (n x rows) and grow with the table (1000 resamples of 600k per-frame
    rows are 4.8 GB of int64).
    """
    members = _group_index(groups)
    if not members:
        return
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(members), size=(n, len(members)))  # (n, G) group numbers
    for row in draws:
        yield np.concatenate([members[j] for j in row])


def bootstrap_resamples(groups: Sequence | np.ndarray, n: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n`` grouped bootstrap resamples.

    Each resample draws as many groups as there are, with replacement, and takes all rows of
    each drawn group: related fakes of one original move together, so they cannot make the
    interval look tighter than the number of independent originals allows. All of them in
    memory at once: loops use ``iter_bootstrap_resamples``.
    """
    return list(iter_bootstrap_resamples(groups, n, seed))


def grouped_bootstrap_values(
    y_true: Sequence | np.ndarray,
    p_fake: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``metric_fn(y, p)`` on each grouped resample (NaN where undefined, e.g. one class)."""
    y, p = _arrays(y_true, p_fake)
    return np.array([metric_fn(y[idx], p[idx]) for idx in iter_bootstrap_resamples(groups, n, seed)],
                    dtype=float)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (NaN, NaN when none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def grouped_bootstrap(
    y_true: Sequence | np.ndarray,
    p_fake: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile 95% interval of ``metric_fn`` over grouped bootstrap resamples.

    Resamples where the metric is undefined (NaN: e.g. only one class drawn, for AUC-like
    metrics) are skipped; use ``grouped_bootstrap_values`` to count them.
    """
    values = grouped_bootstrap_values(y_true, p_fake, groups, metric_fn, n, seed)
    skipped = int(np.sum(~np.isfinite(values)))
    if skipped:
        logger.debug("grouped_bootstrap: %d of %d resamples undefined, skipped", skipped, n)
    return percentile_interval(values)


def bootstrap_video_metrics(
    y_true: Sequence | np.ndarray,
    p_fake: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    threshold: float = 0.5,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """95% grouped-bootstrap intervals of every metric in ``METRIC_NAMES`` at one threshold.

    All metrics share the same resamples (same ``seed`` -> same intervals).

    Returns:
        ``{metric: {"lo", "hi", "n_valid", "n_skipped"}}``; ``n_skipped`` counts the resamples
        where the metric was undefined (e.g. one class only).
    """
    y, p = _arrays(y_true, p_fake)
    values = {m: [] for m in METRIC_NAMES}
    for idx in iter_bootstrap_resamples(groups, n, seed):
        res = video_metrics(y[idx], p[idx], threshold)
        for m in METRIC_NAMES:
            values[m].append(res[m])
    out = {}
    for m, vals in values.items():
        arr = np.asarray(vals, dtype=float)
        lo, hi = percentile_interval(arr)
        n_valid = int(np.isfinite(arr).sum())
        out[m] = {"lo": lo, "hi": hi, "n_valid": n_valid, "n_skipped": int(arr.size - n_valid)}
    return out


def paired_bootstrap(
    y_true: Sequence | np.ndarray,
    p_a: Sequence | np.ndarray,
    p_b: Sequence | np.ndarray,
    groups: Sequence | np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Difference ``metric(A) - metric(B)`` of two models scored on the same videos.

    Both models are evaluated on the same grouped resamples, so the interval reflects the
    difference itself rather than two independent uncertainties (paired bootstrap).

    Returns:
        ``value`` (on all videos), ``lo``, ``hi`` (percentile 95%), ``n_valid``.
    """
    y, a = _arrays(y_true, p_a)
    _, b = _arrays(y_true, p_b)
    diffs = np.array([metric_fn(y[i], a[i]) - metric_fn(y[i], b[i])
                      for i in iter_bootstrap_resamples(groups, n, seed)], dtype=float)
    lo, hi = percentile_interval(diffs)
    return {"value": float(metric_fn(y, a) - metric_fn(y, b)), "lo": lo, "hi": hi,
            "n_valid": int(np.isfinite(diffs).sum())}
