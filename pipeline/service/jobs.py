"""Scoring jobs of ``dfpipe serve`` and their progress (what the page polls).

A job is one accepted upload: ``queued`` -> ``running`` -> ``done`` (with the result) or
``failed``. Its progress is fed by the scoring itself, in the thread that scores it:

- a scorer whose ``score`` takes ``progress=`` calls ``progress(stage, done, total)``;
- otherwise the service counts the frames the scorer's face detector has looked at
  (``FrameCounter`` wraps ``scorer.detector``; per thread, so concurrent jobs keep their own
  counts), against the frames the scorer will look at (``scorer.slot_frames(n)`` when it has
  one, else every frame); once they are all seen, the stage becomes ``MODEL_STAGE``.

Finished jobs are kept ``keep_s`` seconds (at most ``max_jobs``), then forgotten.
"""

from __future__ import annotations

import inspect
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

FINDING_FACES = "finding faces"
MODEL_STAGE = "scoring the faces, drawing the evidence"
_current = threading.local()  # the Job being scored in this thread (FrameCounter reads it)


@dataclass
class Job:
    """One upload being scored; all fields are written under ``JobStore``'s lock or by its
    own scoring thread."""

    job_id: str
    name: str
    created: float = field(default_factory=time.monotonic)
    state: str = "queued"
    stage: str = "uploaded"
    done: int | None = None
    total: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    detail: str | None = None
    finished: float | None = None
    frames_to_scan: int | None = None  # what the detector will look at, when known
    frames_seen: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.report("uploaded")

    def report(self, stage: str, done: int | None = None, total: int | None = None, *,
               state: str | None = None) -> None:
        """Record progress; a new stage (or every 5% of a counted one) joins the history.
        ``state``: the job's new state, set together with the step (a poller never sees a
        finished job without its last step)."""
        with self._lock:
            if state is not None:
                self.state = state
            step = {"stage": stage, "done": done, "total": total,
                    "at": round(time.monotonic() - self.created, 3)}
            last = self.history[-1] if self.history else None
            if last is None or last["stage"] != stage or last["done"] is None or done is None \
                    or (done != last["done"] and (not total or done == total
                                                  or (done - last["done"]) * 20 >= total)):
                self.history.append(step)
            self.stage, self.done, self.total = stage, done, total

    def add_frames(self, n: int) -> None:
        """``n`` more frames looked at by the face detector; once all expected frames are seen,
        the stage moves on to ``MODEL_STAGE``."""
        self.frames_seen += n
        expected = self.frames_to_scan
        self.report(FINDING_FACES, self.frames_seen,
                    max(expected, self.frames_seen) if expected else None)
        if expected and self.frames_seen >= expected:
            self.report(MODEL_STAGE)

    def view(self) -> dict[str, Any]:
        """The job as ``schema.JobStatus`` (a copy)."""
        with self._lock:
            return {"job_id": self.job_id, "state": self.state, "name": self.name,
                    "progress": {"stage": self.stage, "done": self.done, "total": self.total,
                                 "at": round(time.monotonic() - self.created, 3)},
                    "history": [dict(h) for h in self.history], "result": self.result,
                    "detail": self.detail}


class JobStore:
    """Jobs by id (random, unguessable); finished ones expire."""

    def __init__(self, keep_s: float = 900.0, max_jobs: int = 200) -> None:
        self.keep_s, self.max_jobs = keep_s, max_jobs
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def new(self, name: str) -> Job:
        """A fresh queued job."""
        job = Job(secrets.token_hex(16), name)
        with self._lock:
            self._expire()
            self._jobs[job.job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        with self._lock:
            self._expire()
            return self._jobs.get(job_id)

    def _expire(self) -> None:
        now = time.monotonic()
        old = [k for k, j in self._jobs.items()
               if j.finished is not None and now - j.finished > self.keep_s]
        done = sorted((j.finished, k) for k, j in self._jobs.items() if j.finished is not None)
        old += [k for _, k in done[:max(0, len(self._jobs) - self.max_jobs)]]
        for k in set(old):
            self._jobs.pop(k, None)


class scoring_job:  # noqa: N801 - used as a context manager, reads like a function
    """``with scoring_job(job):`` marks ``job`` as the one this thread is scoring."""

    def __init__(self, job: Job | None) -> None:
        self.job = job

    def __enter__(self) -> Job | None:
        _current.job = self.job
        return self.job

    def __exit__(self, *exc: Any) -> None:
        _current.job = None


class FrameCounter:
    """Wraps a face detector: counts the frames it is given for the job of the calling thread."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def detect(self, frames: Any) -> Any:
        """The wrapped detector's ``detect``; then the frames are counted."""
        out = self.inner.detect(frames)
        job = getattr(_current, "job", None)
        if job is not None:
            job.add_frames(len(frames))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def install_frame_counter(scorer: Any) -> bool:
    """Wrap ``scorer.detector`` in a ``FrameCounter`` (once); False when it has no detector."""
    det = getattr(scorer, "detector", None)
    if det is None or not hasattr(det, "detect"):
        return False
    if not isinstance(det, FrameCounter):
        scorer.detector = FrameCounter(det)
    return True


def frames_to_scan(scorer: Any, n_frames: int | None, fps: float | None = None) -> int | None:
    """How many frames the scorer's detector will look at in a video of ``n_frames`` at
    ``fps``."""
    if not n_frames:
        return None
    slots = getattr(scorer, "slot_frames", None)
    if callable(slots):
        takes_fps = len(inspect.signature(slots).parameters) >= 2  # windows depend on fps
        try:
            chosen = slots(n_frames, fps) if takes_fps else slots(n_frames)
        except Exception:  # noqa: BLE001 - an estimate only: fall back to every frame
            chosen = None
        if chosen is not None:
            return len(chosen)
    return int(n_frames)
