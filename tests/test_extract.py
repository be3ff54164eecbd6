"""extract stage: discovery, the worker on synthetic clips with real MTCNN (pretrained weights
shipped with facenet-pytorch, offline), bad inputs as rows, resume, import, real DFDC samples."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import cli
from pipeline.config import ExtractConfig
from pipeline.extract.stage import run
from pipeline.extract.worker import ExtractWorker
from pipeline.io.discovery import discover_inputs
from pipeline.io.manifest import manifest_path, read_manifest, read_meta
from pipeline.synth.dataset import load_truth, write_clip

torch.set_num_threads(1)


def _cfg(tmp, inputs, **kw):
    base = dict(inputs=tuple(map(str, inputs)), out=str(tmp / "faces"), manifest_dir=str(tmp / "m"),
                engine="inline", crop_size=48)
    base.update(kw)
    return ExtractConfig(**base)


def _manifests(cfg):
    v = read_manifest(manifest_path(cfg.manifest_dir, "videos"), "videos")
    f = read_manifest(manifest_path(cfg.manifest_dir, "faces"), "faces")
    return v, f


def test_discover_inputs(tmp_path, clip_factory):
    part = tmp_path / "dfdc_train_part_3"
    part.mkdir()
    clip_factory(part / "aaa.mp4", n_frames=2, width=64, height=64)
    clip_factory(part / "bbb.mp4", n_frames=2, width=64, height=64)
    (part / "notes.txt").write_text("not a video")
    (part / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "bbb.mp4": {"label": "REAL", "split": "train", "original": None},
        "gone.mp4": {"label": "REAL", "split": "train", "original": None}}))
    other = tmp_path / "loose"
    other.mkdir()
    clip_factory(other / "aaa.mp4", n_frames=2, width=64, height=64)  # same id as in the part
    items, failed = discover_inputs([tmp_path])
    assert [(i["id"], i["part"], i["label"], i["original"]) for i in items] == [
        ("aaa", "dfdc_train_part_3", "FAKE", "bbb"), ("bbb", "dfdc_train_part_3", "REAL", "")]
    assert {(r["video_id"], r["status"]) for r in failed} == {("gone", "missing_file"), ("aaa", "duplicate_id")}
    assert all(str(tmp_path) in r["reason"] for r in failed)
    with pytest.raises(Exception, match="input not found"):
        discover_inputs([tmp_path / "nope"])


def test_worker_on_synthetic_dataset(synth_dir, tmp_path):
    items, failed = discover_inputs([synth_dir])
    truth = {t["video_id"]: t for t in load_truth(synth_dir)}
    assert not failed and len(items) == 4
    worker = ExtractWorker(ExtractConfig(out=str(tmp_path), crop_size=64, scale=0.5))
    for it in items:
        row = worker(it)
        assert row["status"] == "ok", row
        assert row["label"] in ("REAL", "FAKE") and row["n_frames"] == 60
        crops = sorted((tmp_path / it["video_id"]).glob("*.jpg"))
        t = truth[it["video_id"]]
        two, none = set(t["two_face_frames"]), set(t["no_face_frames"])
        assert len(crops) == row["n_faces"]
        assert row["n_face_frames"] >= 0.9 * (60 - len(none))
        assert row["n_face_frames"] <= 60 - 0.8 * len(none)
        assert row["n_multi_face_frames"] >= 0.8 * len(two)
        names = {p.name for p in crops}
        # MTCNN may add a stray one-frame detection (the fakes' face flickers up to +-50 %
        # brightness); the faces the clip really has are the tracks that persist
        lengths = Counter(int(n.split("_")[1].split(".")[0]) for n in names)
        assert row["n_tracks"] == len(lengths)
        assert sum(n >= 5 for n in lengths.values()) == (2 if two else 1), lengths
        if two:  # the second face has its own track
            second = [t for t, n in sorted(lengths.items()) if n >= 5][1]
            assert len({f"{f:04d}_{second}.jpg" for f in two} & names) >= 0.8 * len(two)
        assert all(len(n) == len("0000_0.jpg") and n.endswith(".jpg") for n in names)
    from PIL import Image
    assert Image.open(crops[0]).size == (64, 64)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One good clip and every kind of bad input, in DFDC folders."""
    from pipeline.synth.dataset import make_clip

    root = tmp_path_factory.mktemp("bad")
    part = root / "dfdc_train_part_0"
    part.mkdir()
    make_clip(part / "good.mp4", n_frames=8)
    data = (part / "good.mp4").read_bytes()
    (part / "truncated.mp4").write_bytes(data[: len(data) // 10])
    (part / "zero.mp4").write_bytes(b"")
    (part / "random.mp4").write_bytes(np.random.default_rng(0).bytes(40_000))
    (part / "text.mp4").write_text("hello, I am not a video\n")
    make_clip(part / "oneframe.mp4", n_frames=1)
    write_clip((np.full((96, 128, 3), 90, np.uint8) for _ in range(6)), part / "noface.mp4", 30.0)
    make_clip(part / "extra.mp4", n_frames=4)  # present but not in metadata
    listed = ["good", "truncated", "zero", "random", "text", "oneframe", "noface", "missing"]
    (part / "metadata.json").write_text(json.dumps(
        {f"{v}.mp4": {"label": "REAL", "split": "train", "original": None} for v in listed}))
    broken = root / "dfdc_train_part_1"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    make_clip(broken / "inbroken.mp4", n_frames=3)
    return root


EXPECTED = {
    "good": "ok", "extra": "ok", "inbroken": "ok", "truncated": "read_error", "zero": "empty_file",
    "random": "read_error", "text": "read_error", "oneframe": "too_short", "noface": "no_face",
    "missing": "missing_file", "dfdc_train_part_1/metadata.json": "bad_metadata",
}


def test_bad_inputs_become_rows_and_the_job_goes_on(bad_inputs, tmp_path):
    cfg = _cfg(tmp_path, [bad_inputs])
    assert run(cfg) == 1
    videos, faces = _manifests(cfg)
    got = dict(zip(videos["video_id"], videos["status"], strict=True))
    assert got == EXPECTED
    for _, r in videos.iterrows():
        if r["status"] != "ok":
            assert r["reason"] and "\n" not in r["reason"]
            assert r["video_id"].split("/")[0] in r["reason"] or "dfdc_train_part_1" in r["reason"]
        else:
            assert r["reason"] == ""
    labels = dict(zip(videos["video_id"], videos["label"], strict=True))
    assert labels["good"] == "REAL" and labels["extra"] == "" and labels["inbroken"] == ""
    assert set(faces["video_id"]) == {"good", "extra", "inbroken"}
    assert faces["crop_path"].map(os.path.isfile).all()
    assert (faces.groupby("video_id").size() == videos.set_index("video_id")["n_faces"].dropna()
            .astype(int).loc[["extra", "good", "inbroken"]]).all()
    # failures are recorded for inspection; the no-face video is done, not failed
    failed = {p.stem for p in (tmp_path / "faces" / "_failed").glob("*.json")}
    assert failed == {"truncated", "zero", "random", "text", "oneframe"}
    assert (tmp_path / "faces" / "noface" / "_video.json").is_file()
    meta = read_meta(manifest_path(cfg.manifest_dir, "videos"))
    assert meta["config"]["crop_size"] == 48 and meta["counts"]["failed"] == 7


def _without_timing(df):
    return df.drop(columns=["seconds"]) if "seconds" in df else df


def test_resume_skips_done_videos_and_equals_an_uninterrupted_run(synth_dir, tmp_path):
    full = _cfg(tmp_path / "a", [synth_dir], scale=0.5)
    assert run(full) == 0
    v_full, f_full = _manifests(full)
    assert len(v_full) == 4 and (v_full["status"] == "ok").all()

    # a "killed" run: one video finished, a half-written temp folder and temp file left behind
    part = _cfg(tmp_path / "b", [synth_dir], scale=0.5)
    done_id = sorted(v_full["video_id"])[0]
    shutil.copytree(tmp_path / "a" / "faces" / done_id, tmp_path / "b" / "faces" / done_id)
    half = tmp_path / "b" / "faces" / f".tmp-{sorted(v_full['video_id'])[1]}.xyz"
    half.mkdir()
    (half / "0000_0.jpg").write_bytes(b"\xff\xd8 partial")
    rec = tmp_path / "b" / "faces" / done_id / "_video.json"
    mtime = rec.stat().st_mtime_ns
    assert run(part) == 0
    assert not half.exists()
    assert rec.stat().st_mtime_ns == mtime  # not recomputed
    v_b, f_b = _manifests(part)
    pd.testing.assert_frame_equal(_without_timing(v_b), _without_timing(v_full))
    strip = lambda f, root: f.assign(crop_path=f["crop_path"].str.replace(str(root), ""))  # noqa: E731
    pd.testing.assert_frame_equal(strip(f_b, tmp_path / "b"), strip(f_full, tmp_path / "a"))

    # a third run recomputes nothing at all; changed parameters redo the videos
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "faces").glob("*/_video.json")}
    assert run(part) == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    v_c, _ = _manifests(part)
    pd.testing.assert_frame_equal(v_c, v_b)  # seconds come from the records too
    assert run(_cfg(tmp_path / "b", [synth_dir], crop_size=32, detect_every=20)) == 0
    assert all(p.stat().st_mtime_ns != m for p, m in mtimes.items())


