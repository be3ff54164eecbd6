"""``dfpipe merge SHARD_DIR... --manifest-dir M``: the manifests of extract shards -> one set,
identical to one unsharded run's (see ``pipeline.engines.shards``)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ManifestError
from pipeline.engines.shards import check_shard_set
from pipeline.extract.worker import RESULT_PARAMS
from pipeline.io import manifest


def _extract_params(meta: dict[str, Any]) -> dict[str, Any]:
    conf = meta.get("config") or {}
    return {k: conf.get(k) for k in RESULT_PARAMS}


def _video_runs(path: Path, root: Path | None, common: Path | None) -> Iterator[tuple[str, Any]]:
    """(video_id, its face rows as a DataFrame) of one shard's faces manifest, in file order,
    one row group at a time (a video split across row groups is yielded whole)."""
    carry = None
    for chunk in manifest.iter_manifest(path, "faces", absolute_paths=False):
        if common is None:  # no shared root: absolute paths
            chunk = chunk.assign(crop_path=manifest.absolute_crop_paths(chunk["crop_path"], root))
        if carry is not None:
            chunk = pd.concat([carry, chunk], ignore_index=True)
        ids = chunk["video_id"].to_numpy(dtype=object)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(ids)]
        for lo, hi in zip(starts[:-1], ends[:-1], strict=True):
            yield ids[lo], chunk.iloc[lo:hi]
        carry = chunk.iloc[starts[-1]:] if len(starts) else None
    if carry is not None and len(carry):
        yield carry["video_id"].iloc[0], carry


def merge_extract(shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge the ``videos``/``faces`` manifests of extract shards into ``out_dir``.

    Face rows are merged video by video from the shards' row groups (a k-way merge on the
    sorted video ids: memory does not grow with the number of face rows); crop paths stay
    relative to the shards' common faces root.

    Raises:
        ManifestError: not one complete, consistent set of shards.
    """
    entries, videos = [], []
    for d in shard_dirs:
        vpath = manifest.manifest_path(d, "videos")
        meta = manifest.read_meta(vpath)
        entries.append((vpath, meta.get("config"), _extract_params(meta)))
    total = check_shard_set(entries, "manifest folders")
    for d in shard_dirs:
        videos.append(manifest.read_manifest(manifest.manifest_path(d, "videos"), "videos"))
    v = pd.concat(videos, ignore_index=True)
    dup = v["video_id"][v["video_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"merge: video id(s) {dup[:5]} in more than one shard")
    v = v.sort_values(["video_id", "path"], kind="stable").reset_index(drop=True)
    faces_paths = [manifest.manifest_path(d, "faces") for d in shard_dirs]
    roots = [manifest.faces_root(manifest.read_meta(p), p) for p in faces_paths]
    # shards of one FACES_DIR share its root: keep the paths relative to it
    common = roots[0] if roots[0] is not None and all(r == roots[0] for r in roots) else None
    conf = dict(manifest.read_meta(manifest.manifest_path(shard_dirs[0], "videos")).get("config")
                or {})
    conf["shard"] = ""
    inputs = [manifest.manifest_path(d, k) for d in shard_dirs for k in ("videos", "faces")]
    statuses = v["status"].value_counts().to_dict()
    counts: dict[str, Any] = {"videos": len(v), "faces": 0,
                              "status": dict(sorted(statuses.items())),
                              "merged_from": [str(d) for d in shard_dirs], "shards": total}
    streams = [_video_runs(p, r, common) for p, r in zip(faces_paths, roots, strict=True)]
    merged = heapq.merge(*streams, key=lambda item: item[0])
    with manifest.ManifestWriter(manifest.manifest_path(out_dir, "faces").with_suffix(".parquet"),
                                 "faces", config=conf, inputs=inputs, faces_root=common) as w:
        batch: list[pd.DataFrame] = []
        n_batch = 0
        for _vid, rows in merged:
            batch.append(rows)  # a shard's rows of one video are in (frame, track) order
            n_batch += len(rows)
            if n_batch >= 250_000:
                w.write(pd.concat(batch, ignore_index=True))
                batch, n_batch = [], 0
        if batch:
            w.write(pd.concat(batch, ignore_index=True))
        counts["faces"] = w.rows
        manifest.write_manifest(v, manifest.manifest_path(out_dir, "videos").with_suffix(
            ".parquet"), "videos", config=conf, counts=counts, inputs=inputs)
        w.close(counts)
    return counts
