"""Issue #24.3: a video's walk through scoring is one downward flow.

``VideoScorer.score`` calls the scoring steps in pipeline order, each module entered once from the
scorer (find -> windows -> predict -> verdict -> evidence), and no module of ``pipeline.score``
calls back into one above it (checked on every Python call made while scoring, with a profile
hook), for a ``cnn_lstm`` and a ``frame`` checkpoint, with evidence sheets.
"""

from __future__ import annotations

import sys

import pytest

from pipeline.score.scorer import VideoScorer

SCORE_ORDER = ["card", "explain", "plan", "find", "windows", "predict", "verdict", "evidence",
               "image", "scorer", "batch_index", "batch", "merge"]
"""The modules of ``pipeline.score``, bottom to top (also the rule for its imports)."""

WALK = ["find", "windows", "predict", "verdict", "evidence"]


def _module(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name.removeprefix("pipeline.score.") if name.startswith("pipeline.score.") else None


def walk_of(fn) -> tuple[list[str], list[tuple[str, str]]]:
    """Run ``fn()``; return the score modules the scorer called, consecutive repeats collapsed,
    and every (caller, callee) pair of score modules seen."""
    entered: list[str] = []
    pairs: set[tuple[str, str]] = set()

    def hook(frame, event, _arg):
        if event != "call" or frame.f_back is None:
            return
        callee, caller = _module(frame), _module(frame.f_back)
        if callee is None or caller is None or callee == caller:
            return
        pairs.add((caller, callee))
        if caller == "scorer" and (not entered or entered[-1] != callee):
            entered.append(callee)

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return entered, sorted(pairs)


def upward(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in pairs if SCORE_ORDER.index(b) > SCORE_ORDER.index(a)]


def test_every_score_module_is_ranked():
    from pathlib import Path

    import pipeline.score as pkg

    names = {p.stem for p in Path(pkg.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert names == set(SCORE_ORDER)


def test_walk_of_sees_calls_and_upward_calls():
    assert upward([("scorer", "find"), ("find", "plan")]) == []
    assert upward([("find", "scorer")]) == [("find", "scorer")]


@pytest.mark.parametrize("which", ["tiny_checkpoint", "tiny_frame_checkpoint"])
def test_a_video_walks_down_the_steps_once(which, request, clip_factory, tmp_path):
    scorer = VideoScorer.from_checkpoint(request.getfixturevalue(which), device="cpu")
    clip = tmp_path / "one.mp4"
    clip_factory(clip, n_frames=90, seed=1)
    result = {}
    entered, pairs = walk_of(lambda: result.update(scorer.score(clip, explain_dir=tmp_path / "ev")))
    assert result["status"] == "ok", result["reason"]
    assert result["evidence_png"]
    assert entered == WALK
    assert upward(pairs) == []


def test_score_modules_import_only_lower_ones():
    from test_layers import graph

    g = graph()
    bad = [(a, b) for a in SCORE_ORDER for b in sorted(g[f"pipeline.score.{a}"])
           if b.startswith("pipeline.score.")
           and SCORE_ORDER.index(b.removeprefix("pipeline.score.")) > SCORE_ORDER.index(a)]
    assert bad == []