def test_cli_end_to_end_with_detect_every(synth_dir, tmp_path):
    rc = cli.main(["extract", str(synth_dir), "--out", str(tmp_path / "f"), "--manifest-dir",
                   str(tmp_path / "m"), "--engine", "inline", "--detect-every", "4", "--scale", "0.5"])
    assert rc == 0
    v = read_manifest(tmp_path / "m" / "videos.csv", "videos")
    f = read_manifest(tmp_path / "m" / "faces.csv", "faces")
    assert (v["status"] == "ok").all() and len(f) == v["n_faces"].sum()
    assert f["prob"].isna().any() and f["prob"].notna().any()  # carried and detected boxes


def test_import_pre_extracted_faces(tmp_path):
    src = tmp_path / "faces_224"
    for vid, n in [("aaa", 3), ("bbb", 2), ("ccc", 0)]:
        (src / vid).mkdir(parents=True)
        for i in range(n):
            (src / vid / f"frame_{i * 10}.jpg").write_bytes(b"jpg")
    meta = tmp_path / "metadata.csv"
    meta.write_text("filename,label,original,split\naaa.mp4,FAKE,bbb.mp4,train\n"
                    "bbb.mp4,REAL,,train\nzzz.mp4,REAL,,train\n")
    cfg = ExtractConfig(inputs=(str(src),), from_faces=True, metadata=str(meta),
                        manifest_dir=str(tmp_path / "m"))
    # the command line of the issue: dfpipe extract --from-faces DIR --metadata CSV
    assert cli.main(["extract", "--from-faces", str(src), "--metadata", str(meta),
                     "--manifest-dir", str(tmp_path / "m")]) == 1  # zzz has no folder
    v, f = _manifests(cfg)
    assert dict(zip(v["video_id"], v["status"], strict=True)) == {
        "aaa": "ok", "bbb": "ok", "ccc": "no_face", "zzz": "missing_file"}
    assert dict(zip(v["video_id"], v["label"], strict=True))["ccc"] == ""
    assert v.set_index("video_id").loc["aaa", "original"] == "bbb"
    assert list(f[f.video_id == "aaa"]["frame"]) == [0, 10, 20]
    assert f["crop_path"].map(os.path.isfile).all() and f["x1"].isna().all()


