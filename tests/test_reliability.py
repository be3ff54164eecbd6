"""Reliability and security suite (issue 9): bad inputs, kill -9 and resume, service under load,
tampered checkpoints, memory of a 4K extraction.

Real MTCNN (weights shipped with facenet-pytorch, offline) and a real tiny checkpoint (RANDOM INIT
tiny backbone trained 1 epoch on synthetic crops: not a meaningful detector). Cases that already
have their own test elsewhere are referenced, not repeated: kill -9 of a pool extraction after its
first video vs an uninterrupted Ray run (test_extract), torn journal lines (test_scoring), exact
in-process resume (test_training), atomic save on a failing write (test_checkpoint), 503 under a
blocked scorer (test_service).
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from bad_inputs import (
    ODD_DIR,
    ODD_NAME,
    frame_times,
    lock_folder,
    locked_case,
    running_as_root,
    unlock_folder,
    write_corpus,
    write_good,
)

from pipeline import cli
from pipeline.config import ExtractConfig
from pipeline.core.errors import CheckpointError
from pipeline.extract.stage import run as extract_run
from pipeline.io.manifest import manifest_path, read_manifest
from pipeline.models import checkpoint as C
from pipeline.score.batch import read_journal

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAILED_EXTRACT = {"empty_file", "read_error", "too_short", "missing_file", "bad_metadata"}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Every bad-input case (tests/bad_inputs.py) under one root, with its expected statuses."""
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------ bad inputs


def test_corpus_is_what_it_claims(bad_corpus):
    root, cases = bad_corpus
    by_id = {c.video_id: c for c in cases}
    times = frame_times(by_id["vfr"].path)
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
    assert len(gaps) > 5  # the frame rate really varies
    assert by_id["zero"].path.stat().st_size == 0
    assert by_id["truncated"].path.stat().st_size < by_id["good"].path.stat().st_size // 5
    assert (root / ODD_DIR / ODD_NAME).is_file()


def test_extract_over_the_bad_corpus(bad_corpus, tmp_path):
    root, cases = bad_corpus
    cfg = ExtractConfig(inputs=(str(root),), out=str(tmp_path / "faces"),
                        manifest_dir=str(tmp_path / "m"), engine="inline", crop_size=48)
    assert extract_run(cfg) == 1  # something failed -> exit 1, after finishing the good items
    videos = read_manifest(manifest_path(cfg.manifest_dir, "videos"), "videos")
    faces = read_manifest(manifest_path(cfg.manifest_dir, "faces"), "faces")
    got = dict(zip(videos["video_id"], videos["status"], strict=True))
    assert got == {c.video_id: c.extract for c in cases}
    for _, r in videos.iterrows():
        if r["status"] == "ok":
            assert r["reason"] == "" and r["n_faces"] > 0
        else:  # one line, naming the file (or folder / metadata.json) it is about
            assert r["reason"] and "\n" not in r["reason"]
            assert str(root) in r["reason"]
    reasons = dict(zip(videos["video_id"], videos["reason"], strict=True))
    assert reasons["audio_only"].endswith("no video stream")
    assert "label is 1" in reasons["dfdc_train_part_2/metadata.json"]
    labels = dict(zip(videos["video_id"], videos["label"], strict=True))
    assert labels["good"] == "REAL" and labels["in_bad_json"] == "" and labels["in_bad_types"] == ""
    ok = {c.video_id for c in cases if c.extract == "ok"}
    assert set(faces["video_id"]) == ok
    assert faces["crop_path"].map(os.path.isfile).all()
    # nothing partial: no temp leftovers; every video folder is complete; failures recorded
    out = tmp_path / "faces"
    assert not _leftovers(out) and not _leftovers(tmp_path / "m")
    folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == ok | {"no_face"}
    for d in folders:
        n_rows = len((out / d / "_faces.csv").read_text().splitlines()) - 1
        assert (out / d / "_video.json").is_file() and len(list((out / d).glob("*.jpg"))) == n_rows
    failed_ids = {c.video_id for c in cases if c.extract in FAILED_EXTRACT and c.score is not None}
    assert {p.stem for p in (out / "_failed").glob("*.json")} == failed_ids


