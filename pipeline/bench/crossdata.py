"""Cross-data-set check of a checkpoint: real sample clips -> per-clip verdicts and summary numbers.

Input: a folder of real clips (``../shared/data/real_samples``: DFDC parts, FaceForensics++ c23
originals with their fakes, unlabelled footage; labels from each sub-folder's DFDC-style
``metadata.json``) and a checkpoint. Output (``dfpipe bench --what samples``): every clip scored
as an analyst's ``dfpipe score`` would (``VideoScorer.score``, the checkpoint's own crop recipe,
threshold and verdict rule), and per source (the clip's top folder) and overall:

- ROC AUC of the clips' p_fake with a 95 % interval from a bootstrap over original groups (a fake
  is resampled with its original), leaving out the clips whose crop is in ``dfdc_faces`` (the
  model has seen them: ``cropcheck.SAMPLE_CLIPS``);
- the REAL false-alarm rate at the shipped threshold (REAL clips called FAKE / REAL clips) with a
  95 % Wilson interval, and the FAKE detection rate likewise.

Unlabelled clips are listed with their verdicts and take part in no number.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n`` (NaN, NaN when ``n`` is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def sample_clips(samples: str | os.PathLike) -> list[dict[str, Any]]:
    """Every video under ``samples``: ``{"path", "video", "source", "label", "group"}``; label
    and group from a ``metadata.json`` beside it (``""`` label: unlabelled)."""
    from pipeline.bench.cropcheck import labelled_samples

    root = Path(samples)
    known = {Path(s["path"]).resolve(): s for s in labelled_samples(root)}
    out = []
    for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES and q.is_file()):
        s = known.get(p.resolve(), {})
        label = s.get("label", "") if s.get("label") in ("REAL", "FAKE") else ""
        out.append({"path": str(p), "video": p.stem, "source": p.relative_to(root).parts[0],
                    "label": label, "group": s.get("group", p.stem)})
    return out


def summarize(rows: Sequence[dict[str, Any]], threshold: float, exclude: Sequence[str] = (),
              n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Numbers of scored clips (``video``, ``label``, ``group``, ``p_fake``; None: not scored).

    Returns ``{n_real, n_fake, roc_auc, roc_auc_lo, roc_auc_hi, false_alarms, false_alarm_rate,
    false_alarm_lo, false_alarm_hi, detected, detection_rate, detection_lo, detection_hi,
    unscored, excluded}`` over the labelled, scored clips not in ``exclude``.
    """
    from pipeline.stats import bootstrap as B
    from pipeline.stats import metrics as M

    use = [r for r in rows if r["label"] in ("REAL", "FAKE") and r["p_fake"] is not None
           and r["video"] not in exclude]
    y = np.array([r["label"] == "FAKE" for r in use], dtype=int)
    p = np.array([r["p_fake"] for r in use], dtype=float)
    g = np.array([r["group"] for r in use])
    both = (y == 0).any() and (y == 1).any()
    auc = M.roc_auc(y, p) if both else float("nan")
    lo, hi = (B.percentile_interval(B.grouped_bootstrap_values(y, p, g, M.roc_auc, n_bootstrap,
                                                                 seed))
              if both else (float("nan"), float("nan")))
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    fa = int(((y == 0) & (p >= threshold)).sum())
    det = int(((y == 1) & (p >= threshold)).sum())
    fa_lo, fa_hi = wilson_interval(fa, n_real)
    det_lo, det_hi = wilson_interval(det, n_fake)
    return {"n_real": n_real, "n_fake": n_fake, "roc_auc": auc, "roc_auc_lo": lo, "roc_auc_hi": hi,
            "false_alarms": fa, "false_alarm_rate": fa / n_real if n_real else float("nan"),
            "false_alarm_lo": fa_lo, "false_alarm_hi": fa_hi,
            "detected": det, "detection_rate": det / n_fake if n_fake else float("nan"),
            "detection_lo": det_lo, "detection_hi": det_hi,
            "unscored": sorted(r["video"] for r in rows
                               if r["label"] in ("REAL", "FAKE") and r["p_fake"] is None),
            "excluded": sorted(v for v in exclude if any(r["video"] == v for r in rows))}


