"""Batch scoring (``dfpipe score`` over files and folders): inputs -> a results journal + CSV.

Input: a ``ScoreConfig`` (videos, images, folders; a checkpoint). Output: one JSON line per input
in ``<out>`` (``.jsonl``) or ``<out>.journal.jsonl`` (for ``.csv``, which is written at the end),
and the resolved config in ``<out>.config.json``. Inputs are found by ``discovery.discover_paths``
(videos and still images, recursively in folders). Each line is appended and fsync'd as its input
finishes, so a killed run loses at most the inputs in flight; a rerun skips inputs already in the
journal. Each line carries the ``score_key`` of what produced it (checkpoint content id + the
scoring settings, ``score_settings``): a rerun with another checkpoint or settings is refused
instead of reprinting the old verdicts (``--overwrite`` rescores). The exit status is 1 when any
input failed (a status outside ``OUTCOME_STATUSES``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.config import ScoreConfig, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import atomic_write_json, atomic_write_text
from pipeline.core.plaintypes import json_default
from pipeline.io.discovery import discover_paths
from pipeline.models.checkpoint import load_checkpoint
from pipeline.release import resolve_checkpoint
from pipeline.score.card import checkpoint_threshold, file_id, scored_as

log = logging.getLogger(__name__)

OUTCOME_STATUSES = ("ok", "no_face", "too_few_frames", "duplicate")
"""Statuses that are an answer about the input; anything else counts as a failure."""
SAMPLING_RULES = "windows-v1"
"""Version of the scoring sampling (``score.plan``) in every score key: journals written
with the earlier rules (slots 0, 10, ..., 290 only) are not resumed as if they were current."""


def find_duplicates(videos: list[Path]) -> dict[Path, Path]:
    """``{duplicate path: the path it is scored under}`` for paths that are one file.

    One file = same device and inode (symlinks followed, hard links too). The path scored is a
    real file rather than a symlink, then the first by path; files that cannot be stat'ed are
    never duplicates (they get their own error row).
    """
    groups: dict[tuple[int, int], list[Path]] = {}
    for p in videos:
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            groups.setdefault((st.st_dev, st.st_ino), []).append(p)
    out: dict[Path, Path] = {}
    for paths in groups.values():
        if len(paths) > 1:
            primary = min(paths, key=lambda q: (q.is_symlink(), str(q)))
            out.update({q: primary for q in paths if q != primary})
    return out


def duplicate_row(path: Path, primary: Path) -> dict[str, Any]:
    """The result row of a path that is the same file as ``primary`` (not scored again)."""
    return {"path": str(path), "video_id": path.stem, "status": "duplicate",
            "reason": f"{path}: same file as {primary} (scored under that path)",
            "duplicate_of": str(primary), "p_fake": None, "label": None, "tracks": []}


def crashed_row(path: str, row: dict) -> dict[str, Any]:
    """The result row of a video whose worker failed outside ``VideoScorer.score`` (the
    executor's safety net: a worker process that died, an exception that escaped)."""
    reason = str(row.get("reason") or "worker failed")
    return {"path": path, "video_id": Path(path).stem, "status": "error",
            "reason": f"{path}: {reason}", "p_fake": None, "label": None, "tracks": []}


def score_settings(cfg: ScoreConfig, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a result depends on: the checkpoint's content id, the scoring settings and the
    inference precision (``train.engine.inference_precision``: bfloat16 moves p_fake a little)."""
    from pipeline.core.device import resolve_device
    from pipeline.train.engine import inference_precision

    threshold = (cfg.threshold if cfg.threshold is not None
                 else checkpoint_threshold(ckpt, scored_as(ckpt), cfg.checkpoint))
    return {"checkpoint_id": file_id(cfg.checkpoint), "threshold": float(threshold),
            "precision": inference_precision(resolve_device(cfg.device)),
            "sampling": SAMPLING_RULES, "detect": cfg.detect, "min_frames": cfg.min_frames,
            "low_evidence_frames": cfg.low_evidence_frames,
            "min_track_share": cfg.min_track_share, "decoder": cfg.decoder,
            "explain": str(Path(cfg.explain).resolve()) if cfg.explain else None}


def score_key(settings: dict[str, Any]) -> str:
    """Short id of ``score_settings`` (12 hex): stored in every result row."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def config_path(out: Path) -> Path:
    """The resolved config beside the results: ``<out>.config.json``."""
    return out.with_name(out.name + ".config.json")


class ScoreWorker:
    """Per-process worker for the executors: loads the checkpoint and MTCNN once."""

    def __init__(self, cfg: ScoreConfig) -> None:
        from pipeline.score.scorer import VideoScorer  # when a worker is built: torch, MTCNN

        self.cfg = cfg
        self.scorer = VideoScorer.from_checkpoint(
            cfg.checkpoint, device=cfg.device, detect=cfg.detect, min_frames=cfg.min_frames,
            decoder=cfg.decoder, threshold=cfg.threshold, min_track_share=cfg.min_track_share,
            low_evidence_frames=cfg.low_evidence_frames)

    def __call__(self, item: dict) -> dict:
        res = self.scorer.score(item["path"], explain_dir=self.cfg.explain)
        res["id"] = item["id"]
        return res


def journal_path(out: Path) -> Path:
    """Where results accumulate line by line (the output itself for .jsonl)."""
    return out if out.suffix == ".jsonl" else out.with_name(out.name + ".journal.jsonl")


def read_journal(path: Path) -> list[dict]:
    """Valid result lines of a journal; a torn last line (killed mid-write) is dropped."""
    if not path.is_file():
        return []
    rows, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if torn:
        log.warning("%s: dropped a partial line left by an interrupted run", path)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


CSV_COLUMNS = ["path", "video_id", "status", "reason", "p_fake", "label", "threshold",
               "frames_used", "low_evidence", "faces_found", "n_tracks", "track_scores",
               "windows", "kind", "seconds", "checkpoint_id", "model", "card_title", "trained_on",
               "evidence_png", "duplicate_of"]


def write_csv(path: Path, rows: list[dict]) -> None:
    """The results as CSV (nested fields flattened: track scores as ``track:p`` pairs)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({
            **{k: r.get(k, "") for k in CSV_COLUMNS},
            "p_fake": "" if r.get("p_fake") is None else f"{r['p_fake']:.6f}",
            "label": r.get("label") or "",
            "n_tracks": len(r.get("tracks", [])),
            "low_evidence": "" if r.get("low_evidence") is None else str(bool(r["low_evidence"])),
            "windows": len(r.get("windows") or []) or "",
            "track_scores": " ".join(f"{t['track']}:{t['p_fake']:.4f}" for t in r.get("tracks", [])
                                     if t.get("p_fake") is not None),
            "checkpoint_id": r.get("checkpoint", {}).get("id", ""),
            "model": r.get("checkpoint", {}).get("model", ""),
            "card_title": r.get("checkpoint", {}).get("card_title", ""),
            "trained_on": r.get("checkpoint", {}).get("trained_on", ""),
            "evidence_png": r.get("evidence_png", ""),
            "duplicate_of": r.get("duplicate_of", ""),
        })
    atomic_write_text(path, buf.getvalue())


def _check_resumable(journal: Path, rows: list[dict], key: str, settings: dict[str, Any],
                     out: Path) -> None:
    """Refuse to resume a journal written by another checkpoint or other settings."""
    other = [r for r in rows if r.get("score_key") != key]
    if not other:
        return
    before = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        meta = json.loads(config_path(out).read_text(encoding="utf-8"))
        if meta.get("score_key") == other[0].get("score_key"):
            before = meta.get("settings", {})
    changed = ", ".join(f"{k} {before[k]} -> {v}" for k, v in settings.items()
                        if k in before and before[k] != v)
    if not changed:
        old = other[0].get("score_key")
        changed = f"score key {old} -> {key}" if old else "written without a score key"
    raise ConfigError(
        f"{journal}: {len(other)} result(s) were scored with another checkpoint or settings "
        f"({changed}); pass --overwrite to rescore them, or write to another --out")


def run(cfg: ScoreConfig) -> int:
    """Score every input (videos and still images); resumable; exit 1 when any input failed
    (not for no_face or too_few_frames: those are answers). The verdicts are logged; ``dfpipe
    score`` prints them (``cli.score``)."""
    rc, rows = score_all(cfg)
    for line in verdict_lines(rows):
        log.info("%s", line)
    return rc


def verdict_lines(rows: list[dict]) -> list[str]:
    """One ``path<TAB>verdict`` line per result row (the command's stdout)."""
    out = []
    for r in rows:
        p = r.get("p_fake")
        verdict = f"{r['label']} p_fake={p:.3f}" if p is not None and not math.isnan(p) \
            else f"{r['status']}: {r.get('reason', '')}"
        out.append(f"{r['path']}\t{verdict}")
    return out


def score_all(cfg: ScoreConfig) -> tuple[int, list[dict]]:
    """The batch: ``(exit status, result rows in input order)``; see ``run``."""
    from pipeline.engines.dispatch import run_items
    from pipeline.score.batch_index import BatchIndex

    if not cfg.inputs:
        raise ConfigError("dfpipe score needs at least one video, image or folder")
    from pipeline.engines.shards import in_shard, parse_shard

    parse_shard(cfg.shard)  # a malformed --shard fails before the slow part
    cfg = replace(cfg, checkpoint=resolve_checkpoint(cfg.checkpoint))  # "" / default: shipped model
    # fail fast, in the parent, with the checkpoint's own error
    settings = score_settings(cfg, load_checkpoint(cfg.checkpoint))
    key = score_key(settings)
    out = Path(cfg.out)
    if out.suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"{out}: results file must end in .jsonl or .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = journal_path(out)
    if cfg.overwrite and journal.exists():
        journal.unlink()
    previous = read_journal(journal)
    _check_resumable(journal, previous, key, settings, out)
    atomic_write_json(config_path(out), {"config": to_dict(cfg), "settings": settings,
                                         "score_key": key, "dfpipe": __version__})
    done = {r["path"]: r for r in previous}
    shard = parse_shard(cfg.shard)
    videos = [p for p in discover_paths(cfg.inputs) if in_shard(str(p), shard)]
    dups = find_duplicates(videos)
    for p, primary in dups.items():
        if str(p) not in done:
            row = {**duplicate_row(p, primary), "score_key": key}
            _append(journal, row)
            done[row["path"]] = row
    todo = [{"id": str(p), "path": str(p)} for p in videos if str(p) not in done]
    index = BatchIndex(cfg.explain, [str(p) for p in videos], done) if cfg.explain else None
    log.info("%d input(s): %d already scored in %s, %d duplicate path(s), %d to score",
             len(videos), len(videos) - len(todo) - len(dups), journal, len(dups), len(todo))
    for row in run_items(ScoreWorker, (cfg,), todo, engine=cfg.engine, workers=cfg.workers,
                         address=cfg.address, max_in_flight=cfg.max_in_flight, desc="score"):
        item_id = str(row.pop("id", ""))
        if "path" not in row:  # the executor's safety net: the worker died or raised
            row = crashed_row(item_id, row)
        row["score_key"] = key
        _append(journal, row)
        done[row["path"]] = row
        if index is not None:
            index.add(row)  # index.html of the batch, rewritten as it goes
        if row["status"] not in OUTCOME_STATUSES:
            log.error("%s", row["reason"])
    rows = [done[str(p)] for p in videos if str(p) in done]
    if index is not None:
        log.info("batch index: %s", index.write(rows))
    if out.suffix == ".csv":
        write_csv(out, rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    n_fake = sum(1 for r in rows if r.get("label") == "FAKE")
    n_real = sum(1 for r in rows if r.get("label") == "REAL")
    failed = sum(n for s, n in statuses.items() if s not in OUTCOME_STATUSES)
    failed += len(videos) - len(rows)  # a video without a row has failed too (never expected)
    log.info("scored %d input(s): %d FAKE, %d REAL; statuses %s; results in %s",
             len(rows), n_fake, n_real, statuses, out)
    return (1 if failed else 0), rows
