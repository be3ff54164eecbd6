"""CPU-practical training of the frame model: blur / crop-jitter augmentation, the feature cache
for a frozen encoder (``--feature-cache``) and partial fine-tuning (``--train-blocks``)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from train_fixtures import make_manifests

from pipeline.config import TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.models import checkpoint as C
from pipeline.models import create_backbone, create_model
from pipeline.train import data, engine, features
from pipeline.train.stage import run as train_run

torch.set_num_threads(1)


# --- augmentation ------------------------------------------------------------------------------


def _pattern(size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def test_crop_jitter_keeps_the_size_and_takes_the_given_window():
    img = _pattern()
    out = data.ClipAugment(crop=(0.5, 0.5, 0.5))(img)  # the bottom-right quadrant, upscaled
    assert out.shape == img.shape and out.dtype == np.uint8
    want = data.cv2.resize(np.ascontiguousarray(img[16:, 16:]), (32, 32),
                           interpolation=data.cv2.INTER_LINEAR)
    assert np.array_equal(out, want)
    assert np.array_equal(data.ClipAugment(crop=(1.0, 0.0, 0.0))(img), img)


def test_blur_smooths_and_keeps_the_size():
    img = _pattern()
    out = data.ClipAugment(blur_sigma=1.2)(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(np.diff(out.astype(float), axis=1)).mean() < 0.5 * np.abs(
        np.diff(img.astype(float), axis=1)).mean()


def test_sampled_blur_and_crop_stay_in_their_ranges():
    rng = np.random.default_rng(1)
    augs = [data.ClipAugment.sample(("blur", "crop"), rng) for _ in range(200)]
    sigmas = [a.blur_sigma for a in augs]
    assert 0.15 < np.mean([s > 0 for s in sigmas]) < 0.45  # blurred about 30 % of the time
    assert all(s == 0 or 0.3 <= s <= 1.5 for s in sigmas)
    for a in augs:
        side, x0, y0 = a.crop
        assert 0.8 <= side <= 1.0 and 0 <= x0 <= 1 - side and 0 <= y0 <= 1 - side


def test_blur_and_crop_are_the_same_on_every_frame_of_a_clip(tmp_path):
    out = make_manifests(tmp_path, n_real={"train": 1}, n_fake={}, n_frames=4, size=24, flicker=0.0)
    ds = data.split_dataset(out, "train", "clip", image_size=24, augment=("blur", "crop"))
    changed = 0
    for epoch in range(6):
        clip = ds[(0, epoch)]["clip"]
        for t in range(1, 4):
            torch.testing.assert_close(clip[t], clip[0])
        changed += int(not torch.equal(clip, ds[0]["clip"]))
    assert changed > 0


# --- feature cache -----------------------------------------------------------------------------


class _Counting(torch.nn.Module):
    """Wraps an encoder and counts the images it encodes."""

    def __init__(self, enc: torch.nn.Module) -> None:
        super().__init__()
        self.enc, self.seen = enc, 0
        self.num_features = enc.num_features

    def forward(self, x):
        self.seen += len(x)
        return self.enc(x)


@pytest.fixture
def crops(tmp_path):
    out = make_manifests(tmp_path / "d", n_real={"train": 3}, n_fake={"train": 3}, n_frames=1,
                         size=24)
    clips, split = data.read_clips_and_split(out)
    recs = data.build_records(clips, split, "train")
    return features.record_paths(recs, 0)


def test_cached_features_equal_the_encoder_and_are_computed_once(crops, tmp_path):
    torch.manual_seed(0)
    enc = _Counting(create_backbone("tiny")).eval()
    kw = {"image_size": 24, "mean": data.MEAN, "std": data.STD, "progress": False}
    f1 = features.cached_features(enc, crops, tmp_path / "c", **kw)
    assert f1.shape == (len(crops), 64) and enc.seen == len(crops)
    x = data.crops_to_tensor([data.load_crop(p) for p in crops], 24)
    with torch.no_grad():
        torch.testing.assert_close(f1, enc.enc(x), atol=2e-3, rtol=2e-3)  # stored as float16
    f2 = features.cached_features(enc, crops, tmp_path / "c", **kw)
    assert enc.seen == len(crops)  # nothing encoded the second time
    torch.testing.assert_close(f1, f2)
    st = os.stat(crops[0])
    os.utime(crops[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited file
    features.cached_features(enc, crops, tmp_path / "c", **kw)
    assert enc.seen == len(crops) + 1
    flip = features.cached_features(enc, crops, tmp_path / "c", view="flip", **kw)
    assert enc.seen == 2 * len(crops) + 1 and not torch.allclose(flip, f1)


def test_other_weights_or_preprocessing_get_another_cache_key():
    torch.manual_seed(0)
    a = create_backbone("tiny")
    torch.manual_seed(1)
    b = create_backbone("tiny")
    key = features.encoder_key(a, 24, data.MEAN, data.STD)
    assert key == features.encoder_key(a, 24, data.MEAN, data.STD)
    assert key != features.encoder_key(b, 24, data.MEAN, data.STD)
    assert key != features.encoder_key(a, 32, data.MEAN, data.STD)
    assert key != features.encoder_key(a, 24, (0.5,) * 3, data.STD)
    assert key != features.encoder_key(a, 24, data.MEAN, data.STD, view="flip")


def test_a_damaged_chunk_is_encoded_again(crops, tmp_path):
    enc = _Counting(create_backbone("tiny")).eval()
    kw = {"image_size": 24, "mean": data.MEAN, "std": data.STD, "progress": False}
    f1 = features.cached_features(enc, crops, tmp_path / "c", **kw)
    (chunk,) = (tmp_path / "c").glob("*/chunk-*.pt")
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated by a crash
    f2 = features.cached_features(enc, crops, tmp_path / "c", **kw)
    assert enc.seen == 2 * len(crops)
    torch.testing.assert_close(f1, f2)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    return make_manifests(tmp_path_factory.mktemp("ft"), n_frames=2, size=32, seed=2)


def _cfg(manifests, out, **kw) -> TrainConfig:
    base = dict(model="frame", backbone="tiny", manifest_dir=str(manifests), out_dir=str(out),
                image_size=32, frame_index=0, batch_size=4, threads=1, epochs=2, patience=5)
    return TrainConfig(**{**base, **kw})


def test_training_on_cached_features_gives_a_full_frame_checkpoint(manifests, tmp_path):
    cfg = _cfg(manifests, tmp_path, run_name="h", feature_cache=str(tmp_path / "fc"), lr=1e-2,
               augment=("flip",))
    assert train_run(cfg) == 0
    ckpt = C.load_checkpoint(tmp_path / "h" / "best.pt", expect_model="frame")
    hist = ckpt["history"]
    assert [h["frozen_backbone"] for h in hist] == [True, True]
    # the checkpoint is a whole frame model: on images it reproduces the validation metrics
    model = C.build_model(ckpt)
    ds = data.split_dataset(manifests, "val", "image", image_size=32, frame_index=0)
    preds = engine.predict(model, engine.make_loader(ds, 4), torch.device("cpu"))
    from pipeline.stats import metrics as M

    y, p = preds["label"].to_numpy(), preds["p_fake"].to_numpy()
    assert M.video_metrics(y, p, 0.5)["roc_auc"] == pytest.approx(ckpt["metrics"]["roc_auc"])
    # the encoder is the random-init one it started from (seed 0): untouched by training
    torch.manual_seed(0)
    start = create_model("frame", backbone="tiny")
    for k, v in start.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v)


@pytest.mark.parametrize("kw, match", [
    ({"model": "cnn_lstm"}, "frame model"),
    ({"augment": ("flip", "color")}, "color"),
    ({"freeze_backbone_epochs": 1}, "frozen for the whole run"),
])
def test_feature_cache_refuses_what_it_cannot_do(manifests, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        train_run(_cfg(manifests, tmp_path, run_name="x", feature_cache=str(tmp_path / "fc"), **kw))


# --- partial fine-tuning -------------------------------------------------------------------------


def test_train_blocks_changes_only_the_last_stages(manifests, tmp_path):
    cfg = _cfg(manifests, tmp_path, run_name="tb", backbone="efficientnet_lite0", train_blocks=2,
               epochs=1, lr=1e-2)
    assert train_run(cfg) == 0
    trained = C.build_model(C.load_checkpoint(tmp_path / "tb" / "last.pt"))
    torch.manual_seed(0)
    start = create_model("frame", backbone="efficientnet_lite0")
    s0, s1 = trained.encoder.stages(), start.encoder.stages()
    for i, (a, b) in enumerate(zip(s0, s1, strict=True)):
        same = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values(), strict=True))
        assert same == (i < len(s0) - 2), f"stage {i}"
    with pytest.raises(ConfigError, match="does not list its stages"):
        train_run(_cfg(manifests, tmp_path, run_name="tb2", train_blocks=2))
    with pytest.raises(ConfigError, match="18 stages"):
        train_run(_cfg(manifests, tmp_path, run_name="tb3", backbone="efficientnet_lite0",
                       train_blocks=19))


# --- compression and scale augmentation (release recipe) ---------------------------------------


def test_rescale_is_area_shrink_then_bilinear_upscale():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, 4:] = 200  # left half black, right half 200
    img[0, 0] = 40  # one bright pixel in the top-left 2x2 cell
    small = data.cv2.resize(img, (4, 4), interpolation=data.cv2.INTER_AREA)
    assert small[0, 0, 0] == 10 and small[0, 3, 0] == 200  # the 2x2 means
    # scale 0.5 of 16 px -> 8 px (the minimum side) -> back to 16
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # (16, 16, 3): each pixel 2x2
    out = data.ClipAugment(scale=0.5)(big)
    assert out.shape == big.shape and out.dtype == np.uint8
    assert np.array_equal(out, data.cv2.resize(img, (16, 16), interpolation=data.cv2.INTER_LINEAR))
    assert np.array_equal(data.rescale(big, 0.5), out)
    assert np.array_equal(data.ClipAugment(scale=1.0)(big), big)  # 1: untouched


def test_rescale_loses_fine_detail_and_keeps_flat_regions():
    img = _pattern(64)  # noise: all detail
    out = data.ClipAugment(scale=0.3)(img)
    assert np.abs(np.diff(out.astype(float), axis=1)).mean() < 0.3 * np.abs(
        np.diff(img.astype(float), axis=1)).mean()
    flat = np.full((64, 64, 3), 77, dtype=np.uint8)
    assert np.array_equal(data.ClipAugment(scale=0.3)(flat), flat)


def test_sampled_rescale_and_compress_stay_in_their_ranges():
    rng = np.random.default_rng(2)
    augs = [data.ClipAugment.sample(("rescale", "compress"), rng) for _ in range(400)]
    scales = np.array([a.scale for a in augs])
    qualities = np.array([a.jpeg_quality for a in augs])
    assert 0.4 < np.mean(scales < 1.0) < 0.6  # rescaled about half of the time
    assert scales.min() >= data.RESCALE_RANGE[0] and scales.max() <= 1.0
    assert np.median(scales[scales < 1]) < 0.6  # log-uniform: the geometric middle is 0.55
    assert 0.5 < np.mean(qualities > 0) < 0.7  # compressed 60 % of the time
    q = qualities[qualities > 0]
    assert q.min() >= 30 and q.max() <= 90 and q.min() < 40  # reaches below jpeg's 40


def test_compress_overrides_a_jpeg_draw_and_degrades_more():
    rng = np.random.default_rng(3)
    both = [data.ClipAugment.sample(("jpeg", "compress"), rng) for _ in range(300)]
    assert any(0 < a.jpeg_quality < 40 for a in both)
    img = data.cv2.GaussianBlur(_pattern(64), (0, 0), 2.0)  # smooth texture, like a face
    err = [np.abs(data.ClipAugment(jpeg_quality=q)(img).astype(float) - img).mean()
           for q in (90, 30)]
    assert err[1] > err[0] > 0


def test_release_augmentations_are_the_same_on_every_frame_of_a_clip(tmp_path):
    out = make_manifests(tmp_path, n_real={"train": 1}, n_fake={}, n_frames=3, size=32, flicker=0.0)
    ds = data.split_dataset(out, "train", "clip", image_size=32, augment=("rescale", "compress"))
    for epoch in range(4):
        clip = ds[(0, epoch)]["clip"]
        for t in range(1, 3):
            torch.testing.assert_close(clip[t], clip[0])
    # the noise is drawn again on every frame (the rest of the clip's augmentation is shared)
    ds = data.split_dataset(out, "train", "clip", image_size=32, augment=("noise",))
    for epoch in range(40):
        if ds._augmenter(0, epoch).noise_sigma:
            clip = ds[(0, epoch)]["clip"]
            assert not torch.allclose(clip[1], clip[0])
            break
    else:
        pytest.fail("no clip drew noise in 40 epochs")


def test_gray_is_the_bt601_luma_in_every_channel():
    img = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    out = data.ClipAugment(saturation=0.0)(img)  # what a "gray" draw sets
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1, 3 + 11.7 + 3.4 = 18.1 (truncated,
    # as the colour step does)
    expect = np.array([[76, 149], [29, 18]], dtype=np.uint8)
    assert out.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(out[..., c], expect)


def test_noise_is_seeded_gaussian_clipped_and_new_on_every_frame():
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    aug = data.ClipAugment(noise_sigma=4.0, noise_seed=7)
    out = aug(flat, 0)
    expect = np.clip(np.rint(128 + np.random.default_rng([7, 0]).normal(0.0, 4.0, flat.shape)
                             .astype(np.float32)), 0, 255).astype(np.uint8)
    assert np.array_equal(out, expect)  # exactly the seeded draw, rounded
    d = out.astype(float) - 128
    assert abs(d.mean()) < 0.1 and 3.8 < d.std() < 4.2
    assert np.array_equal(aug(flat, 0), out)  # the same clip, frame and seed: the same noise
    assert not np.array_equal(aug(flat, 1), out)  # the next frame: new noise (a sensor's, not a mask)
    white = np.full((8, 8, 3), 255, dtype=np.uint8)
    assert aug(white).max() == 255 and aug(white).dtype == np.uint8  # clipped, not wrapped
    assert np.array_equal(data.ClipAugment(noise_sigma=0.0)(flat), flat)


def test_sampled_noise_and_gray_stay_in_their_ranges():
    rng = np.random.default_rng(4)
    augs = [data.ClipAugment.sample(("noise", "gray"), rng) for _ in range(1000)]
    sig = np.array([a.noise_sigma for a in augs])
    assert abs(np.mean(sig > 0) - data.NOISE_P) < 0.05
    assert sig[sig > 0].min() >= data.NOISE_SIGMA[0] and sig.max() <= data.NOISE_SIGMA[1]
    assert abs(np.mean([a.saturation == 0.0 for a in augs]) - data.GRAY_P) < 0.03
    assert {a.saturation for a in augs} == {0.0, 1.0}  # grey or untouched: no colour jitter drawn
    assert len({a.noise_seed for a in augs if a.noise_sigma}) > 250  # each clip its own noise
    assert all(a.jpeg_quality == 0 and a.scale == 1.0 for a in augs)  # nothing else switched on


def test_noise_comes_before_the_last_encode():
    flat = np.full((32, 32, 3), 100, dtype=np.uint8)
    noisy = data.ClipAugment(noise_sigma=5.0, noise_seed=1)(flat)
    both = data.ClipAugment(noise_sigma=5.0, noise_seed=1, jpeg_quality=30)(flat)
    ok, buf = data.cv2.imencode(".jpg", np.ascontiguousarray(noisy[..., ::-1]),
                                [data.cv2.IMWRITE_JPEG_QUALITY, 30])
    assert np.array_equal(both, data.cv2.imdecode(buf, data.cv2.IMREAD_COLOR)[..., ::-1])


def test_rotate_turns_the_crop_about_its_centre_counter_clockwise():
    x = np.zeros((5, 5, 3), dtype=np.uint8)
    x[0, 2] = (200, 100, 50)  # top middle
    out = data.ClipAugment(angle=90.0)(x)
    expect = np.zeros_like(x)
    expect[2, 0] = (200, 100, 50)  # a quarter turn counter-clockwise: left middle
    assert np.array_equal(out, expect)
    assert np.array_equal(data.ClipAugment(angle=-90.0)(x)[2, 4], [200, 100, 50])  # clockwise: right
    assert np.array_equal(data.ClipAugment(angle=0.0)(x), x)


def test_rotate_fills_the_corners_by_reflection_not_black():
    gray = np.full((32, 32, 3), 90, dtype=np.uint8)
    out = data.rotate(gray, 15.0)
    assert out.shape == gray.shape and np.array_equal(out, gray)  # no black wedge in the corners
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 3))  # (32, 32, 3)
    turned = data.rotate(ramp, 10.0)
    assert np.abs(turned[16].astype(int) - ramp[16]).max() <= 8  # the centre row barely moves
    assert turned[0, 0].min() > 0 and not np.array_equal(turned, ramp)


def test_rotate_comes_first_and_is_drawn_last():
    x = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    both = data.ClipAugment(angle=12.0, flip=True)(x)
    assert np.array_equal(both, data.rotate(x, 12.0)[:, ::-1])  # rotated, then mirrored
    ops = ("flip", "color", "jpeg", "blur", "crop", "rescale", "compress", "noise", "gray")
    for seed in range(50):  # switching rotate on changes no other parameter of any clip
        a = data.ClipAugment.sample(ops, np.random.default_rng(seed))
        b = data.ClipAugment.sample((*ops, "rotate"), np.random.default_rng(seed))
        assert a == dataclasses.replace(b, angle=0.0)
    rng = np.random.default_rng(5)
    angles = np.array([data.ClipAugment.sample(("rotate",), rng).angle for _ in range(1000)])
    assert abs(np.mean(angles != 0) - data.ROTATE_P) < 0.05
    assert np.abs(angles).max() <= data.ROTATE_DEG and np.abs(angles).max() > 0.9 * data.ROTATE_DEG
    assert abs(angles[angles != 0].mean()) < 1.5  # both directions


def test_self_blend_mask_is_the_ellipse_at_its_opacity():
    b = data.SelfBlend(center=(0.5, 0.5), axes=(0.25, 0.25), feather=0.0, ratio=0.5)
    m = b.mask(8, 8)
    # centre (3.5, 3.5), radius 2 px: the 4 x 4 block of rows/columns 2-5 without its corners
    expect = np.zeros((8, 8), np.float32)
    expect[2:6, 2:6] = 0.5
    expect[[2, 2, 5, 5], [2, 5, 2, 5]] = 0.0
    assert m.dtype == np.float32 and np.array_equal(m, expect)
    soft = data.SelfBlend(center=(0.5, 0.5), axes=(0.25, 0.25), feather=0.1).mask(32, 32)
    assert 0.0 < soft[16, 8] < 1.0 and soft[16, 16] > 0.9 and soft[0, 0] < 1e-3  # feathered edge


def test_self_blend_pastes_the_changed_face_inside_and_keeps_the_rest():
    flat = np.full((8, 8, 3), 100, dtype=np.uint8)
    inside = (slice(3, 5), slice(3, 5))
    full = data.SelfBlend(shift=(10.0, -20.0, 0.0), center=(0.5, 0.5), axes=(0.25, 0.25),
                          feather=0.0)(flat)
    assert full.dtype == np.uint8 and full.shape == flat.shape
    assert np.array_equal(full[inside], np.broadcast_to(np.uint8([110, 80, 100]), (2, 2, 3)))
    assert np.array_equal(full[0], flat[0]) and np.array_equal(full[:, 0], flat[:, 0])
    half = data.SelfBlend(shift=(10.0, -20.0, 0.0), brightness=1.1, center=(0.5, 0.5),
                          axes=(0.25, 0.25), feather=0.0, ratio=0.5)(flat)
    # 0.5 * (100 * 1.1 + shift) + 0.5 * 100
    assert np.array_equal(half[inside], np.broadcast_to(np.uint8([110, 95, 105]), (2, 2, 3)))
    white = np.full((8, 8, 3), 250, dtype=np.uint8)
    assert data.SelfBlend(shift=(20.0, 0.0, 0.0), feather=0.0)(white)[4, 4, 0] == 255  # clipped
    assert np.array_equal(data.SelfBlend(feather=0.0)(_pattern()), _pattern())  # no change: no trace


def test_self_blend_source_is_shifted_stretched_and_blurred_or_sharpened():
    ramp = np.tile(np.arange(0, 160, 20, dtype=np.uint8)[None, :, None], (8, 1, 3))  # x * 20
    moved = data.SelfBlend(offset=(0.25, 0.0)).source(ramp)  # 2 px to the right
    assert np.array_equal(moved[:, 2:], ramp[:, :-2].astype(np.float32))
    wide = data.SelfBlend(stretch=(2.0, 1.0)).source(ramp)  # twice as wide about x = 3.5
    assert np.array_equal(wide[:, 3:5, 0], np.tile(np.float32([65, 75]), (8, 1)))  # x = 3.25, 3.75
    pat = _pattern()
    std = pat.astype(np.float32).std()
    assert data.SelfBlend(sharpness=-1.0).source(pat).std() < 0.7 * std
    assert data.SelfBlend(sharpness=0.8).source(pat).std() > 1.2 * std


def test_sampled_self_blends_stay_in_their_ranges():
    rng = np.random.default_rng(5)
    bs = [data.SelfBlend.sample(rng) for _ in range(2000)]
    sharp = np.array([b.sharpness for b in bs])
    assert abs(np.mean(sharp < 0) - 0.25) < 0.03 and abs(np.mean(sharp > 0) - 0.25) < 0.03
    assert sharp.min() >= -1.5 and sharp.max() <= 1.0 and np.all((sharp == 0) | (np.abs(sharp) >= 0.3))
    assert {b.ratio for b in bs} == {0.25, 0.5, 0.75, 1.0}
    assert abs(np.mean([b.ratio == 1.0 for b in bs]) - 0.5) < 0.04
    shifts = np.array([b.shift for b in bs])
    assert np.abs(shifts).max() <= 15.0 and shifts.std() > 7.0
    ax = np.array([b.axes for b in bs])
    assert ax[:, 0].min() >= 0.30 and ax[:, 0].max() <= 0.42
    assert ax[:, 1].min() >= 0.36 and ax[:, 1].max() <= 0.48
    assert all(0.95 <= v <= 1.05 for b in bs for v in b.stretch)
    assert all(abs(v) <= 0.03 for b in bs for v in b.offset)
    assert all(0.02 <= b.feather <= 0.08 for b in bs)


def test_blend_turns_a_share_of_the_real_clips_fake_and_leaves_the_rest(tmp_path):
    out = make_manifests(tmp_path, n_real={"train": 40}, n_fake={"train": 20}, n_frames=3, size=32,
                         flicker=0.0)
    blend = data.split_dataset(out, "train", "clip", image_size=32, augment=("blend", "compress"))
    plain = data.split_dataset(out, "train", "clip", image_size=32, augment=("compress",))
    turned, kept = 0, 0
    for epoch in range(3):
        for i, rec in enumerate(blend.records):
            got, ref = blend[(i, epoch)], plain[(i, epoch)]
            if rec.label == 1:  # a FAKE stays as it is
                assert got["label"] == 1.0 and torch.equal(got["clip"], ref["clip"])
            elif got["label"] == 1.0:  # a self-blended REAL: changed, the same on every frame
                turned += 1
                assert not torch.equal(got["clip"], ref["clip"])
                torch.testing.assert_close(got["clip"][2], got["clip"][0])
            else:  # the other REAL clips draw the same augmentation as without blend
                kept += 1
                assert torch.equal(got["clip"], ref["clip"])
    assert abs(turned / (turned + kept) - data.BLEND_P) < 0.12
    assert all(plain[(i, 0)]["label"] == r.label for i, r in enumerate(plain.records))


# --- flip test-time augmentation ---------------------------------------------------------------


def test_flip_tta_is_the_mean_logit_of_both_views_outside_training():
    torch.manual_seed(0)
    model = create_model("frame", backbone="tiny", tta="flip")
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        tta = model(x)
        model.tta = "none"
        plain, mirrored = model(x), model(x.flip(-1))
    torch.testing.assert_close(tta, (plain + mirrored) / 2)
    assert not torch.allclose(plain, mirrored)  # the views differ: the mean is not a no-op
    model.tta = "flip"
    from pipeline.models.temporal import no_tta
    with torch.no_grad(), no_tta():
        torch.testing.assert_close(model(x), plain)
    model.train()  # training steps see the image as given (no doubled batch)
    torch.manual_seed(1)
    assert model(x).shape == (3,)
    with pytest.raises(ValueError, match="tta"):
        create_model("frame", backbone="tiny", tta="rot90")


def test_flip_tta_travels_in_the_checkpoint(tmp_path):
    cfg = TrainConfig(model="frame", backbone="tiny", tta="flip")
    from pipeline.models import model_kwargs_from
    assert model_kwargs_from(cfg)["tta"] == "flip"
    assert "tta" not in model_kwargs_from(TrainConfig(model="frame", backbone="tiny"))
    model = create_model("frame", **model_kwargs_from(cfg))
    path = C.save_checkpoint(tmp_path / "m.pt", {
        "model": {"name": model.model_name, "kwargs": model.model_kwargs},
        "state_dict": model.state_dict(), "epoch": 1, "config": {"seed": 0}})
    rebuilt = C.build_model(C.load_checkpoint(path))
    assert rebuilt.tta == "flip"
    assert C.build_model(C.load_checkpoint(path), as_model="frame_mean").frame.tta == "flip"


# --- derived thresholds of single-image videos -------------------------------------------------


def test_derived_threshold_of_one_frame_clips_reuses_the_predictions(tmp_path, monkeypatch):
    from pipeline.train.stage import derived_thresholds

    out = make_manifests(tmp_path, n_real={"val": 5}, n_fake={"val": 5}, n_frames=1, size=24)
    torch.manual_seed(0)
    model = create_model("frame", backbone="tiny").eval()
    loader = engine.make_loader(data.split_dataset(out, "val", "clip", image_size=24), 4)
    image_loader = engine.make_loader(data.split_dataset(out, "val", "image", image_size=24), 4)
    preds = engine.predict(model, image_loader, torch.device("cpu"))
    full = derived_thresholds(model, loader, torch.device("cpu"), "balanced_accuracy", 0.1)

    def no_second_pass(*a, **k):
        raise AssertionError("frame_pass ran although every clip has one frame")

    monkeypatch.setattr(engine, "frame_pass", no_second_pass)
    fast = derived_thresholds(model, loader, torch.device("cpu"), "balanced_accuracy", 0.1,
                              predictions=preds)
    assert fast["frame_mean"]["threshold"] == pytest.approx(full["frame_mean"]["threshold"], abs=1e-6)
    for k in ("roc_auc", "log_loss", "balanced_accuracy"):
        assert fast["frame_mean"]["metrics"][k] == pytest.approx(full["frame_mean"]["metrics"][k],
                                                                 abs=1e-6)


def test_derived_threshold_of_multi_frame_clips_runs_the_frame_pass(tmp_path, monkeypatch):
    from pipeline.train.stage import derived_thresholds

    out = make_manifests(tmp_path, n_real={"val": 3}, n_fake={"val": 3}, n_frames=3, size=24)
    model = create_model("frame", backbone="tiny").eval()
    loader = engine.make_loader(data.split_dataset(out, "val", "clip", image_size=24), 4)
    calls = []
    real_pass = engine.frame_pass
    monkeypatch.setattr(engine, "frame_pass", lambda *a, **k: calls.append(1) or real_pass(*a, **k))
    fake_preds = __import__("pandas").DataFrame({"video_id": ["x"], "label": [0], "p_fake": [0.5]})
    derived_thresholds(model, loader, torch.device("cpu"), "balanced_accuracy", 0.1,
                       predictions=fake_preds)
    assert calls == [1]
