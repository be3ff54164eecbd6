"""What one video's face finding returns: a ``FaceRecord`` per crop, ``VideoFaces`` for the video."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.faces.tracks import Box


@dataclass(frozen=True)
class FaceRecord:
    """One face crop: frame index, track id, full-resolution box, MTCNN probability."""

    frame: int
    track: int
    box: Box
    prob: float

    @property
    def name(self) -> str:
        """Crop file name ``<frame:04d>_<track>.jpg``."""
        return f"{self.frame:04d}_{self.track}.jpg"


@dataclass
class VideoFaces:
    """All faces of one video: records and their crops (same order).

    With a ``sink``, each crop goes to ``sink(record, crop)`` as it is made and ``crops`` stays
    empty (memory bounded for long videos: the extract stage writes crops as they come).
    """

    info: Any  # VideoInfo
    records: list[FaceRecord] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # detector work, for measurements
    sink: Callable[[FaceRecord, np.ndarray], None] | None = None

    def add(self, record: FaceRecord, crop: np.ndarray) -> None:
        """Record one face; its crop is kept, or handed to ``sink``."""
        self.records.append(record)
        if self.sink is None:
            self.crops.append(crop)
        else:
            self.sink(record, crop)

    @property
    def n_face_frames(self) -> int:
        """Frames with at least one face."""
        return len({r.frame for r in self.records})

    @property
    def n_multi_face_frames(self) -> int:
        """Frames with at least two faces."""
        counts: dict[int, int] = {}
        for r in self.records:
            counts[r.frame] = counts.get(r.frame, 0) + 1
        return sum(1 for c in counts.values() if c >= 2)

    @property
    def n_tracks(self) -> int:
        """Distinct track ids."""
        return len({r.track for r in self.records})
