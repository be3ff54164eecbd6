"""Grouped train/val/test split: kept videos -> split table (video_id, label, group, split).

Group = the original video: a REAL's own id, a FAKE's ``original`` (also when that original is
absent from the data: FF++ ``750_743`` is group ``750``; a FAKE without any ``original`` is its
own group). A group never crosses splits, so a model is never tested on a fake of a face it was
trained on.

Group merging (``merge_groups="auto"``, the default): one person can sit in several originals.
Where the naming says so, a video carries more than one identity: an FF++ fake
``<target>_<source>`` (both parts digits, the first equal to its ``original``) shows the target
video's scene and the source video's face, so ``004_982`` ties groups ``004`` and ``982``.
Identities that share a video are merged by union-find; a merged group is named by the smallest
original-group id among its members (``004_982`` + ``982``: group ``004``; FF++ ``750_743`` alone
stays group ``750``), which does not depend on row order. DFDC names carry no actor ids, so DFDC groups
stay one per original. ``merge_groups="off"``: one group per original, as before.

Shares are shares of *groups*: ``n_test = round(test_share * G)``, ``n_val = round(val_share *
(G - n_test))``, the rest train, each at least 1. Stratification by label "as far as groups allow":
groups are ordered by composition (stratum ``mixed`` = has REAL and FAKE, ``real_only``,
``fake_only``; then number of fakes; ties in a seeded random order) and dealt along that order
to the split furthest below its quota, so every stratum and group size is spread in proportion.
If a split then lacks a label, groups are swapped between splits (deterministically) until every
split has both. Same videos + same seed -> same split.

Impossible cases raise ``SplitError`` with the reason: fewer than 3 groups, or fewer than 3
groups holding a REAL (or a FAKE) video, since each of the 3 splits needs both labels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError, SplitError
from pipeline.io.manifest import LABELS

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["video_id", "label", "group", "split"]
_STRATUM_ORDER = {"mixed": 0, "real_only": 1, "fake_only": 2}
MERGE_MODES = ("auto", "off")
FFPP_FAKE = re.compile(r"^(\d+)_(\d+)$")
"""FaceForensics++ fake names ``<target>_<source>``."""


def group_of(video_id: str, label: str, original: str | None) -> str:
    """The group id of one video: a FAKE's original (if any), else the video itself."""
    if label == "FAKE" and original and not pd.isna(original):
        return str(original)
    return str(video_id)


def identities_of(video_id: str, label: str, original: str | None, merge: str = "auto") -> list[str]:
    """Ids of the people in one video: its group (``group_of``) first, then, with ``merge``
    ``auto``, the source id of an FF++ fake ``<target>_<source>`` whose original is ``target``."""
    if merge not in MERGE_MODES:
        raise ConfigError(f"merge_groups must be one of {list(MERGE_MODES)}, got {merge!r}")
    base = group_of(video_id, label, original)
    ids = [base]
    if merge == "auto" and label == "FAKE":
        m = FFPP_FAKE.match(str(video_id))
        if m and m.group(1) == base and m.group(2) != base:
            ids.append(m.group(2))
    return ids


