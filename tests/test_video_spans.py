"""``VideoReader.iter_spans``: one frame per slot span, the first reference frame PyAV decodes
anyway (B-frames skipped), pixel-identical to a full decode; the start frame where that fails."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline.io.video import BACKENDS, open_video
from pipeline.score.plan import Window, slot_spans


def _write_b_frames(path, n=40, w=64, h=48, bframes=3):
    """An H.264 clip with B-frames (x264 decides where; one thread: deterministic)."""
    import av

    base = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20",
                     "x264-params": f"bframes={bframes}:b-pyramid=none:keyint=40:scenecut=0:threads=1"}
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, 2 * i, axis=1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def b_clip(tmp_path_factory):
    return _write_b_frames(tmp_path_factory.mktemp("spans") / "b.mp4")


def _all_frames(path):
    r = open_video(path, "pyav")
    out = {}
    for idx, frames in r.iter_batches(16):
        out.update(zip(idx, frames, strict=True))
    r.close()
    return out


def _spans(reader, spans, batch_size=3):
    got = []
    for idx, frames in reader.iter_spans(batch_size, spans):
        assert frames.shape[0] == len(idx) <= batch_size
        got += list(zip(idx, frames, strict=True))
    reader.close()
    return got


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_spans_take_reference_frames_identical_to_a_full_decode(b_clip, backend):
    full = _all_frames(b_clip)
    spans = [(0, 10), (10, 20), (20, 30), (30, 40)]
    got = _spans(open_video(b_clip, backend), spans)
    assert len(got) == len(spans)
    for (start, end), (idx, frame) in zip(spans, got, strict=True):
        assert start <= idx < end
        np.testing.assert_array_equal(frame, full[idx])
    assert any(idx != start for (start, _), (idx, _) in zip(spans, got, strict=True))  # B-frames skipped


def test_a_span_without_a_reference_frame_gets_every_start_from_a_full_decode(b_clip):
    full = _all_frames(b_clip)
    r = open_video(b_clip, "pyav")
    firsts = [i for i, _ in _spans(r, [(0, 40)])]
    assert firsts == [0]
    # a one-frame span on a frame the reference-only decode skips: every span falls back
    b_frame = next(i for i in range(1, 40) if _spans(open_video(b_clip, "pyav"), [(i, i + 1)])
                   and i not in [j for j, _ in _spans(open_video(b_clip, "pyav"), [(0, 10), (10, 20), (20, 30), (30, 40)])])
    got = _spans(open_video(b_clip, "pyav"), [(0, 10), (b_frame, b_frame + 1)])
    assert [i for i, _ in got] == [0, b_frame]
    for idx, frame in got:
        np.testing.assert_array_equal(frame, full[idx])


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_b_frames_every_span_gets_its_start(tmp_path, backend):
    path = _write_b_frames(tmp_path / "p.mp4", n=12, bframes=0)  # every frame a reference
    full = _all_frames(path)
    got = _spans(open_video(path, backend), [(7, 9), (1, 4), (4, 5)])
    assert [i for i, _ in got] == [1, 4, 7]
    for idx, frame in got:
        np.testing.assert_array_equal(frame, full[idx])


def test_slot_spans_are_each_slots_own_frames():
    one = Window(0, (0, 10, 20), (10, 20, 30))
    assert slot_spans([one]) == [(0, 10), (10, 20), (20, 30)]
    # overlapping windows: a span ends where the next slot of any window starts
    a, b = Window(0, (0, 10, 20), (10, 20, 25)), Window(1, (5, 15, 25), (15, 25, 30))
    assert slot_spans([a, b]) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30)]
    assert slot_spans([Window(0, (3, 4), (4, 4))]) == [(3, 4), (4, 5)]  # never empty
