"""HTTP layer of ``dfpipe serve``: limits, status codes, temp-file hygiene, admission control.

These tests use a recording scorer (a test double for the model) so that they exercise the
service's own behaviour; the real model behind the same app is covered in
``test_scoring.py`` and the browser flow in ``test_browser.py``.
"""

from __future__ import annotations

import glob
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.config import ServeConfig  # noqa: E402
from pipeline.service.app import Capacity, create_app, safe_display_name  # noqa: E402


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
    README promises (the 415 branch used to catch it first)."""
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
    assert stored.name == "upload.bin" and stored.parent.name.startswith("dfpipe-upload-")
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
