"""Frame subsampling: one video's face rows -> ``n_frames`` slots (clip rows + gap rows).

A *usable* frame is a frame with exactly one face row (a frame with two faces is ambiguous:
which face belongs to the clip?). Both samplers take a faces table for ONE video with at least
the columns ``frame, track, crop_path`` and assume nothing else, so the scoring stage can pass one
face track at a time.

``stride`` (default; the original study's rule made exact): slot ``k`` (``k = 0..n_frames-1``)
starts at frame ``k * stride``. If that frame is usable it is taken; otherwise the sampler advances
frame by frame while ``frame < (k + 1) * stride`` (never into the next slot) and takes the first
usable frame. If none is found the slot is a gap, with reason

- ``no_face``: no frame in the slot's window has a face;
- ``multi_face``: faces were found in the window, but only in frames with two or more;
- ``past_end``: the window starts at or after the video's last frame (only when the video's
  frame count is given; a 250-frame video has slots 25..29 past its end).

Slots are always ``0..n_frames-1`` at ``k * stride`` whatever the video's length: frames after
``n_frames * stride`` (e.g. frames 300-399 of a 400-frame video) are never used, and a shorter
video ends in gaps.

``uniform``: ``n_frames`` usable frames evenly spaced over the video's usable frames (positions
``round(i * (m - 1) / (n_frames - 1))`` in the sorted list of its ``m`` usable frames, rounded half
up). With ``m < n_frames`` all usable frames are taken in order and the last slots are gaps with
reason ``too_few_usable_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError, ManifestError

CLIP_COLUMNS = ["video_id", "label", "original", "slot", "frame", "track", "crop_path", "mask"]
GAP_COLUMNS = ["video_id", "slot", "start_frame", "reason"]


@dataclass(frozen=True)
class SlotChoice:
    """What one slot got: a face crop (``frame`` set) or a gap (``frame`` None, ``reason`` set).

    ``start_frame`` is the slot's first frame for the stride sampler (None for uniform);
    ``reason`` is ``""`` for a frame taken at the slot start, ``"advanced"`` when the sampler moved
    on to a later frame of the window, else the gap reason.
    """

    slot: int
    start_frame: int | None
    frame: int | None
    track: int | None
    crop_path: str | None
    reason: str

    @property
    def is_gap(self) -> bool:
        """True when the slot has no frame."""
        return self.frame is None


def _frame_table(faces: pd.DataFrame) -> tuple[dict[int, int], dict[int, tuple[int, str]]]:
    """(frame -> number of face rows, frame -> (track, crop_path) for frames with exactly one)."""
    missing = [c for c in ("frame", "track", "crop_path") if c not in faces.columns]
    if missing:
        raise ManifestError(f"faces table: missing column(s) {missing}")
    frames = faces["frame"].to_numpy()
    tracks = faces["track"].to_numpy()
    crops = faces["crop_path"].astype("string").fillna("").to_numpy()
    counts: dict[int, int] = {}
    single: dict[int, tuple[int, str]] = {}
    for f, t, c in zip(frames, tracks, crops, strict=True):
        f = int(f)
        counts[f] = counts.get(f, 0) + 1
        single[f] = (int(t), str(c))
    single = {f: v for f, v in single.items() if counts[f] == 1}
    return counts, single


def _check(n_frames: int, stride: int = 1) -> None:
    if n_frames < 1:
        raise ConfigError(f"n_frames must be >= 1, not {n_frames}")
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, not {stride}")


def sample_stride(
    faces: pd.DataFrame,
    n_frames: int = 30,
    stride: int = 10,
    video_frames: int | None = None,
) -> list[SlotChoice]:
    """The stride sampler (see the module docstring).

    Args:
        faces: face rows of one video (``frame``, ``track``, ``crop_path``).
        n_frames: number of slots.
        stride: slot spacing in frames.
        video_frames: the video's frame count if known (gaps past the end say ``past_end``).

    Returns:
        ``n_frames`` choices, slot order.
    """
    _check(n_frames, stride)
    counts, single = _frame_table(faces)
    out = []
    for k in range(n_frames):
        start = k * stride
        choice = None
        any_face = False
        for f in range(start, start + stride):
            if f in single:
                track, crop = single[f]
                reason = "" if f == start else "advanced"
                choice = SlotChoice(k, start, f, track, crop, reason)
                break
            any_face = any_face or counts.get(f, 0) > 0
        if choice is None:
            if any_face:
                reason = "multi_face"
            elif video_frames is not None and start >= video_frames:
                reason = "past_end"
            else:
                reason = "no_face"
            choice = SlotChoice(k, start, None, None, None, reason)
        out.append(choice)
    return out


def uniform_positions(m: int, n: int) -> list[int]:
    """``n`` evenly spaced positions in ``range(m)`` (``m >= n``), rounded half up, exact ints."""
    if n == 1:
        return [(m - 1) // 2]
    return [(2 * i * (m - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def sample_uniform(faces: pd.DataFrame, n_frames: int = 30) -> list[SlotChoice]:
    """The uniform sampler (see the module docstring).

    Args:
        faces: face rows of one video (``frame``, ``track``, ``crop_path``).
        n_frames: number of slots.

    Returns:
        ``n_frames`` choices, slot order; frames strictly increasing over the non-gap slots.
    """
    _check(n_frames)
    _counts, single = _frame_table(faces)
    usable = sorted(single)
    m = len(usable)
    picked = [usable[p] for p in uniform_positions(m, n_frames)] if m >= n_frames else usable
    out = []
    for k in range(n_frames):
        if k < len(picked):
            f = picked[k]
            out.append(SlotChoice(k, None, f, single[f][0], single[f][1], ""))
        else:
            out.append(SlotChoice(k, None, None, None, None, "too_few_usable_frames"))
    return out


def sample_video(
    faces: pd.DataFrame,
    sampler: str = "stride",
    n_frames: int = 30,
    stride: int = 10,
    video_frames: int | None = None,
) -> list[SlotChoice]:
    """Dispatch to ``sample_stride`` or ``sample_uniform`` by name."""
    if sampler == "stride":
        return sample_stride(faces, n_frames, stride, video_frames)
    if sampler == "uniform":
        return sample_uniform(faces, n_frames)
    raise ConfigError(f"unknown sampler {sampler!r}; known: stride, uniform")


def n_usable(choices: Sequence[SlotChoice]) -> int:
    """Number of slots that got a frame."""
    return sum(not c.is_gap for c in choices)


def clip_records(
    video_id: str, label: str, original: str, choices: Sequence[SlotChoice]
) -> list[tuple]:
    """Clips-manifest rows (tuples in ``CLIP_COLUMNS`` order) of one video; gaps -> pad rows."""
    return [
        (video_id, label, original, c.slot, c.frame, c.track, c.crop_path or "",
         0 if c.is_gap else 1)
        for c in choices
    ]


def gap_records(video_id: str, choices: Sequence[SlotChoice]) -> list[tuple]:
    """Gaps-manifest rows (tuples in ``GAP_COLUMNS`` order) of one video's gap slots."""
    return [(video_id, c.slot, c.start_frame, c.reason) for c in choices if c.is_gap]


