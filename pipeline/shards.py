"""Sharding without Ray: ``--shard I/N`` assignment, and ``dfpipe merge``: N shard outputs -> one.

``dfpipe score --shard I/N`` scores the videos whose path (as discovered from the inputs) falls in
shard I; each shard writes its own results file, and ``dfpipe merge r0.jsonl ... --out R``
joins them after checking they are one complete set scored with the same settings.

Array jobs (SLURM ``--array``, Kubernetes indexed jobs) run the same command N times with
``--shard 0/N`` ... ``--shard N-1/N``. A video belongs to shard ``int(sha256(video_id)[:16], 16)
% N``: stable across machines, Python versions and input order, so a rerun of one shard redoes
exactly its own videos. Each extract shard writes its faces into the shared ``--out`` folder
(per-video folders, so shards never write the same file) and its own ``videos`` /
``faces`` manifests into its own ``--manifest-dir``; ``dfpipe merge SHARD_DIR... --manifest-dir M``
checks that the shards are one complete set (same N, every index once, the same extraction
parameters, no video twice) and writes the merged manifests, identical to one unsharded run's.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, ManifestError

logger = logging.getLogger(__name__)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``; empty -> None (no sharding). ``ConfigError`` when malformed."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return i, n


def shard_of(video_id: str, n: int) -> int:
    """The shard (0..n-1) a video id belongs to."""
    return int(hashlib.sha256(str(video_id).encode("utf-8")).hexdigest()[:16], 16) % n


def in_shard(video_id: str, shard: tuple[int, int] | None) -> bool:
    """True when ``shard`` is None or the video belongs to it."""
    return shard is None or shard_of(video_id, shard[1]) == shard[0]


def check_shard_set(entries: list[tuple[Any, dict[str, Any], Any]], what: str) -> int:
    """Check that ``(source, recorded config, settings)`` entries are one complete set of shards.

    The shard of each entry comes from its recorded config (``shard: "I/N"``); every entry must
    have the same N and the same settings, each index 0..N-1 exactly once. Returns N.

    Raises:
        ConfigError: no entries. ManifestError: not one complete, consistent set.
    """
    if not entries:
        raise ConfigError(f"merge: give the {what} of the shards")
    seen: dict[int, Any] = {}
    total, first = None, None
    for source, conf, settings in entries:
        shard = parse_shard((conf or {}).get("shard"))
        if shard is None:
            raise ManifestError(f"{source}: not written by a sharded run (--shard I/N)")
        i, n = shard
        if total is not None and n != total:
            raise ManifestError(f"{source}: shard {i}/{n}, but the others are of {total}")
        if i in seen:
            raise ManifestError(f"{source}: shard {i}/{n} given twice (also {seen[i]})")
        if first is not None and settings != first[1]:
            diff = (sorted(k for k in settings if settings[k] != first[1].get(k))
                    if isinstance(settings, dict) else ["settings"])
            raise ManifestError(f"{source}: made with other settings than {first[0]} "
                                f"({', '.join(diff)})")
        total, seen[i] = n, source
        first = first or (source, settings)
    missing = sorted(set(range(total)) - set(seen))
    if missing:
        raise ManifestError(f"merge: shard(s) {', '.join(f'{i}/{total}' for i in missing)} "
                            "missing; run them first")
    return total


def _extract_params(meta: dict[str, Any]) -> dict[str, Any]:
    from pipeline.extract import RESULT_PARAMS

    conf = meta.get("config") or {}
    return {k: conf.get(k) for k in RESULT_PARAMS}


def _video_runs(path: Path, root: Path | None, common: Path | None) -> Iterator[tuple[str, Any]]:
    """(video_id, its face rows as a DataFrame) of one shard's faces manifest, in file order,
    one row group at a time (a video split across row groups is yielded whole)."""
    from pipeline import manifest

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
    from pipeline import manifest

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


def merge_scores(files: list[Path], out: Path) -> dict[str, Any]:
    """Merge the results files of score shards into ``out`` (.jsonl or .csv).

    Raises:
        ManifestError: not one complete set of shards scored with the same settings.
    """
    import json

    from pipeline.fsutil import atomic_write_text
    from pipeline.scoring import config_path, journal_path, read_journal, write_csv

    entries = []
    for f in files:
        side = config_path(f)
        if not side.is_file():
            raise ManifestError(f"{f}: no {side.name} beside it (not written by dfpipe score)")
        meta = json.loads(side.read_text())
        entries.append((f, meta.get("config"), {"score_key": meta.get("score_key")}))
    total = check_shard_set(entries, "results files")
    rows: list[dict] = [r for f in files for r in read_journal(journal_path(f))]
    paths = [r["path"] for r in rows]
    dup = sorted({p for p in paths if paths.count(p) > 1})
    if dup:
        raise ManifestError(f"merge: {dup[:3]} scored in more than one shard")
    rows.sort(key=lambda r: r["path"])
    if out.suffix == ".csv":
        write_csv(out, rows)
    elif out.suffix == ".jsonl":
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        raise ConfigError(f"{out}: results file must end in .jsonl or .csv")
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"videos": len(rows), "status": dict(sorted(statuses.items())), "shards": total}


def run(cfg: Any) -> int:
    """``dfpipe merge``: shard outputs -> one (results files: score; folders: extract)."""
    from pipeline.scoring import OUTCOME_STATUSES

    files = [Path(p) for p in cfg.inputs]
    if files and all(f.suffix in (".jsonl", ".csv") for f in files):
        from pipeline.scoring import config_path

        for f in files:  # a shard that got no video has its config sidecar and no rows
            if not f.is_file() and not config_path(f).is_file():
                raise ConfigError(f"merge: {f}: results file not found")
        counts = merge_scores(files, Path(cfg.out))
        logger.info("merged %d score shards: %d videos (%s) -> %s", counts["shards"],
                    counts["videos"], counts["status"], cfg.out)
        return 1 if any(s not in OUTCOME_STATUSES for s in counts["status"]) else 0
    dirs = files
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"merge: {d}: folder not found")
    counts = merge_extract(dirs, Path(cfg.manifest_dir))
    logger.info("merged %d shards: %d videos (%s), %d faces -> %s", counts["shards"],
                counts["videos"], ", ".join(f"{k} {v}" for k, v in counts["status"].items()),
                counts["faces"], cfg.manifest_dir)
    failed = sum(n for s, n in counts["status"].items() if s not in ("ok", "no_face"))
    return 1 if failed else 0
