"""``dfpipe serve``: the analysts' web page and JSON API (FastAPI + uvicorn, loopback by default).

Upload (raw request body) -> temp dir -> decodability check -> scoring (one model, loaded once)
-> JSON verdict (+ the evidence sheet as a data URI) -> temp dir deleted.

Limits, each with its status code:
- body larger than ``max_upload_mb``: 413 (checked on Content-Length and while streaming);
- an empty body, or a video container whose video stream has no frames: 422; any other content
  that does not decode as a video (text, truncated file, audio only): 415;
- more requests than ``max_concurrent`` running + ``max_queue`` waiting: 503 with Retry-After.
The uploaded file name is display-only: the upload is always stored as ``upload.bin`` inside a
fresh temporary folder, so ``../../x.mp4`` cannot write anywhere else.
"""

import asyncio
import base64
import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

from pipeline.config import ServeConfig
from pipeline.errors import MissingDependencyError, VideoReadError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
UPLOAD_NAME = "upload.bin"


class Scorer(Protocol):
    """What the service needs from the scoring stage (``pipeline.scoring.VideoScorer``)."""

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


def safe_display_name(name: str | None) -> str:
    """The last path component of a client-supplied file name, for display only."""
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "upload"


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


def create_app(scorer_factory: Callable[[], Scorer], cfg: ServeConfig):
    """Build the FastAPI app. ``scorer_factory`` is called once, at start-up."""
    _require_fastapi()
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, JSONResponse

    max_bytes = cfg.max_upload_mb * 1024 * 1024
    state: dict[str, Any] = {}
    capacity = Capacity(cfg.max_concurrent, cfg.max_queue)
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.max_concurrent), thread_name_prefix="score")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["scorer"] = scorer_factory()
        log.info("model loaded: %s", state["scorer"].info().get("model"))
        yield
        pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="dfpipe",
        version=__import__("pipeline").__version__,
        description="Video-level deepfake scores with evidence. POST a video as the raw body.",
        lifespan=lifespan,
    )

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and load: ok, requests inside, capacity."""
        return {"status": "ok", "model_loaded": "scorer" in state,
                "requests_inside": capacity.inside, "capacity": capacity.limit}

    @app.get("/model")
    def model() -> dict[str, Any]:
        """Which model scores uploads and what it was trained on."""
        return state["scorer"].info()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post(
        "/score",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "video/mp4": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses={413: {"description": "upload too large"}, 415: {"description": "not a video"},
                   422: {"description": "video without frames"},
                   503: {"description": "busy: retry later"}},
    )
    async def score(request: Request,
                    filename: str | None = Query(None, description="original file name (display only)"),
                    explain: bool = Query(True, description="include the evidence sheet (PNG data URI)")):
        """Score one uploaded video (raw body). Failures have a status and reason, never a score."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise HTTPException(413, f"upload is {int(declared)} bytes; the limit is {max_bytes}")
        if not capacity.try_enter():
            return JSONResponse({"detail": "busy: too many videos in progress, retry later"},
                                status_code=503, headers={"Retry-After": "5"})
        tmp = Path(tempfile.mkdtemp(prefix="dfpipe-upload-"))
        try:
            dest = tmp / UPLOAD_NAME
            size = 0
            with open(dest, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_bytes:
                        raise HTTPException(413, f"upload exceeds the limit of {max_bytes} bytes")
                    f.write(chunk)
            if size == 0:
                raise HTTPException(422, "empty upload")
            name = safe_display_name(filename)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(pool, _check_decodable, dest)
            except VideoReadError as e:
                raise HTTPException(415, f"{name}: not a decodable video: {_reason(e)}") from e
            except ValueError as e:
                raise HTTPException(422, f"{name}: {e}") from e
            explain_dir = tmp / "evidence" if explain else None
            result = await loop.run_in_executor(
                pool, lambda: state["scorer"].score(dest, explain_dir=explain_dir, display_name=name))
            result = dict(result)
            result["path"] = name
            png = result.pop("evidence_png", None)
            result.pop("evidence_html", None)
            if png and Path(png).is_file():
                data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
                result["evidence_png"] = "data:image/png;base64," + data
            return result
        finally:
            capacity.leave()
            shutil.rmtree(tmp, ignore_errors=True)

    return app


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_decodable(path: Path) -> None:
    """Raise ValueError if ``path`` is a video container whose video stream has no frames (422),
    VideoReadError if it is not a decodable video at all (415)."""
    from pipeline.video_io import open_video

    try:
        reader = open_video(path)
    except VideoReadError:
        if _has_frameless_video_stream(path):
            raise ValueError("the video stream has no frames") from None
        raise
    try:
        reader.get_batch([0])
    finally:
        reader.close()


def _has_frameless_video_stream(path: Path) -> bool:
    """True when FFmpeg opens ``path``, finds a video stream, and decodes no frame from it."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return False
            for _frame in container.decode(container.streams.video[0]):
                return False
    except Exception:  # noqa: BLE001 - not even a container: the caller's 415 stands
        return False
    return True


def run(cfg: ServeConfig) -> int:
    """Load the model once and serve on ``cfg.host:cfg.port`` until interrupted."""
    _require_fastapi()
    import uvicorn

    from pipeline.scoring import VideoScorer

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable from other machines", cfg.host)
    from pipeline.checkpoint import load_checkpoint
    from pipeline.release import resolve_checkpoint

    path = resolve_checkpoint(cfg.checkpoint)  # "" / default: the shipped model
    load_checkpoint(path)  # a missing or bad checkpoint stops here with one line, not at start-up
    log.info("model: %s", path)
    app = create_app(lambda: VideoScorer.from_checkpoint(path, device=cfg.device), cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    return 0