def clips_frame(records: Sequence[tuple]) -> pd.DataFrame:
    """A clips table from ``clip_records`` rows."""
    df = pd.DataFrame.from_records(list(records), columns=CLIP_COLUMNS)
    dtypes = {"video_id": "string", "label": "string", "original": "string", "slot": "int64",
              "frame": "Int64", "track": "Int64", "crop_path": "string", "mask": "int64"}
    return df.astype(dtypes)


def gaps_frame(records: Sequence[tuple]) -> pd.DataFrame:
    """A gaps table from ``gap_records`` rows."""
    df = pd.DataFrame.from_records(list(records), columns=GAP_COLUMNS)
    return df.astype({"video_id": "string", "slot": "int64", "start_frame": "Int64",
                      "reason": "string"})


def clip_rows(
    video_id: str, label: str, original: str, choices: Sequence[SlotChoice]
) -> pd.DataFrame:
    """One clips-manifest row per slot: gaps become pad rows (frame <NA>, crop_path "", mask 0)."""
    return clips_frame(clip_records(video_id, label, original, choices))


def gap_rows(video_id: str, choices: Sequence[SlotChoice]) -> pd.DataFrame:
    """One gaps-manifest row per gap slot."""
    return gaps_frame(gap_records(video_id, choices))


# --------------------------------------------------------------------------------------------
# columnar samplers: every video of a data set at once (what ``dfpipe prepare`` runs)
# --------------------------------------------------------------------------------------------

REASONS = ("", "advanced", "no_face", "multi_face", "past_end", "too_few_usable_frames")
"""Reason codes of ``SampledSlots.reason``: index -> the ``SlotChoice.reason`` string."""


@dataclass(frozen=True)
class SampledSlots:
    """What the columnar sampler chose for ``V`` videos x ``n`` slots, row-major (video, slot).

    Every array has shape ``(V * n,)``; ``row`` indexes the face arrays given to
    ``sample_columns`` (-1 for a gap), ``frame``/``track`` are -1 for a gap, ``start`` is the
    slot's first frame (-1 for the uniform sampler), ``reason`` indexes ``REASONS``.
    """

    n_frames: int
    row: np.ndarray
    frame: np.ndarray
    track: np.ndarray
    start: np.ndarray
    reason: np.ndarray

    @property
    def usable_per_video(self) -> np.ndarray:
        """(V,) number of slots that got a frame."""
        return (self.row >= 0).reshape(-1, self.n_frames).sum(axis=1)


