"""Containers and codecs analysts send: mp4/mov/mkv/webm/avi/m4v (also upper-case extensions),
H.264, HEVC and VP9: every one is discovered, decoded by every backend, and extracted."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from pipeline.io.video import BACKENDS, open_video
from pipeline.synth.dataset import make_clip

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                reason="needs Debian ffmpeg (make test installs it)")

# (file name, ffmpeg video codec arguments)
VARIANTS = [
    ("mov_h264.mov", ["-c:v", "libx264"]),
    ("mkv_h264.mkv", ["-c:v", "libx264"]),
    ("M4V_H264.M4V", ["-c:v", "libx264", "-f", "mp4"]),
    ("avi_mpeg4.avi", ["-c:v", "mpeg4", "-q:v", "3"]),
    ("webm_vp9.webm", ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "35", "-deadline", "realtime"]),
    ("mp4_hevc.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
                  "-tag:v", "hvc1"]),
    ("MP4_H264.MP4", ["-c:v", "libx264"]),
]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    d = tmp_path_factory.mktemp("containers")
    src = d / "src.mp4"
    make_clip(src, n_frames=12, width=320, height=180)
    out = d / "inputs"
    out.mkdir()
    for name, codec in VARIANTS:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *codec,
                        "-pix_fmt", "yuv420p", str(out / name)], check=True)
    return src, out


@pytest.mark.parametrize("name", [n for n, _ in VARIANTS])
def test_every_backend_decodes_every_container_and_codec(variants, name):
    src, out = variants
    ref = open_video(src, "pyav").get_batch([0, 11]).astype(int)
    for backend in BACKENDS:
        r = open_video(out / name, backend)
        assert (r.info.width, r.info.height) == (320, 180), (name, backend)
        assert r.info.n_frames == 12, (name, backend, r.info)
        got = np.concatenate([b for _, b in r.iter_batches(8, [0, 11])]).astype(int)
        assert np.abs(got - ref).mean() < 8, (name, backend)  # lossy re-encodes, same picture


def test_extract_discovers_and_processes_every_variant(variants, tmp_path):
    from pipeline import cli
    from pipeline.io.manifest import read_manifest

    _, out = variants
    rc = cli.main(["extract", str(out), "--out", str(tmp_path / "f"), "--manifest-dir",
                   str(tmp_path / "m"), "--engine", "inline", "--detect-every", "4"])
    assert rc == 0
    v = read_manifest(tmp_path / "m" / "videos.csv", "videos")
    assert sorted(v["path"].map(lambda p: p.rsplit("/", 1)[1])) == sorted(n for n, _ in VARIANTS)
    assert (v["status"] == "ok").all() and (v["n_face_frames"] == 12).all()