def test_score_over_the_bad_corpus(bad_corpus, tiny_checkpoint, tmp_path, capsys):
    root, cases = bad_corpus
    out = tmp_path / "r.jsonl"
    rc = cli.main(["score", str(root), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                   "--engine", "inline", "--device", "cpu", "--min-frames", "2"])
    assert rc == 1
    rows = {r["path"]: r for r in read_journal(out)}
    expected = {str(c.path): c.score for c in cases if c.score is not None}
    assert {p: r["status"] for p, r in rows.items()} == expected
    for path, r in rows.items():
        if r["status"] == "ok":
            assert 0.0 <= r["p_fake"] <= 1.0 and r["label"] in ("REAL", "FAKE")
        else:
            assert r["p_fake"] is None and r["label"] is None
            assert r["reason"].startswith(path) and "\n" not in r["reason"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == len(expected)  # one result line per video
    assert not _leftovers(tmp_path)


def _as_nobody_kwargs(tmp: Path) -> dict | None:
    """subprocess kwargs that drop root to 'nobody' (root ignores file modes); None when nobody
    cannot run this interpreter (e.g. a Python installed under /root)."""
    home = tmp / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "TORCH_HOME": str(home)}
    kw = {"user": 65534, "group": 65534, "extra_groups": [], "env": env}
    try:
        ok = subprocess.run([sys.executable, "-c", "import pipeline.extract.stage, facenet_pytorch, torch"], cwd=ROOT, timeout=120,
                            capture_output=True, **kw).returncode == 0
    except PermissionError:
        ok = False
    return kw if ok else None


def _deny(monkeypatch, folder: Path) -> None:
    """What the OS does for a non-root user and a mode-000 folder: listing it raises EACCES."""
    real_listdir, real_scandir = os.listdir, os.scandir

    def guard(real):
        def f(path="."):
            if Path(os.fsdecode(path)).resolve() == folder.resolve():
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path)
        return f

    monkeypatch.setattr(os, "listdir", guard(real_listdir))
    monkeypatch.setattr(os, "scandir", guard(real_scandir))


