"""``dfpipe manifest show|export`` and the Parquet manifest format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import cli
from pipeline.io import manifest


def _faces(root, n=7):
    return pd.DataFrame({"video_id": [f"v{i // 3}" for i in range(n)], "frame": range(n),
                         "track": 0, "x1": np.round(np.linspace(1, 900, n), 2), "y1": 2.5,
                         "x2": 1919.99, "y2": 1079.01,
                         "prob": [0.999991, np.nan] + [0.5] * (n - 2),
                         "crop_path": [str(root / f"v{i // 3}" / f"{i:04d}_0.jpg")
                                       for i in range(n)]})


def test_parquet_round_trip_is_exact_in_row_groups_with_column_selection(tmp_path):
    df = _faces(tmp_path / "faces", 2500)
    with manifest.ManifestWriter(tmp_path / "m" / "faces.parquet", "faces",
                                 faces_root=tmp_path / "faces", row_group_rows=1000) as w:
        for lo in range(0, len(df), 700):  # chunks as they come
            part = df.iloc[lo:lo + 700]
            w.write(part.assign(crop_path=manifest.relative_crop_paths(part["crop_path"],
                                                                       tmp_path / "faces")))
        w.close({"faces": len(df)})
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(tmp_path / "m" / "faces.parquet")
    assert pf.metadata.num_row_groups == 3 and pf.metadata.num_rows == 2500
    back = manifest.read_manifest(tmp_path / "m" / "faces.parquet", "faces")
    pd.testing.assert_frame_equal(back, manifest.validate(df, "faces"))  # float32 boxes: exact
    two = manifest.read_manifest(tmp_path / "m" / "faces.parquet", "faces", ["video_id", "frame"])
    assert list(two.columns) == ["video_id", "frame"] and len(two) == 2500
    rows = np.array([2400, 3, 1500, 3])
    got = manifest.take_rows(tmp_path / "m" / "faces.parquet", "faces", "crop_path", rows)
    assert got.to_pylist() == [f"v{i // 3}/{i:04d}_0.jpg" for i in rows]


def test_failed_write_keeps_the_previous_manifest(tmp_path):
    path = tmp_path / "split.parquet"
    good = pd.DataFrame({"video_id": ["a"], "label": ["REAL"], "group": ["a"], "split": ["train"]})
    manifest.write_manifest(good, path, "split")
    before = path.read_bytes()
    with pytest.raises(manifest.ManifestError), manifest.ManifestWriter(path, "split") as w:
        w.write(good)
        w.write(good.drop(columns=["group"]))  # not a split table
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_writing_parquet_replaces_a_legacy_csv_of_the_same_manifest(tmp_path):
    df = pd.DataFrame({"video_id": ["a"], "label": ["REAL"], "group": ["a"], "split": ["test"]})
    manifest.write_manifest(df, tmp_path / "split.csv", "split")
    assert manifest.manifest_path(tmp_path, "split") == tmp_path / "split.csv"
    manifest.write_manifest(df.assign(split="val"), tmp_path / "split.parquet", "split")
    assert not (tmp_path / "split.csv").exists()
    assert manifest.manifest_path(tmp_path, "split") == tmp_path / "split.parquet"
    # a reader asking for the old name gets the new file
    assert manifest.read_manifest(tmp_path / "split.csv", "split")["split"].tolist() == ["val"]


def test_show_and_export(tmp_path, capsys):
    df = _faces(tmp_path / "faces")
    path = manifest.write_manifest(df, tmp_path / "m" / "faces.parquet", "faces",
                                   faces_root=tmp_path / "faces", counts={"faces": 7})
    assert cli.main(["manifest", "show", str(path), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "kind      faces" in out and "rows      7" in out and "x1                  float" in out
    assert f"faces root {(tmp_path / 'faces').resolve()}" in out and "v0/0000_0.jpg" in out
    assert "v0/0002_0.jpg" not in out  # --rows 2
    assert cli.main(["-q", "manifest", "export", str(path), "--to", str(tmp_path / "f.csv")]) == 0
    csv = manifest.read_manifest(tmp_path / "f.csv", "faces")  # read back as a legacy manifest
    pd.testing.assert_frame_equal(csv, manifest.read_manifest(path, "faces", absolute_paths=False))
    assert cli.main(["-q", "manifest", "export", str(path), "--to", str(tmp_path / "a.csv"),
                     "--absolute-paths"]) == 0
    assert manifest.read_manifest(tmp_path / "a.csv", "faces")["crop_path"].tolist() == \
        df["crop_path"].tolist()
    assert cli.main(["-q", "manifest", "export", str(path)]) == 2  # no --to
    assert cli.main(["-q", "manifest", "frobnicate", str(path)]) == 2
    assert cli.main(["-q", "manifest", "show", str(tmp_path / "nope.parquet")]) == 2
