"""``dfpipe score``: whole videos -> verdicts, on synthetic clips with real MTCNN and a real
(tiny, random-init, 1-epoch) checkpoint; real sample clips when present."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.io.discovery import discover_paths
from pipeline.prepare.sampling import uniform_positions
from pipeline.score.batch import read_journal
from pipeline.score.scorer import VideoScorer
from pipeline.score.verdict import VIDEO_RULE


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> VideoScorer:
    return VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    from pipeline.synth.dataset import make_clip

    d = tmp_path_factory.mktemp("score_clips")
    out = {}
    out["one"] = d / "one.mp4"
    make_clip(out["one"], n_frames=150, seed=1)
    out["two"] = d / "two.mp4"
    make_clip(out["two"], n_frames=150, seed=2, two_face=(0, 150))
    out["none"] = d / "none.mp4"
    make_clip(out["none"], n_frames=60, seed=3, gap=(0, 60))
    out["text"] = d / "notes.mp4"
    out["text"].write_text("not a video\n" * 100)
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    return out


def test_one_face_clip_gets_a_verdict(scorer, clips):
    r = scorer.score(clips["one"])
    assert r["status"] == "ok", r["reason"]
    assert 0.0 <= r["p_fake"] <= 1.0
    assert r["label"] == ("FAKE" if r["p_fake"] >= r["threshold"] else "REAL")
    # 150 frames = 5 s, shorter than the model's 10 s window: its 30 slots spread over all frames
    assert r["frames_used"] == 30 and r["low_evidence"] is False
    assert [p["frame"] for p in r["timeline"]] == uniform_positions(150, 30)
    assert len(r["windows"]) == 1 and r["windows"][0]["p_fake"] == pytest.approx(r["p_fake"])
    assert all(0.0 <= p["p_fake"] <= 1.0 for p in r["timeline"])
    assert len(r["tracks"]) == 1 and r["tracks"][0]["p_fake"] == pytest.approx(r["p_fake"])
    assert r["checkpoint"]["model"] == "cnn_lstm" and len(r["checkpoint"]["id"]) == 12
    # the LSTM's running verdict after the last slot is the video's verdict
    assert r["timeline"][-1]["p_fake"] == pytest.approx(r["p_fake"], abs=1e-5)


def test_two_faces_are_scored_per_track_and_max_wins(scorer, clips):
    r = scorer.score(clips["two"])
    assert r["status"] == "ok", r["reason"]
    scored = [t for t in r["tracks"] if t["p_fake"] is not None]
    assert len(scored) == 2
    assert r["p_fake"] == pytest.approx(max(t["p_fake"] for t in scored))
    assert r["deciding_track"] in {t["track"] for t in scored}


def test_failures_have_a_status_and_no_score(scorer, clips):
    expected = {"none": "no_face", "text": "read_error", "empty": "empty_file"}
    for key, status in expected.items():
        r = scorer.score(clips[key])
        assert r["status"] == status, (key, r)
        assert r["p_fake"] is None and r["label"] is None
        assert r["reason"] and "\n" not in r["reason"]
    r = scorer.score(clips["one"].with_name("missing.mp4"))
    assert r["status"] == "missing_file" and r["p_fake"] is None


def test_too_few_frames_only_when_almost_no_face(scorer, tiny_checkpoint, tmp_path):
    from pipeline.synth.dataset import make_clip

    clip = tmp_path / "glimpse.mp4"
    make_clip(clip, n_frames=60, seed=5, gap=(2, 60))  # the face in frames 0 and 1 only
    r = scorer.score(clip)  # slots at 0, 2, 4, ...: one sampled frame has the face (< 3)
    assert r["status"] == "too_few_frames" and r["p_fake"] is None
    assert "3 sampled frames" in r["reason"] and "best: 1 of 30" in r["reason"]
    loose = VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu", min_frames=1)
    r = loose.score(clip)
    assert r["status"] == "ok" and r["frames_used"] == 1 and r["low_evidence"] is True


def test_frame_checkpoint_scores_as_frame_mean(tiny_frame_checkpoint, clips):
    s = VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu")
    assert s.info()["scored_as"] == "frame_mean"
    r = s.score(clips["one"])
    assert r["status"] == "ok"
    mean = float(np.mean([p["p_fake"] for p in r["timeline"]]))
    assert r["p_fake"] == pytest.approx(mean, abs=1e-4)


def test_frame_passes_are_small_and_give_the_one_pass_scores(tiny_frame_checkpoint, clips,
                                                             monkeypatch):
    """A frame model sees at most FRAMES_PER_PASS crops per pass (caches); the video's scores
    are those of one pass over all its crops."""
    from pipeline.score import predict

    s = VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu")
    frame, per_pass = s.predictor.model.frame, predict.FRAMES_PER_PASS
    sizes: list[int] = []
    hook = frame.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    try:
        small = s.score(clips["one"])
        monkeypatch.setattr(predict, "FRAMES_PER_PASS", 10_000)
        n_small = len(sizes)
        one = s.score(clips["one"])
    finally:
        hook.remove()
    assert small["status"] == one["status"] == "ok"
    assert n_small > 1 and max(sizes[:n_small]) <= per_pass and len(sizes) == n_small + 1
    assert sum(sizes[:n_small]) == sizes[-1] >= small["frames_used"] > per_pass
    assert small["p_fake"] == pytest.approx(one["p_fake"], abs=1e-5)
    assert [p["p_fake"] for p in small["timeline"]] == pytest.approx(
        [p["p_fake"] for p in one["timeline"]], abs=1e-5)


def test_the_scorer_names_the_precision_it_ran_in(tiny_frame_checkpoint, clips, monkeypatch):
    s = VideoScorer.from_checkpoint(tiny_frame_checkpoint, device="cpu")
    got = {}
    for precision in ("float32", "bfloat16"):
        monkeypatch.setenv("DFPIPE_INFERENCE_PRECISION", precision)
        r = s.score(clips["one"])
        assert s.info()["precision"] == r["checkpoint"]["precision"] == precision
        got[precision] = r["p_fake"]
    assert got["float32"] == pytest.approx(got["bfloat16"], abs=0.05)


def test_a_confident_frames_rule_in_the_checkpoint_decides_the_track(tiny_frame_checkpoint, clips):
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.stats.aggregation import aggregate

    ck = load_checkpoint(tiny_frame_checkpoint)
    plain = VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu").score(clips["one"])
    assert plain["verdict_rule"] == VIDEO_RULE
    tl = np.array([p["p_fake"] for p in plain["timeline"]])
    assert tl.std() > 0  # frames differ, so the rule has something to choose
    params = {"fake_p": float(np.median(tl)), "fake_share": 0.3, "fake_min": 1}
    ck["aggregations"] = {"frame_mean": {"rule": "confident", "params": params, "chosen_on": "t"}}
    s = VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu")
    r = s.score(clips["one"])
    assert r["status"] == "ok" and "confident" in r["verdict_rule"]
    assert s.info()["aggregation"]["rule"] == "confident"
    want = float(tl[tl >= params["fake_p"]].mean())  # the upper half of the frames
    assert r["p_fake"] == pytest.approx(want, abs=1e-4) == aggregate(tl, "confident", params)
    assert r["p_fake"] > plain["p_fake"]


def test_explain_writes_png_and_html(scorer, clips, tmp_path):
    r = scorer.score(clips["one"], explain_dir=tmp_path / "ev")
    png, html = Path(r["evidence_png"]), Path(r["evidence_html"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert png.name in text and r["label"] in text
    from PIL import Image

    w, h = Image.open(png).size
    assert w > 600 and h > 400


def test_grad_cam_maps_are_per_frame_and_normalised(scorer, clips):
    import torch

    from pipeline.score.explain import grad_cam

    clip = torch.randn(1, 30, 3, scorer.image_size, scorer.image_size)
    mask = torch.ones(1, 30)
    cams = grad_cam(lambda: scorer.model(clip, mask), scorer.model,
                    (scorer.image_size, scorer.image_size))
    assert cams.shape == (30, scorer.image_size, scorer.image_size)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1


def test_batch_cli_resumes_and_exits_1_on_failures(tiny_checkpoint, clips, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for key in ("one", "text"):
        (folder / clips[key].name).write_bytes(clips[key].read_bytes())
    out = tmp_path / "results.jsonl"
    argv = ["score", str(folder), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
            "--engine", "inline", "--device", "cpu"]
    assert cli.main(argv) == 1  # the text file failed
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    assert rows["one.mp4"]["status"] == "ok" and rows["notes.mp4"]["status"] == "read_error"
    first = out.read_text()
    assert cli.main(argv) == 1  # nothing rescored: the file is unchanged
    assert out.read_text() == first
    # a torn last line (a kill mid-write) is dropped and that video scored again
    out.write_text(first + '{"path": "half')
    assert len(read_journal(out)) == 2


def test_csv_output_and_good_batch_exit_0(tiny_checkpoint, clips, tmp_path):
    out = tmp_path / "r.csv"
    rc = cli.main(["score", str(clips["one"]), str(clips["none"]), "--checkpoint",
                   str(tiny_checkpoint), "--out", str(out), "--device", "cpu"])
    assert rc == 0  # no_face is an answer, not a failure
    text = out.read_text().splitlines()
    assert text[0].startswith("path,video_id,status")
    assert len(text) == 3


def test_bad_checkpoint_is_a_clear_error(tmp_path, clips, capfd):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    rc = cli.main(["score", str(clips["one"]), "--checkpoint", str(bad), "--out",
                   str(tmp_path / "r.jsonl")])
    assert rc == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt" in err[0]


def test_discover_paths_finds_videos_and_images(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/notes.txt", "b.MOV", "c.JPG", "a/d.webp", "e.png", "f.gif"):
        (tmp_path / name).write_bytes(b"1")
    found = discover_paths([str(tmp_path), str(tmp_path / "a" / "x.mp4")])
    assert [str(p.relative_to(tmp_path)) for p in found] == [
        "a/d.webp", "a/x.mp4", "b.MOV", "c.JPG", "e.png"]


@pytest.mark.slow
def test_pool_engine_matches_inline(tiny_checkpoint, clips, tmp_path):
    res = {}
    for engine in ("inline", "pool"):
        out = tmp_path / f"{engine}.jsonl"
        cli.main(["score", str(clips["one"]), str(clips["text"]), "--checkpoint",
                  str(tiny_checkpoint), "--out", str(out), "--engine", engine, "--workers", "2",
                  "--device", "cpu"])
        res[engine] = {Path(r["path"]).name: (r["status"], r["p_fake"]) for r in read_journal(out)}
    assert res["inline"].keys() == res["pool"].keys()
    for k, (status, p) in res["inline"].items():
        assert res["pool"][k][0] == status
        if p is not None:
            assert res["pool"][k][1] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
@pytest.mark.real_data
def test_every_real_sample_gets_a_status(real_samples, tiny_checkpoint, tmp_path):
    """Issue 7: every file of real_samples completes with a status (VFX film and street scene too)."""
    out = tmp_path / "real.jsonl"
    rc = cli.main(["score", str(real_samples), "--checkpoint", str(tiny_checkpoint), "--out",
                   str(out), "--device", "cpu", "--explain", str(tmp_path / "ev")])
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    videos = sorted(p.name for p in real_samples.rglob("*.mp4"))
    assert sorted(rows) == videos
    for name, r in rows.items():
        assert r["status"] in {"ok", "no_face", "too_few_frames"}, (name, r["reason"])
        if r["status"] == "ok":
            assert not math.isnan(r["p_fake"]) and Path(r["evidence_png"]).is_file()
    assert rows["abqwwspghj.mp4"]["status"] == "ok"
    assert rc == 0
    (tmp_path / "summary.json").write_text(json.dumps(rows, default=str))


# --- issue #12: trustworthy results ------------------------------------------------------------


class DyingScoreWorker:
    """``ScoreWorker`` whose process kills itself (kill -9) on videos named ``die*``; other
    videos are scored by the real ``ScoreWorker`` (built lazily: spawned children import this
    module as ``test_scoring``)."""

    def __init__(self, cfg) -> None:
        self.cfg, self.real = cfg, None

    def __call__(self, item: dict) -> dict:
        import os

        from pipeline.score.batch import ScoreWorker

        if Path(item["path"]).name.startswith("die"):
            os.kill(os.getpid(), 9)
        self.real = self.real or ScoreWorker(self.cfg)
        return self.real(item)


@pytest.mark.slow
def test_a_dead_worker_gives_its_video_an_error_row_and_exit_1(tiny_checkpoint, clips, tmp_path,
                                                                 monkeypatch):
    """Issue #12.1: the crashed worker's row kept its path and the run exits 1."""
    from pipeline.score import batch as score_batch

    monkeypatch.setattr(score_batch, "ScoreWorker", DyingScoreWorker)
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("die.mp4", "one.mp4"):
        (folder / name).write_bytes(clips["one"].read_bytes())
    out = tmp_path / "r.jsonl"
    rc = cli.main(["score", str(folder), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                   "--engine", "pool", "--workers", "1", "--device", "cpu"])
    rows = {Path(r["path"]).name: r for r in read_journal(out)}
    assert sorted(rows) == ["die.mp4", "one.mp4"]
    assert rows["die.mp4"]["status"] == "error" and rows["die.mp4"]["p_fake"] is None
    assert "worker process died" in rows["die.mp4"]["reason"]
    assert str(folder / "die.mp4") in rows["die.mp4"]["reason"]
    assert rows["one.mp4"]["status"] == "ok"
    assert rc == 1


