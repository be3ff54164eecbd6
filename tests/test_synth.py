"""``dfpipe synth``: schema, determinism, decodability, real MTCNN faces, fake artefacts, CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.config import SynthConfig, from_dict
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import sha256_file
from pipeline.synth import dataset as synth

decord = pytest.importorskip("decord")


def _plan_of(out: Path) -> list[synth.ClipSpec]:
    """Rebuild the plan from the config recorded beside the dataset."""
    rec = json.loads((out / synth.CONFIG_FILE).read_text())
    return synth.plan_dataset(from_dict(SynthConfig, rec))


def _decode(path: Path, idx: list[int] | None = None) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    idx = list(range(len(vr))) if idx is None else idx
    return vr.get_batch(idx).asnumpy()  # (T, H, W, 3) RGB uint8


def _clip_path(out: Path, spec: synth.ClipSpec) -> Path:
    return out / spec.part / spec.filename


@pytest.fixture(scope="module")
def mtcnn():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from facenet_pytorch import MTCNN  # weights ship inside the package: offline

    return MTCNN(keep_all=True, device="cpu")


# ---------------------------------------------------------------------------------- schema


def test_metadata_has_exact_dfdc_schema(synth_dir):
    parts = sorted(p for p in synth_dir.iterdir() if p.is_dir())
    assert [p.name for p in parts] == ["dfdc_train_part_0"]
    entries: dict[str, dict] = {}
    for part in parts:
        meta = json.loads((part / "metadata.json").read_text())
        for name, row in meta.items():
            assert re.fullmatch(r"[a-z]{10}\.mp4", name)
            assert set(row) == {"label", "split", "original"}
            assert row["label"] in ("REAL", "FAKE") and row["split"] == "train"
            assert (part / name).is_file()
        entries.update(meta)
    reals = {n for n, r in entries.items() if r["label"] == "REAL"}
    assert len(reals) == 2 and len(entries) == 4
    for row in entries.values():
        if row["label"] == "REAL":
            assert row["original"] is None
        else:
            assert row["original"] in reals
    assert all(sum(r["original"] == real for r in entries.values()) == 1 for real in reals)
    # the truth lives in the root, not in the parts, and agrees with metadata
    truth = synth.load_truth(synth_dir)
    assert not (parts[0] / synth.TRUTH_FILE).exists()
    assert {t["filename"]: (t["label"], t["original"]) for t in truth} == {
        n: (r["label"], r["original"]) for n, r in entries.items()}


def test_plan_every_real_has_n_fakes_in_its_own_part():
    specs = synth.plan_dataset(SynthConfig(n_originals=5, fakes_per_original=3, parts=2))
    meta = synth.metadata_for(specs)
    assert sorted(meta) == ["dfdc_train_part_0", "dfdc_train_part_1"]
    ids = [s.video_id for s in specs]
    assert len(set(ids)) == len(ids) == 20
    for part, entries in meta.items():
        reals = [n for n, r in entries.items() if r["label"] == "REAL"]
        for real in reals:
            assert sum(r["original"] == real for r in entries.values()) == 3, part
        assert all(r["original"] in reals for r in entries.values() if r["label"] == "FAKE")


def test_invalid_config_is_refused():
    with pytest.raises(ConfigError, match="even"):
        synth.plan_dataset(SynthConfig(width=481))
    with pytest.raises(ConfigError, match="two_face_share"):
        synth.plan_dataset(SynthConfig(two_face_share=1.5))


def test_shares_pick_whole_groups_and_outliers_leave_200_400():
    cfg = SynthConfig(n_originals=8, fakes_per_original=1, frames=300, frames_jitter=50,
                      outlier_share=0.5, two_face_share=0.25, gap_share=0.25)
    specs = synth.plan_dataset(cfg)
    reals = [s for s in specs if s.label == "REAL"]
    outliers = [s for s in reals if s.outlier]
    assert sorted(s.n_frames for s in outliers) == [150, 150, 450, 450]
    assert all(250 <= s.n_frames <= 350 for s in reals if not s.outlier)
    assert sum(s.two_face is not None for s in reals) == 2
    assert sum(s.gap is not None for s in reals) == 2
    assert not any(s.two_face and s.gap for s in reals)  # disjoint while possible
    by_name = {s.filename: s for s in reals}
    for f in (s for s in specs if s.label == "FAKE"):  # a fake is its original's scene
        o = by_name[f.original]
        assert (f.n_frames, f.scene_seed, f.two_face, f.gap) == (o.n_frames, o.scene_seed,
                                                                 o.two_face, o.gap)


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_same_plan_different_seed_different():
    cfg = SynthConfig(n_originals=3, fakes_per_original=2, two_face_share=0.3, gap_share=0.3,
                      frames_jitter=20)
    a, b = synth.plan_dataset(cfg), synth.plan_dataset(cfg)
    assert a == b and synth.metadata_for(a) == synth.metadata_for(b)
    c = synth.plan_dataset(SynthConfig(**{**cfg.__dict__, "seed": 1}))
    assert [s.video_id for s in c] != [s.video_id for s in a]


def test_same_spec_same_frames_and_bytes(tmp_path):
    spec = synth.plan_dataset(SynthConfig(n_originals=1, fakes_per_original=1, frames=12))[1]
    f1, f2 = list(synth.render_frames(spec)), list(synth.render_frames(spec))
    assert all(np.array_equal(x, y) for x, y in zip(f1, f2, strict=True))
    synth.write_clip(iter(f1), tmp_path / "a.mp4", spec.fps)
    synth.write_clip(iter(f2), tmp_path / "b.mp4", spec.fps)
    assert sha256_file(tmp_path / "a.mp4") == sha256_file(tmp_path / "b.mp4")
    other = synth.plan_dataset(SynthConfig(n_originals=1, fakes_per_original=1, frames=12,
                                           seed=1))[1]
    assert not np.array_equal(next(synth.render_frames(other)), f1[0])


# ---------------------------------------------------------------------------------- decoding


def test_clips_decode_with_planned_geometry(synth_dir):
    for t in synth.load_truth(synth_dir):
        vr = decord.VideoReader(str(synth_dir / t["part"] / t["filename"]))
        assert len(vr) == t["n_frames"] == 60
        assert vr[0].shape == (t["height"], t["width"], 3) == (270, 480, 3)
        assert vr.get_avg_fps() == pytest.approx(t["fps"], abs=0.01)


def test_outlier_clips_decode_outside_200_400(tmp_path):
    out = synth.write_dataset(SynthConfig(n_originals=2, fakes_per_original=0, frames=300,
                                          outlier_share=1.0, width=240, height=136),
                              tmp_path / "o")
    lengths = sorted(len(decord.VideoReader(str(out / t["part"] / t["filename"])))
                     for t in synth.load_truth(out))
    assert lengths == [synth.SHORT_OUTLIER_FRAMES, synth.LONG_OUTLIER_FRAMES]


def test_mp4v_codec_decodes(tmp_path):
    spec = synth.make_clip(tmp_path / "v.mp4", n_frames=10, codec="mp4v")
    frames = _decode(tmp_path / "v.mp4")
    assert frames.shape == (10, spec.height, spec.width, 3)
    first = next(synth.render_frames(spec)).astype(np.float32)
    assert np.abs(frames[0].astype(np.float32) - first).mean() < 6  # lossy but the same picture


# ---------------------------------------------------------------------------------- faces


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_mtcnn_finds_planned_faces(synth_dir, mtcnn):
    specs = {s.filename: s for s in _plan_of(synth_dir)}
    checked = {0: 0, 1: 0, 2: 0}
    for t in synth.load_truth(synth_dir):
        spec = specs[t["filename"]]
        two, gap = t["two_face_frames"], t["no_face_frames"]
        normal = [i for i in range(t["n_frames"]) if i not in set(two) | set(gap)]
        picks = {1: normal[:: max(1, len(normal) // 3)][:3], 2: two[::10][:2], 0: gap[::10][:2]}
        idx = sorted(i for v in picks.values() for i in v)
        frames = _decode(synth_dir / t["part"] / t["filename"], idx)
        boxes, probs = mtcnn.detect(list(frames))
        scene = synth.make_scene(spec)
        for i, b, p in zip(idx, boxes, probs, strict=True):
            found = [] if b is None else [bb for bb, pp in zip(b, p, strict=True) if pp >= 0.9]
            want = next(k for k, v in picks.items() if i in v)
            assert len(found) == want, (t["filename"], i, want, p)
            checked[want] += 1
            if want:
                truth_box = synth.face_box(spec, scene, i)
                assert max(_iou(bb, truth_box) for bb in found) > 0.5
    assert checked[0] >= 2 and checked[1] >= 6 and checked[2] >= 2


# ---------------------------------------------------------------------------------- artefacts


def _expand(box, frac: float, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    mx, my = frac * (x2 - x1), frac * (y2 - y1)
    return max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx)), min(h, int(y2 + my))


def _pair(seed: int = 0, **kw) -> tuple[synth.ClipSpec, synth.ClipSpec]:
    specs = synth.plan_dataset(SynthConfig(n_originals=1, fakes_per_original=1, seed=seed, **kw))
    return specs[0], specs[1]


def test_fake_differs_from_original_only_around_the_face():
    real, fake = _pair(frames=20)
    scene = synth.make_scene(real)
    for t, (a, b) in enumerate(zip(synth.render_frames(real), synth.render_frames(fake),
                                   strict=True)):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
        x1, y1, x2, y2 = _expand(synth.face_box(real, scene, t), 0.35, real.width, real.height)
        inside = diff[y1:y2, x1:x2].copy()
        diff[y1:y2, x1:x2] = 0
        assert diff.max() == 0, t  # before encoding: identical outside the face region
        assert inside.mean() > 1.0, t


def test_zero_strength_fake_equals_original():
    real, fake = _pair(frames=8, spatial_strength=0.0, temporal_strength=0.0)
    for a, b in zip(synth.render_frames(real), synth.render_frames(fake), strict=True):
        assert np.array_equal(a, b)


def _face_colour_shift(spatial: float) -> float:
    """Largest per-channel mean colour change of the face (fake - original), no flicker."""
    real, fake = _pair(frames=3, spatial_strength=spatial, temporal_strength=0.0)
    scene = synth.make_scene(real)
    x1, y1, x2, y2 = _expand(synth.face_box(real, scene, 0), -0.2, real.width, real.height)
    a = next(synth.render_frames(real))[y1:y2, x1:x2].astype(np.float32)
    b = next(synth.render_frames(fake))[y1:y2, x1:x2].astype(np.float32)
    return float(np.abs((b - a).mean(axis=(0, 1))).max())


def test_spatial_strength_controls_face_colour_shift():
    weak, strong = _face_colour_shift(0.25), _face_colour_shift(1.0)
    assert _face_colour_shift(0.0) < 0.5 < weak < strong and strong > 3.0


def _face_brightness(frames: np.ndarray, spec: synth.ClipSpec) -> np.ndarray:
    scene = synth.make_scene(spec)
    out = []
    for t, f in enumerate(frames):
        x1, y1, x2, y2 = _expand(synth.face_box(spec, scene, t), -0.2, spec.width, spec.height)
        out.append(f[y1:y2, x1:x2].mean())
    return np.asarray(out)


def test_decoded_fake_has_face_local_difference_and_measurable_flicker(synth_dir):
    specs = [s for s in _plan_of(synth_dir) if s.gap is None and s.two_face is None] or [
        s for s in _plan_of(synth_dir) if s.gap is None]
    real = next(s for s in specs if s.label == "REAL")
    fake = next(s for s in specs if s.original == real.filename)
    a = _decode(_clip_path(synth_dir, real)).astype(np.float32)
    b = _decode(_clip_path(synth_dir, fake)).astype(np.float32)
    scene = synth.make_scene(real)
    d = np.abs(a - b).mean(axis=3)  # (T, H, W)
    face = np.zeros(d.shape, bool)
    for t in range(real.n_frames):
        x1, y1, x2, y2 = _expand(synth.face_box(real, scene, t), 0.35, real.width, real.height)
        face[t, y1:y2, x1:x2] = True
    # the codec adds small differences everywhere; the manipulation only around the face (in a
    # single frame the fake's gain may happen to match the original's, so judge all frames)
    assert d[face].mean() > 5 * d[~face].mean()
    big = d > 8
    assert big.sum() > 0 and (big & face).sum() > 0.9 * big.sum()
    # temporal cue: frame-to-frame change of the face brightness is much larger in the fake
    steps_real = np.diff(_face_brightness(a, real))
    steps_fake = np.diff(_face_brightness(b, fake))
    assert steps_fake.var() > 10 * steps_real.var()


def _relative_face_brightness(spec: synth.ClipSpec) -> np.ndarray:
    """Per frame: log of (mean inner-face brightness / mean brightness away from the head)."""
    scene = synth.make_scene(spec)
    out = []
    for t, f in enumerate(synth.render_frames(spec)):
        f = f.astype(np.float32)
        x1, y1, x2, y2 = _expand(synth.face_box(spec, scene, t), -0.2, spec.width, spec.height)
        inner = f[y1:y2, x1:x2].mean()
        away = np.ones(f.shape[:2], bool)
        x1, y1, x2, y2 = _expand(synth.face_box(spec, scene, t), 0.8, spec.width, spec.height)
        away[y1:y2, x1:x2] = False
        out.append(np.log(inner / f[away].mean()))
    return np.asarray(out)


def _single_frame_and_step_stats(**kw) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    specs = synth.plan_dataset(SynthConfig(n_originals=30, fakes_per_original=1, frames=6,
                                           width=240, height=136, seed=5, **kw))
    per_clip = {s.video_id: _relative_face_brightness(s) for s in specs}
    real = [per_clip[s.video_id] for s in specs if s.label == "REAL"]
    fake = [per_clip[s.video_id] for s in specs if s.label == "FAKE"]
    return (np.concatenate(real), np.concatenate(fake),
            np.concatenate([np.diff(r) for r in real]), np.concatenate([np.diff(f) for f in fake]))


def test_single_frames_alike_frame_to_frame_changes_differ():
    """One frame of a FAKE is distributed like one frame of a REAL; only the flicker differs."""
    real, fake, steps_real, steps_fake = _single_frame_and_step_stats()
    pooled = np.concatenate([real, fake]).std()
    assert abs(real.mean() - fake.mean()) < 0.2 * pooled
    assert 0.8 < fake.std() / real.std() < 1.25
    # ... a REAL's face gain is constant over time, a FAKE's is redrawn each frame
    assert np.abs(steps_real).max() < 0.01
    assert steps_fake.std() > 0.1
    assert steps_fake.var() > 100 * steps_real.var()
    # the statistic does see a single-frame shift (sanity check of the test itself): a strong
    # spatial artefact moves the fakes' face colour away from the reals'
    _, shifted, _, _ = _single_frame_and_step_stats(spatial_strength=3.0, temporal_strength=0.0)
    assert np.abs(shifted - real).mean() > 0.2 * real.std()


def test_temporal_strength_keeps_single_frames_and_scales_flicker():
    specs = synth.plan_dataset(SynthConfig(n_originals=150, fakes_per_original=1, frames=300,
                                           width=160, height=90))
    pairs = [(specs[i], specs[i + 1]) for i in range(0, len(specs), 2)]

    def z(spec: synth.ClipSpec, w: float | None = None) -> np.ndarray:
        spec = spec if w is None else dataclasses.replace(spec, temporal_strength=w)
        from pipeline.synth.render import _face_z

        return _face_z(spec, synth.make_scene(spec))  # (T, 4)

    real, fake = pairs[0]
    assert np.array_equal(z(fake, 0.0), z(real))  # no flicker: the fake keeps its original's gain
    for w in (0.25, 1.0):
        first = np.stack([z(f, w)[0] for _, f in pairs])  # frame 0 of 150 fakes, (150, 4)
        assert first.mean() == pytest.approx(0.0, abs=0.15)  # a frame stays N(0, 1) ...
        assert first.std() == pytest.approx(1.0, abs=0.15)
        assert np.diff(z(fake, w), axis=0).var() == pytest.approx(2 * w, rel=0.25)  # ... flicker
    with pytest.raises(ConfigError, match="temporal_strength"):
        synth.plan_dataset(SynthConfig(temporal_strength=1.5))


def test_temporal_strength_controls_flicker():
    _, calm = _pair(frames=40, temporal_strength=0.0)
    _, wild = _pair(frames=40, temporal_strength=1.0)
    v_calm = np.diff(_face_brightness(np.stack(list(synth.render_frames(calm))), calm)).var()
    v_wild = np.diff(_face_brightness(np.stack(list(synth.render_frames(wild))), wild)).var()
    assert v_wild > 10 * v_calm


# ---------------------------------------------------------------------------------- CLI, resume


def _argv(out: Path, *extra: str) -> list[str]:
    return ["-q", "synth", str(out), "--n-originals", "1", "--fakes-per-original", "1",
            "--frames", "8", "--width", "240", "--height", "136", *extra]


def test_cli_writes_resumes_and_refuses_another_config(tmp_path):
    out = tmp_path / "ds"
    assert cli.main(_argv(out)) == 0
    clips = sorted(out.glob("dfdc_train_part_0/*.mp4"))
    assert len(clips) == 2 and (out / "dfdc_train_part_0" / "metadata.json").is_file()
    assert (out / synth.TRUTH_FILE).is_file() and (out / synth.CONFIG_FILE).is_file()
    before = {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in clips}
    clips[0].unlink()  # an interrupted run: one clip missing
    assert cli.main(_argv(out)) == 0
    assert sha256_file(clips[0]) == before[clips[0]][1]  # redone identically
    assert clips[1].stat().st_mtime_ns == before[clips[1]][0]  # finished clip not redone
    assert cli.main(_argv(out, "--seed", "1")) == 2
    assert clips[1].stat().st_mtime_ns == before[clips[1]][0]


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        synth.write_dataset(SynthConfig(n_originals=1, frames=4), tmp_path)
    assert cli.main(_argv(tmp_path)) == 2


def test_clip_factory_writes_one_face_clip(tmp_path, clip_factory, mtcnn):
    spec = clip_factory(tmp_path / "one.mp4", n_frames=12, gap=(6, 9), seed=3)
    frames = _decode(tmp_path / "one.mp4")
    assert frames.shape == (12, 270, 480, 3) and spec.no_face_frames() == [6, 7, 8]
    boxes, probs = mtcnn.detect([frames[0], frames[7]])
    assert boxes[0] is not None and int((probs[0] >= 0.9).sum()) == 1
    assert boxes[1] is None or int((probs[1] >= 0.9).sum()) == 0
