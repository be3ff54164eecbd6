"""Face tracks: per-frame boxes -> track ids (greedy IoU, then nearest centre for moved faces).

Pure geometry, no detector: ``Tracker.update`` links a frame's detections to tracks,
``Tracker.observe`` records boxes of known tracks (track-and-verify mode), ``assign_tracks`` runs a
whole box sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in full-resolution pixels


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Online greedy IoU tracker: a face joins the track whose last box overlaps it most;
    a face that overlaps none joins the nearest free track of similar size within
    ``max_jump`` box sizes (sparse detection lets faces move more between updates).

    Tracks never expire (a face that reappears at the same place after a gap keeps its id);
    ids are 0, 1, ... in order of first appearance (left to right within a frame).
    """

    def __init__(self, iou_threshold: float = 0.3, max_jump: float = 1.5) -> None:
        self.iou_threshold = iou_threshold
        self.max_jump = max_jump
        self.last: dict[int, Box] = {}  # track id -> last box
        self.age: dict[int, int] = {}  # track id -> updates since it was last seen (0 = last one)

    def update(self, boxes: Sequence[Box], max_age: int = 0) -> list[int]:
        """Track ids for the boxes of the next frame.

        ``max_age``: the nearest-centre pass also links tracks last seen up to this many updates
        ago (track-and-verify mode, where a face missed by one full detection is looked for again
        only at the next; shot cuts are detected there, so a gap is not taken for a cut).
        """
        pairs = sorted(
            ((iou(b, tb), i, t) for i, b in enumerate(boxes) for t, tb in self.last.items()),
            key=lambda x: (-x[0], x[1], x[2]),
        )
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for score, i, t in pairs:
            if score < self.iou_threshold:
                break
            if ids[i] is None and t not in used:
                ids[i] = t
                used.add(t)
        # Second pass for sparse detection (every K-th frame, or scoring's slot starts): a face
        # that moved further than IoU can follow joins the nearest free track of similar size
        # whose last box is within ``max_jump`` box sizes, if that track was seen in the previous
        # update (after a gap, a nearby face is as likely someone else: a shot cut), or within
        # ``max_age`` updates.
        near = sorted(
            (_jump(b, tb), i, t) for i, b in enumerate(boxes) for t, tb in self.last.items()
            if ids[i] is None and t not in used and self.age.get(t, 0) <= max_age
            and _similar_size(b, tb)
        )
        for dist, i, t in near:
            if dist > self.max_jump:
                break
            if ids[i] is None and t not in used:
                ids[i] = t
                used.add(t)
        for i in sorted((i for i in range(len(boxes)) if ids[i] is None), key=lambda i: boxes[i][0]):
            ids[i] = len(self.last)
            used.add(ids[i])
            self.last[ids[i]] = boxes[i]
        for t in self.age:
            self.age[t] += 1
        for i, t in enumerate(ids):
            self.last[t] = boxes[i]
            self.age[t] = 0
        return [int(t) for t in ids]  # type: ignore[arg-type]

    def observe(self, seen: dict[int, Box]) -> None:
        """Record the next frame's boxes of known tracks (verified, so no matching needed)."""
        for t in self.age:
            self.age[t] += 1
        for t, box in seen.items():
            self.last[t] = box
            self.age[t] = 0


def _jump(a: Box, b: Box) -> float:
    """Distance between box centres in units of ``b``'s larger side."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    side = max(b[2] - b[0], b[3] - b[1], 1e-6)
    return float(np.hypot(ca[0] - cb[0], ca[1] - cb[1]) / side)


def _similar_size(a: Box, b: Box, ratio: float = 2.0) -> bool:
    sa = max(a[2] - a[0], a[3] - a[1])
    sb = max(b[2] - b[0], b[3] - b[1])
    return sa > 0 and sb > 0 and 1 / ratio <= sa / sb <= ratio


def assign_tracks(detections_per_frame: Sequence[Sequence[Box]], iou_threshold: float = 0.3,
                  max_jump: float = 1.5) -> list[list[int]]:
    """Track ids per frame for per-frame box lists (see ``Tracker``)."""
    tracker = Tracker(iou_threshold, max_jump)
    return [tracker.update(list(boxes)) for boxes in detections_per_frame]
