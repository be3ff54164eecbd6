"""``dfpipe prepare`` through the CLI on hand-written videos/faces manifests."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.io import manifest


def write_inputs(d, videos: list[dict], faces: dict[str, list[tuple[int, int]]],
                 suffix: str = ".csv") -> None:
    """videos: dicts with video_id, label, original, n_frames[, status, n_faces]; faces: id -> rows."""
    vrows = []
    for v in videos:
        rows = faces.get(v["video_id"], [])
        vrows.append({"part": "p0", "path": f"/data/{v['video_id']}.mp4", "fps": 30.0,
                      "width": 480, "height": 270, "n_face_frames": len({f for f, _ in rows}),
                      "n_faces": v.get("n_faces", len(rows)), "n_multi_face_frames": 0,
                      "n_tracks": 1 + max((t for _, t in rows), default=0),
                      "status": v.get("status", "ok"), "reason": "", "seconds": 0.5,
                      **{k: v[k] for k in ("video_id", "label", "original", "n_frames")}})
    frows = [{"video_id": vid, "frame": f, "track": t, "x1": 1.0, "y1": 2.0, "x2": 50.0,
              "y2": 60.0, "prob": 0.99, "crop_path": f"/faces/{vid}/{f:04d}_{t}.jpg"}
             for vid, rows in faces.items() for f, t in rows]
    # default: the legacy CSV format of earlier versions (read, converted on read, by prepare)
    manifest.write_manifest(pd.DataFrame(vrows), d / f"videos{suffix}", "videos")
    manifest.write_manifest(pd.DataFrame(frows), d / f"faces{suffix}", "faces")


def dataset(n_originals: int = 6, fakes: int = 2):
    """A clean DFDC-like set: every video 300 frames with one face per frame."""
    videos, faces = [], {}
    for i in range(n_originals):
        o = f"o{i}"
        videos.append({"video_id": o, "label": "REAL", "original": "", "n_frames": 300})
        faces[o] = [(f, 0) for f in range(300)]
        for j in range(fakes):
            fid = f"{o}_f{j}"
            videos.append({"video_id": fid, "label": "FAKE", "original": o, "n_frames": 300})
            faces[fid] = [(f, 0) for f in range(300)]
    return videos, faces


def read_all(d):
    return {k: manifest.read_manifest(d / f"{k}.parquet", k)
            for k in ("outliers", "clips", "gaps", "split")}


def test_prepare_cli_writes_four_manifests_with_sidecars(tmp_path):
    videos, faces = dataset()
    # o0: too few faces -> its fakes are orphans; o1_f0: two faces in frames 0..14 (too many
    # faces AND slots 0 and 1 ambiguous) -> outlier; o2_f1: no face in frames 100..129, 190..199
    faces["o0"] = [(f, 0) for f in range(199)]
    faces["o1_f0"] += [(f, 1) for f in range(300)]  # two actors throughout: 600 crops
    faces["o2_f1"] = [(f, 0) for f in range(300) if not (100 <= f < 130 or 190 <= f < 200)]
    faces["o3"] = [(f, 0) for f in range(300) if f % 10 != 0]  # every slot advances by one
    faces["o4"] += [(f, 1) for f in [0, 1, 2, 3, 4, 20, 21, 22]]  # two faces: slots 0, 2 advance
    write_inputs(tmp_path, videos, faces)
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path)]) == 0
    m = read_all(tmp_path)

    out = m["outliers"].set_index("video_id")["reason"].to_dict()
    assert out == {
        "o0": "too_few_faces: 199 < 200",
        "o1_f0": "too_many_faces: 600 > 400",
        "o2_f1": "too_few_usable_frames: 26/30",
        "o0_f0": "orphan_fake: original o0 was left out",
        "o0_f1": "orphan_fake: original o0 was left out",
    }
    kept = {v["video_id"] for v in videos} - set(out)
    clips = m["clips"]
    assert set(clips["video_id"]) == kept and len(clips) == 30 * len(kept)
    assert (clips.groupby("video_id")["slot"].apply(list) == [list(range(30))] * len(kept)).all()
    assert (clips["mask"] == 1).all()
    assert clips.loc[clips["video_id"] == "o3", "frame"].tolist() == list(range(1, 300, 10))
    assert clips.loc[clips["video_id"] == "o4", "frame"].tolist()[:4] == [5, 10, 23, 30]
    assert clips.loc[clips["video_id"] == "o4", "crop_path"].iloc[3] == "/faces/o4/0030_0.jpg"

    gaps = m["gaps"]
    assert gaps[["video_id", "slot", "start_frame", "reason"]].values.tolist() == [
        ["o2_f1", 10, 100, "no_face"], ["o2_f1", 11, 110, "no_face"],
        ["o2_f1", 12, 120, "no_face"], ["o2_f1", 19, 190, "no_face"]]

    sp = m["split"]
    assert set(sp["video_id"]) == kept
    assert sp.groupby("group")["split"].nunique().max() == 1
    for s in ("train", "val", "test"):
        assert set(sp.loc[sp["split"] == s, "label"]) == {"REAL", "FAKE"}

    for kind in ("outliers", "clips", "gaps", "split"):
        meta = manifest.read_meta(tmp_path / f"{kind}.parquet")
        assert meta["kind"] == kind and meta["config"]["min_faces"] == 200
        assert set(meta["inputs"]) == {str(tmp_path / "videos.csv"), str(tmp_path / "faces.csv")}
        c = meta["counts"]
        assert c["videos_in"] == 18 and c["kept"] == len(kept)
        assert c["outliers_by_reason"] == {"orphan_fake": 2, "too_few_faces": 1,
                                          "too_few_usable_frames": 1, "too_many_faces": 1}
        assert c["orphan_fakes"] == 2 and c["short_clips_dropped"] == 1
        assert c["advanced_slots"] == 32
        assert sum(v["videos"] for v in c["split"].values()) == len(kept)


def test_prepare_pad_mode_masks_and_keep_orphans(tmp_path):
    videos, faces = dataset()
    faces["o0"] = [(f, 0) for f in range(150)]
    faces["o2_f1"] = [(f, 0) for f in range(300) if not (100 <= f < 130)]
    write_inputs(tmp_path, videos, faces)
    rc = cli.main(["prepare", "--manifest-dir", str(tmp_path), "--short-clips", "pad",
                   "--orphan-fakes", "keep", "--min-faces", "100"])
    assert rc == 0
    m = read_all(tmp_path)
    assert m["outliers"].empty
    c = m["clips"][m["clips"]["video_id"] == "o2_f1"]
    assert c["mask"].tolist() == [1] * 10 + [0] * 3 + [1] * 17
    pad = c[c["mask"] == 0]
    assert pad["frame"].isna().all() and (pad["crop_path"] == "").all()
    c0 = m["clips"][m["clips"]["video_id"] == "o0"]
    assert c0["mask"].tolist() == [1] * 15 + [0] * 15
    assert len(m["clips"]) == 30 * 18
    meta = manifest.read_meta(tmp_path / "clips.parquet")["counts"]
    assert meta["short_clips_padded"] == 2 and meta["padded_rows"] == 18


def test_prepare_uniform_sampler(tmp_path):
    videos, faces = dataset(3, 1)
    write_inputs(tmp_path, videos, faces)
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path), "--sampler", "uniform"]) == 0
    clips = manifest.read_manifest(tmp_path / "clips.parquet", "clips")
    frames = clips.loc[clips["video_id"] == "o0", "frame"].tolist()
    assert frames[0] == 0 and frames[-1] == 299 and frames[1] == 10 and frames[2] == 21


def test_prepare_missing_inputs_exit_2(tmp_path, capsys):
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path)]) == 2
    assert "videos.parquet: manifest not found" in capsys.readouterr().err
    assert not (tmp_path / "split.parquet").exists()


def test_prepare_impossible_split_exit_2(tmp_path, capsys):
    videos, faces = dataset(2, 1)
    write_inputs(tmp_path, videos, faces)
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path)]) == 2
    assert "only 2 group(s) contain a REAL video" in capsys.readouterr().err
    assert not (tmp_path / "split.parquet").exists() and not (tmp_path / "clips.parquet").exists()
    assert manifest.read_manifest(tmp_path / "outliers.parquet", "outliers").empty


def test_prepare_count_mismatch_is_an_outlier_and_exit_1(tmp_path):
    videos, faces = dataset(4, 1)
    videos[0]["n_faces"] = 250  # faces.csv has 300 rows for o0
    write_inputs(tmp_path, videos, faces)
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path)]) == 1
    out = manifest.read_manifest(tmp_path / "outliers.parquet", "outliers")
    assert out["reason"].tolist()[:2] == [
        "faces_mismatch: videos manifest n_faces 250, faces manifest has 300 rows",
        "orphan_fake: original o0 was left out",
    ]


@pytest.mark.parametrize("seed", [0, 3])
def test_prepare_deterministic(tmp_path, seed):
    videos, faces = dataset(8, 2)
    write_inputs(tmp_path, videos, faces)
    argv = ["prepare", "--manifest-dir", str(tmp_path), "--seed", str(seed)]
    assert cli.main(argv) == 0
    first = (tmp_path / "split.parquet").read_bytes()
    assert cli.main(argv) == 0
    assert (tmp_path / "split.parquet").read_bytes() == first
    meta = json.loads((tmp_path / "split.meta.json").read_text())
    assert meta["config"]["seed"] == seed


def test_prepare_merges_groups_that_share_an_identity(tmp_path):
    """FF++ naming: fake 004_982 shows person 982's face, who is also the REAL video 982. With
    --merge-groups auto (the default) groups 004 and 982 are one group in one split; with off
    they are two groups, and some seed puts them in different splits (the leak merging stops)."""
    videos, faces = dataset(6, 2)
    for vid, label, orig in (("004", "REAL", ""), ("982", "REAL", ""), ("004_982", "FAKE", "004"),
                             ("982_004", "FAKE", "982")):
        videos.append({"video_id": vid, "label": label, "original": orig, "n_frames": 300})
        faces[vid] = [(f, 0) for f in range(300)]
    write_inputs(tmp_path, videos, faces)
    ids = ["004", "982", "004_982", "982_004"]
    apart = 0
    for seed in range(6):
        assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path), "--seed", str(seed)]) == 0
        split = manifest.read_manifest(tmp_path / "split.parquet", "split").set_index("video_id")
        assert split.loc[ids, "group"].tolist() == ["004"] * 4
        assert split.loc[ids, "split"].nunique() == 1
        groups = json.loads((tmp_path / "split.meta.json").read_text())["counts"]["groups"]
        assert groups == {"merge_groups": "auto", "groups_by_original": 8, "groups": 7,
                          "merged_groups": {"004": ["004", "982"]}}
        assert json.loads((tmp_path / "split.meta.json").read_text())["config"]["merge_groups"] == "auto"

        assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path), "--seed", str(seed),
                         "--merge-groups", "off"]) == 0
        off = manifest.read_manifest(tmp_path / "split.parquet", "split").set_index("video_id")
        assert off.loc[ids, "group"].tolist() == ["004", "982", "004", "982"]
        apart += off.loc["004", "split"] != off.loc["982", "split"]
    assert apart > 0


# --- a synthetic set planned by `dfpipe synth`, faces as a perfect extractor would find them ----


def synth_manifests(d, truth: list[dict]) -> None:
    """videos.csv/faces.csv a perfect face extractor would write for ``synth_truth.json`` rows:
    one face per frame, none in ``no_face_frames``, a second (track 1) in ``two_face_frames``."""
    videos, faces = [], {}
    for c in truth:
        no_face, two = set(c["no_face_frames"]), set(c["two_face_frames"])
        rows = []
        for f in range(c["n_frames"]):
            if f not in no_face:
                rows.append((f, 0))
                if f in two:
                    rows.append((f, 1))
        faces[c["video_id"]] = rows
        videos.append({"video_id": c["video_id"], "label": c["label"], "n_frames": c["n_frames"],
                       "original": (c["original"] or "").removesuffix(".mp4")})
    write_inputs(d, videos, faces)


def expected_from_truth(truth: list[dict], lo=200, hi=400, n=30, stride=10, pad=False):
    """The designed outcome, computed from the truth alone (not with pipeline code)."""
    reasons, gaps, frames = {}, [], {}
    for c in truth:
        no_face, two = set(c["no_face_frames"]), set(c["two_face_frames"])
        n_faces = c["n_frames"] - len(no_face) + len(two)
        if n_faces < lo:
            reasons[c["video_id"]] = f"too_few_faces: {n_faces} < {lo}"
            continue
        if n_faces > hi:
            reasons[c["video_id"]] = f"too_many_faces: {n_faces} > {hi}"
            continue
        usable = [f for f in range(c["n_frames"]) if f not in no_face and f not in two]
        chosen = []
        for k in range(n):
            window = [f for f in usable if k * stride <= f < (k + 1) * stride]
            if window:
                chosen.append(window[0])
            else:
                chosen.append(None)
                seen = [f for f in range(k * stride, (k + 1) * stride) if f < c["n_frames"]]
                why = ("past_end" if not seen else
                       "multi_face" if any(f in two for f in seen) else "no_face")
                gaps.append([c["video_id"], k, k * stride, why])
        if not pad and len(gaps) and gaps[-1][0] == c["video_id"]:
            got = sum(g[0] == c["video_id"] for g in gaps)
            reasons[c["video_id"]] = f"too_few_usable_frames: {n - got}/{n}"
        else:
            frames[c["video_id"]] = chosen
    ids = {c["video_id"] for c in truth}
    for c in truth:
        o = (c["original"] or "").removesuffix(".mp4")
        if c["video_id"] not in reasons and o in ids and o in reasons:
            reasons[c["video_id"]] = f"orphan_fake: original {o} was left out"
    return reasons, gaps, frames


def test_prepare_on_synth_plan_exactly_as_designed(tmp_path):
    from pipeline.config import SynthConfig
    from pipeline.synth.dataset import plan_dataset

    cfg = SynthConfig(n_originals=10, fakes_per_original=2, outlier_share=0.2,
                      two_face_share=0.3, gap_share=0.3, seed=5)
    truth = [s.truth() for s in plan_dataset(cfg)]
    synth_manifests(tmp_path, truth)
    assert cli.main(["prepare", "--manifest-dir", str(tmp_path), "--seed", "1"]) == 0
    m = read_all(tmp_path)
    reasons, gaps, frames = expected_from_truth(truth)
    codes = {r.split(":")[0] for r in reasons.values()}
    assert codes == {"too_few_faces", "too_many_faces", "too_few_usable_frames"}
    assert m["outliers"].set_index("video_id")["reason"].to_dict() == reasons
    assert m["gaps"].astype({"start_frame": "int64"}).values.tolist() == gaps
    got = m["clips"].groupby("video_id")["frame"].apply(list).to_dict()
    assert got == frames
    sp = m["split"]
    assert set(sp["video_id"]) == set(frames)
    by_id = dict(zip(sp["video_id"], sp["split"], strict=True))
    for c in truth:
        o = (c["original"] or "").removesuffix(".mp4")
        if c["video_id"] in by_id and o:
            assert by_id[c["video_id"]] == by_id[o]
    for s in ("train", "val", "test"):
        assert set(sp.loc[sp["split"] == s, "label"]) == {"REAL", "FAKE"}


def test_prepare_on_synth_plan_two_face_kept_and_padded(tmp_path):
    from pipeline.config import SynthConfig
    from pipeline.synth.dataset import plan_dataset

    cfg = SynthConfig(n_originals=10, fakes_per_original=2, outlier_share=0.2,
                      two_face_share=0.3, gap_share=0.3, seed=5)
    truth = [s.truth() for s in plan_dataset(cfg)]
    synth_manifests(tmp_path, truth)
    argv = ["prepare", "--manifest-dir", str(tmp_path), "--max-faces", "500", "--short-clips", "pad"]
    assert cli.main(argv) == 0
    m = read_all(tmp_path)
    reasons, gaps, frames = expected_from_truth(truth, hi=500, pad=True)
    assert m["outliers"].set_index("video_id")["reason"].to_dict() == reasons
    assert m["gaps"].astype({"start_frame": "int64"}).values.tolist() == gaps
    assert {g[3] for g in gaps} == {"no_face", "multi_face"}
    clips = m["clips"]
    got = {k: [None if pd.isna(f) else int(f) for f in v]
           for k, v in clips.groupby("video_id")["frame"].apply(list).items()}
    assert got == frames
    assert any(f is not None and f % 10 for fs in frames.values() for f in fs)  # slots advanced
    assert (clips["mask"] == clips["frame"].notna().astype(int)).all()


@pytest.mark.slow
def test_prepare_after_real_extract_on_synth_dir(synth_dir, tmp_path):
    """synth -> extract (real MTCNN, CPU) -> prepare, with the window and clip length scaled to the
    fixture's 60-frame clips (window 40-100 keeps its two-face group). Its 2 groups cannot make 3
    splits, so prepare exits 2 after writing outliers/gaps, which must match the synthetic truth
    exactly: real detections put the no_face and multi_face gaps exactly where synth drew them."""
    import torch

    from pipeline.synth.dataset import load_truth

    torch.set_num_threads(1)
    m = tmp_path / "m"
    assert cli.main(["extract", str(synth_dir), "--out", str(tmp_path / "faces"),
                     "--manifest-dir", str(m), "--engine", "inline", "--workers", "1"]) == 0
    argv = ["prepare", "--manifest-dir", str(m), "--min-faces", "40", "--max-faces", "100",
            "--n-frames", "6", "--short-clips", "pad"]
    assert cli.main(argv) == 2
    truth = load_truth(synth_dir)
    reasons, gaps, _ = expected_from_truth(truth, lo=40, hi=100, n=6, pad=True)
    out = manifest.read_manifest(m / "outliers.parquet", "outliers")
    assert out.set_index("video_id")["reason"].to_dict() == reasons
    got = manifest.read_manifest(m / "gaps.parquet", "gaps")
    assert sorted(got.astype({"start_frame": "int64"}).values.tolist()) == sorted(gaps)
    assert {g[3] for g in gaps} == {"no_face", "multi_face"}


def test_the_four_manifests_are_one_set_and_clips_split_are_checked_together(tmp_path):
    import shutil

    from pipeline.core.errors import ManifestError
    from pipeline.train.data import read_clips_and_split

    videos, faces = dataset(8, 2)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_inputs(tmp_path / d, videos, faces)
    assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / "a"), "--seed", "0"]) == 0
    assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / "b"), "--seed", "5"]) == 0
    ids = {json.loads((tmp_path / "a" / f"{k}.meta.json").read_text())["prepare_id"]
           for k in ("outliers", "clips", "gaps", "split")}
    assert len(ids) == 1 and len(ids.pop()) == 32
    clips, split = read_clips_and_split(tmp_path / "a")  # one set: accepted
    assert set(clips["video_id"]) == set(split["video_id"])

    # b's split (another seed) beside a's clips: refused, naming both files
    for name in ("split.parquet", "split.meta.json"):
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(ManifestError, match="not from one `dfpipe prepare` run") as e:
        read_clips_and_split(tmp_path / "a")
    assert str(tmp_path / "a" / "clips.parquet") in str(e.value)
    assert str(tmp_path / "a" / "split.parquet") in str(e.value)

    # a split edited by hand after prepare (its sidecar no longer matches): refused
    assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / "a")]) == 0
    edited = manifest.read_manifest(tmp_path / "a" / "split.parquet", "split")
    edited.loc[edited.index[edited["split"] == "test"][:1], "split"] = "train"
    pq.write_table(pa.Table.from_pandas(edited, preserve_index=False),
                   tmp_path / "a" / "split.parquet")
    with pytest.raises(ManifestError, match="changed after `dfpipe prepare` wrote it"):
        read_clips_and_split(tmp_path / "a")
    # and through the CLI: a one-line error, exit 2
    assert cli.main(["-q", "train", "--manifest-dir", str(tmp_path / "a"), "--out-dir",
                     str(tmp_path / "ck"), "--epochs", "1"]) == 2


def test_legacy_csv_folder_gives_the_same_result_as_parquet(tmp_path):
    """A manifest folder written by an earlier version (videos.csv + faces.csv + sidecars) is
    converted on read: prepare writes the same four manifests as from the Parquet folder."""
    videos, faces = dataset(8, 2)
    faces["o1"] = [(f, 0) for f in range(0, 300, 2)] + [(f, 1) for f in range(0, 300, 7)]
    faces["o2_f0"] = [(f, 0) for f in range(250)]  # short: dropped
    faces["o3"] = sorted(faces["o3"] + [(10, 1), (20, 1)])  # multi-face frames: advanced slots
    for d, suffix in (("legacy", ".csv"), ("new", ".parquet")):
        write_inputs(tmp_path / d, videos, faces, suffix)
        assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / d)]) == 0
    assert (tmp_path / "legacy" / "faces.csv").is_file()
    assert not (tmp_path / "legacy" / "faces.parquet").exists()
    old, new = read_all(tmp_path / "legacy"), read_all(tmp_path / "new")
    for kind in old:
        pd.testing.assert_frame_equal(old[kind], new[kind], obj=kind)
    assert manifest.read_meta(tmp_path / "new" / "clips.parquet")["counts"]["advanced_slots"] > 0
    assert len(old["outliers"]) and len(old["gaps"])


def test_prepare_samples_in_batches_with_the_same_result(tmp_path, monkeypatch):
    """Videos are sampled in batches (bounded memory): batches of 3 videos give the manifests
    one batch gives."""
    from pipeline.prepare import columns as prepare_columns

    videos, faces = dataset(8, 2)
    faces["o1"] = [(f, 0) for f in range(150)]  # slots 15..29 are gaps: padded
    faces["o4_f1"] = sorted(faces["o4_f1"] + [(30, 1), (40, 1)])
    for d, batch in (("one", 10_000), ("many", 3)):
        write_inputs(tmp_path / d, videos, faces, ".parquet")
        monkeypatch.setattr(prepare_columns, "SAMPLE_BATCH", batch)
        assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / d), "--short-clips",
                         "pad", "--min-faces", "100"]) == 0
    one, many = read_all(tmp_path / "one"), read_all(tmp_path / "many")
    for kind in one:
        pd.testing.assert_frame_equal(one[kind], many[kind], obj=kind)
    assert (one["clips"]["mask"] == 0).any()


def test_face_rows_out_of_order_are_sorted_on_read(tmp_path):
    """A faces manifest whose rows are not in (video, frame, track) order (hand-written, or
    concatenated) gives the same result as the sorted one."""
    videos, faces = dataset(6, 2)
    faces["o2"] = sorted(faces["o2"] + [(20, 1)])
    write_inputs(tmp_path / "sorted", videos, faces, ".parquet")
    write_inputs(tmp_path / "shuffled", videos, faces, ".parquet")
    f = manifest.read_manifest(tmp_path / "shuffled" / "faces.parquet", "faces")
    manifest.write_manifest(f.sample(frac=1, random_state=1), tmp_path / "shuffled" /
                            "faces.parquet", "faces")
    for d in ("sorted", "shuffled"):
        assert cli.main(["-q", "prepare", "--manifest-dir", str(tmp_path / d)]) == 0
    a, b = read_all(tmp_path / "sorted"), read_all(tmp_path / "shuffled")
    for kind in a:
        pd.testing.assert_frame_equal(a[kind], b[kind], obj=kind)
