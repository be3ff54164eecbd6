"""Scoring, step 2: each face track of a video into the windows' slots; which tracks count.

Input: the video's faces (``faces.records.VideoFaces``: one record and crop per face, each with
its track) and the model's slot plan. Output: ``Placement``: the video's windows
(``score.plan.score_windows``), one entry per track (its slots in every window, the frames they
rest on, its status) and the crops by track and frame.

A slot takes the first frame of its span where the track has a face (``sample_window``). A track
is an identity when it holds at least ``min_share`` of the video's face frames (or is the
longest track); shorter ones (a face on a poster seen for a moment, a detector false positive)
are ``brief`` and never decide the verdict. A track is scored (``ok``) when its face is in at
least ``min_frames`` sampled frames, else ``too_few_frames`` (``track_statuses``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.faces.records import VideoFaces
from pipeline.score.plan import SlotPlan, Window, WindowSlot, score_windows


def sample_window(face_frames: set[int] | frozenset[int], window: Window) -> list[WindowSlot]:
    """Each slot of ``window``: the first frame of ``[start, end)`` in ``face_frames`` (the frames
    where one track has its face), else a gap with reason ``no_face``."""
    out = []
    for j, (start, end) in enumerate(zip(window.starts, window.ends, strict=True)):
        frame = next((f for f in range(start, max(end, start + 1)) if f in face_frames), None)
        reason = "no_face" if frame is None else ("" if frame == start else "advanced")
        out.append(WindowSlot(window.index, j, start, frame, reason))
    return out


def track_statuses(faces: list[int], used: list[int], n_face_frames: int, min_share: float,
                   min_frames: int) -> list[str]:
    """Per track: ``ok`` (an identity in at least ``min_frames`` sampled frames),
    ``too_few_frames``, or ``brief`` (fewer than ``min_share`` of the frames with a face, and not
    the longest track).

    Args:
        faces: face crops per track.
        used: sampled frames that got the track's face, per track.
        n_face_frames: frames with at least one face (the share's denominator).
        min_share: minimum share of ``n_face_frames`` for a real identity.
        min_frames: minimum sampled frames for a track to be scored.
    """
    longest = max(faces, default=0)
    out = []
    for n, u in zip(faces, used, strict=True):
        if n < longest and n < min_share * n_face_frames:
            out.append("brief")
        else:
            out.append("ok" if u >= min_frames else "too_few_frames")
    return out


@dataclass
class Placement:
    """A video's faces in its windows.

    ``tracks``: per track (by id) a dict with ``track``, ``per_window`` (its used slots in each
    window, gaps left out), ``used`` (distinct frames), ``faces``, ``mean_face_prob`` and
    ``summary`` (the result's ``tracks`` entry; ``p_fake`` filled by ``score.verdict``).
    """

    windows: list[Window]
    tracks: list[dict[str, Any]]
    crop_of: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # track -> frame -> crop

    @property
    def scorable(self) -> list[dict[str, Any]]:
        """The tracks with status ``ok``."""
        return [t for t in self.tracks if t["summary"]["status"] == "ok"]

    def best_unscored(self) -> int:
        """Most sampled frames of a track that is not ``brief`` (for a ``too_few_frames`` reason)."""
        return max(t["used"] for t in self.tracks if t["summary"]["status"] != "brief")

    @property
    def n_slots(self) -> int:
        """Slots over all windows."""
        return sum(len(w.starts) for w in self.windows)


def place(faces: VideoFaces, plan: SlotPlan, fps: float | None, min_share: float,
          min_frames: int) -> Placement:
    """Every track of ``faces`` into the windows of the video (``fps`` None: 30)."""
    windows = score_windows(faces.info.n_frames, fps or 0.0, plan)
    crop_of: dict[int, dict[int, np.ndarray]] = {}
    probs: dict[int, list[float]] = {}
    for rec, crop in zip(faces.records, faces.crops, strict=True):
        crop_of.setdefault(rec.track, {}).setdefault(rec.frame, crop)
        if np.isfinite(rec.prob):  # boxes carried between detections have no probability
            probs.setdefault(rec.track, []).append(float(rec.prob))
    tracks = []
    for track in sorted(crop_of):
        frames = frozenset(crop_of[track])
        per_window = [[s for s in sample_window(frames, w) if s.frame is not None] for w in windows]
        p = probs.get(track, [])
        tracks.append({"track": int(track), "per_window": per_window,
                       "used": len({s.frame for ws in per_window for s in ws}),
                       "faces": sum(r.track == track for r in faces.records),
                       "mean_face_prob": float(np.mean(p)) if p else None})
    n_face_frames = faces.n_face_frames
    statuses = track_statuses([t["faces"] for t in tracks], [t["used"] for t in tracks],
                              n_face_frames, min_share, min_frames)
    for t, status in zip(tracks, statuses, strict=True):
        t["summary"] = {"track": t["track"], "frames_used": t["used"], "faces": t["faces"],
                        "share": round(t["faces"] / n_face_frames, 4),
                        "mean_face_prob": t["mean_face_prob"], "p_fake": None, "status": status}
    return Placement(windows, tracks, crop_of)