def frame_runs(codes: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row, row count) of each run of equal ``(code, frame)`` in rows sorted by both."""
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(codes[1:], codes[:-1], out=new[1:])
    new[1:] |= frames[1:] != frames[:-1]
    start = np.flatnonzero(new)
    return start, np.diff(np.append(start, n))


def sample_columns(
    codes: np.ndarray,
    frames: np.ndarray,
    tracks: np.ndarray,
    videos: np.ndarray,
    video_frames: np.ndarray | None = None,
    sampler: str = "stride",
    n_frames: int = 30,
    stride: int = 10,
) -> SampledSlots:
    """The samplers of this module for many videos at once, on columns (no per-video loop).

    Gives exactly what ``sample_video`` gives video by video (``tests/test_sampling.py`` checks
    it on random tables).

    Args:
        codes: (R,) video code of each face row (any int; rows sorted by code, frame, track).
        frames: (R,) frame index of each face row.
        tracks: (R,) track of each face row.
        videos: (V,) codes of the videos to sample, in output order (unique).
        video_frames: (V,) frame count of each video, NaN when unknown (stride ``past_end``).
        sampler: ``stride`` or ``uniform``.
        n_frames: slots per video.
        stride: slot spacing (stride sampler).
    """
    _check(n_frames, stride)
    if sampler not in ("stride", "uniform"):
        raise ConfigError(f"unknown sampler {sampler!r}; known: stride, uniform")
    n, n_videos = n_frames, len(videos)
    run_start, run_len = frame_runs(codes, frames)
    run_code, run_frame = codes[run_start], frames[run_start].astype(np.int64)
    lookup = np.full(int(max(codes.max(initial=0), videos.max(initial=0))) + 1, -1, np.int64)
    lookup[videos] = np.arange(n_videos)
    run_video = np.where(run_code >= 0, lookup[np.clip(run_code, 0, None)], -1)
    row = np.full(n_videos * n, -1, np.int64)
    reason = np.zeros(n_videos * n, np.int8)
    slot = np.tile(np.arange(n, dtype=np.int64), n_videos)  # (V*n,)
    if sampler == "stride":
        start = slot * stride
        inside = (run_video >= 0) & (run_frame >= 0) & (run_frame < n * stride)
        cell = run_video * n + run_frame // stride  # (runs,) valid where inside
        any_face = np.zeros(n_videos * n, dtype=bool)
        any_face[cell[inside]] = True
        usable = inside & (run_len == 1)
        # runs are in frame order within a video: the first usable run of a cell is its earliest
        cells, first = np.unique(cell[usable], return_index=True)
        row[cells] = run_start[usable][first]
        got = row >= 0
        taken = _take(frames, row)
        reason[got & (taken != start)] = REASONS.index("advanced")
        vf = (np.full(n_videos, np.nan) if video_frames is None
              else np.asarray(video_frames, dtype=np.float64))
        past = np.repeat(vf, n) <= start  # NaN compares False: unknown length is never past_end
        reason[~got & any_face] = REASONS.index("multi_face")
        reason[~got & ~any_face & past] = REASONS.index("past_end")
        reason[~got & ~any_face & ~past] = REASONS.index("no_face")
    else:
        start = np.full(n_videos * n, -1, np.int64)
        usable = (run_video >= 0) & (run_len == 1)
        u_video, u_row = run_video[usable], run_start[usable]
        m = np.bincount(u_video, minlength=n_videos)  # (V,) usable frames per video
        offset = np.zeros(n_videos, np.int64)
        present, first = np.unique(u_video, return_index=True)
        offset[present] = first
        v = np.repeat(np.arange(n_videos), n)
        mv = m[v]
        if n == 1:
            pos = (mv - 1) // 2
        else:
            pos = (2 * slot * (mv - 1) + (n - 1)) // (2 * (n - 1))
        ok = mv >= n
        pos = np.where(ok, pos, slot)
        ok |= slot < mv
        sel = np.clip(offset[v] + pos, 0, max(len(u_row) - 1, 0))
        row[ok] = u_row[sel[ok]]
        reason[~ok] = REASONS.index("too_few_usable_frames")
    return SampledSlots(n_frames=n, row=row, frame=_take(frames, row), track=_take(tracks, row),
                        start=start, reason=reason)


def _take(values: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``values[row]`` as int64, -1 where ``row`` is -1."""
    if not len(values):
        return np.full(len(row), -1, np.int64)
    return np.where(row >= 0, values[np.clip(row, 0, None)], -1).astype(np.int64)
