"""The scale benchmark's generator writes manifests prepare accepts (a tiny size; the timing
itself lives in ``dfpipe bench --what scale``, never in tests)."""

from __future__ import annotations

from pipeline import cli
from pipeline.bench.child import run_child
from pipeline.bench.scale import generate, markdown
from pipeline.io import manifest


def test_generated_manifests_are_consistent_and_prepare_runs(tmp_path):
    got = generate(tmp_path, 60, seed=1)
    videos = manifest.read_manifest(tmp_path / "videos.parquet", "videos")
    faces = manifest.read_manifest(tmp_path / "faces.parquet", "faces", ["video_id", "frame"])
    assert got == {"videos": 60, "face_rows": len(faces)}
    per_video = faces.groupby("video_id").size()
    assert (videos.set_index("video_id")["n_faces"] == per_video.reindex(videos["video_id"])
            .fillna(0).to_numpy()).all()
    fakes = videos[videos["label"] == "FAKE"]
    assert set(fakes["original"]) <= set(videos.loc[videos["label"] == "REAL", "video_id"])
    assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path)]) == 0
    assert len(manifest.read_manifest(tmp_path / "split.parquet", "split")) > 0


def test_run_child_reports_its_own_peak_memory(tmp_path):
    small = run_child("pass", [])
    touch = "import sys\nb = bytearray(int(sys.argv[1]) << 20)\nb[::4096] = b'x' * len(b[::4096])"
    big = run_child(touch, ["400"])  # 400 MiB touched page by page
    assert small["rc"] == big["rc"] == 0
    assert big["peak_rss_mib"] >= small["peak_rss_mib"] + 350
    lines = markdown({"generate": {"videos": 1, "face_rows": 2, "seconds": 0.1},
                      "prepare": small, "train_index": big, "storage_mib": {"faces.parquet": 1}})
    assert any(line.startswith("| prepare |") for line in lines)
