"""``dfpipe serve``: the analysts' web page and JSON API (FastAPI + uvicorn, loopback by default).

Upload (multipart field ``file`` or the raw body; a video or a still image) -> temp dir ->
decodability check -> scoring (one model, loaded once) -> JSON verdict (+ the evidence sheet as
a data URI) -> temp dir deleted. ``POST /score`` answers when scoring is done; ``POST /jobs``
answers at once with a job id whose progress (``GET /jobs/{id}``: stage, frames done of total,
then the result) the page polls. Every answer names the client's file name, never a server path.

Limits, each with its status code:
- body larger than ``max_upload_mb``: 413 (checked on Content-Length and while streaming);
- an empty body, a multipart body without ``file``, or a video container whose video stream has
  no frames: 422; any other content that does not decode as a video or image: 415;
- more requests than ``max_concurrent`` running + ``max_queue`` waiting (jobs included): 503
  with Retry-After.
The uploaded file name is display-only: the upload is always stored as ``upload<suffix>`` inside
a fresh temporary folder (``uploads.py``), so ``../../x.mp4`` cannot write anywhere else.
"""

import asyncio
import base64
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import ServeConfig
from pipeline.core.errors import MissingDependencyError
from pipeline.score.explain import provenance_line, synthetic_warning
from pipeline.service.jobs import Job, JobStore, frames_to_scan, install_frame_counter, scoring_job
from pipeline.service.uploads import (
    IMAGE_SUFFIXES,
    Upload,
    UploadError,
    check,
    receive,
    safe_display_name,
    scrub,
)

__all__ = ["Capacity", "Scorer", "create_app", "run", "safe_display_name"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "required": True,
    "description": "the video or image: multipart/form-data with the file in field `file` "
                   "(curl -F file=@clip.mp4), or the raw file as the body (?filename= names it)",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string",
                                                                   "format": "binary"}}}},
        "application/octet-stream": _BINARY, "video/*": _BINARY, "image/jpeg": _BINARY,
        "image/png": _BINARY, "image/webp": _BINARY,
    },
}
ERRORS = {413: {"description": "upload too large"},
          415: {"description": "not a decodable video or image"},
          422: {"description": "empty upload, no `file` field, or a video without frames"},
          503: {"description": "busy: retry later"}}


class Scorer(Protocol):
    """What the service needs from the scoring stage (``pipeline.score.scorer.VideoScorer``).

    ``score`` may also take ``progress=callable(stage, done, total)``; the service passes one
    when it does."""

    def score(self, path: Path, *, explain_dir: Path | None = None,
              display_name: str | None = None) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...


def _require_fastapi():
    try:
        import fastapi  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MissingDependencyError(
            "the web service needs FastAPI and uvicorn: pip install 'dfpipe[serve]'"
        ) from e


class Capacity:
    """Admission control: at most ``running + waiting`` requests inside, the rest get 503."""

    def __init__(self, running: int, waiting: int):
        self.limit = max(1, running) + max(0, waiting)
        self._inside = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._inside >= self.limit:
                return False
            self._inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._inside -= 1

    @property
    def inside(self) -> int:
        return self._inside


def present(result: dict[str, Any], upload: Upload, card: dict[str, Any]) -> dict[str, Any]:
    """The scorer's result as the API returns it: the client's name, media info, provenance,
    timeline times in seconds, the sheet as a data URI, and no server path anywhere."""
    out = dict(result)
    out["path"] = upload.name
    out["video_id"] = Path(upload.name).stem
    out["kind"] = upload.kind
    out["media"] = upload.media
    ck = {k: v for k, v in dict(out.get("checkpoint") or {}).items() if k != "path"}
    ck.setdefault("id", card.get("checkpoint_id", ""))
    ck.setdefault("model", card.get("scored_as") or card.get("model", ""))
    for key in ("backbone", "trained_on", "card_title", "synthetic_training_data"):
        ck.setdefault(key, card.get(key))
    out["checkpoint"] = ck
    out["provenance"] = provenance_line(card)
    out["warning"] = synthetic_warning(card)
    fps = (upload.media or {}).get("fps")
    out["timeline"] = [p if p.get("time_s") is not None or not fps
                       else {**p, "time_s": round(p["frame"] / fps, 3)}
                       for p in out.get("timeline") or []]
    png = out.pop("evidence_png", None)
    out.pop("evidence_html", None)
    if png and Path(png).is_file():
        out["evidence_png"] = "data:image/png;base64," + base64.b64encode(
            Path(png).read_bytes()).decode("ascii")
    return scrub(out, upload)


