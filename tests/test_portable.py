"""Portable outputs: crop paths relative to a faces root recorded in the metadata.

A project folder (faces + manifests) moved elsewhere trains as before; a faces folder mounted
elsewhere is found through ``$DFPIPE_FACES_ROOT``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline import cli
from pipeline.io import manifest
from pipeline.train import data
from tests.train_fixtures import make_manifests


def _extract_like(project: Path) -> Path:
    """Crops under ``project/crops`` and the videos/faces manifests extract would write for them
    (one face per frame 0, 10, ..., 290), in ``project/manifests``."""
    mdir = make_manifests(project, n_real={"train": 5, "val": 3, "test": 3},
                          n_fake={"train": 5, "val": 3, "test": 3}, size=24)
    clips = manifest.read_manifest(mdir / "clips.csv", "clips")
    for p in mdir.iterdir():
        p.unlink()  # keep only what extract writes
    faces = pd.DataFrame({"video_id": clips["video_id"], "frame": clips["frame"].astype("int64"),
                          "track": 0, "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "prob": 0.99,
                          "crop_path": clips["crop_path"]})
    ids = clips.drop_duplicates("video_id")
    videos = pd.DataFrame({"video_id": ids["video_id"], "part": "p", "path": "",
                           "label": ids["label"], "original": "", "fps": 30.0, "n_frames": 300,
                           "width": 64, "height": 64,
                           "n_face_frames": 30, "n_faces": 30, "n_multi_face_frames": 0,
                           "n_tracks": 1, "status": "ok", "reason": "", "seconds": 0.1})
    manifest.write_manifest(videos, mdir / "videos.parquet", "videos")
    manifest.write_manifest(faces, mdir / "faces.parquet", "faces", faces_root=project / "crops")
    return mdir


def test_crop_paths_are_stored_relative_to_the_recorded_root(tmp_path):
    mdir = _extract_like(tmp_path / "proj")
    stored = manifest.read_manifest(mdir / "faces.parquet", "faces", absolute_paths=False)
    assert not stored["crop_path"].str.startswith("/").any()
    meta = manifest.read_meta(mdir / "faces.parquet")
    assert meta["faces_root"] == str((tmp_path / "proj" / "crops").resolve())
    assert meta["faces_root_rel"] == "../crops"
    (mdir / "faces.meta.json").unlink()  # the Parquet footer alone still knows the root
    full = manifest.read_manifest(mdir / "faces.parquet", "faces")
    assert Path(full["crop_path"].iloc[0]).is_file()


@pytest.mark.slow
def test_moved_project_trains_and_a_moved_faces_folder_is_found_by_env(tmp_path, monkeypatch):
    mdir = _extract_like(tmp_path / "proj")
    assert cli.main(["-q", "prepare", "--manifest-dir", str(mdir), "--min-faces", "30"]) == 0
    clips = manifest.read_manifest(mdir / "clips.parquet", "clips", absolute_paths=False)
    assert not clips["crop_path"].str.startswith("/").any()

    shutil.move(tmp_path / "proj", tmp_path / "elsewhere")  # faces + manifests together
    moved = tmp_path / "elsewhere" / "manifests"
    ds = data.split_dataset(moved, "train", "clip")
    assert ds.records[0].paths[0].startswith(str((tmp_path / "elsewhere" / "crops").resolve()))
    assert cli.main(["-q", "train", "--manifest-dir", str(moved), "--out-dir",
                     str(tmp_path / "ck"), "--epochs", "1", "--run-name", "r",
                     "--image-size", "16", "--batch-size", "4", "--threads", "1",
                     "--lstm-hidden", "8"]) == 0
    assert (tmp_path / "ck" / "r" / "best.pt").is_file()

    # the faces folder alone mounted somewhere else: not found by itself ...
    shutil.move(tmp_path / "elsewhere" / "crops", tmp_path / "mnt")
    with pytest.raises(data.CropReadError, match="cannot read face crop"):
        data.split_dataset(moved, "train", "clip")[0]
    # ... found through the override
    monkeypatch.setenv(manifest.ROOT_ENV, str(tmp_path / "mnt"))
    ds = data.split_dataset(moved, "train", "clip")
    assert ds[0]["clip"].shape[0] == 30


def test_extract_rebuild_streams_sorted_relative_rows(tmp_path, monkeypatch):
    """extract's manifest rebuild reads the per-video records in video order and hands them to
    the writer in chunks: sorted rows, crop paths relative to FACES_DIR, root in the metadata."""
    from pipeline.config import ExtractConfig
    from pipeline.extract import manifests as extract
    from pipeline.extract.worker import FACES_RECORD
    from pipeline.io.discovery import _row

    out, rows = tmp_path / "faces", []
    for vid in ("c", "a", "b"):  # finished in any order
        (out / vid).mkdir(parents=True)
        lines = ["frame,track,x1,y1,x2,y2,prob,crop"] + [
            f"{f},{t},1.25,2.50,30.00,40.00,0.999000,{f:04d}_{t}.jpg" for f in (2, 0, 1)
            for t in (1, 0)]
        (out / vid / FACES_RECORD).write_text("\n".join(lines) + "\n")
        rows.append(_row(video_id=vid, path=f"/v/{vid}.mp4", status="ok", n_faces=6))
    rows.append(_row(video_id="d", path="/v/d.mp4", status="read_error", reason="bad"))
    monkeypatch.setattr(extract, "FACE_CHUNK_ROWS", 4)
    cfg = ExtractConfig(out=str(out), manifest_dir=str(tmp_path / "m"))
    counts = extract.write_manifests(cfg, rows)
    assert counts["faces"] == 18 and counts["failed"] == 1
    f = manifest.read_manifest(tmp_path / "m" / "faces.parquet", "faces", absolute_paths=False)
    assert f["video_id"].tolist() == [v for v in "abc" for _ in range(6)]
    assert f[["frame", "track"]].head(6).values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1],
                                                             [2, 0], [2, 1]]
    assert f["crop_path"].iloc[0] == "a/0000_0.jpg"
    assert manifest.read_meta(tmp_path / "m" / "faces.parquet")["faces_root"] == str(out.resolve())
    v = manifest.read_manifest(tmp_path / "m" / "videos.parquet", "videos")
    assert v["video_id"].tolist() == ["a", "b", "c", "d"]
