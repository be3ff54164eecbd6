"""Stage 1's outputs: the ``videos`` and ``faces`` manifests from videos-rows and face records."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline import config as config_mod
from pipeline.config import ExtractConfig
from pipeline.extract.worker import OK_STATUSES, read_face_records
from pipeline.io.manifest import (
    SCHEMAS,
    ManifestWriter,
    manifest_path,
    relative_crop_paths,
    write_manifest,
)

FACE_CHUNK_ROWS = 250_000
"""Face rows gathered before they are handed to the manifest writer (bounded memory)."""


def write_manifests(cfg: ExtractConfig, rows: list[dict], *, kind_counts: dict | None = None,
                    faces_root: str | os.PathLike | None = None,
                    imported: dict[str, list[list[Any]]] | None = None) -> dict[str, Any]:
    """Write the ``videos`` and ``faces`` manifests (rows sorted) from videos-rows and face records.

    Face rows are read one video at a time (in video_id order) and streamed to the Parquet
    writer in chunks, so memory does not grow with the number of face rows. Crop paths are
    stored relative to ``faces_root`` (default: ``cfg.out``), recorded in the metadata.
    ``imported``: face rows of videos that were imported rather than extracted (``--from-faces``),
    by the video row's ``path``; the others are read from their ``_faces.csv`` in the faces folder.
    """
    import pandas as pd

    out = Path(cfg.out)
    root = Path(faces_root if faces_root is not None else out).resolve()
    videos = pd.DataFrame([{k: r.get(k) for k in SCHEMAS["videos"].columns} for r in rows],
                          columns=list(SCHEMAS["videos"].columns))
    order = videos.sort_values(["video_id", "path"], kind="stable").index
    videos = videos.loc[order].reset_index(drop=True)
    statuses = Counter(videos["status"])
    mdir = Path(cfg.manifest_dir)
    conf = config_mod.to_dict(cfg)
    columns = list(SCHEMAS["faces"].columns)
    n_faces = 0
    with ManifestWriter(manifest_path(mdir, "faces").with_suffix(".parquet"), "faces",
                        config=conf, faces_root=root) as writer:
        chunk: list[list[Any]] = []

        def flush() -> None:
            if chunk:
                df = pd.DataFrame(chunk, columns=columns)
                writer.write(df.assign(crop_path=relative_crop_paths(df["crop_path"], root)))
                chunk.clear()

        for i in order:
            r = rows[i]
            if imported is not None and r["path"] in imported:
                got = sorted(imported[r["path"]], key=lambda f: (f[1], f[2]))
            elif r["status"] == "ok":
                got = sorted(read_face_records(out, r["video_id"]), key=lambda f: (f[1], f[2]))
            else:
                continue
            chunk.extend(got)
            n_faces += len(got)
            if len(chunk) >= FACE_CHUNK_ROWS:
                flush()
        flush()
        counts = {
            "videos": len(videos),
            "failed": int(sum(n for s, n in statuses.items() if s not in OK_STATUSES)),
            "faces": n_faces,
            "status": dict(sorted(statuses.items())),
            **(kind_counts or {}),
        }
        write_manifest(videos, manifest_path(mdir, "videos").with_suffix(".parquet"), "videos",
                       config=conf, counts=counts)
        writer.close(counts)
    return counts
