"""Sharding without Ray: ``extract --shard I/N`` + ``dfpipe merge`` give the manifests of one
unsharded run; the assignment is stable; incomplete or inconsistent shard sets are refused."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import cli
from pipeline.core.errors import ConfigError
from pipeline.engines.shards import in_shard, parse_shard, shard_of
from pipeline.io.manifest import read_manifest


def test_parse_and_assign():
    assert parse_shard("") is None and parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/3", "1/2/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    ids = [f"v{i:03d}" for i in range(200)]
    # stable values (sha256-based, not Python's salted hash()), every id in exactly one shard
    assert [shard_of(v, 4) for v in ids[:6]] == [shard_of(v, 4) for v in ids[:6]]
    assert shard_of("aaaoqepxnf", 7) == int(__import__("hashlib").sha256(
        b"aaaoqepxnf").hexdigest()[:16], 16) % 7
    for v in ids:
        assert sum(in_shard(v, (i, 3)) for i in range(3)) == 1
    sizes = [sum(shard_of(v, 4) == i for v in ids) for i in range(4)]
    assert min(sizes) > 30  # roughly balanced


def _manifests(d):
    v = read_manifest(d / "videos.csv", "videos").drop(columns=["seconds"])
    f = read_manifest(d / "faces.csv", "faces")
    return v, f


def test_sharded_extract_merges_to_the_unsharded_result(synth_dir, tmp_path):
    common = ["--engine", "inline", "--detect-every", "6", "--scale", "0.5", "--crop-size", "32"]
    assert cli.main(["extract", str(synth_dir), "--out", str(tmp_path / "ref"),
                     "--manifest-dir", str(tmp_path / "mref"), *common]) == 0
    faces = tmp_path / "faces"  # shared by the shards
    for i in range(3):
        assert cli.main(["extract", str(synth_dir), "--out", str(faces), "--manifest-dir",
                         str(tmp_path / f"m{i}"), "--shard", f"{i}/3", *common]) == 0
    sizes = [len(read_manifest(tmp_path / f"m{i}" / "videos.csv", "videos")) for i in range(3)]
    assert sum(sizes) == 4
    # an incomplete set is refused, naming the missing shard
    assert cli.main(["merge", str(tmp_path / "m0"), str(tmp_path / "m1"), "--manifest-dir",
                     str(tmp_path / "merged")]) == 2
    assert cli.main(["merge", *(str(tmp_path / f"m{i}") for i in range(3)), "--manifest-dir",
                     str(tmp_path / "merged")]) == 0
    v_ref, f_ref = _manifests(tmp_path / "mref")
    v, f = _manifests(tmp_path / "merged")
    pd.testing.assert_frame_equal(v, v_ref)
    # the same faces, crops in the shared folder
    strip = lambda df: df.assign(crop_path=df["crop_path"].map(lambda p: p.rsplit("/", 2)[-2:]))  # noqa: E731
    pd.testing.assert_frame_equal(strip(f), strip(f_ref))


def test_merge_refuses_mixed_parameters_and_repeats(synth_dir, tmp_path):
    base = ["--engine", "inline", "--detect-every", "6", "--scale", "0.5", "--crop-size", "32"]
    assert cli.main(["extract", str(synth_dir), "--out", str(tmp_path / "f"), "--manifest-dir",
                     str(tmp_path / "a"), "--shard", "0/2", *base]) == 0
    other = [a if a != "32" else "48" for a in base]
    assert cli.main(["extract", str(synth_dir), "--out", str(tmp_path / "g"), "--manifest-dir",
                     str(tmp_path / "b"), "--shard", "1/2", *other]) == 0
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "b"),
                     "--manifest-dir", str(tmp_path / "m")]) == 2
    assert cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "a"),
                     "--manifest-dir", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m" / "videos.csv").exists()


def test_a_shard_leaves_other_shards_writes_alone(tmp_path):
    from pipeline.core.fsutil import TMP_PREFIX, remove_stale_temps

    ids = [f"v{i}" for i in range(12)]
    for v in ids:
        (tmp_path / f"{TMP_PREFIX}{v}.abc123").mkdir()
    n = remove_stale_temps(tmp_path, lambda name: in_shard(name, (0, 3)))
    left = sorted(p.name.split(".")[1].removeprefix("tmp-") for p in tmp_path.iterdir())
    assert n == sum(shard_of(v, 3) == 0 for v in ids)
    assert left == sorted(v for v in ids if shard_of(v, 3) != 0)


def test_sharded_scoring_merges_to_the_unsharded_result(tiny_checkpoint, clip_factory, tmp_path):
    from pipeline.score.batch import read_journal

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        clip_factory(videos / f"c{i}.mp4", 12, seed=i)
    # 4 shards of 4 videos: some shard is likely to get none, and must still merge
    base = ["--checkpoint", str(tiny_checkpoint), "--engine", "inline", "--device", "cpu",
            "--min-frames", "1"]
    assert cli.main(["score", str(videos), "--out", str(tmp_path / "all.jsonl"), *base]) == 0
    for i in range(4):
        assert cli.main(["score", str(videos), "--out", str(tmp_path / f"r{i}.jsonl"),
                         "--shard", f"{i}/4", *base]) == 0
    assert cli.main(["merge", str(tmp_path / "r0.jsonl"), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert cli.main(["merge", *(str(tmp_path / f"r{i}.jsonl") for i in range(4)),
                     "--out", str(tmp_path / "m.jsonl")]) == 0
    ref = {r["path"]: r["p_fake"] for r in read_journal(tmp_path / "all.jsonl")}
    got = {r["path"]: r["p_fake"] for r in read_journal(tmp_path / "m.jsonl")}
    assert got == ref and len(got) == 4 and all(p is not None for p in got.values())
    # another threshold in one shard: not one set
    assert cli.main(["score", str(videos), "--out", str(tmp_path / "t1.jsonl"), "--shard", "1/4",
                     "--threshold", "0.9", *base]) == 0
    assert cli.main(["merge", str(tmp_path / "r0.jsonl"), str(tmp_path / "t1.jsonl"),
                     *(str(tmp_path / f"r{i}.jsonl") for i in (2, 3)),
                     "--out", str(tmp_path / "bad.jsonl")]) == 2


def test_merge_streams_faces_video_by_video_across_row_groups(tmp_path, monkeypatch):
    """The merge interleaves the shards' sorted faces video by video (a k-way merge over their
    row groups, a video split across two row groups included) and keeps crop paths relative
    to the shared faces root."""
    import numpy as np
    import pandas as pd

    from pipeline.engines.shards import in_shard
    from pipeline.extract.merge import merge_extract
    from pipeline.extract.worker import RESULT_PARAMS
    from pipeline.io import manifest

    root = tmp_path / "faces"
    root.mkdir()
    ids = [f"v{i:02d}" for i in range(12)]
    rows = [(v, f, t) for v in ids for f in range(int(v[1:]) % 4 + 1) for t in (0, 1)]
    for i in range(2):
        mine = [v for v in ids if in_shard(v, (i, 2))]
        conf = {"shard": f"{i}/2", **dict.fromkeys(RESULT_PARAMS, 1)}
        videos = pd.DataFrame({"video_id": mine, "part": "", "path": "", "label": "REAL",
                               "original": "", "fps": 25.0, "n_frames": 10, "width": 8,
                               "height": 8, "n_face_frames": 1, "n_faces": 1,
                               "n_multi_face_frames": 0, "n_tracks": 1, "status": "ok",
                               "reason": "", "seconds": 0.0})
        faces = pd.DataFrame([r for r in rows if r[0] in mine], columns=["video_id", "frame",
                                                                          "track"])
        faces = faces.assign(x1=1.0, y1=1.0, x2=2.0, y2=2.0, prob=np.nan,
                             crop_path=[str(root / v / f"{f:04d}_{t}.jpg")
                                        for v, f, t in faces.itertuples(index=False)])
        d = tmp_path / f"m{i}"
        manifest.write_manifest(videos, d / "videos.parquet", "videos", config=conf)
        with manifest.ManifestWriter(d / "faces.parquet", "faces", config=conf, faces_root=root,
                                     row_group_rows=5) as w:
            w.write(faces.assign(crop_path=manifest.relative_crop_paths(faces["crop_path"], root)))
            w.close()
        import pyarrow.parquet as pq
        assert pq.ParquetFile(d / "faces.parquet").metadata.num_row_groups > 1  # what is tested
    counts = merge_extract([tmp_path / "m1", tmp_path / "m0"], tmp_path / "out")
    assert counts["faces"] == len(rows)
    got = manifest.read_manifest(tmp_path / "out" / "faces.parquet", "faces", absolute_paths=False)
    assert list(got[["video_id", "frame", "track"]].itertuples(index=False, name=None)) == rows
    assert got["crop_path"].iloc[0] == "v00/0000_0.jpg"
    assert manifest.read_meta(tmp_path / "out" / "faces.parquet")["faces_root"] == str(root)