@pytest.mark.slow
def test_real_dfdc_samples(real_samples, tmp_path):
    """Every present DFDC sample (portrait, 30.025 fps, the nearly black clip) gets faces in the
    large majority of frames; metadata entries without a file are reported. To stay fast the
    worker's per-video core runs on every 10th frame (30 per clip), each one detected."""
    from pipeline.faces.detect import MTCNNDetector
    from pipeline.faces.video import extract_faces

    items, failed = discover_inputs([real_samples / "dfdc"])
    assert {r["video_id"]: r["status"] for r in failed} == {
        "awnfpubqmo": "missing_file", "aagfhgtpmv": "missing_file", "aapnvogymq": "missing_file",
        "abarnvbtwb": "missing_file"}
    assert {i["id"]: i["label"] for i in items} == {
        "brtujopkby": "FAKE", "widuwuoiur": "FAKE", "yhffcuhhjy": "FAKE", "abofeumbvv": "FAKE",
        "abqwwspghj": "FAKE", "lynaeydofd": "REAL"}
    cfg = ExtractConfig(decoder="pyav", crop_size=64)
    det = MTCNNDetector("cpu", min_prob=cfg.min_face_prob)
    for it in items:
        vf = extract_faces(it["path"], det, cfg, frames=range(0, 300, 10))
        assert vf.n_face_frames >= 27, (it["id"], vf.n_face_frames)  # of 30
        assert all(c.shape == (64, 64, 3) for c in vf.crops)
        if it["id"] == "brtujopkby":
            assert (vf.info.width, vf.info.height) == (1080, 1920)
            assert all(r.box[3] > r.box[1] and r.box[2] <= 1080 + 50 for r in vf.records)
        if it["id"] == "yhffcuhhjy":
            assert vf.info.n_frames == 301 and abs(vf.info.fps - 30.025) < 0.01


