"""Single-image videos: the Kaggle "deepfake_faces" layout (one crop per video) through
``extract --from-faces`` and ``prepare`` (no face-count filter, no frame sampler, byte-level
dedupe before the grouped split)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.io import manifest
from pipeline.train.data import ClipDataset, build_records


def _jpeg(path, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def _flat_set(root, groups: int = 6):
    """``faces_224/<id>.jpg`` + metadata.csv: per group one REAL and two FAKEs."""
    src = root / "faces_224"
    src.mkdir()
    lines = ["videoname,original_width,original_height,label,original"]
    k = 0
    for g in range(groups):
        real = f"r{g}"
        _jpeg(src / f"{real}.jpg", k := k + 1)
        lines.append(f"{real}.mp4,48,48,REAL,")
        for j in range(2):
            fake = f"f{g}_{j}"
            _jpeg(src / f"{fake}.jpg", k := k + 1)
            lines.append(f"{fake}.mp4,48,48,FAKE,{real}.mp4")
    meta = root / "metadata.csv"
    meta.write_text("\n".join(lines) + "\n")
    return src, meta


def _read(d, kind):
    return manifest.read_manifest(d / f"{kind}.csv", kind)


def test_import_flat_layout_one_image_per_video(tmp_path):
    src, meta = _flat_set(tmp_path, groups=2)
    (src / "broken.jpg").write_text("not an image")
    _jpeg(src / "r0.png", 99)  # a second file with the id r0
    with open(meta, "a") as f:
        f.write("gone.mp4,48,48,FAKE,r0.mp4\nbroken.mp4,48,48,REAL,\n")
    m = tmp_path / "m"
    rc = cli.main(["extract", "--from-faces", str(src), "--metadata", str(meta),
                   "--manifest-dir", str(m)])
    assert rc == 1  # gone, broken and the duplicate id are failures
    v = _read(m, "videos").set_index("video_id")
    f = _read(m, "faces")
    ok = v[v["status"] == "ok"]
    assert sorted(ok.index) == ["f0_0", "f0_1", "f1_0", "f1_1", "r0", "r1"]
    assert (ok["n_frames"] == 1).all() and (ok["n_faces"] == 1).all()
    assert (ok["width"] == 48).all() and (ok["height"] == 48).all()
    assert ok.loc["f1_0", "label"] == "FAKE" and ok.loc["f1_0", "original"] == "r1"
    assert v.loc["gone", "status"] == "missing_file"
    assert v.loc["broken", "status"] == "read_error" and "broken.jpg" in v.loc["broken", "reason"]
    dup = v[v["status"] == "duplicate_id"]
    assert len(dup) == 1 and dup["path"].iloc[0].endswith("r0.png")
    assert sorted(f["video_id"]) == sorted(ok.index) and (f["frame"] == 0).all()
    assert f.set_index("video_id").loc["r1", "crop_path"] == str((src / "r1.jpg").resolve())


def test_prepare_single_image_videos_skip_filter_and_sampler(tmp_path):
    src, meta = _flat_set(tmp_path, groups=6)
    m = tmp_path / "m"
    assert cli.main(["extract", "--from-faces", str(src), "--metadata", str(meta),
                     "--manifest-dir", str(m)]) == 0
    assert cli.main(["prepare", "--manifest-dir", str(m)]) == 0
    clips, split, gaps = _read(m, "clips"), _read(m, "split"), _read(m, "gaps")
    assert len(split) == 18 and len(_read(m, "outliers")) == 0 and len(gaps) == 0
    assert len(clips) == 18 * 30
    first = clips[clips["slot"] == 0]
    assert (first["mask"] == 1).all() and (first["frame"] == 0).all()
    assert (clips.loc[clips["slot"] > 0, "mask"] == 0).all()
    # grouped: every fake sits with its original
    where = split.set_index("video_id")["split"]
    for g in range(6):
        assert where[f"f{g}_0"] == where[f"f{g}_1"] == where[f"r{g}"]
    counts = manifest.read_meta(m / "split.csv")["counts"]
    assert counts["single_image_videos"] == 18 and counts["single_image_kept"] == 18
    # the frame model's dataset reads the image from slot 0
    recs = build_records(clips, split, "train")
    sample = ClipDataset(recs, mode="image", image_size=32)[0]
    assert sample["image"].shape == (3, 32, 32)


def test_identical_images_are_deduplicated_before_the_split(tmp_path):
    src, meta = _flat_set(tmp_path, groups=6)
    # f3_0 is a byte copy of f0_0 (same label): one is kept; r5 is a copy of f4_1 (labels differ):
    # neither is kept
    (src / "f3_0.jpg").write_bytes((src / "f0_0.jpg").read_bytes())
    (src / "r5.jpg").write_bytes((src / "f4_1.jpg").read_bytes())
    m = tmp_path / "m"
    assert cli.main(["extract", "--from-faces", str(src), "--metadata", str(meta),
                     "--manifest-dir", str(m)]) == 0
    assert cli.main(["prepare", "--manifest-dir", str(m), "--orphan-fakes", "keep"]) == 0
    out = _read(m, "outliers").set_index("video_id")["reason"].to_dict()
    assert out["f3_0"] == "duplicate_image: identical bytes to f0_0"
    assert out["r5"].startswith("duplicate_image:") and out["f4_1"].startswith("duplicate_image:")
    assert "f0_0" not in out
    split = _read(m, "split")
    assert not {"f3_0", "r5", "f4_1"} & set(split["video_id"])
    counts = manifest.read_meta(m / "split.csv")["counts"]
    assert counts["duplicate_images"] == 3


def test_single_image_and_regular_videos_mix(tmp_path):
    """Regular videos keep the 200-400 filter while single images bypass it."""
    from test_prepare import dataset, write_inputs

    videos, faces = dataset(n_originals=6, fakes=1)
    faces["o0"] = [(f, 0) for f in range(150)]  # too few faces: filtered as before
    write_inputs(tmp_path, videos, faces)
    v = _read(tmp_path, "videos")
    f = _read(tmp_path, "faces")
    extra_v, extra_f = [], []
    for i in range(6):
        img = tmp_path / f"s{i}.jpg"
        _jpeg(img, 100 + i)
        extra_v.append({**v.iloc[0].to_dict(), "video_id": f"s{i}", "path": str(img),
                        "label": "REAL" if i % 2 == 0 else "FAKE",
                        "original": "" if i % 2 == 0 else f"s{i - 1}", "n_frames": 1,
                        "n_faces": 1, "n_face_frames": 1})
        extra_f.append({**f.iloc[0].to_dict(), "video_id": f"s{i}", "frame": 0,
                        "crop_path": str(img)})
    import pandas as pd

    manifest.write_manifest(pd.concat([v, pd.DataFrame(extra_v)]), tmp_path / "videos.csv",
                            "videos")
    manifest.write_manifest(pd.concat([f, pd.DataFrame(extra_f)]), tmp_path / "faces.csv", "faces")
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path)]) == 0
    out = _read(tmp_path, "outliers").set_index("video_id")["reason"].to_dict()
    assert out["o0"] == "too_few_faces: 150 < 200"
    split = _read(tmp_path, "split")
    assert {f"s{i}" for i in range(6)} <= set(split["video_id"])
    clips = _read(tmp_path, "clips")
    assert clips[clips["video_id"] == "o1"]["mask"].sum() == 30
    assert clips[clips["video_id"] == "s0"]["mask"].sum() == 1


@pytest.mark.real_data
def test_real_deepfake_faces_folder_imports(tmp_path):
    """The shared dfdc_faces folder (22,943 crops) imports as single-image videos."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dfdc_faces"
    if not (root / "metadata.csv").is_file():
        pytest.skip(f"dfdc_faces not present at {root}")
    m = tmp_path / "m"
    assert cli.main(["extract", "--from-faces", str(root / "faces_224"), "--metadata",
                     str(root / "metadata.csv"), "--manifest-dir", str(m)]) == 0
    v = _read(m, "videos")
    assert len(v) == 22943 and (v["n_frames"] == 1).all()
    assert (v["label"] == "REAL").sum() == 8034 and (v["label"] == "FAKE").sum() == 14909
