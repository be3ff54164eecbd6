"""``dfpipe score``: whole videos -> per-video verdicts with evidence.

One video: decode -> faces (``faces.extract_faces``, the extract stage's own code) -> per face
track, the model's 30-slot input (``sampling.sample_video``, the prepare stage's own rules;
``data.crops_to_tensor``, the training preprocessing) -> p_fake per track -> the video's p_fake is
the maximum over the tracks that are real identities (any fake identity makes the video fake). A
track is an identity when it holds at least ``min_track_share`` of the video's face frames (or is
the longest track); shorter ones (a face on a poster seen for a moment, a detector false positive)
are reported in ``tracks`` with status ``brief`` and never decide the verdict. A failure has a
status and a reason and no score; never a made-up 0.5.

Statuses: ``ok``; ``no_face`` (readable, no face found); ``too_few_frames`` (faces, but no track
fills ``min_frames`` of the slots); ``duplicate`` (batch only: the same file as another input
path, scored once under that path, named in ``duplicate_of``); ``read_error`` / ``empty_file`` /
``missing_file`` / ``too_short`` (the video cannot be used); ``error`` (anything unexpected, with
its message, also a worker process that died). Only the last two groups make the exit status 1.

Crops are made the way the model's training crops were (no train/serve skew): the checkpoint's
``crop`` recipe (margin, size, square or not, JPEG quality; ``crop_recipe``) drives
``faces.crop_face`` and the JPEG round trip (``faces.jpeg_round_trip``) before the model sees them.

Per-frame timeline: for ``frame`` checkpoints, each sampled frame's own p_fake (the video score is
their mean, ``frame_mean``); for ``cnn_lstm``, the running verdict: p_fake after the LSTM has seen
the slots up to that frame.

Batch mode writes one JSON line per video as it finishes (fsync'd), so a killed run loses at most
the videos in flight; a rerun skips videos already in the results file. Each line carries the
``score_key`` of what produced it (checkpoint content id + the scoring settings, see
``score_settings``): a rerun with another checkpoint or settings is refused instead of reprinting
the old verdicts (``--overwrite`` rescores). The resolved config is written beside the results
(``<out>.config.json``).
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
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import __version__, engine
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.config import MIN_FRAMES, ExtractConfig, PrepareConfig, ScoreConfig, to_dict
from pipeline.data import crops_to_tensor, normalization_of
from pipeline.errors import ConfigError, VideoReadError
from pipeline.fsutil import atomic_write_json, atomic_write_text, sha256_file
from pipeline.models import model_spec, scorer_name
from pipeline.plaintypes import json_default
from pipeline.release import resolve_checkpoint
from pipeline.sampling import sample_video
from pipeline.video_io import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

OUTCOME_STATUSES = ("ok", "no_face", "too_few_frames", "duplicate")
"""Statuses that are an answer about the video; anything else counts as a failure."""
N_EVIDENCE = 3
CROP_KEYS = ("margin", "size", "square", "jpeg_quality")


def crop_recipe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """How the model's training crops were made: ``{margin, size, square, jpeg_quality, source}``.

    From the checkpoint's ``crop`` key (written by ``dfpipe train`` from the extract manifests'
    config, or by the release export); a checkpoint without one gets the extract stage's
    defaults, and ``source`` says so. ``jpeg_quality`` 0 means no JPEG round trip.
    """
    stored = ckpt.get("crop")
    d = ExtractConfig()
    out = {"margin": d.margin, "size": d.crop_size, "square": d.square,
           "jpeg_quality": d.jpeg_quality}
    if isinstance(stored, dict):
        missing = [k for k in CROP_KEYS if stored.get(k) is None]
        out.update({k: stored[k] for k in CROP_KEYS if k not in missing})
        source = str(stored.get("source") or "checkpoint")
        if missing:
            source += f" ({', '.join(missing)}: extract defaults)"
    else:
        source = "extract defaults (the checkpoint records no crop recipe)"
    return {"margin": float(out["margin"]), "size": int(out["size"]), "square": bool(out["square"]),
            "jpeg_quality": int(out["jpeg_quality"] or 0), "source": source}


def checkpoint_threshold(ckpt: dict[str, Any], scored_as: str, path: str = "") -> float:
    """The checkpoint's decision threshold for the way it scores (``scored_as``).

    Training stores ``thresholds`` (one per use: ``frame`` and ``frame_mean`` for a frame model,
    each chosen on validation predictions made that way). An older checkpoint has only
    ``threshold``, chosen on the model's own predictions: used with a warning when it scores
    another way (a frame model as ``frame_mean``); 0.5 when it has neither.
    """
    thresholds = ckpt.get("thresholds") or {}
    if scored_as in thresholds:
        return float(thresholds[scored_as])
    own = ckpt.get("threshold")
    if scored_as != ckpt["model"]["name"]:
        log.warning("%s: no %s threshold in the checkpoint (trained before dfpipe stored one per "
                       "use); using the %s model's own threshold %s, chosen on %s predictions",
                       path or "checkpoint", scored_as, ckpt["model"]["name"],
                       "0.5" if own is None else f"{float(own):.4f}",
                       "middle-frame" if model_spec(ckpt["model"]["name"]).input_key == "image"
                       else "its own")
    return float(own if own is not None else 0.5)


class VideoScorer:
    """A model, a face detector and the sampling rules of its training data: scores videos.

    Build with ``VideoScorer.from_checkpoint``; ``score(path)`` returns a result dict.
    """

    def __init__(self, ckpt: dict[str, Any], ckpt_path: str, *, device: str = "auto",
                 detect: str = "slots", min_frames: int = 10, decoder: str = "decord",
                 threshold: float | None = None, extract: ExtractConfig | None = None,
                 min_track_share: float = 0.3, crop: dict[str, Any] | None = None) -> None:
        from pipeline.faces import MTCNNDetector

        self.device = engine.resolve_device(device)
        self.ckpt_path = str(ckpt_path)
        self.model_name = ckpt["model"]["name"]
        # a frame checkpoint scores videos as frame_mean: every sampled frame, probabilities averaged
        self.model = build_model(ckpt, as_model=model_spec(self.model_name).scores_as)
        self.model.to(self.device).eval()
        pre = ckpt.get("preprocess", {})
        self.image_size = int(pre.get("image_size", ckpt["config"].get("image_size", 160)))
        self.mean, self.std = normalization_of(pre)  # the statistics the model was trained with
        prep = dict(ckpt.get("train_data", {}).get("prepare") or {})
        defaults = PrepareConfig()
        self.sampler = prep.get("sampler", defaults.sampler)
        self.n_slots = int(prep.get("n_frames", defaults.n_frames))
        self.stride = int(prep.get("stride", defaults.stride))
        scored_as = scorer_name(self.model_name)
        self.threshold = float(threshold if threshold is not None
                               else checkpoint_threshold(ckpt, scored_as, self.ckpt_path))
        self.detect = detect
        self.min_frames = min_frames
        if not 0.0 <= min_track_share <= 1.0:
            raise ConfigError(f"min_track_share must be in [0, 1], got {min_track_share}")
        self.min_track_share = float(min_track_share)
        # crops as the training crops were made (``crop`` overrides, e.g. for the margin bench)
        self.crop = crop_recipe(
            {"crop": {**crop_recipe(ckpt), "source": "set by the caller", **crop}} if crop else ckpt)
        if "extract defaults" in self.crop["source"]:
            log.warning("%s: %s; cropping with margin %.2f, %d px, JPEG q%d", ckpt_path,
                        self.crop["source"], self.crop["margin"], self.crop["size"],
                        self.crop["jpeg_quality"])
        self.extract_cfg = replace(extract or ExtractConfig(decoder=decoder, device=device),
                                   margin=self.crop["margin"], crop_size=self.crop["size"],
                                   square=self.crop["square"])
        self.detector = MTCNNDetector(
            device=self.extract_cfg.device, min_face_size=self.extract_cfg.min_face_size,
            scale=self.extract_cfg.scale, retry_scale=self.extract_cfg.retry_scale,
            min_prob=self.extract_cfg.min_face_prob)
        data = ckpt.get("train_data", {})
        self.card = {
            "model": self.model_name,
            "scored_as": scorer_name(self.model_name),
            "backbone": ckpt["config"].get("backbone", ""),
            "checkpoint": self.ckpt_path,
            "checkpoint_id": _file_id(self.ckpt_path),
            "epoch": ckpt.get("epoch"),
            "threshold": self.threshold,
            "trained_on": _trained_on(data),
            "synthetic_training_data": data.get("synthetic"),
            "card_title": _card_title(ckpt.get("card")),
            "crop": dict(self.crop),
        }
        self.model_card = str(ckpt.get("card") or "")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, **kwargs: Any) -> VideoScorer:
        """Load ``path`` (weights_only; empty or ``default``: the shipped model) and build the
        scorer; ``kwargs`` as ``__init__``."""
        path = resolve_checkpoint(None if path is None else str(path))
        ckpt = load_checkpoint(path, map_location="cpu")
        return cls(ckpt, str(path), **kwargs)

    def info(self) -> dict[str, Any]:
        """The model card: which model, which checkpoint, threshold, training data."""
        return dict(self.card)

    # ------------------------------------------------------------------------------ one video

    def score(self, path: str | os.PathLike, *, explain_dir: str | os.PathLike | None = None,
              display_name: str | None = None, faces: Any = None) -> dict[str, Any]:
        """Score one video. Never raises for a bad video: the result has a status and a reason.

        ``faces``: the video's faces already found (a ``faces.VideoFaces`` as ``find_faces``
        returns, e.g. re-cropped at another margin by the crop-margin bench): no decoding or
        detection then.
        """
        t0 = time.perf_counter()
        path = Path(path)
        result: dict[str, Any] = {
            "path": str(path), "video_id": path.stem, "status": "", "reason": "", "p_fake": None,
            "label": None, "threshold": self.threshold, "tracks": [], "timeline": [],
            "frames_used": 0, "faces_found": 0, "seconds": 0.0, "checkpoint": self._ck_summary(),
        }
        try:
            self._score(path, result, explain_dir, display_name or path.name, faces)
        except VideoReadError as e:
            result.update(status=e.status, reason=str(e).splitlines()[0])
        except Exception as e:  # noqa: BLE001 - one bad video must not stop a batch
            log.exception("%s: unexpected error while scoring", path)
            result.update(status="error",
                          reason=f"{path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        result["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    def _ck_summary(self) -> dict[str, Any]:
        return {"id": self.card["checkpoint_id"], "model": self.card["scored_as"],
                "backbone": self.card["backbone"], "path": self.ckpt_path,
                "trained_on": self.card["trained_on"], "card_title": self.card["card_title"]}

    def slot_frames(self, n_frames: int) -> list[int] | None:
        """Frames MTCNN runs on: the sampler's slot starts (``detect='slots'``), None = all."""
        if self.detect == "slots" and self.sampler == "stride":
            return [f for f in range(0, self.n_slots * self.stride, self.stride) if f < n_frames]
        return None

    def find_faces(self, path: str | os.PathLike) -> Any:
        """Decode, detect, track and crop (the recipe's crops, JPEG round trip done).

        Returns a ``faces.VideoFaces``.

        Raises:
            VideoReadError: the video cannot be read, or has under 2 frames (status
                ``too_short``).
        """
        from pipeline.faces import extract_faces, jpeg_round_trip
        from pipeline.video_io import open_video

        path = Path(path)
        if path.is_dir():
            try:
                os.listdir(path)
                why = "a folder, not a video"
            except OSError as e:
                why = f"cannot list folder: {e.strerror or e}"
            raise VideoReadError(f"{path}: {why}")
        reader = open_video(path, self.extract_cfg.decoder)
        try:
            n = reader.info.n_frames
            if n < MIN_FRAMES:
                raise VideoReadError(f"{path}: {n} frame(s), need at least {MIN_FRAMES}",
                                     status="too_short")
            faces = extract_faces(reader, self.detector, self.extract_cfg,
                                  frames=self.slot_frames(reader.info.n_frames))
        finally:
            reader.close()
        if self.crop["jpeg_quality"]:  # the training crops were JPEG files
            faces.crops = [jpeg_round_trip(c, self.crop["jpeg_quality"]) for c in faces.crops]
        return faces

    def _score(self, path: Path, result: dict, explain_dir, display_name: str, faces: Any) -> None:
        faces = faces if faces is not None else self.find_faces(path)
        info = faces.info
        result["faces_found"] = len(faces.records)
        result["n_frames"] = info.n_frames
        if not faces.records:
            result.update(status="no_face", reason=f"{path}: no face found")
            return

        table = pd.DataFrame({
            "frame": [r.frame for r in faces.records],
            "track": [r.track for r in faces.records],
            "crop_path": [str(i) for i in range(len(faces.records))],  # index into faces.crops
        })
        probs = np.array([r.prob for r in faces.records], dtype=np.float64)
        tracks = []
        for track, rows in table.groupby("track", sort=True):
            choices = sample_video(rows, self.sampler, self.n_slots, self.stride, info.n_frames)
            used = [c for c in choices if not c.is_gap]
            p = probs[rows.index.to_numpy()]
            p = p[np.isfinite(p)]  # boxes carried between detections have no probability
            tracks.append({"track": int(track), "choices": choices, "used": used,
                           "faces": len(rows), "mean_face_prob": float(p.mean()) if len(p) else None})
        n_face_frames = int(table["frame"].nunique())
        statuses = track_statuses([t["faces"] for t in tracks], [len(t["used"]) for t in tracks],
                                  n_face_frames, self.min_track_share, self.min_frames)
        for t, status in zip(tracks, statuses, strict=True):
            t["summary"] = {"track": t["track"], "frames_used": len(t["used"]), "faces": t["faces"],
                            "share": round(t["faces"] / n_face_frames, 4),
                            "mean_face_prob": t["mean_face_prob"], "p_fake": None, "status": status}
        scorable = [t for t in tracks if t["summary"]["status"] == "ok"]
        result["tracks"] = [t["summary"] for t in tracks]
        if not scorable:
            best = max(len(t["used"]) for t in tracks if t["summary"]["status"] != "brief")
            result.update(status="too_few_frames",
                          reason=f"{path}: no face track fills {self.min_frames} of "
                                 f"{self.n_slots} slots (best: {best})")
            return

        clip, mask = self._inputs(scorable, faces.crops)  # (B, T, C, H, W), (B, T)
        with torch.no_grad():
            logits = self.model(clip, mask)  # (B,)
            p_tracks = engine.probabilities(logits).float().cpu().numpy()  # (B,)
            per_slot = self._per_slot(clip, mask)  # (B, T)
        for t, p in zip(scorable, p_tracks, strict=True):
            t["summary"]["p_fake"] = float(p)
        k = int(np.argmax(p_tracks))
        deciding = scorable[k]
        p_video = float(p_tracks[k])
        timeline = [{"frame": int(c.frame), "slot": int(c.slot), "p_fake": float(per_slot[k, c.slot])}
                    for c in deciding["used"]]
        result.update(status="ok", p_fake=p_video,
                      label="FAKE" if p_video >= self.threshold else "REAL",
                      deciding_track=deciding["track"], timeline=timeline,
                      frames_used=len(deciding["used"]))
        if explain_dir is not None:
            self._explain(Path(explain_dir), result, deciding, clip[k:k + 1], mask[k:k + 1],
                          faces.crops, display_name)

    def _inputs(self, tracks: list[dict], crops: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input for each track: (B, T, C, H, W) clips and (B, T) masks (gaps zero)."""
        b, t, s = len(tracks), self.n_slots, self.image_size
        clip = torch.zeros(b, t, 3, s, s)
        mask = torch.zeros(b, t)
        for i, tr in enumerate(tracks):
            slots = [c.slot for c in tr["used"]]
            x = crops_to_tensor([crops[int(c.crop_path)] for c in tr["used"]], s,
                                self.mean, self.std)  # (n, C, H, W)
            clip[i, slots] = x
            mask[i, slots] = 1.0
        return clip.to(self.device), mask.to(self.device)

    def _per_slot(self, clip: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """(B, T) per-slot p_fake: frame models score each frame; cnn_lstm gives running verdicts."""
        b, t = mask.shape
        if model_spec(self.card["scored_as"]).per_frame:
            logits = self.model.frame(clip.reshape(b * t, *clip.shape[2:]))  # (B*T,)
            return engine.probabilities(logits).reshape(b, t).float().cpu().numpy()  # (B, T)
        feats = self.model.encoder(clip)  # (B, T, F), once
        out = np.zeros((b, t), dtype=np.float32)
        for s in range(t):
            prefix = mask.clone()
            prefix[:, s + 1:] = 0  # the LSTM has seen slots 0..s
            logits = self.model.classify(feats, prefix)  # (B,)
            out[:, s] = engine.probabilities(logits).float().cpu().numpy()
        return out

    def _explain(self, out_dir: Path, result: dict, track: dict, clip: torch.Tensor,
                 mask: torch.Tensor, crops: list[np.ndarray], display_name: str) -> None:
        from pipeline.explain import grad_cam, render_html, render_sheet

        used = track["used"]
        faces = [crops[int(c.crop_path)] for c in used]
        # maps at the crops' own size (the model may see them smaller); grad_cam touches no
        # shared state (no .grad, its hook only sees this thread's forward), so concurrent
        # requests on one scorer get their own maps
        cams = grad_cam(lambda: self.model(clip, mask), self.model, faces[0].shape[:2])  # (T, h, w)
        timeline = result["timeline"]
        scores = np.array([p["p_fake"] for p in timeline])
        if model_spec(self.card["scored_as"]).per_frame:
            # the frames whose own score is furthest towards the verdict
            order = np.argsort(-scores if result["label"] == "FAKE" else scores)
        else:
            # the frames after which the running verdict moved most towards the final one
            steps = np.diff(np.concatenate([[0.5], scores]))
            order = np.argsort(-steps if result["label"] == "FAKE" else steps)
        picks = sorted(int(i) for i in order[:N_EVIDENCE])
        heat = [(int(used[i].frame), faces[i], cams[used[i].slot]) for i in picks]
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = evidence_stem(result["path"])
        png = render_sheet(
            out_dir / f"{stem}.png",
            title=f"{display_name}  ·  model {self.card['scored_as']} ({self.card['backbone']}), "
                  f"checkpoint {self.card['checkpoint_id']}\ntrained on {self.card['trained_on']}",
            verdict=f"{result['label']}  p_fake = {result['p_fake']:.3f}  "
                    f"(threshold {self.threshold:.3f}; track {track['track']} of "
                    f"{len(result['tracks'])})",
            faces=faces, frames=[c.frame for c in used], timeline=timeline,
            threshold=self.threshold, heatmaps=heat,
            timeline_label="p_fake of the frame" if model_spec(self.card["scored_as"]).per_frame
            else "running p_fake (LSTM)",
        )
        result["evidence_png"] = str(png)
        html = render_html(out_dir / f"{stem}.html", {**result, "path": display_name}, png.name)
        result["evidence_html"] = str(html)


def track_statuses(faces: list[int], used: list[int], n_face_frames: int, min_share: float,
                   min_frames: int) -> list[str]:
    """Per track: ``ok`` (an identity that fills ``min_frames`` slots), ``too_few_frames``, or
    ``brief`` (fewer than ``min_share`` of the frames with a face, and not the longest track).

    Args:
        faces: face crops per track.
        used: sampled slots that got a face, per track.
        n_face_frames: frames with at least one face (the share's denominator).
        min_share: minimum share of ``n_face_frames`` for a real identity.
        min_frames: minimum used slots for a track to be scored.
    """
    longest = max(faces, default=0)
    out = []
    for n, u in zip(faces, used, strict=True):
        if n < longest and n < min_share * n_face_frames:
            out.append("brief")
        else:
            out.append("ok" if u >= min_frames else "too_few_frames")
    return out


def evidence_stem(path: str | os.PathLike) -> str:
    """File stem of a video's evidence sheet: ``<stem>-<8 hex of its resolved path>``.

    ``a/clip.mp4`` and ``b/clip.mp4`` get different sheets in one ``--explain`` folder, and the
    same video gets the same name on every rerun.
    """
    p = Path(path)
    digest = hashlib.sha256(str(p.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{p.stem}-{digest[:8]}"


def _file_id(path: str) -> str:
    """Short content id of a checkpoint file (first 12 hex of its SHA-256)."""
    return sha256_file(path)[:12]


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "?"


def _trained_on(data: dict[str, Any]) -> str:
    """E.g. ``real data: DFDC face crops (dfdc_faces), 4,820 REAL / 8,945 FAKE training videos``."""
    if not data:
        return "unknown"
    counts = data.get("counts", {}).get("train", {})
    kind = {True: "SYNTHETIC data", False: "real data"}.get(data.get("synthetic"), "data of unknown origin")
    what = data.get("description") or data.get("source") or ""
    what = f" {what}," if what else ""
    return (f"{kind}:{what} {_count(counts.get('REAL'))} REAL / {_count(counts.get('FAKE'))} FAKE "
            "training videos")


def _card_title(card: Any) -> str:
    """First non-empty line of a model card (markdown ``#`` stripped); "" without a card."""
    for line in str(card or "").splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return ""


# ------------------------------------------------------------------------------------ batch


def discover_videos(inputs: tuple[str, ...] | list[str]) -> list[Path]:
    """Video files named directly or found (recursively) in folders, sorted by path.

    Every distinct input path is kept, also two paths of one file (a symlink, a hard link):
    ``find_duplicates`` says which ones are the same file. Only the same path named twice (a
    folder and a file in it) is listed once.
    """
    found: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            # a sub-folder that cannot be listed becomes an item of its own (scored as read_error)
            unlisted: list[Path] = []
            for folder, _, files in os.walk(p, onerror=lambda e, u=unlisted: u.append(Path(e.filename))):
                found += [Path(folder) / f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS
                          and (Path(folder) / f).is_file()]
            found += unlisted
        else:
            found.append(p)  # a missing or odd file still gets a result row with its reason
    seen, out = set(), []
    for p in sorted(found, key=lambda q: str(q)):
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


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
    """What a result depends on: the checkpoint's content id and the scoring settings."""
    scored_as = scorer_name(ckpt["model"]["name"])
    threshold = (cfg.threshold if cfg.threshold is not None
                 else checkpoint_threshold(ckpt, scored_as, cfg.checkpoint))
    return {"checkpoint_id": _file_id(cfg.checkpoint), "threshold": float(threshold),
            "detect": cfg.detect, "min_frames": cfg.min_frames,
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
        self.cfg = cfg
        self.scorer = VideoScorer.from_checkpoint(
            cfg.checkpoint, device=cfg.device, detect=cfg.detect, min_frames=cfg.min_frames,
            decoder=cfg.decoder, threshold=cfg.threshold, min_track_share=cfg.min_track_share)

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
               "frames_used", "faces_found", "n_tracks", "track_scores", "seconds", "checkpoint_id",
               "model", "card_title", "trained_on", "evidence_png", "duplicate_of"]


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
    """Score every input video; resumable; exit 1 when any video failed (not for no_face)."""
    from pipeline.executors import run_items

    if not cfg.inputs:
        raise ConfigError("dfpipe score needs at least one video file or folder")
    from pipeline.shards import in_shard, parse_shard

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
    videos = [p for p in discover_videos(cfg.inputs) if in_shard(str(p), shard)]
    dups = find_duplicates(videos)
    for p, primary in dups.items():
        if str(p) not in done:
            row = {**duplicate_row(p, primary), "score_key": key}
            _append(journal, row)
            done[row["path"]] = row
    todo = [{"id": str(p), "path": str(p)} for p in videos if str(p) not in done]
    log.info("%d video(s): %d already scored in %s, %d duplicate path(s), %d to score",
             len(videos), len(videos) - len(todo) - len(dups), journal, len(dups), len(todo))
    for row in run_items(ScoreWorker, (cfg,), todo, engine=cfg.engine, workers=cfg.workers,
                         address=cfg.address, max_in_flight=cfg.max_in_flight, desc="score"):
        item_id = str(row.pop("id", ""))
        if "path" not in row:  # the executor's safety net: the worker died or raised
            row = crashed_row(item_id, row)
        row["score_key"] = key
        _append(journal, row)
        done[row["path"]] = row
        if row["status"] not in OUTCOME_STATUSES:
            log.error("%s", row["reason"])
    rows = [done[str(p)] for p in videos if str(p) in done]
    if out.suffix == ".csv":
        write_csv(out, rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    n_fake = sum(1 for r in rows if r.get("label") == "FAKE")
    n_real = sum(1 for r in rows if r.get("label") == "REAL")
    failed = sum(n for s, n in statuses.items() if s not in OUTCOME_STATUSES)
    failed += len(videos) - len(rows)  # a video without a row has failed too (never expected)
    log.info("scored %d video(s): %d FAKE, %d REAL; statuses %s; results in %s",
             len(rows), n_fake, n_real, statuses, out)
    for r in rows:
        p = r.get("p_fake")
        verdict = f"{r['label']} p_fake={p:.3f}" if p is not None and not math.isnan(p) \
            else f"{r['status']}: {r.get('reason', '')}"
        print(f"{r['path']}\t{verdict}")
    return 1 if failed else 0
