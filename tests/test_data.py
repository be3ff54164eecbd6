"""Datasets and the shared preprocessing (crops -> normalized tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_fixtures import make_manifests

from pipeline.core.errors import ManifestError
from pipeline.train import data


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    return make_manifests(root, n_frames=6, size=24,
                          pad_slots={"train_real_000": [0, 3], "train_fake_001": [2, 3, 4]})


def test_crops_to_tensor_normalizes_with_the_one_set_of_constants():
    crop = np.zeros((4, 4, 3), np.uint8)
    crop[..., 0] = 255
    x = data.crops_to_tensor([crop, crop], 4)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    expect = [(1 - data.MEAN[0]) / data.STD[0], -data.MEAN[1] / data.STD[1], -data.MEAN[2] / data.STD[2]]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expect))
    assert data.crops_to_tensor([np.zeros((10, 8, 3), np.uint8)], 6).shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match="RGB uint8"):
        data.crops_to_tensor([np.zeros((4, 4), np.uint8)], 4)


def test_load_crop_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(data.CropReadError, match="broken.jpg"):
        data.load_crop(bad)
    with pytest.raises(data.CropReadError, match="missing.jpg"):
        data.load_crop(tmp_path / "missing.jpg")


def test_clip_samples_have_layout_mask_label_and_zero_padding(manifests):
    ds = data.split_dataset(manifests, "train", "clip", image_size=24)
    assert len(ds) == 12
    s = ds[ds.records.index(next(r for r in ds.records if r.video_id == "train_real_000"))]
    assert s["clip"].shape == (6, 3, 24, 24)
    assert s["mask"].tolist() == [0, 1, 1, 0, 1, 1]
    assert s["label"].item() == 0.0 and s["video_id"] == "train_real_000"
    assert torch.count_nonzero(s["clip"][[0, 3]]) == 0
    assert torch.count_nonzero(s["clip"][1]) > 0
    fake = ds[[r.video_id for r in ds.records].index("train_fake_000")]
    assert fake["label"].item() == 1.0


def test_image_mode_takes_frame_index_or_nearest_valid_slot(manifests):
    ds = data.split_dataset(manifests, "train", "image", image_size=24, frame_index=3)
    clips = data.split_dataset(manifests, "train", "clip", image_size=24)
    ids = [r.video_id for r in ds.records]
    i = ids.index("train_fake_001")  # slots 2, 3, 4 padded: nearest valid to 3 is 1 (tie with 5)
    torch.testing.assert_close(ds[i]["image"], clips[i]["clip"][1])
    j = ids.index("train_fake_000")
    torch.testing.assert_close(ds[j]["image"], clips[j]["clip"][3])
    assert set(ds[j]) == {"image", "label", "video_id"}
    assert data.nearest_valid_slot([0, 0, 1, 0, 1], 3) == 2
    assert data.nearest_valid_slot([1, 1, 1], 1) == 1


def test_augmentation_is_identical_on_every_frame_and_reproducible():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for seed in range(20):
        aug = data.ClipAugment.sample(("flip", "color", "jpeg"), np.random.default_rng(seed))
        a, b = aug(frame), aug(frame.copy())
        assert np.array_equal(a, b)
    aug = data.ClipAugment(flip=True)
    assert np.array_equal(aug(frame), frame[:, ::-1])
    assert np.array_equal(data.ClipAugment.identity()(frame), frame)
    with pytest.raises(ValueError, match="unknown augmentation"):
        data.ClipAugment.sample(("sharpen",), rng)


def test_augmented_clip_frames_share_the_same_parameters(tmp_path):
    # a clip whose frames are all the same crop stays all-equal after augmentation
    out = make_manifests(tmp_path, n_real={"train": 1}, n_fake={}, n_frames=4, size=24, flicker=0.0)
    ds = data.split_dataset(out, "train", "clip", image_size=24, augment=("flip", "color", "jpeg"))
    flipped = 0
    for epoch in range(8):
        clip = ds[(0, epoch)]["clip"]
        for t in range(1, 4):
            torch.testing.assert_close(clip[t], clip[0])
        flipped += int(not torch.equal(clip, ds[0]["clip"]))
        torch.testing.assert_close(ds[(0, epoch)]["clip"], clip)  # same (seed, epoch, index)
    assert flipped > 0


def test_missing_crop_raises_with_the_file_name(tmp_path):
    out = make_manifests(tmp_path, n_real={"train": 1}, n_fake={}, n_frames=3, size=16)
    victim = tmp_path / "crops" / "train_real_000" / "001.jpg"
    victim.unlink()
    ds = data.split_dataset(out, "train", "clip", image_size=16)
    with pytest.raises(data.CropReadError, match="001.jpg"):
        ds[0]


def test_split_without_clip_rows_is_a_manifest_error(manifests):
    clips, split = data.read_clips_and_split(manifests)
    with pytest.raises(ManifestError, match="no rows for video train_real_001"):
        data.build_records(clips[clips["video_id"] != "train_real_001"], split, "train")
    with pytest.raises(ManifestError, match="slots"):
        data.build_records(clips[clips["slot"] != 2], split, "train")