def _score_argv(videos, ckpt, out, *extra) -> list[str]:
    return ["score", *map(str, videos), "--checkpoint", str(ckpt), "--out", str(out),
            "--engine", "inline", "--device", "cpu", *extra]


def test_resume_is_keyed_on_checkpoint_and_settings(tiny_checkpoint, tiny_frame_checkpoint, clips,
                                                    tmp_path, capfd, monkeypatch):
    """Issue #12.2: another --threshold or --checkpoint never reprints the old verdicts."""
    out = tmp_path / "r.jsonl"
    assert cli.main(_score_argv([clips["one"]], tiny_checkpoint, out, "--threshold", "0.25")) == 0
    first = out.read_text()
    # same settings: resumed, nothing rescored
    assert cli.main(_score_argv([clips["one"]], tiny_checkpoint, out, "--threshold", "0.25")) == 0
    assert out.read_text() == first
    # another threshold, another checkpoint: refused (exit 2, one line naming the change)
    capfd.readouterr()
    assert cli.main(_score_argv([clips["one"]], tiny_checkpoint, out, "--threshold", "0.75")) == 2
    err = capfd.readouterr().err
    assert "threshold 0.25 -> 0.75" in err and "--overwrite" in err
    assert cli.main(_score_argv([clips["one"]], tiny_frame_checkpoint, out,
                                "--threshold", "0.25")) == 2
    assert out.read_text() == first  # nothing lost
    # the same settings in another inference precision: refused too (p_fake would differ)
    monkeypatch.setenv("DFPIPE_INFERENCE_PRECISION",
                       "float32" if json.loads(first)["checkpoint"]["precision"] == "bfloat16"
                       else "bfloat16")
    assert cli.main(_score_argv([clips["one"]], tiny_checkpoint, out, "--threshold", "0.25")) == 2
    assert "precision" in capfd.readouterr().err and out.read_text() == first
    monkeypatch.delenv("DFPIPE_INFERENCE_PRECISION")
    # --overwrite rescores with what was asked for
    assert cli.main(_score_argv([clips["one"]], tiny_checkpoint, out, "--threshold", "0.75",
                                "--overwrite")) == 0
    [row] = read_journal(out)
    assert row["threshold"] == 0.75 and row["label"] == ("FAKE" if row["p_fake"] >= 0.75 else "REAL")
    # the resolved config and the key of what produced the rows, beside the results
    meta = json.loads((tmp_path / "r.jsonl.config.json").read_text())
    assert row["score_key"] == meta["score_key"] and meta["config"]["threshold"] == 0.75
    assert meta["settings"]["checkpoint_id"] == row["checkpoint"]["id"]