def test_unreadable_folder_is_a_row_not_a_crash(tiny_checkpoint, monkeypatch):
    """A folder without read permission: extract and score report it and go on.

    Real when possible: chmod 000 and the commands run as the current user, or, as root (root
    ignores modes), as 'nobody'. When nobody cannot run this Python (installed under /root, as
    on the CI box), listing the folder is made to raise EACCES in-process (``_deny``): the
    pipeline code is the same, only the refusal is simulated."""
    base = Path(tempfile.mkdtemp(prefix="dfpipe-locked-"))
    try:
        base.chmod(0o777)
        root = base / "in"
        case = locked_case(root)
        locked = case.path.parent
        write_good(root / "open" / "fine.mp4", n_frames=12)
        ckpt = base / "tiny.pt"
        shutil.copy(tiny_checkpoint, ckpt)
        outs = base / "out"
        outs.mkdir()
        for p in [root, *root.rglob("*"), ckpt]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        outs.chmod(0o777)
        kw = _as_nobody_kwargs(base) if running_as_root() else {}
        lock_folder(locked)
        extract_argv = ["extract", str(root), "--out", str(outs / "faces"), "--manifest-dir",
                        str(outs / "m"), "--engine", "inline", "--crop-size", "48"]
        score_argv = ["score", str(root), "--checkpoint", str(ckpt), "--out", str(outs / "s.jsonl"),
                      "--device", "cpu", "--min-frames", "2", "--engine", "inline"]
        if kw is None:
            _deny(monkeypatch, locked)
            rcs = [cli.main(["-q", *extract_argv]), cli.main(["-q", *score_argv])]
        else:
            rcs = [subprocess.run([sys.executable, "-m", "pipeline", "-q", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300, **kw).returncode
                   for a in (extract_argv, score_argv)]
        assert rcs == [1, 1]
        v = read_manifest(outs / "m" / "videos.parquet", "videos")
        assert dict(zip(v["video_id"], v["status"], strict=True)) == {"locked/": "read_error",
                                                                      "fine": "ok"}
        reason = v.set_index("video_id").loc["locked/", "reason"]
        assert reason == f"{locked}: cannot list folder: Permission denied"
        rows = {Path(x["path"]).name: x for x in read_journal(outs / "s.jsonl")}
        assert {k: x["status"] for k, x in rows.items()} == {"locked": "read_error", "fine.mp4": "ok"}
        assert rows["locked"]["reason"] == f"{locked}: cannot list folder: Permission denied"
    finally:
        monkeypatch.undo()
        for p in base.rglob("*"):
            if p.is_dir():
                unlock_folder(p)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ checkpoints


def _tiny_payload(name: str = "frame") -> dict:
    from pipeline.models import create_model

    torch.manual_seed(0)
    m = create_model(name, backbone="tiny")
    return {"model": {"name": name, "kwargs": m.model_kwargs}, "state_dict": m.state_dict(),
            "epoch": 1, "config": {"seed": 0}}


def _flip_tensor_bytes(path: Path) -> None:
    """Flip 16 bytes inside the largest tensor record of the checkpoint's zip container."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        rec = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    h = rec.header_offset  # local header: name and extra-field lengths at bytes 26-29
    start = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little")
    start += rec.file_size // 2
    for k in range(start, start + 16):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


class Payload:  # any custom class: a weights_only load must refuse to rebuild it
    def __init__(self):
        self.note = "pickled object"


def test_tampered_checkpoints_are_refused_with_one_line(tmp_path, capfd):
    good = C.save_checkpoint(tmp_path / "good.pt", _tiny_payload())
    assert C.load_checkpoint(good)["epoch"] == 1
    flipped = tmp_path / "flipped.pt"
    shutil.copy(good, flipped)
    _flip_tensor_bytes(flipped)  # the zip container does not notice; the stored SHA-256 does
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    pickled = tmp_path / "pickled.pt"
    torch.save({**torch.load(good, weights_only=True), "extra": Payload()}, pickled)
    cases = {flipped: "do not match the checkpoint's own SHA-256",
             truncated: "unreadable checkpoint", pickled: "refused: the file holds pickled objects"}
    for path, msg in cases.items():
        with pytest.raises(CheckpointError) as e:
            C.load_checkpoint(path)
        assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="is a 'frame' model, expected 'cnn_lstm'"):
        C.load_checkpoint(good, expect_model="cnn_lstm")
    clip = tmp_path / "c.mp4"
    write_good(clip, n_frames=4)
    capfd.readouterr()
    for path in cases:  # the CLI: exit 2 and one line on stderr naming the file
        rc = cli.main(["score", str(clip), "--checkpoint", str(path), "--out", str(tmp_path / "r.jsonl")])
        assert rc == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0]
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------ kill -9 loops


def _kill_loop(argv: list[str], done: Path, delays: list[float], check, timeout: float = 300) -> int:
    """Start ``argv`` in its own process group and SIGKILL the group after each delay (or stop
    when ``done`` appears); ``check()`` after every kill; returns how many runs were killed."""
    killed = 0
    for delay in delays:
        p = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=timeout)
            killed += p.returncode == -signal.SIGKILL
            check()
        if done.exists():
            break
    return killed


def _complete_video_folders(faces: Path) -> None:
    """After a kill: every video folder that is not a temp folder is complete (record + crops)."""
    for d in faces.iterdir() if faces.is_dir() else []:
        if d.is_dir() and not d.name.startswith((".tmp-", "_")):
            n_rows = len((d / "_faces.csv").read_text().splitlines()) - 1
            assert (d / "_video.json").is_file() and len(list(d.glob("*.jpg"))) == n_rows, d


def _extract_argv(inputs: Path, d: Path, engine: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "-q", "extract", str(inputs), "--out", str(d / "faces"),
            "--manifest-dir", str(d / "m"), "--engine", engine, "--workers", "2", "--scale", "0.5",
            "--batch-size", "8", "--crop-size", "64"]


def _same_extraction(a: Path, b: Path) -> None:
    """videos.csv equal except the timing column ``seconds`` (wall time of the run that did the
    video); faces.csv equal once the output root is stripped from crop paths; crops byte-equal."""
    va = read_manifest(a / "m" / "videos.csv", "videos").drop(columns=["seconds"])
    vb = read_manifest(b / "m" / "videos.csv", "videos").drop(columns=["seconds"])
    pd.testing.assert_frame_equal(va, vb)
    fa = read_manifest(a / "m" / "faces.csv", "faces")
    fb = read_manifest(b / "m" / "faces.csv", "faces")
    strip = lambda f, root: f.assign(crop_path=f["crop_path"].str.replace(str(root), ""))  # noqa: E731
    pd.testing.assert_frame_equal(strip(fa, a), strip(fb, b))
    for pa, pb in zip(fa["crop_path"], fb["crop_path"], strict=True):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    assert not _leftovers(a) and not _leftovers(b)


@pytest.fixture(scope="module")
def uninterrupted_extraction(synth_dir, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted pool extraction of ``synth_dir`` (the reference) and its wall time.
    Pool and Ray give the same manifests (test_extract), so both kill tests compare to it."""
    d = tmp_path_factory.mktemp("full")
    t0 = time.monotonic()
    r = subprocess.run(_extract_argv(synth_dir, d, "pool"), cwd=ROOT, capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, time.monotonic() - t0


def _kill9_extract(synth_dir: Path, full: Path, cut: Path, engine: str, delays: list[float]) -> None:
    killed = _kill_loop(_extract_argv(synth_dir, cut, engine), cut / "m" / "videos.csv", delays,
                        lambda: _complete_video_folders(cut / "faces"))
    assert killed >= 1
    r = subprocess.run(_extract_argv(synth_dir, cut, engine), cwd=ROOT, capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_extraction(full, cut)


@pytest.mark.slow
def test_kill9_pool_extraction_at_random_moments(synth_dir, uninterrupted_extraction, tmp_path):
    full, wall = uninterrupted_extraction
    rng = random.Random(11)
    _kill9_extract(synth_dir, full, tmp_path / "cut", "pool",
                   [rng.uniform(0.15, 0.85) * wall for _ in range(3)])


@pytest.mark.slow
@pytest.mark.ray
def test_kill9_ray_extraction_at_random_moments(synth_dir, uninterrupted_extraction, tmp_path):
    """Embedded Ray starts slower than the pool: the kill moments span up to 1.3 pool runs."""
    pytest.importorskip("ray")
    full, wall = uninterrupted_extraction
    rng = random.Random(12)
    _kill9_extract(synth_dir, full, tmp_path / "cut", "ray",
                   [rng.uniform(0.3, 1.3) * wall for _ in range(2)])


@pytest.mark.slow
def test_kill9_batch_scoring_at_random_moments(tiny_checkpoint, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(6):
        write_good(videos / f"v{i}.mp4", n_frames=40, seed=20 + i, two_face=(10, 30) if i % 2 else None)
    (videos / "broken.mp4").write_text("not a video")

    def argv(out):
        return [sys.executable, "-m", "pipeline", "-q", "score", str(videos), "--checkpoint",
                str(tiny_checkpoint), "--out", str(out), "--device", "cpu", "--min-frames", "2"]

    t0 = time.monotonic()
    r = subprocess.run(argv(tmp_path / "full.jsonl"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]  # broken.mp4
    wall = time.monotonic() - t0
    rng = random.Random(13)
    cut = tmp_path / "cut.jsonl"

    def whole_lines():  # after a kill: at most the last journal line is torn
        lines = cut.read_text().splitlines() if cut.exists() else []
        for line in lines[:-1]:
            json.loads(line)

    killed = _kill_loop(argv(cut), tmp_path / "never", [rng.uniform(0.2, 0.9) * wall for _ in range(3)],
                        whole_lines)
    assert killed >= 1
    r = subprocess.run(argv(cut), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]

    def by_path(path):  # results keyed by video; "seconds" is the only timing field
        rows = read_journal(path)
        assert len(rows) == len({r["path"] for r in rows})  # each video once, none lost
        return {r["path"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}

    assert by_path(cut) == by_path(tmp_path / "full.jsonl")


@pytest.mark.slow
def test_kill9_training_resumes_from_last_checkpoint(tmp_path):
    from train_fixtures import make_manifests

    manifests = make_manifests(tmp_path / "data", n_frames=4, size=16,
                               n_real={"train": 24, "val": 4, "test": 2},
                               n_fake={"train": 24, "val": 4, "test": 2})
    epochs = 4

    def argv(name, *extra):
        return [sys.executable, "-m", "pipeline", "-q", "train", "--manifest-dir", str(manifests),
                "--out-dir", str(tmp_path / "runs"), "--run-name", name, "--epochs", str(epochs),
                "--patience", "10", "--image-size", "16", "--batch-size", "2", "--threads", "1",
                "--lstm-hidden", "8", *extra]

    r = subprocess.run(argv("full"), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    full = C.load_checkpoint(tmp_path / "runs" / "full" / "last.pt")
    last = tmp_path / "runs" / "cut" / "last.pt"
    rng = random.Random(14)
    epochs_at_kill = []
    for i in range(3):
        a = argv("cut") if i == 0 else argv("cut", "--resume", str(last))
        p = subprocess.Popen(a, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        before = C.load_checkpoint(last)["epoch"] if last.exists() else 0
        deadline = time.monotonic() + 300
        # wait for the next epoch's checkpoint, then kill at a random point of the following epoch
        while p.poll() is None and time.monotonic() < deadline:
            if last.exists() and C.load_checkpoint(last)["epoch"] > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))
        if p.poll() is not None:
            break
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        ck = C.load_checkpoint(last)  # never half-written: loads after every kill
        epochs_at_kill.append(ck["epoch"])
        assert [h["epoch"] for h in ck["history"]] == list(range(1, ck["epoch"] + 1))
    assert epochs_at_kill and epochs_at_kill[0] < epochs
    r = subprocess.run(argv("cut", "--resume", str(last)), cwd=ROOT, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = C.load_checkpoint(last)
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, epochs + 1))
    for k, v in full["state_dict"].items():  # the same weights as the uninterrupted run
        torch.testing.assert_close(resumed["state_dict"][k], v, msg=k)
    hist = pd.read_csv(last.parent / "history.csv")
    assert hist["epoch"].tolist() == list(range(1, epochs + 1))


# ------------------------------------------------------------------------------ the service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_service_under_concurrent_hostile_load(tiny_checkpoint, tmp_path):
    httpx = pytest.importorskip("httpx")
    clip = tmp_path / "clip.mp4"
    write_good(clip, n_frames=100, width=320, height=180)  # 10 slots: the default min_frames
    video = clip.read_bytes()
    assert len(video) < 1024 * 1024
    upload_tmp = tmp_path / "server_tmp"  # the server's TMPDIR: leftovers are checked here
    upload_tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(upload_tmp)}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "-q", "serve", "--checkpoint", str(tiny_checkpoint),
         "--port", str(port), "--device", "cpu", "--max-upload-mb", "1", "--max-concurrent", "1",
         "--max-queue", "3"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).json()["model_loaded"]:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        kinds = {
            "video": (video, "clip.mp4", {200, 503}),
            "traversal": (video, "../../x.mp4", {200, 503}),
            "oversize": (os.urandom(1024 * 1024 + 4096), "big.mp4", {413}),
            "not_video": (b"definitely not a video\n" * 200, "notes.mp4", {415, 503}),
        }
        plan = [k for k in kinds for _ in range(15)]
        random.Random(15).shuffle(plan)

        def send(kind):
            body, name, _ = kinds[kind]
            r = httpx.post(f"{base}/score", params={"filename": name, "explain": "false"},
                           content=body, timeout=120)
            return kind, r.status_code, r.json()

        with ThreadPoolExecutor(max_workers=16) as ex:  # bounded: 60 requests, 16 at a time
            results = list(ex.map(send, plan, timeout=300))
        assert len(results) == 60
        codes = collections.Counter()
        for kind, code, body in results:
            assert code in kinds[kind][2], (kind, code, body)
            codes[code] += 1
            if kind == "traversal" and code == 200:
                assert body["path"] == "x.mp4" and body["status"] == "ok"
        print(f"status codes of 60 requests: {dict(sorted(codes.items()))}")
        assert codes[200] >= 1 and codes[413] == 15
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["status"] == "ok" and health["requests_inside"] == 0
        assert server.poll() is None
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    assert not list(upload_tmp.glob("dfpipe-upload-*"))  # every upload folder removed
    # "../../x.mp4" was display-only: nothing named x.mp4 beside the upload folders or the server
    assert not list(tmp_path.rglob("x.mp4")) and not (tmp_path.parent / "x.mp4").exists()
    assert not (ROOT / "../../x.mp4").resolve().exists()


# ------------------------------------------------------------------------------ memory


def _peak_rss_mib(argv: list[str]) -> float:
    """Peak RSS (MiB) of ``argv`` alone: measured by a fresh parent whose only child it is."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=400)
    kib, rc = out.stdout.split()[-2:]
    assert rc in ("0", "1"), out.stderr[-3000:]
    return int(kib) / 1024


@pytest.mark.slow
def test_4k_extraction_memory_is_bounded(tmp_path):
    """A 72-frame 3840x2160 clip holds 72 x 23.7 MiB = 1709 MiB of decoded RGB frames. Extraction
    streams batches capped at faces.MAX_BATCH_BYTES (at least one frame: one 4K frame), so the
    worker's peak RSS may exceed that of the same command on a 480x270 clip by at most 2 batches
    (the batch and its copies inside MTCNN/cropping) + 512 MiB (FFmpeg frame pool, decord's
    opening read, detection pyramids at 4K). Before decord's streaming went through PyAV, decord
    held every decoded frame (+~1400 MiB at 48 frames, growing ~21 MiB per frame)."""
    from pipeline.faces.detect import MAX_BATCH_BYTES

    big, small = tmp_path / "big.mp4", tmp_path / "small.mp4"
    n = 72
    write_good(big, n_frames=n, width=3840, height=2160, seed=5)
    write_good(small, n_frames=n, width=480, height=270, seed=5)

    def argv(clip, name):
        return [sys.executable, "-m", "pipeline", "-q", "extract", str(clip), "--engine", "inline",
                "--out", str(tmp_path / name / "faces"), "--manifest-dir", str(tmp_path / name / "m"),
                "--crop-size", "64"]

    base = _peak_rss_mib(argv(small, "small"))
    peak = _peak_rss_mib(argv(big, "big"))
    v = read_manifest(tmp_path / "big" / "m" / "videos.csv", "videos")
    assert v["status"].tolist() == ["ok"] and v["n_face_frames"].iloc[0] >= 0.9 * n
    whole_video = n * 3840 * 2160 * 3 / 2**20
    bound = 2 * max(MAX_BATCH_BYTES, 3840 * 2160 * 3) / 2**20 + 512
    print(f"peak RSS: 480x270 {base:.0f} MiB, 4K {peak:.0f} MiB (+{peak - base:.0f}; bound +{bound:.0f}; "
          f"whole video {whole_video:.0f})")
    assert peak - base < bound < whole_video
    assert not math.isnan(peak)
