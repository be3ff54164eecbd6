"""``dfpipe manifest show|export PATH``: manifests for people.

``show`` prints the kind, format, schema (columns and stored types), row count, row groups,
the metadata (faces root, config, counts) and the first rows; ``export --to x.csv`` writes the
table as CSV (the format earlier versions wrote, readable by every reader of this version),
row group by row group, atomically. The kind comes from the manifest's metadata, else from its
file name (``faces.parquet`` -> ``faces``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.errors import ConfigError, ManifestError
from pipeline.core.fsutil import atomic_path
from pipeline.io import manifest

logger = logging.getLogger(__name__)


def kind_of(path: Path) -> str:
    """The manifest kind of ``path``: its metadata's ``kind``, else its file name's stem."""
    kind = manifest.read_meta(path).get("kind") or path.name.split(".")[0]
    if kind not in manifest.SCHEMAS:
        raise ManifestError(f"{path}: cannot tell the manifest kind (metadata has none and the "
                            f"name is not one of {sorted(manifest.SCHEMAS)})")
    return kind


def describe(path: Path, rows: int = 5, absolute_paths: bool = False) -> str:
    """The text ``dfpipe manifest show`` prints."""
    kind = kind_of(path)
    meta = manifest.read_meta(path)
    lines = [f"{path}", f"kind      {kind} ({manifest.SCHEMAS[kind].doc})"]
    if path.suffix == manifest.PARQUET:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        lines += [f"format    parquet, {pf.metadata.num_row_groups} row group(s), "
                  f"{path.stat().st_size / 2**20:.1f} MiB",
                  f"rows      {pf.metadata.num_rows}", "schema"]
        lines += [f"  {f.name:<20}{f.type}{'' if f.nullable else ' not null'}"
                  for f in pf.schema_arrow]
    else:
        n = sum(1 for _ in open(path, "rb")) - 1
        lines += [f"format    csv (written by an earlier version), "
                  f"{path.stat().st_size / 2**20:.1f} MiB", f"rows      {n}", "schema"]
        lines += [f"  {c:<20}{t}" for c, t in manifest.SCHEMAS[kind].columns.items()]
    if meta.get("faces_root"):
        lines.append(f"faces root {meta['faces_root']} (from the manifest's folder: "
                     f"{meta.get('faces_root_rel')}; now resolves to "
                     f"{manifest.faces_root(meta, path)})")
    shown = {k: meta[k] for k in ("created", "dfpipe_version", "prepare_id", "counts", "config")
             if k in meta}
    lines += ["metadata", *("  " + ln for ln in json.dumps(shown, indent=1).splitlines())]
    head = next(manifest.iter_manifest(path, kind, absolute_paths=absolute_paths),
                manifest.empty(kind)).head(rows)
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        lines += [f"first {len(head)} row(s)", head.to_string(index=False)]
    return "\n".join(lines)


def export_csv(path: Path, to: Path, absolute_paths: bool = False) -> int:
    """Write manifest ``path`` as CSV to ``to`` (atomically, one row group at a time); rows."""
    kind = kind_of(path)
    n = 0
    with atomic_path(to) as tmp, open(tmp, "w", newline="") as f:
        pd.DataFrame(columns=list(manifest.SCHEMAS[kind].columns)).to_csv(f, index=False)
        for chunk in manifest.iter_manifest(path, kind, absolute_paths=absolute_paths):
            chunk.to_csv(f, index=False, header=False)
            n += len(chunk)
    return n


def run(cfg: Any) -> int:
    """``dfpipe manifest``: show or export (``cfg``: a ``config.ManifestConfig``; see the module
    docstring)."""
    if cfg.action not in ("show", "export"):
        raise ConfigError(f"manifest: unknown action {cfg.action!r}; known: show, export")
    path = manifest.resolve_existing(cfg.path)
    if not path.is_file():
        raise ManifestError(f"{cfg.path}: manifest not found")
    if cfg.action == "show":
        logger.info("%s", describe(path, cfg.rows, cfg.absolute_paths))
        return 0
    if not cfg.to:
        raise ConfigError("manifest export: give --to FILE.csv")
    to = Path(cfg.to)
    if to.suffix != ".csv":
        raise ConfigError(f"{to}: export writes CSV: the name must end in .csv")
    if to.resolve() == path.resolve():
        raise ConfigError(f"{to}: refusing to export a manifest onto itself")
    n = export_csv(path, to, cfg.absolute_paths)
    logger.info("exported %d rows of %s to %s", n, path, to)
    return 0