def create_app(scorer_factory: Callable[[], Scorer], cfg: ServeConfig):
    """Build the FastAPI app. ``scorer_factory`` is called once, at start-up."""
    _require_fastapi()
    import contextlib

    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, JSONResponse

    from pipeline.service.schema import JobCreated, JobStatus, ScoreResponse

    max_bytes = cfg.max_upload_mb * 1024 * 1024
    state: dict[str, Any] = {}
    capacity = Capacity(cfg.max_concurrent, cfg.max_queue)
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.max_concurrent), thread_name_prefix="score")
    jobs = JobStore()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scorer = scorer_factory()
        state["scorer"] = scorer
        state["native_progress"] = "progress" in inspect.signature(scorer.score).parameters
        if not state["native_progress"]:
            install_frame_counter(scorer)
        log.info("model loaded: %s", scorer.info().get("model"))
        yield
        pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="dfpipe",
        version=__import__("pipeline").__version__,
        description="Video-level deepfake scores with evidence. POST a video or a still image "
                    "(multipart field `file`, or the raw body) to /score, or to /jobs and poll "
                    "/jobs/{id} for progress.",
        lifespan=lifespan,
    )

    def _refuse(e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    def _too_large(request: Request) -> JSONResponse | None:
        """413 on the declared size, before admission: a too-large upload is never 'busy'."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return _refuse(UploadError(413, f"upload is {int(declared)} bytes; the limit is "
                                            f"{max_bytes}"))
        return None

    def _busy() -> JSONResponse:
        return JSONResponse({"detail": "busy: too many uploads in progress, retry later"},
                            status_code=503, headers={"Retry-After": "5"})

    async def _accept(request: Request, filename: str | None) -> Upload:
        upload = await receive(request, filename, max_bytes)
        try:
            await asyncio.get_running_loop().run_in_executor(pool, check, upload)
        except BaseException:
            upload.cleanup()
            raise
        return upload

    def _score(upload: Upload, explain: bool, job: Job | None) -> dict[str, Any]:
        """Score in this (pool) thread; progress goes to ``job``."""
        scorer = state["scorer"]
        kwargs: dict[str, Any] = {"explain_dir": upload.tmp / "evidence" if explain else None,
                                  "display_name": upload.name}
        if job is not None:
            job.frames_to_scan = (1 if upload.kind == "image" else
                                  frames_to_scan(scorer, (upload.media or {}).get("n_frames"),
                                                 (upload.media or {}).get("fps")))
            job.report("scoring started", state="running")
            if state["native_progress"]:
                kwargs["progress"] = job.report
        with scoring_job(job):
            result = scorer.score(upload.dest, **kwargs)
        return present(result, upload, scorer.info())

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and load: ok, requests inside, capacity."""
        return {"status": "ok", "model_loaded": "scorer" in state,
                "requests_inside": capacity.inside, "capacity": capacity.limit}

    @app.get("/model")
    def model() -> dict[str, Any]:
        """Which model scores uploads, what it was trained on, and its provenance line."""
        card = state["scorer"].info()
        out = {k: v for k, v in card.items() if k != "checkpoint"}  # a server path
        return {**out, "provenance": provenance_line(card), "warning": synthetic_warning(card),
                "accepts": sorted(IMAGE_SUFFIXES) + ["video"]}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    filename_q = Query(None, description="original file name (display only; a multipart "
                                         "part's own file name is used when absent)")
    explain_q = Query(True, description="include the evidence sheet (PNG data URI)")

    @app.post("/score", response_model=ScoreResponse, openapi_extra={"requestBody": REQUEST_BODY},
              responses=ERRORS)
    async def score(request: Request, filename: str | None = filename_q,
                    explain: bool = explain_q):
        """Score one uploaded video or image and answer when done. Failures have a status and a
        reason, never a score."""
        refused = _too_large(request)
        if refused is not None:
            return refused
        if not capacity.try_enter():
            return _busy()
        upload = None
        try:
            upload = await _accept(request, filename)
            return await asyncio.get_running_loop().run_in_executor(
                pool, _score, upload, explain, None)
        except UploadError as e:
            return _refuse(e)
        finally:
            capacity.leave()
            if upload is not None:
                upload.cleanup()

    @app.post("/jobs", status_code=202, response_model=JobCreated,
              openapi_extra={"requestBody": REQUEST_BODY}, responses=ERRORS)
    async def create_job(request: Request, filename: str | None = filename_q,
                         explain: bool = explain_q):
        """Accept one upload for scoring and answer at once with a job id; poll
        ``/jobs/{job_id}`` for progress and the result. Refusals (413/415/422/503) as /score."""
        refused = _too_large(request)
        if refused is not None:
            return refused
        if not capacity.try_enter():
            return _busy()
        try:
            upload = await _accept(request, filename)
        except UploadError as e:
            capacity.leave()
            return _refuse(e)
        except BaseException:
            capacity.leave()
            raise
        job = jobs.new(upload.name)

        def work() -> None:
            result, detail = None, None
            try:
                result = _score(upload, explain, job)
            except Exception as e:  # noqa: BLE001 - the job reports it; the server stays up
                log.exception("job %s (%s) failed", job.job_id, upload.name)
                detail = scrub(f"{upload.name}: {type(e).__name__}: {e}", upload)
            finally:
                # the upload is gone and the slot free before anyone can see the job finished
                upload.cleanup()
                capacity.leave()
            job.result, job.detail = result, detail
            job.finished = time.monotonic()
            final = "done" if detail is None else "failed"
            job.report(final, state=final)

        pool.submit(work)
        return {"job_id": job.job_id, "status_url": f"/jobs/{job.job_id}"}

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses={404: {"description":
                                                                          "unknown job"}})
    def job_status(job_id: str):
        """A job's state, current stage (frames done of total while faces are being found),
        the stages so far, and the result once done."""
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "unknown or expired job")
        return job.view()

    return app


def run(cfg: ServeConfig) -> int:
    """Load the model once and serve on ``cfg.host:cfg.port`` until interrupted."""
    _require_fastapi()
    import uvicorn

    from pipeline.score.scorer import VideoScorer

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable from other machines", cfg.host)
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.release import resolve_checkpoint

    path = resolve_checkpoint(cfg.checkpoint)  # "" / default: the shipped model
    load_checkpoint(path)  # a missing or bad checkpoint stops here with one line, not at start-up
    log.info("model: %s", path)
    app = create_app(lambda: VideoScorer.from_checkpoint(path, device=cfg.device), cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    return 0