def test_duplicate_paths_each_get_a_row(tiny_checkpoint, clips, tmp_path):
    """Issue #12.4: a file and a symlink to it: both paths get a row, the file is scored once."""
    folder = tmp_path / "videos"
    folder.mkdir()
    real = folder / "b_real.mp4"
    real.write_bytes(clips["one"].read_bytes())
    (folder / "a_link.mp4").symlink_to(real)
    found = discover_paths([str(folder)])
    assert [p.name for p in found] == ["a_link.mp4", "b_real.mp4"]
    from pipeline.score.batch import find_duplicates

    assert find_duplicates(found) == {folder / "a_link.mp4": real}
    out = tmp_path / "r.csv"
    assert cli.main(_score_argv([folder], tiny_checkpoint, out)) == 0
    rows = {Path(r["path"]).name: r for r in read_journal(tmp_path / "r.csv.journal.jsonl")}
    assert rows["b_real.mp4"]["status"] == "ok"
    assert rows["a_link.mp4"]["status"] == "duplicate"
    assert rows["a_link.mp4"]["duplicate_of"] == str(real) and rows["a_link.mp4"]["p_fake"] is None
    import csv

    table = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert sorted(table) == ["a_link.mp4", "b_real.mp4"]  # every path has its CSV row
    assert table["a_link.mp4"]["duplicate_of"] == str(real) and table["a_link.mp4"]["p_fake"] == ""