def union_groups(links: Iterable[Sequence[str]]) -> dict[str, str]:
    """Union-find: every id -> the representative of its component (its smallest id).

    Args:
        links: id lists; all ids of one list belong together (a list of one id adds it alone).
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for ids in links:
        for i in ids:
            parent.setdefault(i, i)
        for i in ids[1:]:
            a, b = find(ids[0]), find(i)
            if a != b:  # the smaller id stays root, so the root is the component's minimum
                parent[max(a, b)] = min(a, b)
    return {x: find(x) for x in parent}


def _merged(videos: pd.DataFrame, merge: str) -> tuple[list[str], dict[str, list[str]]]:
    """(merged group name per row, merged group name -> the original-groups it joins)."""
    if merge not in MERGE_MODES:
        raise ConfigError(f"merge_groups must be one of {list(MERGE_MODES)}, got {merge!r}")
    vid = videos["video_id"].astype(str).to_numpy(dtype=object)
    lab = videos["label"].astype(str).to_numpy(dtype=object)
    orig = videos["original"].astype("string").fillna("").astype(str).to_numpy(dtype=object)
    base = np.where((lab == "FAKE") & (orig != ""), orig, vid)  # group_of, columnar
    ffpp = (lab == "FAKE") & pd.Series(vid).str.match(FFPP_FAKE.pattern).to_numpy(dtype=bool)
    if merge == "off" or not ffpp.any():  # no video ties two identities: one group per original
        names = base.tolist()
        return names, {b: [b] for b in sorted(set(names))}
    links = [identities_of(v, la, o, merge) for v, la, o in zip(vid, lab, orig, strict=True)]
    root = union_groups(links)
    members: dict[str, set[str]] = {}
    for ids in links:
        members.setdefault(root[ids[0]], set()).add(ids[0])
    # name a component by its smallest original-group, not by a source id seen only in a name
    name = {r: min(m) for r, m in members.items()}
    return ([name[root[ids[0]]] for ids in links],
            {name[r]: sorted(m) for r, m in members.items()})


def assign_groups(videos: pd.DataFrame, merge: str = "auto") -> pd.Series:
    """Group id per row of ``videos`` (``video_id``, ``label``, ``original``); see the module
    docstring for ``merge`` (``auto``: identities shared through FF++ names merge groups)."""
    names, _ = _merged(videos, merge)
    return pd.Series(names, index=videos.index, dtype="string")


def merge_report(videos: pd.DataFrame, merge: str = "auto") -> dict[str, Any]:
    """Counts for the prepare summary: groups by original, groups after merging, and each merged
    group (its name -> the original-groups it joins; only those joining two or more)."""
    _, members = _merged(videos, merge)
    merged = {r: m for r, m in sorted(members.items()) if len(m) > 1}
    return {"merge_groups": merge, "groups_by_original": sum(len(m) for m in members.values()),
            "groups": len(members), "merged_groups": merged}


def split_counts(n_groups: int, test_share: float, val_share: float) -> dict[str, int]:
    """Groups per split: test = round(test_share*G), val = round(val_share*rest), each >= 1."""
    if not 0 < test_share < 1 or not 0 < val_share < 1:
        raise ConfigError(f"test_share and val_share must lie in (0, 1), got {test_share}, {val_share}")
    if n_groups < 3:
        raise SplitError(
            f"only {n_groups} group(s) (originals): need at least 3 for train/val/test"
        )
    n_test = min(max(1, int(np.floor(test_share * n_groups + 0.5))), n_groups - 2)
    n_val = min(max(1, int(np.floor(val_share * (n_groups - n_test) + 0.5))), n_groups - n_test - 1)
    return {"train": n_groups - n_test - n_val, "val": n_val, "test": n_test}


def _group_table(videos: pd.DataFrame, merge: str) -> pd.DataFrame:
    df = pd.DataFrame(
        {"video_id": videos["video_id"].astype(str), "label": videos["label"].astype(str),
         "group": assign_groups(videos, merge).astype(str)}
    )
    bad = df.loc[~df["label"].isin(LABELS), "video_id"].tolist()
    if bad:
        raise SplitError(f"video(s) without a REAL/FAKE label cannot be split: {bad[:5]}")
    dup = df.loc[df["video_id"].duplicated(), "video_id"].unique().tolist()
    if dup:
        raise SplitError(f"duplicate video_id(s) {dup[:5]}")
    counts = pd.DataFrame({"group": df["group"],
                           "n_real": (df["label"] == "REAL").astype("int64"),
                           "n_fake": (df["label"] == "FAKE").astype("int64")})
    g = counts.groupby("group", sort=True)[["n_real", "n_fake"]].sum()  # columnar, no lambdas
    g["stratum"] = np.where(
        (g["n_real"] > 0) & (g["n_fake"] > 0), "mixed",
        np.where(g["n_real"] > 0, "real_only", "fake_only"),
    )
    return g


def _missing(assign: dict[str, str], groups: pd.DataFrame) -> list[tuple[str, str]]:
    """(split, label) pairs with no video."""
    out = []
    for s in SPLITS:
        members = [g for g, sp in assign.items() if sp == s]
        sub = groups.loc[members]
        if int(sub["n_real"].sum()) == 0:
            out.append((s, "REAL"))
        if int(sub["n_fake"].sum()) == 0:
            out.append((s, "FAKE"))
    return out


def _repair(assign: dict[str, str], groups: pd.DataFrame, order: list[str]) -> None:
    """Swap groups between splits until every split has both labels (in place)."""
    col = {"REAL": "n_real", "FAKE": "n_fake"}
    for _ in range(4 * len(order) + 10):
        missing = _missing(assign, groups)
        if not missing:
            return
        s, lab = missing[0]
        best = None
        for g in order:  # a group holding the missing label, from another split
            t = assign[g]
            if t == s or groups.at[g, col[lab]] == 0:
                continue
            for h in order:  # swapped with a group of split s (keeps the split sizes)
                if assign[h] != s:
                    continue
                trial = dict(assign)
                trial[g], trial[h] = s, t
                if len(_missing(trial, groups)) < len(missing):
                    best = trial
                    break
            if best is not None:
                break
        if best is None:  # tiny sets: move a group instead (split sizes drift from the shares)
            for g in order:
                t = assign[g]
                if t == s or groups.at[g, col[lab]] == 0:
                    continue
                if sum(sp == t for sp in assign.values()) < 2:
                    continue
                trial = dict(assign)
                trial[g] = s
                if len(_missing(trial, groups)) < len(missing):
                    best = trial
                    logger.warning(
                        "moved group %s from %s to %s so that every split has both labels; "
                        "split sizes differ from the requested shares", g, t, s,
                    )
                    break
        if best is None:
            raise SplitError(
                f"cannot give split '{s}' a {lab} video without leaving another split without "
                f"one ({len(groups)} groups, {int((groups['n_real'] > 0).sum())} with REAL, "
                f"{int((groups['n_fake'] > 0).sum())} with FAKE videos)"
            )
        assign.clear()
        assign.update(best)
    raise SplitError("could not balance labels over splits (no progress)")


def split_groups(
    videos: pd.DataFrame, test_share: float = 0.2, val_share: float = 0.2, seed: int = 0,
    merge: str = "auto",
) -> pd.DataFrame:
    """Grouped, label-stratified, deterministic split (see the module docstring).

    Args:
        videos: kept videos (``video_id``, ``label``, ``original``).
        test_share: share of groups for test.
        val_share: share of the remaining groups for validation.
        seed: shuffling seed.
        merge: ``auto`` (merge groups that share an identity) or ``off``.

    Returns:
        Split table with columns ``video_id, label, group, split`` in the input's row order.
    """
    groups = _group_table(videos, merge)
    for lab, c in (("REAL", "n_real"), ("FAKE", "n_fake")):
        holders = int((groups[c] > 0).sum())
        if holders < 3:
            raise SplitError(
                f"only {holders} group(s) contain a {lab} video: each of train/val/test needs "
                f"both labels, so at least 3 are needed (groups: {len(groups)})"
            )
    quota = split_counts(len(groups), test_share, val_share)

    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(groups))
    ordered = groups.assign(
        _s=groups["stratum"].map(_STRATUM_ORDER), _t=tiebreak
    ).sort_values(["_s", "n_fake", "_t"], kind="stable")
    order = ordered.index.tolist()

    # deal along the order to the split furthest below its share of the groups seen so far
    n = len(order)
    count = dict.fromkeys(SPLITS, 0)
    assign: dict[str, str] = {}
    for i, g in enumerate(order):
        open_splits = [s for s in SPLITS if count[s] < quota[s]]
        s = max(open_splits, key=lambda s: (quota[s] * (i + 1) / n - count[s], -SPLITS.index(s)))
        assign[g] = s
        count[s] += 1
    _repair(assign, groups, order)

    out = pd.DataFrame(
        {
            "video_id": videos["video_id"].astype("string").to_numpy(),
            "label": videos["label"].astype("string").to_numpy(),
            "group": assign_groups(videos, merge).to_numpy(),
        }
    )
    out["split"] = out["group"].map(assign).astype("string")
    check_split(out)
    return out


def check_split(split: pd.DataFrame) -> None:
    """Raise ``SplitError`` unless the split is sound.

    Checks: unique video ids, split values in train/val/test, every split non-empty, no group in
    two splits, both labels in every split.
    """
    dup = split.loc[split["video_id"].duplicated(), "video_id"].unique().tolist()
    if dup:
        raise SplitError(f"video(s) listed twice in the split: {dup[:5]}")
    bad = sorted(set(split["split"]) - set(SPLITS))
    if bad:
        raise SplitError(f"unknown split name(s) {bad}; expected {list(SPLITS)}")
    per_group = split.groupby("group")["split"].nunique()
    leaking = per_group[per_group > 1].index.tolist()
    if leaking:
        raise SplitError(f"group(s) in more than one split (leak): {leaking[:5]}")
    for s in SPLITS:
        labels = set(split.loc[split["split"] == s, "label"])
        for lab in LABELS:
            if lab not in labels:
                raise SplitError(f"split '{s}' has no {lab} video")


def split_summary(split: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per split: videos, groups, real, fake, fake_share."""
    out = {}
    for s in SPLITS:
        sub = split[split["split"] == s]
        n_fake = int((sub["label"] == "FAKE").sum())
        out[s] = {
            "videos": len(sub),
            "groups": int(sub["group"].nunique()),
            "real": len(sub) - n_fake,
            "fake": n_fake,
            "fake_share": round(n_fake / len(sub), 4) if len(sub) else 0.0,
        }
    return out


