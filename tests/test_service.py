"""HTTP layer of ``dfpipe serve``: limits, status codes, temp-file hygiene, admission control.

These tests use a recording scorer (a test double for the model) so that they exercise the
service's own behaviour; the real model behind the same app is covered in
``test_scoring.py`` and the browser flow in ``test_browser.py``.
"""

from __future__ import annotations

import glob
import io
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.config import ServeConfig  # noqa: E402
from pipeline.service.app import Capacity, create_app, safe_display_name  # noqa: E402
from pipeline.service.jobs import FrameCounter  # noqa: E402


class RecordingScorer:
    """Returns a fixed-shape result and records what it was given; can block to fill capacity."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[dict] = []
        self.gate = gate

    def info(self):
        return {"model": "cnn_lstm", "backbone": "tiny", "checkpoint_id": "abc", "threshold": 0.5,
                "trained_on": "synthetic"}

    def score(self, path, *, explain_dir=None, display_name=None):
        self.calls.append({"path": Path(path), "exists": Path(path).is_file(),
                           "size": Path(path).stat().st_size, "name": display_name})
        if self.gate is not None:
            self.gate.wait(timeout=30)
        return {"path": str(path), "status": "ok", "reason": "", "p_fake": 0.8, "label": "FAKE",
                "threshold": 0.5, "tracks": [], "timeline": [], "frames_used": 30,
                "faces_found": 30, "seconds": 0.1}


def _uploads_left() -> list[str]:
    return glob.glob(str(Path(tempfile.gettempdir()) / "dfpipe-upload-*"))


@pytest.fixture()
def video_bytes(clip_factory, tmp_path) -> bytes:
    path = tmp_path / "clip.mp4"
    clip_factory(path, n_frames=12)
    return path.read_bytes()


def _client(scorer, **kw) -> TestClient:
    cfg = ServeConfig(checkpoint="unused", **kw)
    return TestClient(create_app(lambda: scorer, cfg))


def test_health_model_and_openapi():
    scorer = RecordingScorer()
    with _client(scorer) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/model").json()["model"] == "cnn_lstm"
        spec = c.get("/openapi.json").json()
        assert {"/score", "/health", "/model"} <= set(spec["paths"])
        assert "<form" in c.get("/").text


def test_score_accepts_a_video_and_cleans_up(video_bytes):
    scorer = RecordingScorer()
    before = set(_uploads_left())
    with _client(scorer) as c:
        r = c.post("/score?filename=clip.mp4", content=video_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "FAKE" and body["path"] == "clip.mp4"
    call = scorer.calls[0]
    assert call["exists"] and call["size"] == len(video_bytes)
    assert not call["path"].exists()  # deleted after scoring
    assert set(_uploads_left()) == before


def test_too_large_upload_is_413(video_bytes):
    scorer = RecordingScorer()
    with _client(scorer, max_upload_mb=0) as c:
        r = c.post("/score", content=video_bytes)
    assert r.status_code == 413
    assert scorer.calls == []


@pytest.mark.parametrize("payload", [b"this is a text file\n" * 50, bytes(range(256)) * 64])
def test_non_video_is_415_and_never_scored(payload):
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score?filename=fake.mp4", content=payload)
    assert r.status_code == 415
    assert "fake.mp4" in r.json()["detail"]
    assert scorer.calls == []


def test_empty_upload_is_422():
    with _client(RecordingScorer()) as c:
        assert c.post("/score", content=b"").status_code == 422


def _frameless_video(path: Path) -> bytes:
    """An AVI container with a video stream (MPEG-4 Part 2, 64x64) and no frame in it."""
    import av

    with av.open(str(path), "w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    return path.read_bytes()


def test_video_without_frames_is_422_and_never_scored(tmp_path):
    """Issue #12.15: a decodable container whose video stream has no frames gets the 422 the
    docs promise (docs/usage.md) (the 415 branch used to catch it first)."""
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score?filename=blank.avi", content=_frameless_video(tmp_path / "blank.avi"))
    assert r.status_code == 422, r.text
    assert "blank.avi" in r.json()["detail"] and "no frames" in r.json()["detail"]
    assert scorer.calls == []


def test_path_traversal_name_is_display_only(video_bytes, tmp_path):
    scorer = RecordingScorer()
    target = Path(tempfile.gettempdir()).parent / "x.mp4"
    with _client(scorer) as c:
        r = c.post("/score", params={"filename": "../../x.mp4"}, content=video_bytes)
    assert r.status_code == 200
    assert r.json()["path"] == "x.mp4"
    stored = scorer.calls[0]["path"]
    assert stored.name == "upload.mp4" and stored.parent.name.startswith("dfpipe-upload-")
    assert not target.exists()


def test_safe_display_name():
    assert safe_display_name("../../etc/passwd") == "passwd"
    assert safe_display_name("..\\..\\win.mp4") == "win.mp4"
    assert safe_display_name("") == "upload"
    assert safe_display_name("a\x00b.mp4") == "ab.mp4"


def test_capacity_counts():
    cap = Capacity(running=1, waiting=1)
    assert cap.try_enter() and cap.try_enter() and not cap.try_enter()
    cap.leave()
    assert cap.try_enter()


def test_requests_beyond_capacity_get_503_and_server_stays_healthy(video_bytes):
    gate = threading.Event()
    scorer = RecordingScorer(gate=gate)
    n = 12
    with _client(scorer, max_concurrent=1, max_queue=1) as c:
        with ThreadPoolExecutor(max_workers=n) as ex:
            futures = [ex.submit(c.post, "/score", content=video_bytes) for _ in range(n)]
            # the first two are admitted (one running, one waiting); the rest must be refused
            codes = []
            for f in futures:
                try:
                    codes.append(f.result(timeout=0.5).status_code)
                except Exception:
                    codes.append(None)  # still waiting on the gate
            gate.set()
            codes = [f.result(timeout=60).status_code for f in futures]
        assert codes.count(200) >= 2 and codes.count(503) >= 1
        assert set(codes) <= {200, 503}
        assert c.get("/health").json()["requests_inside"] == 0
    assert not _uploads_left() or all(not Path(p).exists() for p in _uploads_left())


# --- issue #15: multipart uploads, images, no server path, schema, jobs with progress ---------


class EchoingScorer(RecordingScorer):
    """Answers like the real scorer: its reasons and fields carry the path it was given.

    ``status`` picks the answer: ok, no_face, read_error, error. It also has a face detector
    and ``slot_frames`` as ``VideoScorer`` does, and runs the detector over the frames it would
    look at, so the service's frame counter sees real calls.
    """

    def __init__(self, status: str = "ok", n_frames: int = 12):
        super().__init__()
        self.status = status
        self.detector = _CountingDetector()
        self.n_frames = n_frames

    def info(self):
        return {"model": "frame", "scored_as": "frame_mean", "backbone": "tiny",
                "checkpoint": "/srv/secret/checkpoints/model.pt", "checkpoint_id": "abc123def456",
                "threshold": 0.5, "trained_on": "SYNTHETIC data: 8 REAL / 8 FAKE training videos",
                "synthetic_training_data": True, "card_title": ""}

    def slot_frames(self, n):
        return list(range(0, n, 2))

    def score(self, path, *, explain_dir=None, display_name=None):
        super().score(path, explain_dir=explain_dir, display_name=display_name)
        import numpy as np

        frames = np.zeros((2, 8, 8, 3), np.uint8)
        for _ in range(0, len(self.slot_frames(self.n_frames)), 2):
            self.detector.detect(frames)
        p = str(path)
        out = {"path": p, "video_id": Path(p).stem, "status": self.status, "p_fake": None,
               "label": None, "threshold": 0.5, "tracks": [], "timeline": [], "frames_used": 0,
               "faces_found": 0, "seconds": 0.1,
               "checkpoint": {"id": "abc123def456", "model": "frame_mean", "backbone": "tiny",
                              "path": "/srv/secret/checkpoints/model.pt",
                              "trained_on": "SYNTHETIC data", "card_title": ""}}
        if self.status == "ok":
            out.update(p_fake=0.7, label="FAKE", frames_used=6, faces_found=6,
                       timeline=[{"frame": f, "slot": i, "p_fake": 0.7}
                                 for i, f in enumerate(self.slot_frames(self.n_frames))])
        elif self.status == "no_face":
            out["reason"] = f"{p}: no face found"
        elif self.status == "read_error":
            out["reason"] = f"{p}: Invalid data found when processing input ({Path(p).parent})"
        else:
            out["reason"] = f"{p}: RuntimeError: boom in {Path(p).parent}/evidence"
        return out


class _CountingDetector:
    def __init__(self):
        self.frames = 0

    def detect(self, frames):
        self.frames += len(frames)
        return [[] for _ in frames]


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format=fmt)
    return buf.getvalue()


def _no_server_path(text: str) -> None:
    assert "dfpipe-upload-" not in text, text
    assert tempfile.gettempdir() + "/" not in text, text
    assert "/srv/secret" not in text, text


def test_multipart_upload_requests_style_is_scored(video_bytes):
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score", files={"file": ("interview.mp4", video_bytes, "video/mp4")})
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "interview.mp4" and r.json()["label"] == "FAKE"
    call = scorer.calls[0]
    assert call["size"] == len(video_bytes)  # the file, not the multipart envelope
    assert call["path"].suffix == ".mp4" and call["name"] == "interview.mp4"


def test_multipart_without_file_field_is_422(video_bytes):
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score", files={"video": ("x.mp4", video_bytes, "video/mp4")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    assert scorer.calls == []


@pytest.mark.parametrize("fmt,suffix,name", [("JPEG", ".jpg", "face.JPG"), ("PNG", ".png", "face.png"),
                                              ("WEBP", ".webp", "face.webp")])
def test_image_upload_is_passed_on_with_its_suffix(fmt, suffix, name):
    scorer = RecordingScorer()
    data = _image_bytes(fmt)
    with _client(scorer) as c:
        multi = c.post("/score", files={"file": (name, data, f"image/{fmt.lower()}")})
        raw = c.post("/score", params={"filename": name}, content=data)
        sniffed = c.post("/score", content=data)  # no name, no type: known by its bytes
    for r in (multi, raw, sniffed):
        assert r.status_code == 200, r.text
        assert r.json()["kind"] == "image" and r.json()["media"]["width"] == 64
    assert [c["path"].suffix for c in scorer.calls] == [suffix] * 3
    assert multi.json()["path"] == name


def test_image_type_by_content_type_alone():
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score", files={"file": ("blob", _image_bytes("PNG"), "image/png")})
    assert r.status_code == 200 and scorer.calls[0]["path"].suffix == ".png"


def test_broken_image_is_415_naming_the_file():
    scorer = RecordingScorer()
    with _client(scorer) as c:
        r = c.post("/score", files={"file": ("face.jpg", b"\xff\xd8\xff" + b"x" * 500, "image/jpeg")})
    assert r.status_code == 415 and r.json()["detail"].startswith("face.jpg: not a decodable image")
    assert scorer.calls == []


@pytest.mark.parametrize("status", ["ok", "no_face", "read_error", "error"])
def test_no_server_path_in_scored_answers(status, video_bytes):
    scorer = EchoingScorer(status)
    with _client(scorer) as c:
        r = c.post("/score", files={"file": ("clip.mp4", video_bytes, "video/mp4")})
        job = c.post("/jobs", files={"file": ("clip.mp4", video_bytes, "video/mp4")}).json()
        final = _wait_job(c, job["job_id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == status
    if status != "ok":
        assert body["reason"].startswith("clip.mp4: "), body["reason"]
    _no_server_path(r.text)
    _no_server_path(json.dumps(final))
    assert scorer.calls[0]["path"].parent.name.startswith("dfpipe-upload-")  # it was there


@pytest.mark.parametrize("payload,name,code", [
    (b"", "empty.mp4", 422), (b"this is a text file\n" * 50, "notes.mp4", 415),
    (bytes(range(256)) * 64, "noise.webm", 415), (b"\x89PNG\r\n\x1a\n" + b"0" * 200, "cut.png", 415)])
def test_no_server_path_in_refusals(payload, name, code):
    with _client(EchoingScorer()) as c:
        answers = [c.post("/score", params={"filename": name}, content=payload),
                   c.post("/score", files={"file": (name, payload, "application/octet-stream")}),
                   c.post("/jobs", params={"filename": name}, content=payload)]
    for r in answers:
        assert r.status_code == code, r.text
        assert name in r.json()["detail"]
        _no_server_path(r.text)


def test_no_server_path_in_model_info():
    with _client(EchoingScorer()) as c:
        r = c.get("/model")
    _no_server_path(r.text)
    assert r.json()["warning"].startswith("WARNING") and "abc123def456" in r.json()["provenance"]


def test_answer_carries_provenance_warning_media_and_seconds(video_bytes):
    with _client(EchoingScorer()) as c:
        body = c.post("/score", files={"file": ("clip.mp4", video_bytes, "video/mp4")}).json()
    assert "checkpoint abc123def456" in body["provenance"]
    assert "SYNTHETIC" in body["provenance"] and "SYNTHETIC" in body["warning"]
    media = body["media"]
    assert media["kind"] == "video" and media["n_frames"] == 12 and media["fps"] == 30.0
    assert [p["time_s"] for p in body["timeline"]] == [round(f / 30.0, 3) for f in range(0, 12, 2)]
    assert body["checkpoint"]["synthetic_training_data"] is True
    assert "path" not in body["checkpoint"]


def test_openapi_has_the_response_schema_and_multipart():
    with _client(RecordingScorer()) as c:
        spec = c.get("/openapi.json").json()
    post = spec["paths"]["/score"]["post"]
    body = post["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "application/octet-stream" in body and "image/jpeg" in body
    ref = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ScoreResponse")
    schema = spec["components"]["schemas"]["ScoreResponse"]
    assert {"p_fake", "label", "frames_used", "provenance", "warning", "timeline",
            "media"} <= set(schema["properties"])
    assert schema["examples"][0]["label"] == "FAKE"
    assert {"/jobs", "/jobs/{job_id}"} <= set(spec["paths"])
    assert "JobStatus" in spec["components"]["schemas"]


def _wait_job(c, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = c.get(f"/jobs/{job_id}").json()
        if view["state"] in ("done", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def test_job_reports_frames_found_then_the_result(video_bytes):
    scorer = EchoingScorer(n_frames=12)
    with _client(scorer) as c:
        r = c.post("/jobs", files={"file": ("clip.mp4", video_bytes, "video/mp4")})
        assert r.status_code == 202, r.text
        view = _wait_job(c, r.json()["job_id"])
        assert c.get("/jobs/nope").status_code == 404
        assert c.get("/health").json()["requests_inside"] == 0
    assert view["state"] == "done" and view["result"]["label"] == "FAKE"
    stages = [h["stage"] for h in view["history"]]
    assert stages[0] == "uploaded" and stages[-1] == "done" and "finding faces" in stages
    counted = [(h["done"], h["total"]) for h in view["history"] if h["stage"] == "finding faces"]
    # 6 frames (slot_frames of 12) in three detector calls of 2: every step is recorded
    assert counted == [(2, 6), (4, 6), (6, 6)]
    assert stages[stages.index("finding faces") + 3] == "scoring the faces, drawing the evidence"
    assert isinstance(scorer.detector, FrameCounter) and scorer.detector.inner.frames == 6
    assert not _uploads_left() or all(not Path(p).exists() for p in _uploads_left())


def test_job_uses_the_scorers_own_progress_when_it_has_one(video_bytes):
    class Native(RecordingScorer):
        def score(self, path, *, explain_dir=None, display_name=None, progress=None):
            for i in range(1, 4):
                progress("sampling windows", i, 3)
            return super().score(path, explain_dir=explain_dir, display_name=display_name)

    with _client(Native()) as c:
        view = _wait_job(c, c.post("/jobs", content=video_bytes).json()["job_id"])
    steps = [(h["stage"], h["done"], h["total"]) for h in view["history"]]
    assert ("sampling windows", 3, 3) in steps and steps[-1][0] == "done"


def test_job_whose_scorer_raises_fails_without_paths(video_bytes):
    class Raising(RecordingScorer):
        def score(self, path, **kw):
            raise RuntimeError(f"cannot read {path}")

    with _client(Raising()) as c:
        view = _wait_job(c, c.post("/jobs", files={"file": ("v.mp4", video_bytes)}).json()["job_id"])
        assert c.get("/health").json()["requests_inside"] == 0
    assert view["state"] == "failed" and view["detail"].startswith("v.mp4: RuntimeError")
    _no_server_path(json.dumps(view))


# --- real clients against a real server: curl -F and requests.post(files=...) ---------------


@pytest.fixture(scope="module")
def live_server():
    import uvicorn

    scorer = RecordingScorer()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: scorer, ServeConfig(checkpoint="x")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", scorer
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_multipart_upload_is_scored(live_server, video_bytes, tmp_path):
    url, scorer = live_server
    clip = tmp_path / "from curl.mp4"
    clip.write_bytes(video_bytes)
    n = len(scorer.calls)
    out = subprocess.run(["curl", "-sS", "-F", f"file=@{clip}", url + "/score"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    body = json.loads(out)
    assert body["path"] == "from curl.mp4" and body["label"] == "FAKE", out
    assert scorer.calls[n]["size"] == len(video_bytes)


def test_requests_library_multipart_and_raw(live_server, video_bytes):
    requests = pytest.importorskip("requests")
    url, scorer = live_server
    n = len(scorer.calls)
    r = requests.post(url + "/score", files={"file": ("lib.mp4", video_bytes)}, timeout=60)
    assert r.status_code == 200 and r.json()["path"] == "lib.mp4", r.text
    raw = requests.post(url + "/score", params={"filename": "raw.mp4"}, data=video_bytes,
                        headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert raw.status_code == 200 and raw.json()["path"] == "raw.mp4", raw.text
    assert [c["size"] for c in scorer.calls[n:]] == [len(video_bytes)] * 2


@pytest.mark.slow
def test_real_scorer_answers_carry_no_server_path(tiny_checkpoint, clip_factory, tmp_path):
    """The real scorer's reasons carry the path it was given: the service replaces it."""
    from pipeline.score.scorer import VideoScorer

    clip_factory(tmp_path / "noface.mp4", n_frames=40, gap=(0, 40))
    clip_factory(tmp_path / "face.mp4", n_frames=40)
    app = create_app(lambda: VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu"),
                     ServeConfig(checkpoint=str(tiny_checkpoint)))
    with TestClient(app) as c:
        answers = {name: c.post("/score", files={"file": (name, (tmp_path / name).read_bytes())})
                   for name in ("noface.mp4", "face.mp4")}
        answers["photo.png"] = c.post("/score", files={"file": ("photo.png", _image_bytes("PNG"))})
        answers["model"] = c.get("/model")
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
        _no_server_path(r.text)
        assert str(tiny_checkpoint) not in r.text and str(tiny_checkpoint.parent) not in r.text
    body = answers["noface.mp4"].json()
    assert body["status"] == "no_face" and body["reason"] == "noface.mp4: no face found"
    assert answers["face.mp4"].json()["provenance"].startswith("model cnn_lstm (tiny), checkpoint ")