def test_evidence_sheets_of_same_named_videos_do_not_collide(scorer, clips, tmp_path):
    """Issue #12.5: a/clip.mp4 and b/clip.mp4 in one --explain folder get their own sheets."""
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        paths.append(tmp_path / sub / "clip.mp4")
        paths[-1].write_bytes(clips["one"].read_bytes())
    ev = tmp_path / "ev"
    results = [scorer.score(p, explain_dir=ev) for p in paths]
    pngs = [r["evidence_png"] for r in results]
    assert pngs[0] != pngs[1] and all(Path(p).is_file() for p in pngs)
    assert {Path(r["evidence_html"]).name for r in results} == {Path(p).stem + ".html" for p in pngs}
    assert Path(pngs[0]).name.startswith("clip-")
    assert scorer.score(paths[0], explain_dir=ev)["evidence_png"] == pngs[0]  # stable on reruns


def test_track_statuses_rules():
    from pipeline.score.windows import track_statuses

    # 30 face frames: a full track, a 3-frame blip, a 12-frame identity with too few slots
    assert track_statuses([30, 3, 12], [30, 3, 4], 30, 0.3, 10) == ["ok", "brief", "too_few_frames"]
    # the longest track is an identity even below the share
    assert track_statuses([5, 5, 5, 5], [5, 5, 5, 5], 20, 0.3, 3) == ["ok"] * 4
    assert track_statuses([2, 8], [2, 8], 10, 0.0, 1) == ["ok", "ok"]


