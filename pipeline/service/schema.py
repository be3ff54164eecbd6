"""Response schemas of ``dfpipe serve`` (pydantic): what ``/score`` and ``/jobs`` return, as
published in ``/openapi.json``. Extra fields the scorer adds (windows, flags) pass through."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_RESULT: dict[str, Any] = {
    "path": "interview.mp4", "video_id": "interview", "kind": "video", "status": "ok",
    "reason": "", "p_fake": 0.912, "label": "FAKE", "threshold": 0.43, "frames_used": 30,
    "faces_found": 300, "n_frames": 300, "seconds": 4.2, "deciding_track": 0,
    "tracks": [{"track": 0, "frames_used": 30, "faces": 300, "share": 1.0,
                "mean_face_prob": 0.999, "p_fake": 0.912, "status": "ok"}],
    "timeline": [{"frame": 0, "slot": 0, "time_s": 0.0, "p_fake": 0.61},
                 {"frame": 10, "slot": 1, "time_s": 0.333, "p_fake": 0.74}],
    "media": {"kind": "video", "n_frames": 300, "fps": 30.0, "duration_s": 10.0,
              "width": 1920, "height": 1080},
    "checkpoint": {"id": "3f9a1c2b7d10", "model": "cnn_lstm", "backbone": "efficientnet_b0",
                   "trained_on": "real data: DFDC face crops, 4,820 REAL / 8,945 FAKE training "
                                 "videos", "synthetic_training_data": False,
                   "card_title": "dfpipe shipped model"},
    "warning": None,
    "provenance": "model cnn_lstm (efficientnet_b0), checkpoint 3f9a1c2b7d10, trained on real "
                  "data: DFDC face crops, 4,820 REAL / 8,945 FAKE training videos",
    "evidence_png": "data:image/png;base64,iVBORw0KGgo...",
}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrackOut(_Open):
    """One face track of the video."""

    track: int
    frames_used: int | None = None
    p_fake: float | None = None
    status: str | None = None


class TimelinePoint(_Open):
    """p_fake at one sampled frame of the deciding track (``time_s``: seconds into the video)."""

    frame: int
    p_fake: float | None
    time_s: float | None = None


class MediaInfo(_Open):
    """What the upload is: a video (frames, fps, duration) or a still image."""

    kind: str = Field(description="video or image")
    n_frames: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None


class CheckpointOut(_Open):
    """Which model gave the verdict and what it was trained on (no server paths)."""

    id: str | None = None
    model: str | None = None
    backbone: str | None = None
    trained_on: str | None = None
    synthetic_training_data: bool | None = None
    card_title: str | None = None


class ScoreResponse(_Open):
    """The verdict on one upload. A failure has a ``status`` and a ``reason`` and no score;
    the reason names the client's file name, never a path on the server."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_RESULT]})

    path: str = Field(description="the client's file name (display only)")
    video_id: str = ""
    kind: str = Field("video", description="video or image")
    status: str = Field(description="ok, no_face, too_few_frames, read_error, error, ...")
    reason: str = ""
    p_fake: float | None = Field(None, description="probability the video is FAKE (ok only)")
    label: str | None = Field(None, description="FAKE or REAL at `threshold` (ok only)")
    threshold: float | None = None
    frames_used: int | None = Field(0, description="face frames the verdict rests on")
    faces_found: int | None = 0
    seconds: float | None = 0.0
    tracks: list[TrackOut] = []
    timeline: list[TimelinePoint] = []
    media: MediaInfo | None = None
    checkpoint: CheckpointOut | None = None
    provenance: str = Field("", description="one line: model, checkpoint id, training data")
    warning: str | None = Field(None, description="set when the model was trained on synthetic "
                                                  "data: its verdicts mean nothing")
    evidence_png: str | None = Field(None, description="the evidence sheet as a PNG data URI")


class JobProgress(BaseModel):
    """One step of a job: its stage and, where countable, done of total."""

    stage: str
    done: int | None = None
    total: int | None = None
    at: float = Field(description="seconds since the job was created")


class JobStatus(BaseModel):
    """A scoring job: ``queued`` -> ``running`` -> ``done`` (result set) or ``failed``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "5b0c...", "state": "running", "name": "interview.mp4",
        "progress": {"stage": "finding faces", "done": 120, "total": 300, "at": 1.8},
        "history": [{"stage": "uploaded", "done": None, "total": None, "at": 0.0},
                    {"stage": "finding faces", "done": 120, "total": 300, "at": 1.8}],
        "result": None}]})

    job_id: str
    state: str
    name: str
    progress: JobProgress
    history: list[JobProgress]
    result: ScoreResponse | None = None
    detail: str | None = None


class JobCreated(BaseModel):
    """Where to poll a job that was accepted."""

    job_id: str
    status_url: str
