"""The scoring plan: a video's length and frame rate + the model's slots -> windows of frames.

Input: the video's frame count and fps, and the model's sampling (``SlotPlan``: ``n_slots`` slots
``slot_seconds`` apart, read from the checkpoint by ``slot_plan``). Output: ``Window``s, each with
one start frame per slot and the frames a slot may advance to; ``score.windows.sample_window``
then picks, for one face track, the frame each slot takes (or the gap and why).

The rules (exact; ``tests/test_score_sampling.py`` checks index lists):

- ``step = max(1, slot_seconds * fps)`` frames between slots at the trained spacing (DFDC:
  1/3 s * 30 fps = 10 frames) and ``length = n_slots * step`` frames per window (DFDC: 300).
- **Long enough** (``n_frames >= length``): ``K = max(1, ceil((n_frames - step) / length))``
  windows (the fewest whose slots reach within one step of the end), their starts spread evenly
  from frame 0 to ``n_frames - length`` (``round(k * (n_frames - length) / (K - 1))``; one window
  starts at 0), slot ``j`` of a window at ``round(start + j * step)``; a window's last slot runs
  to the next window's start (the last window's to the video's last frame), so every frame of
  the video lies in a window; a 300-frame DFDC video (30 or 29.97 fps) gets exactly the training
  slots 0, 10, ..., 290, a 3,000-frame one 10 windows.
- **Short** (``n_frames < length``): one window, ``min(n_slots, n_frames)`` slots spread evenly
  over all frames (``sampling.uniform_positions``): denser than the trained spacing, so a 2 s
  clip or a 49-frame 12.5 fps clip still fills the model's slots.

Rounding is half up (``floor(x + 0.5)``). A slot takes the first frame of ``[start, end)`` where the
track has a face (``end`` = the next slot's start, or the window's end); with ``detect='slots'``
only the start frames are searched for faces, so a slot takes its start frame or is a gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.config import PrepareConfig
from pipeline.core.errors import ConfigError
from pipeline.prepare.sampling import uniform_positions

DEFAULT_TRAIN_FPS = 30.0
"""Frame rate assumed for the training videos when the checkpoint records none (DFDC's ~30 fps)."""


@dataclass(frozen=True)
class SlotPlan:
    """The model's input: ``n_slots`` frames ``slot_seconds`` apart; ``source`` says where from."""

    n_slots: int
    slot_seconds: float
    source: str


@dataclass(frozen=True)
class Window:
    """One model input's worth of slots: ``starts[j]`` is slot j's frame, ``ends[j]`` the first
    frame slot j may not advance to."""

    index: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def first(self) -> int:
        """First frame of the window."""
        return self.starts[0]

    @property
    def last(self) -> int:
        """Last frame of the window (inclusive)."""
        return self.ends[-1] - 1

    def summary(self, fps: float | None, p_fake: float | None, frames_used: int) -> dict[str, Any]:
        """The window as a result's ``windows`` entry: frames, seconds (None without an fps),
        its p_fake (None: the track has no face in it) and the frames that rests on."""
        return {"window": self.index, "first_frame": self.first, "last_frame": self.last,
                "start_s": None if fps is None else round(self.first / fps, 3),
                "end_s": None if fps is None else round((self.last + 1) / fps, 3),
                "frames_used": frames_used, "p_fake": p_fake}


@dataclass(frozen=True)
class WindowSlot:
    """What one slot of a window got for one track: ``frame`` (None for a gap) and ``reason``
    (``""`` at the start frame, ``"advanced"`` later in the slot, ``"no_face"`` for a gap)."""

    window: int
    slot: int
    start_frame: int
    frame: int | None
    reason: str

    @property
    def is_gap(self) -> bool:
        """True when the slot has no frame."""
        return self.frame is None


def slot_plan(ckpt: dict[str, Any]) -> SlotPlan:
    """The checkpoint's sampling: its clips' slot count and spacing in seconds.

    From ``train_data.prepare`` (the prepare config the training clips were made with: ``n_frames``,
    ``stride``, ``sampler``) and the training videos' frame rate (``train_data.fps`` when recorded,
    else ``DEFAULT_TRAIN_FPS``, and ``source`` says so). The ``uniform`` sampler has no fixed
    spacing: its clips spread ``n_frames`` over a 200-400-frame video, taken as 300 frames
    (the middle of the face-count window prepare keeps) at that frame rate.
    """
    data = ckpt.get("train_data") or {}
    prep = dict(data.get("prepare") or {})
    d = PrepareConfig()
    n_slots = int(prep.get("n_frames") or d.n_frames)
    fps = data.get("fps")
    fps_note = "" if fps else f", training videos taken as {DEFAULT_TRAIN_FPS:g} fps (not recorded)"
    fps = float(fps or DEFAULT_TRAIN_FPS)
    if prep.get("sampler", d.sampler) == "uniform":
        return SlotPlan(n_slots, 300.0 / n_slots / fps,
                        f"uniform sampler: {n_slots} slots over ~300 frames{fps_note}")
    stride = int(prep.get("stride") or d.stride)
    where = "checkpoint" if prep else "prepare defaults (the checkpoint records no sampling)"
    return SlotPlan(n_slots, stride / fps, f"{where}: every {stride}th frame{fps_note}")


EPS = 1e-6  # frames: float slack when comparing computed frame positions


def _round(x: float) -> int:
    return int(math.floor(x + 0.5 + EPS))


def score_windows(n_frames: int, fps: float, plan: SlotPlan) -> list[Window]:
    """The windows that cover a video of ``n_frames`` frames at ``fps`` (rules: module docstring).

    A missing or absurd ``fps`` (<= 0, NaN) is taken as the training frame rate's 30.
    """
    if plan.n_slots < 1 or not plan.slot_seconds > 0:
        raise ConfigError(f"bad slot plan {plan}")
    if n_frames < 1:
        return []
    fps = fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_TRAIN_FPS
    step = max(1.0, plan.slot_seconds * fps)
    length = plan.n_slots * step
    if n_frames < length - EPS:
        starts = tuple(uniform_positions(n_frames, min(plan.n_slots, n_frames)))
        return [Window(0, starts, (*starts[1:], n_frames))]
    # EPS: float slack (30 * (1/3 * 25) is 250.0000001, not 250)
    k_windows = max(1, math.ceil((n_frames - step) / length - EPS))
    firsts = [0.0] if k_windows == 1 else [k * (n_frames - length) / (k_windows - 1)
                                           for k in range(k_windows)]
    out = []
    for k, first in enumerate(firsts):
        starts = tuple(_round(first + j * step) for j in range(plan.n_slots))
        # the last slot runs to the next window (or the video's end): no frame falls between
        end = n_frames if k == k_windows - 1 else max(_round(first + length), _round(firsts[k + 1]))
        out.append(Window(k, starts, (*starts[1:], min(end, n_frames))))
    return out


def slot_spans(windows: Iterable[Window]) -> list[tuple[int, int]]:
    """Each distinct slot's ``[start, end)`` over all windows, sorted by start; where two
    windows' slots share a start, the shorter span (no frame of it belongs to another slot)."""
    spans: dict[int, int] = {}
    for w in windows:
        for start, end in zip(w.starts, w.ends, strict=True):
            stop = max(end, start + 1)
            spans[start] = min(spans.get(start, stop), stop)
    out = sorted(spans.items())
    # overlapping windows: a span ends where the next slot starts
    return [(a, min(b, out[i + 1][0]) if i + 1 < len(out) else b) for i, (a, b) in enumerate(out)]


def window_frames(windows: Iterable[Window]) -> list[int]:
    """Sorted slot start frames of all windows (what MTCNN runs on with ``detect='slots'``)."""
    return sorted({f for w in windows for f in w.starts})