def test_a_brief_false_detection_never_decides_the_verdict(tiny_checkpoint, tmp_path):
    """Issue #12.9: a second face in 6 of 30 slot frames is a brief track, reported, not scored."""
    from pipeline.synth.dataset import make_clip

    clip = tmp_path / "blip.mp4"
    make_clip(clip, n_frames=150, seed=4, two_face=(0, 30))
    s = VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu", min_frames=3)
    r = s.score(clip)
    assert r["status"] == "ok", r["reason"]
    by_status = {}
    for t in r["tracks"]:
        by_status.setdefault(t["status"], []).append(t)
    assert len(by_status["ok"]) == 1 and len(by_status["brief"]) == 1, r["tracks"]
    main, blip = by_status["ok"][0], by_status["brief"][0]
    # slots at uniform_positions(150, 30): 6 of them (0, 5, ..., 26) fall in frames 0-29
    assert blip["p_fake"] is None and blip["faces"] == 6 and blip["share"] == pytest.approx(0.2)
    assert main["faces"] == 30 and main["share"] == 1.0
    assert r["deciding_track"] == main["track"] and r["p_fake"] == pytest.approx(main["p_fake"])
    # the same clip scored with the blip counted as an identity: two tracks are scored
    loose = VideoScorer.from_checkpoint(tiny_checkpoint, device="cpu", min_frames=3,
                                        min_track_share=0.0)
    assert sum(t["p_fake"] is not None for t in loose.score(clip)["tracks"]) == 2


