"""Evidence sheets (issue #15): what gets forwarded carries the model's provenance line, a loud
warning for a synthetic-data model, the frames the verdict rests on, and a timeline over the
whole video in seconds. Text is checked on the drawn figure itself (``figure_text``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.score.explain import (
    PROVENANCE_WIDTH,
    SYNTHETIC_WARNING,
    evidence_line,
    figure_text,
    provenance_line,
    render_html,
    render_sheet,
    sheet_figure,
    synthetic_warning,
    timeline_seconds,
)

SYNTH_CARD = {"model": "frame", "scored_as": "frame_mean", "backbone": "tiny",
              "checkpoint_id": "0123456789ab", "trained_on": "SYNTHETIC data: 8 REAL / 8 FAKE "
              "training videos", "synthetic_training_data": True, "card_title": ""}
REAL_CARD = {**SYNTH_CARD, "trained_on": "real data: DFDC, 10 REAL / 12 FAKE training videos",
             "synthetic_training_data": False, "card_title": "dfpipe shipped model"}


def _inputs(n: int = 6, step: int = 50, fps: float = 25.0, n_frames: int = 300) -> dict:
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(n)]
    frames = [i * step for i in range(n)]
    return {"title": "clip.mp4", "verdict": "FAKE p_fake = 0.800", "faces": faces,
            "frames": frames, "timeline": [{"frame": f, "p_fake": 0.1 * i} for i, f in enumerate(frames)],
            "threshold": 0.5, "heatmaps": [(frames[0], faces[0], np.full((40, 40), 0.5))],
            "frames_used": n, "n_frames": n_frames, "fps": fps}


def test_provenance_line_and_warning():
    line = provenance_line(SYNTH_CARD)
    assert line == ("model frame_mean (tiny), checkpoint 0123456789ab, trained on SYNTHETIC "
                    "data: 8 REAL / 8 FAKE training videos")
    assert provenance_line({"id": "abc", "model": "cnn_lstm", "trained_on": "x"}) == \
        "model cnn_lstm, checkpoint abc, trained on x"
    assert provenance_line(REAL_CARD).startswith("dfpipe shipped model: model frame_mean")
    assert synthetic_warning(SYNTH_CARD) == SYNTHETIC_WARNING
    assert synthetic_warning(REAL_CARD) is None
    # a result's checkpoint summary has no flag: its trained_on says it
    assert synthetic_warning({"trained_on": "SYNTHETIC data: 1 REAL"}) == SYNTHETIC_WARNING


def test_timeline_seconds_and_evidence_line():
    assert timeline_seconds([{"frame": 0}, {"frame": 25}], 25.0) == [0.0, 1.0]
    assert timeline_seconds([{"frame": 0, "time_s": 0.5}], None) == [0.5]
    assert timeline_seconds([{"frame": 3}], None) is None
    assert evidence_line(30, 300, 30.0) == "verdict rests on 30 face frames (video: 300 frames, 10.0 s)"
    assert evidence_line(1, None, None) == "verdict rests on 1 face frame"


def test_sheet_of_a_synthetic_model_carries_provenance_and_warning():
    fig = sheet_figure(**_inputs(), card=SYNTH_CARD)
    text = figure_text(fig)
    assert _words(provenance_line(SYNTH_CARD)) in _words(text)
    assert SYNTHETIC_WARNING in text
    assert "verdict rests on 6 face frames (video: 300 frames, 12.0 s)" in text
    timeline_ax = next(a for a in fig.axes if a.get_ylabel())
    assert timeline_ax.get_xlabel() == "time in the video (s)"
    assert timeline_ax.get_xlim() == pytest.approx((0.0, 12.0))  # the whole video, not the points
    xs = timeline_ax.lines[0].get_xdata()
    assert list(xs) == pytest.approx([0, 2, 4, 6, 8, 10])


def test_sheet_of_a_real_data_model_has_no_warning():
    text = figure_text(sheet_figure(**_inputs(), card=REAL_CARD))
    assert _words(provenance_line(REAL_CARD)) in _words(text) and "WARNING" not in text


def _words(text: str) -> str:
    return " ".join(text.split())


def test_a_long_provenance_line_is_wrapped_to_the_sheet():
    """A long model-card title is wrapped (it once stretched the saved sheet far past its panels)."""
    long_card = {**REAL_CARD, "card_title": "a model card title " * 12}
    fig = sheet_figure(**_inputs(), card=long_card)
    [block] = [t.get_text() for t in fig.texts if "a model card title" in t.get_text()]
    lines = block.splitlines()
    assert len(lines) >= 3 and max(map(len, lines)) <= PROVENANCE_WIDTH
    assert _words(block).startswith(_words(provenance_line(long_card)))


def test_sheet_png_and_html_written(tmp_path):
    png = render_sheet(tmp_path / "s.png", **_inputs(), card=SYNTH_CARD)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = render_html(tmp_path / "s.html", {"path": "clip.mp4", "video_id": "clip",
                                             "p_fake": 0.8, "label": "FAKE", "threshold": 0.5,
                                             "frames_used": 6, "n_frames": 300, "fps": 25.0,
                                             "tracks": []}, png.name, card=SYNTH_CARD)
    text = page.read_text()
    assert SYNTHETIC_WARNING in text and "checkpoint 0123456789ab" in text
    assert "verdict rests on 6 face frames" in text
    assert "FAKE (p_fake = 0.800, threshold 0.500)" in text


def test_sheet_of_a_still_image_has_no_empty_timeline():
    kw = {**_inputs(n=1), "timeline": [], "n_frames": None, "fps": None, "frames_used": 1}
    fig = sheet_figure(**kw, card=REAL_CARD)
    assert not [a for a in fig.axes if a.get_ylabel()]  # no timeline axes at all
    assert "verdict rests on 1 face frame" in figure_text(fig)
    with_video = sheet_figure(**_inputs(), card=REAL_CARD)
    assert [a for a in with_video.axes if a.get_ylabel()]


def test_timeline_of_several_windows_spans_the_video_one_line_each():
    """A long video's timeline (points of windows 0, 1, 2) is drawn as given, over its length."""
    timeline = [{"frame": f, "window": f // 300, "time_s": f / 30.0, "p_fake": 0.5}
                for f in range(0, 900, 30)]
    fig = sheet_figure(**{**_inputs(), "timeline": timeline, "n_frames": 900, "fps": 30.0},
                       card=REAL_CARD)
    ax = next(a for a in fig.axes if a.get_ylabel())
    assert len(ax.lines) == 3 + 1  # three windows + the threshold line
    assert ax.get_xlim() == pytest.approx((0.0, 30.0))
    assert [ln.get_xdata()[0] for ln in ax.lines[:3]] == pytest.approx([0.0, 10.0, 20.0])