def split_fingerprint(split: pd.DataFrame) -> str:
    """SHA-256 of what a split decides: the sorted ``video_id -> split`` pairs.

    Row order, labels, group names and the sidecar do not enter: a rerun of ``prepare`` that
    puts every video where it was gives the same fingerprint, one that moves a video does not.
    """
    import hashlib

    pairs = sorted(zip(split["video_id"].astype(str), split["split"].astype(str), strict=True))
    h = hashlib.sha256()
    for vid, s in pairs:
        h.update(f"{vid}\t{s}\n".encode())
    return h.hexdigest()


def check_checkpoint_split(train_data: dict[str, Any], split: pd.DataFrame, *, checkpoint: str,
                           manifest: str, use: str, allow: bool) -> str:
    """Is ``split`` the split the checkpoint was trained on? ``""`` when it is.

    Compared: the checkpoint's ``train_data.split_fingerprint`` with ``split_fingerprint(split)``
    (checkpoints from before fingerprints: their ``split_sha256`` with the file's bytes).

    Args:
        train_data: the checkpoint's training-data summary.
        split: the split table about to be used.
        checkpoint, manifest: paths for the message.
        use: what is being done, for the message ("evaluated on", "resumed with").
        allow: ``--allow-other-split``: warn and return the reason instead of refusing.

    Returns:
        ``""`` on a match, else (``allow``) the one-line reason.

    Raises:
        ConfigError: the splits differ (or the checkpoint records none) and not ``allow``.
    """
    from pipeline.core.fsutil import sha256_file

    recorded = train_data.get("split_fingerprint")
    if recorded is not None:
        if recorded == split_fingerprint(split):
            return ""
        reason = (f"{manifest} assigns videos to splits differently from the split {checkpoint} "
                  f"was trained on (fingerprint {split_fingerprint(split)[:12]} vs recorded "
                  f"{recorded[:12]})")
    elif train_data.get("split_sha256"):
        if train_data["split_sha256"] == sha256_file(manifest):
            return ""
        reason = (f"{manifest} is not the split file {checkpoint} was trained on (sha256 "
                  f"{sha256_file(manifest)[:12]} vs recorded {train_data['split_sha256'][:12]})")
    else:
        reason = f"{checkpoint} records no training split, so {manifest} cannot be checked against it"
    if not allow:
        raise ConfigError(f"{reason}: not {use} it, since videos it trained on may sit in another "
                          "split here; rerun `dfpipe prepare` as it was (same inputs and seed) or "
                          "pass --allow-other-split (the output then says so)")
    logger.warning("--allow-other-split: %s", reason)
    return reason
