"""Grouped split: no leakage, both labels per split, determinism, impossible cases, FF++."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.core.errors import SplitError
from pipeline.prepare.splits import (
    assign_groups,
    check_split,
    split_counts,
    split_groups,
    split_summary,
)


def dfdc_like(n_originals: int, fakes: int | list[int] = 2) -> pd.DataFrame:
    """REAL originals o000.. each with some fakes o000_f0, ..."""
    rows = []
    for i in range(n_originals):
        o = f"o{i:03d}"
        rows.append((o, "REAL", ""))
        k = fakes if isinstance(fakes, int) else fakes[i % len(fakes)]
        rows += [(f"{o}_f{j}", "FAKE", o) for j in range(k)]
    return pd.DataFrame(rows, columns=["video_id", "label", "original"])


def assert_sound(videos: pd.DataFrame, split: pd.DataFrame) -> None:
    assert split["video_id"].tolist() == videos["video_id"].tolist()
    assert split.groupby("group")["split"].nunique().max() == 1
    for s in ("train", "val", "test"):
        assert set(split.loc[split["split"] == s, "label"]) == {"REAL", "FAKE"}
    fakes = split[split["label"] == "FAKE"].merge(
        videos[["video_id", "original"]], on="video_id")
    reals = dict(zip(split["video_id"], split["split"], strict=True))
    for _, r in fakes.iterrows():
        if r["original"] in reals:
            assert reals[r["original"]] == r["split"]


def test_groups():
    v = pd.DataFrame({"video_id": ["a", "a_1", "x_9", "lonely"],
                      "label": ["REAL", "FAKE", "FAKE", "FAKE"],
                      "original": ["", "a", "x", ""]})
    assert assign_groups(v).tolist() == ["a", "a", "x", "lonely"]


def test_split_counts():
    assert split_counts(100, 0.2, 0.2) == {"train": 64, "val": 16, "test": 20}
    assert split_counts(4, 0.2, 0.2) == {"train": 2, "val": 1, "test": 1}
    assert split_counts(3, 0.2, 0.2) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(SplitError, match="at least 3"):
        split_counts(2, 0.2, 0.2)


def test_split_shares_no_leak_and_stratified():
    v = dfdc_like(100, [1, 2, 5, 9])
    sp = split_groups(v, 0.2, 0.2, seed=0)
    assert_sound(v, sp)
    summ = split_summary(sp)
    assert {s: d["groups"] for s, d in summ.items()} == {"train": 64, "val": 16, "test": 20}
    # every group size is spread in proportion: each split's fake share is close to the whole's
    overall = (v["label"] == "FAKE").mean()
    for d in summ.values():
        assert abs(d["fake_share"] - overall) < 0.03
    assert sum(d["videos"] for d in summ.values()) == len(v)


def test_split_deterministic_and_seed_dependent():
    v = dfdc_like(40, [1, 3])
    a = split_groups(v, seed=7)
    b = split_groups(v.copy(), seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = split_groups(v, seed=8)
    assert not a["split"].equals(c["split"])
    # row order of the input does not change the assignment
    d = split_groups(v.iloc[::-1].reset_index(drop=True), seed=7)
    assert dict(zip(d["video_id"], d["split"], strict=True)) == dict(
        zip(a["video_id"], a["split"], strict=True))


def test_small_set_gets_both_labels_everywhere():
    # 6 originals x 2 fakes: the synthetic default
    v = dfdc_like(6, 2)
    for seed in range(20):
        assert_sound(v, split_groups(v, seed=seed))
    # separate real-only and fake-only groups (fakes whose originals are absent)
    v = pd.DataFrame({"video_id": ["r1", "r2", "r3", "f1", "f2", "f3"],
                      "label": ["REAL"] * 3 + ["FAKE"] * 3,
                      "original": ["", "", "", "x1", "x2", "x3"]})
    for seed in range(10):
        sp = split_groups(v, seed=seed)
        assert_sound(v, sp)


def test_impossible_splits_say_why():
    v = dfdc_like(2, 2)
    with pytest.raises(SplitError, match="only 2 group"):
        split_groups(v)
    v = pd.DataFrame({"video_id": ["r1", "f1", "f2", "f3", "f4"],
                      "label": ["REAL", "FAKE", "FAKE", "FAKE", "FAKE"],
                      "original": ["", "r1", "x", "y", "z"]})
    with pytest.raises(SplitError, match="contain a REAL"):
        split_groups(v)


def test_check_split_catches_leak_and_missing_label():
    v = dfdc_like(6, 1)
    sp = split_groups(v)
    check_split(sp)
    leak = sp.copy()
    i = leak.index[leak["label"] == "FAKE"][0]
    leak.loc[i, "split"] = next(s for s in ("train", "val", "test") if s != leak.loc[i, "split"])
    with pytest.raises(SplitError, match="leak"):
        check_split(leak)
    hand = pd.DataFrame({"video_id": ["a", "a_1", "b", "b_1", "c"],
                         "label": ["REAL", "FAKE", "REAL", "FAKE", "REAL"],
                         "group": ["a", "a", "b", "b", "c"],
                         "split": ["train", "train", "val", "val", "test"]})
    with pytest.raises(SplitError, match="split 'test' has no FAKE"):
        check_split(hand)
    hand.loc[4, "split"] = "holdout"
    with pytest.raises(SplitError, match="unknown split"):
        check_split(hand)


def test_real_samples_ffpp_keeps_originals_with_fakes(real_samples):
    meta = json.loads((real_samples / "ffpp_c23" / "metadata.json").read_text())
    v = pd.DataFrame(
        [(k.removesuffix(".mp4"), m["label"], (m["original"] or "").removesuffix(".mp4"))
         for k, m in sorted(meta.items())],
        columns=["video_id", "label", "original"],
    )
    for seed in range(5):
        sp = split_groups(v, seed=seed)
        assert_sound(v, sp)
        s = dict(zip(sp["video_id"], sp["split"], strict=True))
        assert s["004"] == s["004_982"] and s["519"] == s["519_515"] and s["634"] == s["634_660"]
        assert sp.loc[sp["video_id"] == "750_743", "group"].item() == "750"


def test_union_groups_exact_components_and_smallest_representative():
    from pipeline.prepare.splits import union_groups

    links = [["b", "c"], ["d"], ["e", "b"], ["a", "e"], ["x", "y", "z"], ["y"], ["d", "d"]]
    assert union_groups(links) == {"a": "a", "b": "a", "c": "a", "e": "a", "d": "d",
                                   "x": "x", "y": "x", "z": "x"}
    # the representative does not depend on the order of the links
    assert union_groups(list(reversed(links))) == union_groups(links)
    assert union_groups([]) == {}


def test_identities_follow_ffpp_names_only_where_the_original_confirms_them():
    from pipeline.prepare.splits import identities_of

    assert identities_of("004_982", "FAKE", "004") == ["004", "982"]
    assert identities_of("004_982", "FAKE", "004", "off") == ["004"]
    assert identities_of("004_982", "FAKE", "519") == ["519"]  # name and metadata disagree
    assert identities_of("a_1", "FAKE", "a") == ["a"]  # DFDC-like: not FF++ digits
    assert identities_of("004", "REAL", "") == ["004"]
    with pytest.raises(Exception, match="merge_groups"):
        identities_of("004", "REAL", "", "maybe")


def test_groups_merge_through_a_shared_identity():
    from pipeline.prepare.splits import merge_report

    v = pd.DataFrame({"video_id": ["004", "982", "004_982", "982_100", "519", "519_515", "x_9"],
                      "label": ["REAL", "REAL", "FAKE", "FAKE", "REAL", "FAKE", "FAKE"],
                      "original": ["", "", "004", "982", "", "519", "x"]})
    assert assign_groups(v).tolist() == ["004", "004", "004", "004", "519", "519", "x"]
    assert assign_groups(v, "off").tolist() == ["004", "982", "004", "982", "519", "519", "x"]
    assert merge_report(v) == {"merge_groups": "auto", "groups_by_original": 4, "groups": 3,
                               "merged_groups": {"004": ["004", "982"]}}
    assert merge_report(v, "off")["merged_groups"] == {}


def test_merged_groups_share_a_split():
    # 982 (REAL) is the source identity of fake 004_982: 004 and 982 must sit in one split
    v = dfdc_like(8)
    v = pd.concat([v, pd.DataFrame({"video_id": ["004", "004_982", "982"],
                                    "label": ["REAL", "FAKE", "REAL"],
                                    "original": ["", "004", ""]})], ignore_index=True)
    for seed in range(10):
        sp = split_groups(v, seed=seed)
        assert_sound(v, sp)
        s = dict(zip(sp["video_id"], sp["split"], strict=True))
        assert s["004"] == s["004_982"] == s["982"]
        assert sp.loc[sp["video_id"].isin(["004", "004_982", "982"]), "group"].tolist() == ["004"] * 3
        off = split_groups(v, seed=seed, merge="off")
        assert off.loc[off["video_id"] == "982", "group"].item() == "982"