def test_frames_to_scan_follows_the_scorers_sampling():
    from pipeline.service.jobs import frames_to_scan

    class ByFps:
        def slot_frames(self, n, fps=None):
            return list(range(0, n, max(1, round((fps or 30) / 3))))  # 3 per second

    class NoFps:
        def slot_frames(self, n):
            return list(range(0, min(n, 300), 10))

    assert frames_to_scan(ByFps(), 300, 30.0) == 30
    assert frames_to_scan(ByFps(), 300, 12.5) == 75
    assert frames_to_scan(NoFps(), 3000, 30.0) == 30
    assert frames_to_scan(object(), 120, 30.0) == 120  # no sampling known: every frame
    assert frames_to_scan(NoFps(), None) is None


def test_a_finished_job_has_freed_its_slot_and_upload(video_bytes, monkeypatch):
    """A poller that sees ``done`` finds the slot free and the upload gone (cleanup is made slow
    here, so a job reported finished before its cleanup would be caught)."""
    from pipeline.service import uploads

    slow = uploads.Upload.cleanup

    def slow_cleanup(self):
        time.sleep(0.4)
        slow(self)

    monkeypatch.setattr(uploads.Upload, "cleanup", slow_cleanup)
    scorer = RecordingScorer()
    with _client(scorer) as c:
        view = _wait_job(c, c.post("/jobs", content=video_bytes).json()["job_id"])
        inside = c.get("/health").json()["requests_inside"]
        upload_left = scorer.calls[0]["path"].parent.exists()
    assert view["state"] == "done" and inside == 0
    assert not upload_left