def test_grad_cam_is_safe_with_concurrent_calls(scorer):
    """Issue #12.12: two Grad-CAMs whose forward passes overlap on one model each get their own
    maps (the old shared hook handed one call the other's activations)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from pipeline.score.explain import grad_cam

    size = scorer.image_size
    gen = torch.Generator().manual_seed(0)
    clips_ = [torch.rand(1, 30, 3, size, size, generator=gen) for _ in range(2)]
    mask = torch.ones(1, 30)
    # the REAL direction (-logit): this random-init model has positive evidence there, so the
    # maps are not all zero and a swapped feature map would show
    sequential = [grad_cam(lambda c=c: -scorer.model(c, mask), scorer.model, (size, size))
                  for c in clips_]
    assert all(m.max() > 0 for m in sequential)
    both_hooked, both_ran = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)

    def overlapping(c):
        def forward():
            both_hooked.wait()  # both calls have installed their hooks
            out = -scorer.model(c, mask)
            both_ran.wait()  # both forward passes are done before either reads its feature map
            return out
        return grad_cam(forward, scorer.model, (size, size))

    with ThreadPoolExecutor(2) as pool:
        concurrent = list(pool.map(overlapping, clips_))
    for seq, con in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(con, seq, atol=1e-5)
    assert not np.allclose(sequential[0], sequential[1])


def test_concurrent_scoring_with_evidence_equals_sequential(scorer, clips, tmp_path):
    """Issue #12.12: threads scoring with --explain on one scorer give the sequential results."""
    from concurrent.futures import ThreadPoolExecutor

    videos = [clips["one"], clips["two"]]
    seq = [scorer.score(v, explain_dir=tmp_path / f"seq{i}") for i, v in enumerate(videos)]
    with ThreadPoolExecutor(2) as pool:
        con = list(pool.map(lambda a: scorer.score(a[1], explain_dir=tmp_path / f"con{a[0]}"),
                            enumerate(videos)))
    for s_, c_ in zip(seq, con, strict=True):
        assert c_["status"] == s_["status"] == "ok"
        assert c_["p_fake"] == pytest.approx(s_["p_fake"], abs=1e-6)
        assert [t["p_fake"] for t in c_["timeline"]] == pytest.approx(
            [t["p_fake"] for t in s_["timeline"]], abs=1e-6)
        assert Path(c_["evidence_png"]).read_bytes() == Path(s_["evidence_png"]).read_bytes()