def score_samples(checkpoint: str, samples: str | os.PathLike, device: str = "cpu",
                  n_bootstrap: int = 1000) -> dict[str, Any]:
    """Score every clip of ``samples`` with ``checkpoint`` (``default``: the shipped model)."""
    from tqdm import tqdm

    from pipeline.bench.cropcheck import SAMPLE_CLIPS
    from pipeline.release import resolve_checkpoint
    from pipeline.score.scorer import VideoScorer

    scorer = VideoScorer.from_checkpoint(resolve_checkpoint(checkpoint), device=device)
    clips = sample_clips(samples)
    rows = []
    for c in tqdm(clips, desc="samples", unit="clip"):
        r = scorer.score(c["path"])
        rows.append({**c, "status": r["status"], "reason": r["reason"], "p_fake": r["p_fake"],
                     "verdict": r["label"], "frames_used": r["frames_used"],
                     "seconds": r["seconds"], "in_training_set": c["video"] in SAMPLE_CLIPS,
                     "verdict_rule": r.get("verdict_rule")})
    thr = scorer.threshold
    exclude = tuple(SAMPLE_CLIPS)
    by_source = {s: summarize([r for r in rows if r["source"] == s], thr, exclude, n_bootstrap)
                 for s in sorted({r["source"] for r in rows})}
    return {"checkpoint": scorer.ckpt_path, "model": scorer.card["card_title"],
            "threshold": thr, "verdict_rule": next((r["verdict_rule"] for r in rows if r["verdict_rule"]), None),
            "rows": rows, "overall": summarize(rows, thr, exclude, n_bootstrap),
            "by_source": by_source}


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> list[str]:
    """The samples table and summary as Markdown lines (docs/model.md's cross-data-set table)."""
    lines = [f"## samples: every real sample clip scored by `{r['model']}`", "",
             f"Checkpoint `{r['checkpoint']}`, threshold {r['threshold']:.4f} (p_fake >= "
             "threshold -> FAKE). `*`: the clip's crop is in the training data (seen; in no "
             "number).", "",
             "| source | clip | label | p_fake | verdict | frames | s |", "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        name = x["video"] + (" *" if x["in_training_set"] else "")
        verdict = x["verdict"] or x["status"]
        lines.append(f"| {x['source']} | {name} | {x['label'] or '-'} | {_f(x['p_fake'])} | "
                     f"{verdict} | {x['frames_used']} | {x['seconds']:.1f} |")
    lines += ["", "| clips | REAL / FAKE | ROC AUC [95 % CI] | REAL called FAKE [95 % CI] | "
                  "FAKE called FAKE [95 % CI] |", "|---|---|---|---|---|"]
    for name, s in [("all labelled", r["overall"]), *r["by_source"].items()]:
        if not s["n_real"] + s["n_fake"]:
            continue
        lines.append(
            f"| {name} | {s['n_real']} / {s['n_fake']} | {_f(s['roc_auc'])} "
            f"[{_f(s['roc_auc_lo'])}, {_f(s['roc_auc_hi'])}] | "
            f"{s['false_alarms']}/{s['n_real']} = {_f(s['false_alarm_rate'], 2)} "
            f"[{_f(s['false_alarm_lo'], 2)}, {_f(s['false_alarm_hi'], 2)}] | "
            f"{s['detected']}/{s['n_fake']} = {_f(s['detection_rate'], 2)} "
            f"[{_f(s['detection_lo'], 2)}, {_f(s['detection_hi'], 2)}] |")
    lines += ["", "AUC intervals: bootstrap over original groups (1,000 resamples; with so few "
                  "clips they are wide); rates: Wilson intervals."]
    return lines
