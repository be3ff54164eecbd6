"""Sharding without Ray: ``--shard I/N`` assignment, and the check that N shard outputs are one set.

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
parameters, no video twice) and writes the merged manifests, identical to one unsharded run's
(``pipeline.extract.merge``; results files: ``pipeline.score.merge``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pipeline.core.errors import ConfigError, ManifestError

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