def test_score_takes_max_in_flight(tiny_checkpoint, clips, tmp_path, monkeypatch):
    """Issue #12.15: ``dfpipe score --max-in-flight N`` reaches the executor."""
    from pipeline.engines import dispatch as executors

    seen = {}

    def fake_run_items(worker_cls, worker_args, items, **kw):
        seen.update(kw, items=list(items))
        yield from ()

    monkeypatch.setattr(executors, "run_items", fake_run_items)
    rc = cli.main(_score_argv([clips["one"]], tiny_checkpoint, tmp_path / "r.jsonl",
                              "--max-in-flight", "3"))
    assert seen["max_in_flight"] == 3 and len(seen["items"]) == 1
    assert rc == 1  # a video that got no row at all is a failure, never a silent exit 0


def test_service_with_two_concurrent_requests_gives_sequential_evidence(scorer, clips):
    """Issue #12.12 through the web service: --max-concurrent 2, two uploads asking for evidence
    at once on the one loaded model get what they get one at a time."""
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from pipeline.config import ServeConfig
    from pipeline.service.app import create_app

    bodies = [clips["one"].read_bytes(), clips["two"].read_bytes()]
    with TestClient(create_app(lambda: scorer, ServeConfig(checkpoint="x", max_concurrent=2))) as c:
        def post(body: bytes) -> dict:
            r = c.post("/score?filename=clip.mp4&explain=true", content=body)
            assert r.status_code == 200, r.text
            return r.json()

        seq = [post(b) for b in bodies]
        with ThreadPoolExecutor(2) as pool:
            con = list(pool.map(post, bodies))
    for s_, c_ in zip(seq, con, strict=True):
        assert c_["status"] == "ok" and c_["p_fake"] == pytest.approx(s_["p_fake"], abs=1e-6)
        assert c_["evidence_png"].startswith("data:image/png;base64,")
        assert c_["evidence_png"] == s_["evidence_png"]


def test_a_frame_checkpoint_scores_with_its_frame_mean_threshold(tiny_frame_checkpoint, caplog):
    """score uses a frame checkpoint as frame_mean, so it takes the frame_mean threshold; an
    older checkpoint (one threshold, chosen on middle frames) falls back to it with a warning."""
    import logging

    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.score.card import checkpoint_threshold

    ck = load_checkpoint(tiny_frame_checkpoint)
    assert set(ck["thresholds"]) == {"frame", "frame_mean"}
    ck = {**ck, "threshold": 0.3, "thresholds": {"frame": 0.3, "frame_mean": 0.7}}
    s = VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu")
    assert s.threshold == 0.7 and s.info()["threshold"] == 0.7
    assert VideoScorer(ck, str(tiny_frame_checkpoint), device="cpu", threshold=0.4).threshold == 0.4

    old = {k: v for k, v in ck.items() if k != "thresholds"}
    with caplog.at_level(logging.WARNING, logger="pipeline.score.card"):
        assert checkpoint_threshold(old, "frame_mean", "old.pt") == 0.3
    assert "old.pt: no frame_mean threshold" in caplog.text and "middle-frame" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.score.card"):
        assert checkpoint_threshold(old, "frame", "old.pt") == 0.3
    assert caplog.text == ""


def test_score_settings_hold_the_threshold_the_scorer_uses(tiny_checkpoint, tiny_frame_checkpoint):
    from pipeline.config import ScoreConfig
    from pipeline.models.checkpoint import load_checkpoint
    from pipeline.score.batch import score_key, score_settings

    for ck_path in (tiny_checkpoint, tiny_frame_checkpoint):
        ck = load_checkpoint(ck_path)
        settings = score_settings(ScoreConfig(inputs=("x",), checkpoint=str(ck_path)), ck)
        assert settings["threshold"] == VideoScorer(ck, str(ck_path), device="cpu").threshold
        moved = score_settings(ScoreConfig(inputs=("x",), checkpoint=str(ck_path), threshold=0.9), ck)
        assert score_key(moved) != score_key(settings)
