"""Scoring, step 4: windows' p_fake -> each track's p_fake -> the video's verdict and timeline.

A track's p_fake is the mean of its windows' p_fake weighted by the frames each rests on (for a
frame model: the mean of all its sampled frames, or the checkpoint's frame -> track rule over
them); the video's p_fake is the maximum over its identity tracks (any fake identity makes the
video fake); FAKE when it reaches the threshold.

Why the mean over windows and the max over tracks: the decision threshold was chosen on single
~10 s windows of validation videos; averaging a track's windows keeps a real video's false-alarm
rate at that calibrated level however long it is (a max over 30 windows of a 5-minute video would
call far more real videos FAKE), while each window's own p_fake stays in ``windows`` and the
``timeline`` so a manipulated stretch remains visible. Different tracks are different people: one
fake identity is enough.

Per-frame timeline (every window of the deciding track): for ``frame`` checkpoints, each sampled
frame's own p_fake (a window's p_fake is their mean, as ``frame_mean``); for ``cnn_lstm``, the
running verdict within its window: p_fake after the LSTM has seen the slots up to that frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.score.plan import Window, WindowSlot
from pipeline.stats.aggregation import aggregate, describe

VIDEO_RULE = ("a window's p_fake from its sampled frames; a track's p_fake = the mean of its "
              "windows' p_fake weighted by their frames; the video's p_fake = the max over its "
              "identity tracks")
"""How a video's verdict combines windows and tracks: in every video result (``verdict_rule``)."""


def video_rule(per_frame: bool, aggregation: dict[str, Any]) -> str:
    """``verdict_rule`` of a scorer: ``VIDEO_RULE``, or for a frame model the checkpoint's frame
    -> track rule (``pipeline.stats.aggregation``) over all the track's sampled frames."""
    rule = aggregation.get("rule", "mean")
    if not per_frame or rule == "mean":
        return VIDEO_RULE
    return (f"a track's p_fake over all its sampled frames by the {rule} rule chosen on "
            f"validation ({describe(rule, aggregation.get('params'))}); the video's p_fake = "
            "the max over its identity tracks")


def verdict(scorable: list[dict[str, Any]], clips: list[tuple[int, list[WindowSlot]]],
            p_clip: np.ndarray, per_slot: np.ndarray, windows: list[Window], fps: float | None,
            *, threshold: float, per_frame: bool, aggregation: dict[str, Any]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The video's result fields and its deciding track.

    Args:
        scorable: the ``ok`` tracks of ``score.windows.Placement`` (each gets ``p_fake`` and
            ``clips``, its clip indices; its ``summary`` gets ``p_fake``).
        clips: ``(track index, used slots)`` per clip (``score.predict.window_clips``).
        p_clip: (B,) p_fake per clip; per_slot: (B, T) per slot (``Predictor.predict``).
        windows: all windows of the video (``score.plan``); fps: None when unknown.
        threshold: p_fake >= threshold -> FAKE.
        per_frame, aggregation: a frame model and its frame -> track rule.

    Returns:
        ``(fields, deciding track)``: the result's status, p_fake, label, deciding_track,
        timeline, frames_used and windows (each window's summary and p_fake).
    """
    rule = aggregation.get("rule", "mean")
    for ti, t in enumerate(scorable):
        mine = [c for c, (cti, _) in enumerate(clips) if cti == ti]
        n = np.array([len(clips[c][1]) for c in mine], dtype=np.float64)
        if per_frame and rule != "mean":  # the rule over all the track's frames
            t["p_fake"] = aggregate([per_slot[c, s.slot] for c in mine for s in clips[c][1]],
                                    rule, aggregation.get("params"))
        else:  # frames-weighted mean of windows (= the mean of all frames for a frame model)
            t["p_fake"] = float(np.dot(n, p_clip[mine]) / n.sum())
        t["clips"] = mine
        t["summary"]["p_fake"] = t["p_fake"]
    deciding = max(scorable, key=lambda t: t["p_fake"])
    p_video = deciding["p_fake"]
    timeline, by_window = [], {}
    for c in deciding["clips"]:
        ws = clips[c][1]
        by_window[ws[0].window] = (float(p_clip[c]), len(ws))
        timeline += [{"frame": int(s.frame), "slot": int(s.slot), "window": int(s.window),
                      "time_s": None if fps is None else round(s.frame / fps, 3),
                      "p_fake": float(per_slot[c, s.slot])} for s in ws]
    fields = {"status": "ok", "p_fake": p_video,
              "label": "FAKE" if p_video >= threshold else "REAL",
              "deciding_track": deciding["track"], "timeline": timeline,
              "frames_used": deciding["used"],
              "windows": [w.summary(fps, *by_window.get(w.index, (None, 0))) for w in windows]}
    return fields, deciding
