"""Phone video stored rotated (landscape pixels + a display matrix): every backend decodes it
as a player shows it, and extraction finds upright faces inside the reported frame."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from pipeline.io.video import BACKENDS, open_video, rotation_steps
from pipeline.synth.dataset import make_clip

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                reason="needs Debian ffmpeg (make test installs it)")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """(upright original, phone-style rotated copy, 180-degree copy)."""
    d = tmp_path_factory.mktemp("rot")
    make_clip(d / "in.mp4", n_frames=12, width=480, height=270)
    # as phones write it: the pixels turned a quarter counter-clockwise (portrait 270x480) plus a
    # display matrix of -90 degrees that a player undoes
    _ffmpeg("-i", str(d / "in.mp4"), "-vf", "transpose=2", str(d / "tmp.mp4"))
    _ffmpeg("-i", str(d / "tmp.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=270",
            str(d / "phone.mp4"))
    _ffmpeg("-i", str(d / "in.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=180",
            str(d / "upside.mp4"))
    return d / "in.mp4", d / "phone.mp4", d / "upside.mp4"


def test_rotation_steps():
    assert [rotation_steps(d) for d in (None, 0, -90, 90, -180, 180, 270)] == [0, 0, 3, 1, 2, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_decode_rotated_video_as_displayed(clips, backend):
    upright, phone, upside = clips
    ref = open_video(upright, "pyav").get_batch([0, 6]).astype(int)
    r = open_video(phone, backend)
    assert (r.info.width, r.info.height, r.info.rotation) == (480, 270, -90)
    got = r.get_batch([0, 6]).astype(int)
    streamed = np.concatenate([b for _, b in r.iter_batches(4, [0, 6])]).astype(int)
    assert got.shape == streamed.shape == ref.shape == (2, 270, 480, 3)
    # the same picture as the upright original (up to re-encoding), not a turned one
    assert np.abs(got - ref).mean() < 4 and np.abs(streamed - ref).mean() < 4
    # upright pixels tagged 180 degrees: shown (and decoded) upside down, by every path
    u = open_video(upside, backend)
    assert (u.info.width, u.info.height) == (480, 270)
    turned = ref[:1, ::-1, ::-1]
    assert np.abs(u.get_batch([0]).astype(int) - turned).mean() < 4
    streamed = np.concatenate([b for _, b in u.iter_batches(4, [0])]).astype(int)
    assert np.abs(streamed - turned).mean() < 4


def test_extracted_faces_of_a_rotated_video_are_upright_and_inside_the_frame(clips):
    from pipeline.config import ExtractConfig
    from pipeline.faces.detect import MTCNNDetector
    from pipeline.faces.video import extract_faces

    upright, phone, _ = clips
    cfg = ExtractConfig(decoder="decord", crop_size=160)
    det = MTCNNDetector("cpu", min_prob=cfg.min_face_prob)
    ref = extract_faces(upright, det, cfg)
    got = extract_faces(phone, det, cfg)
    assert got.info.width == 480 and got.info.height == 270
    assert len(got.records) >= 10 and {r.track for r in got.records} == {0}
    for r in got.records:
        x1, y1, x2, y2 = r.box
        assert -5 <= x1 < x2 <= 485 and -5 <= y1 < y2 <= 275  # MTCNN boxes may overhang a little
    # boxes where the upright video has them
    ref_box = np.array([r.box for r in ref.records[:5]])
    got_box = np.array([r.box for r in got.records[:5]])
    assert np.abs(ref_box - got_box).max() < 12
    # the crops are upright faces: MTCNN finds a face in them
    found = [bool(d) for d in det.detect(np.stack(got.crops[:6]))]
    assert sum(found) >= 5


# --- damaged streams ---------------------------------------------------------------------------


def _damage(src, dst, share: float = 1 / 3, n_bytes: int = 3000) -> None:
    """Scramble ``n_bytes`` of ``src`` a ``share`` of the way in (a few damaged packets)."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * share)
    for i in range(start, start + n_bytes):
        data[i] = (data[i] * 7 + 13) % 256
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    make_clip(d / "good.mp4", n_frames=90, width=480, height=270)
    _damage(d / "good.mp4", d / "damaged.mp4")
    return d / "good.mp4", d / "damaged.mp4"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_middle_loses_only_its_frames(damaged, backend):
    good, bad = damaged
    r = open_video(bad, backend)
    got = [i for idx, _ in r.iter_batches(16) for i in idx]
    assert 0 < r.frames_lost < 30 and len(got) == 90 - r.frames_lost
    assert got[:20] == list(range(20)) and got[-1] == 89  # before and after the damage
    ref = open_video(good, "pyav").get_batch([0, 89]).astype(int)
    assert np.abs(r.get_batch([0, 89]).astype(int) - ref).mean() < 4


def test_extract_keeps_a_damaged_video_with_its_lost_frames_counted(damaged, tmp_path):
    from pipeline import cli
    from pipeline.io.manifest import read_manifest

    good, bad = damaged
    rc = cli.main(["extract", str(bad), "--out", str(tmp_path / "f"), "--manifest-dir",
                   str(tmp_path / "m"), "--engine", "inline", "--detect-every", "10"])
    assert rc == 0
    v = read_manifest(tmp_path / "m" / "videos.csv", "videos").iloc[0]
    assert v["status"] == "ok" and 0 < v["n_frames_lost"] < 30
    assert v["n_face_frames"] == 90 - v["n_frames_lost"]


def test_mostly_lost_is_a_read_error(damaged, tmp_path):
    from pipeline.core.errors import VideoReadError

    good, _ = damaged
    cut = tmp_path / "cut.mp4"
    _damage(good, cut, share=0.1, n_bytes=int(good.stat().st_size * 0.8))
    with pytest.raises(VideoReadError, match="frames decodable|cannot open"):
        r = open_video(cut, "pyav")
        list(r.iter_batches(16))