def _cli_args(synth_dir, d, engine):
    return [sys.executable, "-m", "pipeline", "-q", "extract", str(synth_dir), "--out", str(d / "faces"),
            "--manifest-dir", str(d / "m"), "--engine", engine, "--workers", "2", "--scale", "0.5",
            "--batch-size", "8"]


@pytest.mark.slow
def test_kill9_pool_then_rerun_equals_uninterrupted_ray_run(synth_dir, tmp_path):
    """The pool run is SIGKILLed (whole process group) after its first finished video; the rerun's
    manifests equal those of an uninterrupted run on embedded Ray (no address)."""
    pytest.importorskip("ray")
    r = subprocess.run(_cli_args(synth_dir, tmp_path / "ray", "ray"), capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]

    faces = tmp_path / "pool" / "faces"
    p = subprocess.Popen(_cli_args(synth_dir, tmp_path / "pool", "pool"), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline and not any(faces.glob("*/_video.json")):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (tmp_path / "pool" / "m" / "videos.csv").exists()
    # nothing half-written counts as done: every non-temporary folder is complete
    for d in faces.iterdir():
        if d.is_dir() and not d.name.startswith((".tmp-", "_")):
            n_rows = len((d / "_faces.csv").read_text().splitlines()) - 1
            assert (d / "_video.json").is_file() and len(list(d.glob("*.jpg"))) == n_rows

    r = subprocess.run(_cli_args(synth_dir, tmp_path / "pool", "pool"), capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(faces.glob(".tmp-*"))
    v_ray = read_manifest(tmp_path / "ray" / "m" / "videos.csv", "videos")
    v_pool = read_manifest(tmp_path / "pool" / "m" / "videos.csv", "videos")
    pd.testing.assert_frame_equal(_without_timing(v_pool), _without_timing(v_ray))
    f_ray = read_manifest(tmp_path / "ray" / "m" / "faces.csv", "faces")
    f_pool = read_manifest(tmp_path / "pool" / "m" / "faces.csv", "faces")
    strip = lambda f, root: f.assign(crop_path=f["crop_path"].str.replace(str(root), ""))  # noqa: E731
    pd.testing.assert_frame_equal(strip(f_pool, tmp_path / "pool"), strip(f_ray, tmp_path / "ray"))
    assert f_pool["crop_path"].map(os.path.isfile).all()


def test_resume_redoes_a_video_whose_file_was_replaced(tmp_path, clip_factory):
    """Resume must check the input is the file its faces came from, not only the video id."""
    src = tmp_path / "in"
    src.mkdir()
    clip_factory(src / "vid.mp4", n_frames=12, seed=0)
    cfg = _cfg(tmp_path, [src], scale=0.5)
    assert run(cfg) == 0
    v1, f1 = _manifests(cfg)
    assert v1["n_frames"].tolist() == [12] and f1["frame"].max() <= 11
    record = tmp_path / "faces" / "vid" / "_video.json"
    stamp = record.stat().st_mtime_ns

    # the same name, another clip (written elsewhere and moved over it, as a copy would)
    clip_factory(tmp_path / "other.mp4", n_frames=20, seed=7)
    os.replace(tmp_path / "other.mp4", src / "vid.mp4")
    assert run(cfg) == 0
    v2, f2 = _manifests(cfg)
    assert v2["n_frames"].tolist() == [20] and f2["frame"].max() > 11
    assert record.stat().st_mtime_ns != stamp
    stored = json.loads(record.read_text())["input"]
    assert stored["path"] == str((src / "vid.mp4").resolve())
    assert stored["size"] == (src / "vid.mp4").stat().st_size

    # untouched: reused; another decoder: redone; a record from before identities: redone
    stamp = record.stat().st_mtime_ns
    assert run(cfg) == 0 and record.stat().st_mtime_ns == stamp
    assert run(_cfg(tmp_path, [src], scale=0.5, decoder="pyav")) == 0
    assert record.stat().st_mtime_ns != stamp
    data = json.loads(record.read_text())
    assert data["params"]["decoder"] == "pyav"
    del data["input"]
    record.write_text(json.dumps(data))
    stamp = record.stat().st_mtime_ns
    assert run(_cfg(tmp_path, [src], scale=0.5, decoder="pyav")) == 0
    assert "input" in json.loads(record.read_text()) and record.stat().st_mtime_ns != stamp


def test_input_identity_sees_new_bytes_under_the_old_size_and_mtime(tmp_path):
    from pipeline.extract.worker import IDENTITY_BYTES, input_identity

    p = tmp_path / "v.mp4"
    p.write_bytes(b"a" * (3 * IDENTITY_BYTES))
    before = input_identity(p)
    st = p.stat()
    p.write_bytes(b"a" * (3 * IDENTITY_BYTES - 1) + b"b")  # same size, last byte differs
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = input_identity(p)
    assert (after["size"], after["mtime_ns"]) == (before["size"], before["mtime_ns"])
    assert after["head_tail_sha256"] != before["head_tail_sha256"]
    assert input_identity(p) == after


def test_extract_workers_on_a_gpu_host_share_the_device(tmp_path, monkeypatch):
    """On a GPU host the default worker count is at most 2 per GPU (one decodes while another's
    MTCNN batch runs); on a CPU host, or with an explicit count, nothing changes."""
    import os

    from pipeline.core.resources import gpu_count, resolve_extract_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(f"MemAvailable: {100 * 2**20} kB\n")
    assert resolve_extract_workers(0, "cpu", root=tmp_path, n_gpus=0) == 16
    assert resolve_extract_workers(0, "cuda", root=tmp_path, n_gpus=1) == 2
    assert resolve_extract_workers(0, "auto", root=tmp_path, n_gpus=3) == 6
    assert resolve_extract_workers(5, "cuda", root=tmp_path, n_gpus=1) == 5
    assert gpu_count("cpu") == 0
