"""Track-and-verify face extraction (the default ``--detector-mode track``): one video -> the
faces of every frame, verified, not carried.

Full MTCNN detection (P-Net pyramid -> R-Net -> O-Net) runs on every K-th frame
(``track_every``, 5), batched, and also on any frame where a followed face is just lost or the
shot changes. On the frames between, each followed face's box is predicted from its motion
(constant velocity over its last two boxes) and only MTCNN's last two stages run on it
(``MTCNNDetector.verify``): R-Net and O-Net confirm that a face is there (O-Net's probability
becomes the face's ``prob``) and refine the box. A face that is not confirmed gives no crop on
that frame and triggers a full detection of it; it is still looked for at its predicted box for
up to K-1 more frames, so a face that one detection or verification missed keeps its track (on
the multi-face street sample, dropping it split faces into pieces: one of full detection's 5
real tracks was followed only in short tracks). On a full
detection, followed faces the detection did not find are verified too, and kept when confirmed
(the ~480 px pyramid misses small faces that R-Net+O-Net confirm at full resolution), but only
while the face has the support of full detection: more than half (``track_support``) of the
scheduled detections made while it was followed found it. A face that full detection finds now and
then (a small background face, a false box) is so followed only until the next scheduled
detection that misses it, and taken up again, with its id, by the next detection that finds
it. A face that enters the picture while others are followed is found at the next full detection
(at most K-1 frames late); with no face followed, every ``search_every``-th frame is fully
detected. After a shot change faces are found afresh (linked to an earlier track only by box
overlap).

Trade-off against ``--detector-mode full`` (full detection on every frame): per-frame face
presence agrees on >= 99.6 % of frames on the real sample clips and the number of real tracks
(>= 10 face frames) is the same on every one; every face full detection tracks is tracked (not
always its false boxes, which O-Net rejects more often when it re-checks them;
tests/test_track_verify.py, ``dfpipe bench --what extract-agreement``); boxes differ by a few
pixels (O-Net's regression from a predicted box instead of from P-Net's proposals); a new face
can appear up to K-1 frames late, and a face full detection finds only now and then is kept for
up to K-1 frames after each detection that finds it (where full detection has it on that frame
only); extraction is several times faster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.faces.crops import crop_face
from pipeline.faces.detect import Detection
from pipeline.faces.records import FaceRecord, VideoFaces
from pipeline.faces.tracks import Box, Tracker, iou
from pipeline.io.video import prefetch

SHOT_CHANGE = 40.0
"""Mean absolute difference (0-255) between 32x18 grey thumbnails of consecutive frames above
which the shot is taken to have changed (every track is re-detected)."""
DUPLICATE_IOU = 0.5
"""Two verified tracks whose boxes overlap more than this follow one face: the weaker one ends."""


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """32x18 grey thumbnail (float32) for shot-change detection.

    Taken from a strided view of about 128 px across (not the whole frame: converting and
    shrinking every 1080p frame cost ~1 s per 300 frames in the profile)."""
    import cv2

    step = max(1, frame.shape[1] // 128)
    small = np.ascontiguousarray(frame[::step, ::step])  # (~H/step, ~128, 3)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32)


def predict(history: Sequence[Box], steps: int = 1) -> Box:
    """A track's box ``steps`` frames after its last one, from its last two boxes (constant
    velocity), else its last box."""
    if len(history) < 2:
        return history[-1]
    a, b = history[-2], history[-1]
    return tuple(vb + steps * (vb - va) for va, vb in zip(a, b, strict=True))  # type: ignore[return-value]


def _dedupe(seen: dict[int, Detection]) -> dict[int, Detection]:
    """Drop the weaker of two tracks that verified onto the same face."""
    keep = dict(seen)
    order = sorted(seen, key=lambda t: -seen[t].prob)
    for i, t in enumerate(order):
        if t not in keep:
            continue
        for u in order[i + 1:]:
            if u in keep and iou(seen[t].box, seen[u].box) > DUPLICATE_IOU:
                del keep[u]
    return keep


def extract_faces_tracked(reader: Any, detector: Any, cfg: Any, *,
                          frames: Sequence[int] | None = None,
                          sink: Callable[[FaceRecord, np.ndarray], None] | None = None
                          ) -> VideoFaces:
    """``extract_faces`` in ``detector_mode="track"`` (see the module docstring).

    Args:
        reader: an open ``VideoReader``.
        detector: an ``MTCNNDetector`` (``detect`` and ``verify``).
        cfg: an ``ExtractConfig`` (uses track_every, search_every, track_support,
            iou_threshold, margin, crop_size).
        frames: frame indices to process (default: all).
        sink: receives each crop as it is made (``VideoFaces.sink``).

    Returns:
        The video's faces; ``stats`` counts full detections by cause and verifications.
    """
    every = max(1, int(cfg.track_every))
    search_every = max(1, int(cfg.search_every))
    min_support = float(cfg.track_support)
    info = reader.info
    # one frame at a time: this loop works frame by frame, and a one-frame batch is the decoded
    # frame itself (no copy; stacking 1080p frames in twos cost the reader 1.37x the plain
    # decode loop, against 0.99x unstacked), and scheduled detections were one frame per
    # 16 MiB batch of 1080p anyway
    batch_size = 1
    square = getattr(cfg, "square", True)
    tracker = Tracker(cfg.iou_threshold)
    result = VideoFaces(info=info, sink=sink)
    stats: Counter[str] = Counter()
    tracks: dict[int, _Track] = {}  # followed tracks: confirmed on the last frame, or missing
    support: dict[int, list[int]] = {}  # see _unsupported
    prev_thumb: np.ndarray | None = None
    k = 0  # position among processed frames
    for idx, batch in prefetch(reader.iter_batches(batch_size, frames)):
        scheduled = [j for j in range(len(idx)) if (k + j) % every == 0]
        full = dict(zip(scheduled, detector.detect(batch[scheduled]), strict=True)) \
            if scheduled else {}
        stats["detect_scheduled"] += len(scheduled)
        for j, frame_idx in enumerate(idx):
            frame = batch[j]
            thumb = thumbnail(frame)
            cut = prev_thumb is not None and float(np.abs(thumb - prev_thumb).mean()) > SHOT_CHANGE
            prev_thumb = thumb
            found: list[Detection] | None = full.get(j)
            if cut:
                tracks = {}  # a new shot: faces are found afresh (an old track is taken up
                # again only by box overlap, as full detection links them, never by distance)
                if found is None:
                    found = detector.detect(frame[None])[0]
                    stats["detect_shot_change"] += 1
            if found is None and not tracks and (k + j) % search_every == 0:
                found = detector.detect(frame[None])[0]  # no face followed: look more often
                stats["detect_search"] += 1
            confirmed: dict[int, Detection] = {}
            if found is None and tracks:
                order = sorted(tracks)
                checked = detector.verify(frame, [tracks[t].predicted() for t in order])
                stats["verified"] += len(order)
                confirmed = {t: c for t, c in zip(order, checked, strict=True) if c is not None}
                if any(c is None and tracks[t].misses == 0 for t, c in zip(order, checked, strict=True)):
                    # a face just lost (left, occluded, or moved fast): detect the whole frame
                    found = detector.detect(frame[None])[0]
                    stats["detect_track_lost"] += 1
            if found is not None:
                if tracks and not confirmed:  # followed faces this detection did not find
                    order = [t for t in sorted(tracks) if all(
                        iou(tracks[t].predicted(), f.box) <= DUPLICATE_IOU for f in found)]
                    checked = detector.verify(frame, [tracks[t].predicted() for t in order])
                    stats["verified"] += len(order)
                    confirmed = {t: c for t, c in zip(order, checked, strict=True) if c is not None}
                # detections, plus verified faces that no detection covers (the pyramid misses
                # small faces that R-Net+O-Net confirm at full resolution)
                dets = list(found) + [d for d in confirmed.values()
                                      if all(iou(d.box, f.box) <= DUPLICATE_IOU for f in found)]
                ids = tracker.update([d.box for d in dets], max_age=0 if cut else every)
                seen = dict(zip(ids, dets, strict=True))
                weak = _unsupported(tracks, set(ids[:len(found)]), support, min_support,
                                    scheduled=j in full)
                seen = {t: d for t, d in seen.items() if t not in weak}
                stats["dropped_unsupported"] += len(weak)
                tracks = {t: tr for t, tr in tracks.items() if t not in weak}
            else:
                seen = _dedupe(confirmed)
                tracker.observe({t: d.box for t, d in seen.items()})
            tracks = _follow(tracks, seen, every)
            for t, d in sorted(seen.items()):
                result.add(FaceRecord(int(frame_idx), int(t), d.box, d.prob),
                           crop_face(frame, d.box, cfg.margin, cfg.crop_size, square))
        k += len(idx)
    result.stats = dict(stats)
    return result


class _Track:
    """A followed face: its last two confirmed boxes and the frames missed since."""

    __slots__ = ("history", "misses")

    def __init__(self, history: list[Box], misses: int = 0) -> None:
        self.history = history
        self.misses = misses

    def predicted(self) -> Box:
        """Where the face should be on the next frame."""
        return predict(self.history, self.misses + 1)


def _follow(tracks: dict[int, _Track], seen: dict[int, Detection], patience: int) -> dict[int, _Track]:
    """The tracks to follow on the next frame: those seen now, and those missing for fewer than
    ``patience`` frames (still verified at their predicted box, so a face that one detection or
    verification missed keeps its track; a missing face gives no crop)."""
    out = {t: _Track([*tracks[t].history[-1:], d.box] if t in tracks else [d.box])
           for t, d in seen.items()}
    for t, tr in tracks.items():
        if t not in seen and tr.misses + 1 < patience:
            out[t] = _Track(tr.history, tr.misses + 1)
    return out


def _unsupported(tracks: dict[int, _Track], detected: set[int], support: dict[int, list[int]],
                 min_support: float, scheduled: bool) -> set[int]:
    """The followed faces a full detection missed that full detection does not back: found by at
    most ``min_support`` of the scheduled detections made while they were followed.

    ``support`` (track -> [scheduled detections that found it, all of them made while it was
    followed]) is updated first when this detection is a scheduled one. Full detection finds faces
    near its size limit (small background faces, false boxes) only now and then, and R-Net+O-Net
    at full resolution confirm them on most frames: without this rule, on street_multi_face two
    such faces were followed over 30 and 41 frames where full detection had them on 4 and 14
    (support 2/6 and 1/8, against >= 12/15 for every face full detection tracks).
    """
    if scheduled:
        for t in set(tracks) | detected:
            found, total = support.get(t, (0, 0))
            support[t] = [found + (t in detected), total + 1]
    if min_support <= 0:
        return set()
    return {t for t in tracks if t not in detected and t in support
            and support[t][0] <= min_support * support[t][1]}
