"""pipeline.io.video: decoder backends agree, stream in order, and fail with typed one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import VideoReadError
from pipeline.io.video import BACKENDS, VideoInfo, open_video
from pipeline.synth.dataset import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("vio") / "clip.mp4"
    make_clip(path, n_frames=12, width=160, height=96, fps=25.0)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_info_and_batches(clip, backend):
    r = open_video(clip, backend)
    assert r.info == VideoInfo(n_frames=12, fps=25.0, width=160, height=96)
    seen = []
    for idx, frames in r.iter_batches(5):
        assert frames.shape == (len(idx), 96, 160, 3) and frames.dtype == np.uint8
        seen += idx
    assert seen == list(range(12))
    sub = [(idx, f.shape[0]) for idx, f in r.iter_batches(2, indices=[9, 1, 4])]
    assert sub == [([1, 4], 2), ([9], 1)]
    r.close()


def test_backends_decode_the_same_frames(clip):
    a = open_video(clip, "decord").get_batch([0, 7, 3])
    b = open_video(clip, "pyav").get_batch([0, 7, 3])
    assert a.shape == b.shape == (3, 96, 160, 3)
    # same decoder library underneath; colour conversion may differ by rounding only
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_index_out_of_range(clip):
    with pytest.raises(VideoReadError, match="out of range"):
        open_video(clip).get_batch([12])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("zero.mp4", b"", "empty file"),
        ("random.mp4", bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)), "cannot open"),
        ("text.mp4", b"this is not a video\n", "cannot open"),
    ],
)
def test_bad_files_raise_typed_one_line_errors(tmp_path, backend, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(VideoReadError) as e:
        open_video(p, backend)
    msg = str(e.value)
    assert str(p) in msg and reason in msg and "\n" not in msg


def test_truncated_clip(clip, tmp_path):
    p = tmp_path / "trunc.mp4"
    data = clip.read_bytes()
    p.write_bytes(data[: len(data) // 10])
    with pytest.raises(VideoReadError, match="trunc.mp4"):
        r = open_video(p)
        for _ in r.iter_batches(8):
            pass


def test_missing_file_and_unknown_backend(tmp_path, clip):
    with pytest.raises(VideoReadError, match="file not found"):
        open_video(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(clip, "gstreamer")


def test_one_open_probes_and_streams_the_first_pass(clip, monkeypatch):
    """Decoders compose: a DecordReader streams through a PyAVReader built with decord's count,
    and the PyAV file is opened once for probing (size and display rotation) and the first pass
    (the frames decoded while probing are not decoded again); a second pass opens it again."""
    import av

    from pipeline.io.video import DecordReader, PyAVReader

    opens = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opens.append(a[0]) or real_open(*a, **k))
    reader = PyAVReader(str(clip))
    assert len(opens) == 1
    again = PyAVReader(str(clip), info=reader.info)
    assert len(opens) == 1 and again.info == reader.info
    first = list(reader.iter_batches(8))
    assert len(opens) == 1 and sum(len(i) for i, _ in first) == reader.info.n_frames
    second = list(reader.iter_batches(8))
    assert len(opens) == 2
    for (ia, a), (ib, b) in zip(first, second, strict=True):
        assert ia == ib and np.array_equal(a, b)
    dec = DecordReader(str(clip))
    assert len(opens) == 3  # decord opens the file itself (and counts); PyAV once
    assert dec.info == reader.info
    batches = list(dec.iter_batches(8))
    assert len(opens) == 3 and sum(len(i) for i, _ in batches) == dec.info.n_frames
    for (ia, a), (ib, b) in zip(first, batches, strict=True):
        assert ia == ib and np.array_equal(a, b)


def test_decode_floor_is_the_plain_loops_with_the_reader_beside_it(clip, monkeypatch):
    """The bench's floor is the faster plain decord/PyAV loop (both decode every frame), the
    project's reader is timed beside it, and its overhead is reader / floor."""
    from pipeline.bench import extract as be

    n = open_video(clip).info.n_frames
    assert be.plain_decord(str(clip)) == be.plain_pyav(str(clip)) == n
    assert be.project_reader(str(clip)) == n
    calls = []
    for name in ("plain_decord", "plain_pyav", "project_reader"):
        real = getattr(be, name)
        monkeypatch.setattr(be, name, lambda *a, real=real, name=name: calls.append(name)
                            or real(*a))
    r = be.decode_floor(str(clip), repeats=1)
    assert calls == ["plain_decord", "plain_pyav", "project_reader"] * be.FLOOR_RUNS
    plain = {k: r["backends"][k] for k in ("decord_plain_loop", "pyav_plain_loop")}
    assert r["floor_s"] == min(plain.values()) and r["floor_backend"] == min(plain, key=plain.get)
    assert r["reader_x_floor"] == pytest.approx(r["reader_s"] / r["floor_s"], rel=0.05)


def test_bench_decode_lists_the_plain_loops_beside_the_readers(clip):
    from pipeline.bench.run import bench_decode

    names = ("decord_plain_loop", "pyav_plain_loop", "decord", "pyav")
    r = bench_decode(str(clip), names, repeats=1)
    n = open_video(clip).info.n_frames
    assert list(r["backends"]) == list(names)
    assert all(v["frames"] == n for v in r["backends"].values())
    assert min(v["ratio_to_fastest"] for v in r["backends"].values()) == 1.0
