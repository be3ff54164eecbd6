"""``dfpipe merge r0.jsonl ... --out R``: the results files of score shards -> one, after checking
they are one complete set scored with the same settings (see ``pipeline.engines.shards``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError, ManifestError
from pipeline.core.fsutil import atomic_write_text
from pipeline.engines.shards import check_shard_set
from pipeline.score.batch import config_path, journal_path, read_journal, write_csv


def merge_scores(files: list[Path], out: Path) -> dict[str, Any]:
    """Merge the results files of score shards into ``out`` (.jsonl or .csv).

    Raises:
        ManifestError: not one complete set of shards scored with the same settings.
    """
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
