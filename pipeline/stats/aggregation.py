"""How a frame model's per-frame p_fake become one video's p_fake: the rules, and the choice on
validation.

Input: per-frame probabilities of one face track (or of one clip's valid slots). Output: one
p_fake. Two rules:

- ``mean``: the mean over the frames (``frame_mean``; what ``models.temporal.frame_mean_p``
  computes).
- ``confident``: the "confident frames" rule of the DFDC winners: when many frames are clearly
  fake (``p >= fake_p`` on at least ``fake_share`` of the frames and at least ``fake_min`` of them),
  the mean of those frames; else, when nearly all frames are clearly real (``p <= real_p`` on at
  least ``real_share``), the mean of those; else the mean of all. A fake face that the model
  spots on a third of its frames is not averaged away by the frames where the swap is clean.

``choose_rule`` picks the rule on the validation split's frame predictions by class-balanced log
loss (never on test). With one frame per video (single-image training data such as
``dfdc_faces``) the rules agree on every video, nothing can be chosen, and ``mean`` is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

RULES = ("mean", "confident")
EPS = 1e-6  # as models.temporal.FRAME_EPS: finite log losses and logits


@dataclass(frozen=True)
class ConfidentRule:
    """Parameters of the ``confident`` rule (defaults: the DFDC winner's 0.8 / 0.2 cut-offs)."""

    fake_p: float = 0.8
    fake_share: float = 0.4
    fake_min: int = 8
    real_p: float = 0.2
    real_share: float = 0.9


def aggregate(probs: np.ndarray, rule: str = "mean",
              params: Mapping[str, Any] | None = None) -> float:
    """One p_fake from per-frame ``probs`` (NaN frames ignored) by ``rule``, clamped into
    [EPS, 1 - EPS]; NaN when no frame is finite.

    Raises:
        ValueError: unknown rule.
    """
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; known: {list(RULES)}")
    p = np.asarray(probs, dtype=np.float64).ravel()
    p = p[np.isfinite(p)]
    if not p.size:
        return float("nan")
    value = float(p.mean())
    if rule == "confident":
        c = ConfidentRule(**dict(params or {}))
        fake, real = p >= c.fake_p, p <= c.real_p
        if fake.sum() >= max(c.fake_min, c.fake_share * p.size):
            value = float(p[fake].mean())
        elif real.sum() >= c.real_share * p.size:
            value = float(p[real].mean())
    return min(max(value, EPS), 1 - EPS)


def describe(rule: str, params: Mapping[str, Any] | None = None) -> str:
    """The rule in words, for a result's ``verdict_rule``."""
    if rule == "mean":
        return "the mean of its frames' p_fake"
    c = ConfidentRule(**dict(params or {}))
    return (f"confident frames: the mean of the frames with p_fake >= {c.fake_p:g} when they are "
            f">= {c.fake_share:.0%} of its frames and >= {c.fake_min}, else of the frames <= "
            f"{c.real_p:g} when they are >= {c.real_share:.0%}, else of all its frames")


def video_probs(frames: pd.DataFrame, rule: str = "mean",
                params: Mapping[str, Any] | None = None) -> pd.Series:
    """Per video (index: video_id, sorted) the p_fake of its frames (columns video_id, p_fake)."""
    return frames.groupby("video_id", sort=True)["p_fake"].agg(
        lambda s: aggregate(s.to_numpy(), rule, params))


def choose_rule(frames: pd.DataFrame, labels: Mapping[str, int] | pd.Series,
                params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The rule with the lower class-balanced log loss on validation frame predictions.

    Args:
        frames: one row per valid frame: video_id, p_fake (validation split only).
        labels: video_id -> 1 (FAKE) / 0 (REAL).
        params: ``confident`` parameters (defaults: ``ConfidentRule()``).

    Returns:
        ``{"rule", "params", "chosen_on", "val_balanced_log_loss": {rule: value}}``.
    """
    from pipeline.stats.metrics import balanced_log_loss

    params = asdict(ConfidentRule(**dict(params or {})))
    per_video = frames.groupby("video_id")["p_fake"].size()
    n_videos, most = int(per_video.size), int(per_video.max()) if per_video.size else 0
    if most < 2:
        return {"rule": "mean", "params": {}, "val_balanced_log_loss": {},
                "chosen_on": f"validation ({n_videos} videos) has one frame per video: every "
                             "rule gives the same p_fake, mean kept"}
    lab = pd.Series(labels)
    losses = {}
    for rule in RULES:
        p = video_probs(frames, rule, params if rule == "confident" else None)
        losses[rule] = float(balanced_log_loss(lab.loc[p.index].to_numpy(int), p.to_numpy()))
    best = min(RULES, key=lambda r: (losses[r], RULES.index(r)))  # ties: mean, the simpler
    return {"rule": best, "params": params if best == "confident" else {},
            "val_balanced_log_loss": losses,
            "chosen_on": f"validation: {n_videos} videos, up to {most} frames each; class-balanced "
                         f"log loss mean {losses['mean']:.4f}, confident {losses['confident']:.4f}"}
