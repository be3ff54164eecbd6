"""``dfpipe score``, one input: a video or still image -> a verdict with the evidence it rests on.

A video: decode -> faces (``faces.extract_faces``, the extract stage's own code) -> per face
track, the model's slots over the whole video (``score_sampling``: windows of ``n_slots`` frames
at the training spacing in seconds, ``slot_seconds``, from the checkpoint; one denser window for a
clip shorter than that; consecutive windows for a longer one, so that every part of the video is
looked at) -> p_fake per window (``data.crops_to_tensor``, the training preprocessing; a window
with gaps is a masked clip) -> the track's p_fake = the mean of its windows' p_fake weighted by the
frames each rests on -> the video's p_fake = the maximum over the tracks that are real identities
(any fake identity makes the video fake).

Why the mean over windows and the max over tracks: the decision threshold was chosen on single
~10 s windows of validation videos; averaging a track's windows keeps a real video's false-alarm
rate at that calibrated level however long it is (a max over 30 windows of a 5-minute video would
call far more real videos FAKE), while each window's own p_fake stays in ``windows`` and the
``timeline`` so a manipulated stretch remains visible. Different tracks are different people: one
fake identity is enough.

A track is an identity when it holds at least ``min_track_share`` of the video's face frames (or
is the longest track); shorter ones (a face on a poster seen for a moment, a detector false
positive) are reported in ``tracks`` with status ``brief`` and never decide the verdict. A track
is scored when its face is in at least ``min_frames`` (3) sampled frames; ``frames_used`` says how
many distinct frames the verdict rests on and ``low_evidence`` is true below
``low_evidence_frames`` (10, a third of the model's 30 slots). A failure has a status and a
reason and no score; never a made-up 0.5.

A still image (``score_image``): faces scored one by one with the frame model, max over faces.
``score(path)`` dispatches on the suffix or the file's first bytes: the one entry point for a CLI
input, a batch item or a web upload.

Statuses: ``ok``; ``no_face`` (readable, no face found); ``too_few_frames`` (faces, but no track
in ``min_frames`` sampled frames); ``duplicate`` (batch only, ``score_batch``); ``needs_video``
(an image with a ``cnn_lstm`` checkpoint); ``read_error`` / ``empty_file`` / ``missing_file`` /
``too_short`` (the input cannot be used); ``error`` (anything unexpected, with its message).

Crops are made the way the model's training crops were (no train/serve skew): the checkpoint's
``crop`` recipe (``score_card.crop_recipe``) drives ``faces.crop_face`` and the JPEG round trip.

Per-frame timeline (every window of the deciding track): for ``frame`` checkpoints, each sampled
frame's own p_fake (a window's p_fake is their mean, as ``frame_mean``); for ``cnn_lstm``, the
running verdict within its window: p_fake after the LSTM has seen the slots up to that frame.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import engine
from pipeline.aggregation import aggregate
from pipeline.checkpoint import build_model, load_checkpoint
from pipeline.config import MIN_FRAMES, ExtractConfig
from pipeline.data import crops_to_tensor, normalization_of
from pipeline.errors import ConfigError, VideoReadError
from pipeline.models import model_spec
from pipeline.models.temporal import frame_mean_p
from pipeline.release import resolve_checkpoint
from pipeline.score_batch import (  # noqa: F401 - the batch API, re-exported for its callers
    OUTCOME_STATUSES,
    config_path,
    journal_path,
    read_journal,
    run,
    write_csv,
)
from pipeline.score_card import (
    card_title,
    checkpoint_threshold,
    crop_recipe,  # noqa: F401 - re-exported for its callers
    file_id,
    scored_as,
    trained_on,
)
from pipeline.score_card import trained_on as _trained_on  # noqa: F401 - its older name
from pipeline.score_evidence import evidence_stem, video_sheet  # noqa: F401 - re-exported
from pipeline.score_image import is_image, score_image
from pipeline.score_sampling import (
    Window,
    WindowSlot,
    sample_window,
    score_windows,
    slot_plan,
    window_frames,
)

log = logging.getLogger(__name__)

VIDEO_RULE = ("a window's p_fake from its sampled frames; a track's p_fake = the mean of its "
              "windows' p_fake weighted by their frames; the video's p_fake = the max over its "
              "identity tracks")
"""How a video's verdict combines windows and tracks: in every video result (``verdict_rule``)."""


def video_rule(per_frame: bool, aggregation: dict[str, Any]) -> str:
    """``verdict_rule`` of a scorer: ``VIDEO_RULE``, or for a frame model the checkpoint's frame
    -> track rule (``pipeline.aggregation``) over all the track's sampled frames."""
    from pipeline.aggregation import describe

    rule = aggregation.get("rule", "mean")
    if not per_frame or rule == "mean":
        return VIDEO_RULE
    return (f"a track's p_fake over all its sampled frames by the {rule} rule chosen on "
            f"validation ({describe(rule, aggregation.get('params'))}); the video's p_fake = "
            "the max over its identity tracks")
CLIPS_PER_PASS = 8
"""Windows per forward pass: a long video's windows go through the model in chunks (memory)."""


class VideoScorer:
    """A model, a face detector and the sampling rules of its training data: scores videos and
    still images.

    Build with ``VideoScorer.from_checkpoint``; ``score(path)`` returns a result dict.
    """

    def __init__(self, ckpt: dict[str, Any], ckpt_path: str, *, device: str = "auto",
                 detect: str = "slots", min_frames: int = 3, decoder: str = "decord",
                 threshold: float | None = None, extract: ExtractConfig | None = None,
                 min_track_share: float = 0.3, crop: dict[str, Any] | None = None,
                 low_evidence_frames: int = 10) -> None:
        from pipeline.faces import detector_from_config

        self.device = engine.resolve_device(device)
        self.ckpt_path = str(ckpt_path)
        self.model_name = ckpt["model"]["name"]
        # a frame checkpoint scores videos as frame_mean: every sampled frame, probabilities averaged
        self.model = build_model(ckpt, as_model=model_spec(self.model_name).scores_as)
        self.model.to(self.device).eval()
        pre = ckpt.get("preprocess", {})
        self.image_size = int(pre.get("image_size", ckpt["config"].get("image_size", 160)))
        self.mean, self.std = normalization_of(pre)  # the statistics the model was trained with
        self.plan = slot_plan(ckpt)  # n_slots frames slot_seconds apart, as the training clips
        self.n_slots = self.plan.n_slots
        self.threshold = float(threshold if threshold is not None
                               else checkpoint_threshold(ckpt, scored_as(ckpt), self.ckpt_path))
        # an image is one frame: the threshold chosen on the image model's own predictions
        self.takes_images = model_spec(self.model_name).input_key == "image"
        self.image_threshold = float(threshold if threshold is not None else (
            checkpoint_threshold(ckpt, self.model_name, self.ckpt_path) if self.takes_images
            else self.threshold))
        self.detect = detect
        if min_frames < 1 or low_evidence_frames < 0:
            raise ConfigError(f"min_frames must be >= 1 and low_evidence_frames >= 0, got "
                              f"{min_frames} and {low_evidence_frames}")
        self.min_frames, self.low_evidence_frames = int(min_frames), int(low_evidence_frames)
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
        self.detector = detector_from_config(self.extract_cfg)
        data = ckpt.get("train_data", {})
        self.card = {
            "model": self.model_name,
            "scored_as": scored_as(ckpt),
            "backbone": ckpt["config"].get("backbone", ""),
            "checkpoint": self.ckpt_path,
            "checkpoint_id": file_id(self.ckpt_path),
            "epoch": ckpt.get("epoch"),
            "threshold": self.threshold,
            "image_threshold": self.image_threshold if self.takes_images else None,
            "trained_on": trained_on(data),
            "synthetic_training_data": data.get("synthetic"),
            "card_title": card_title(ckpt.get("card")),
            "crop": dict(self.crop),
            "sampling": {"slots": self.plan.n_slots, "slot_seconds": round(self.plan.slot_seconds, 6),
                         "source": self.plan.source, "min_frames": self.min_frames,
                         "low_evidence_frames": self.low_evidence_frames},
        }
        self.model_card = str(ckpt.get("card") or "")
        # a frame model's frame -> track rule, chosen on validation at training (default: mean)
        self.aggregation = dict((ckpt.get("aggregations") or {}).get(scored_as(ckpt))
                                or {"rule": "mean", "params": {},
                                    "chosen_on": "the checkpoint records no rule: mean"})
        self.per_frame = model_spec(self.card["scored_as"]).per_frame
        self.verdict_rule = video_rule(self.per_frame, self.aggregation)
        self.card["aggregation"] = dict(self.aggregation)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, **kwargs: Any) -> VideoScorer:
        """Load ``path`` (weights_only; empty or ``default``: the shipped model) and build the
        scorer; ``kwargs`` as ``__init__``."""
        path = resolve_checkpoint(None if path is None else str(path))
        ckpt = load_checkpoint(path, map_location="cpu")
        return cls(ckpt, str(path), **kwargs)

    def info(self) -> dict[str, Any]:
        """The model card: which model, which checkpoint, thresholds, sampling, training data."""
        return dict(self.card)

    # ------------------------------------------------------------------------------ one input

    def score(self, path: str | os.PathLike, *, explain_dir: str | os.PathLike | None = None,
              display_name: str | None = None, faces: Any = None) -> dict[str, Any]:
        """Score one video or still image (by suffix or content: ``score_image.is_image``).
        Never raises for a bad input: the result has a status and a reason.

        ``faces``: a video's faces already found (a ``faces.VideoFaces`` as ``find_faces``
        returns, e.g. re-cropped at another margin by the crop-margin bench): no decoding or
        detection then.
        """
        t0 = time.perf_counter()
        path = Path(path)
        name = display_name or path.name
        result: dict[str, Any] = {
            "path": str(path), "video_id": path.stem, "kind": "video", "status": "", "reason": "",
            "p_fake": None, "label": None, "threshold": self.threshold, "tracks": [],
            "timeline": [], "windows": [], "frames_used": 0, "low_evidence": None,
            "faces_found": 0, "seconds": 0.0, "checkpoint": self._ck_summary(),
        }
        try:
            if faces is None and is_image(path):
                score_image(self, path, result, explain_dir, name)
            else:
                self._score_video(path, result, explain_dir, name, faces)
        except VideoReadError as e:
            result.update(status=e.status, reason=str(e).splitlines()[0])
        except Exception as e:  # noqa: BLE001 - one bad input must not stop a batch
            log.exception("%s: unexpected error while scoring", path)
            result.update(status="error",
                          reason=f"{path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
        result["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    def _ck_summary(self) -> dict[str, Any]:
        return {"id": self.card["checkpoint_id"], "model": self.card["scored_as"],
                "backbone": self.card["backbone"], "path": self.ckpt_path,
                "trained_on": self.card["trained_on"], "card_title": self.card["card_title"]}

    def windows(self, n_frames: int, fps: float | None = None) -> list[Window]:
        """The scoring windows of a video (``score_sampling.score_windows``; fps None: 30)."""
        return score_windows(n_frames, fps or 0.0, self.plan)

    def slot_frames(self, n_frames: int, fps: float | None = None) -> list[int] | None:
        """Frames MTCNN runs on: every window's slot frames (``detect='slots'``), None = all."""
        if self.detect == "slots":
            return window_frames(self.windows(n_frames, fps))
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
                                  frames=self.slot_frames(n, reader.info.fps))
        finally:
            reader.close()
        if self.crop["jpeg_quality"]:  # the training crops were JPEG files
            faces.crops = [jpeg_round_trip(c, self.crop["jpeg_quality"]) for c in faces.crops]
        return faces

    def _score_video(self, path: Path, result: dict, explain_dir, display_name: str,
                     faces: Any) -> None:
        faces = faces if faces is not None else self.find_faces(path)
        info = faces.info
        fps = float(info.fps) if info.fps and info.fps > 0 else None
        result.update(faces_found=len(faces.records), n_frames=info.n_frames, fps=fps)
        if not faces.records:
            result.update(status="no_face", reason=f"{path}: no face found")
            return
        windows = self.windows(info.n_frames, fps)
        crop_of: dict[int, dict[int, np.ndarray]] = {}  # track -> frame -> its crop
        probs: dict[int, list[float]] = {}
        for rec, crop in zip(faces.records, faces.crops, strict=True):
            crop_of.setdefault(rec.track, {}).setdefault(rec.frame, crop)
            if np.isfinite(rec.prob):  # boxes carried between detections have no probability
                probs.setdefault(rec.track, []).append(float(rec.prob))
        tracks = []
        for track in sorted(crop_of):
            frames = frozenset(crop_of[track])
            per_window = [[s for s in sample_window(frames, w) if not s.is_gap] for w in windows]
            p = probs.get(track, [])
            tracks.append({"track": int(track), "per_window": per_window,
                           "used": len({s.frame for ws in per_window for s in ws}),
                           "faces": sum(r.track == track for r in faces.records),
                           "mean_face_prob": float(np.mean(p)) if p else None})
        n_face_frames = faces.n_face_frames
        statuses = track_statuses([t["faces"] for t in tracks], [t["used"] for t in tracks],
                                  n_face_frames, self.min_track_share, self.min_frames)
        for t, status in zip(tracks, statuses, strict=True):
            t["summary"] = {"track": t["track"], "frames_used": t["used"], "faces": t["faces"],
                            "share": round(t["faces"] / n_face_frames, 4),
                            "mean_face_prob": t["mean_face_prob"], "p_fake": None, "status": status}
        result["tracks"] = [t["summary"] for t in tracks]
        scorable = [t for t in tracks if t["summary"]["status"] == "ok"]
        if not scorable:
            best = max(t["used"] for t in tracks if t["summary"]["status"] != "brief")
            result.update(status="too_few_frames",
                          reason=f"{path}: no face track is in {self.min_frames} sampled frames "
                                 f"(best: {best} of {sum(len(w.starts) for w in windows)})")
            return
        # one clip per (track, window with a face): its used slots and their crops, as arrays
        clips = [(ti, ws) for ti, t in enumerate(scorable) for ws in t["per_window"] if ws]
        slots = [[(s, crop_of[scorable[ti]["track"]][s.frame]) for s in ws] for ti, ws in clips]
        p_clip, per_slot = self._predict(slots)  # (B,), (B, T)
        rule = self.aggregation.get("rule", "mean")
        for ti, t in enumerate(scorable):
            mine = [c for c, (cti, _) in enumerate(clips) if cti == ti]
            n = np.array([len(clips[c][1]) for c in mine], dtype=np.float64)
            if self.per_frame and rule != "mean":  # the rule over all the track's frames
                t["p_fake"] = aggregate([per_slot[c, s.slot] for c in mine for s in clips[c][1]],
                                        rule, self.aggregation.get("params"))
            else:  # frames-weighted mean of windows (= the mean of all frames for a frame model)
                t["p_fake"] = float(np.dot(n, p_clip[mine]) / n.sum())
            t["clips"] = mine
            t["summary"]["p_fake"] = t["p_fake"]
        deciding = max(scorable, key=lambda t: t["p_fake"])
        p_video = deciding["p_fake"]
        timeline, by_window = [], {}
        for c in deciding["clips"]:
            ws = clips[c][1]
            by_window[ws[0].window] = (float(p_clip[c]), len(ws))
            timeline += [{"frame": int(s.frame), "slot": int(s.slot), "window": int(s.window),
                          "time_s": None if fps is None else round(s.frame / fps, 3),
                          "p_fake": float(per_slot[c, s.slot])} for s in ws]
        result.update(
            status="ok", p_fake=p_video, label="FAKE" if p_video >= self.threshold else "REAL",
            deciding_track=deciding["track"], verdict_rule=self.verdict_rule, timeline=timeline,
            frames_used=deciding["used"],
            low_evidence=deciding["used"] < self.low_evidence_frames,
            windows=[w.summary(fps, *by_window.get(w.index, (None, 0))) for w in windows])
        if explain_dir is not None:
            fake = result["label"] == "FAKE"  # Grad-CAM on the window leaning furthest that way
            c = max(deciding["clips"], key=lambda i: p_clip[i] if fake else -p_clip[i])
            video_sheet(self, Path(explain_dir), result, deciding, slots[c], float(p_clip[c]),
                        display_name)

    def _predict(self, slots: list[list[tuple[WindowSlot, np.ndarray]]]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """p_fake per clip (B,) and per slot (B, T), ``CLIPS_PER_PASS`` clips per forward pass."""
        p_clip, per_slot = [], []
        for i in range(0, len(slots), CLIPS_PER_PASS):
            chunk = slots[i:i + CLIPS_PER_PASS]
            where = [(c, s.slot) for c, clip in enumerate(chunk) for s, _ in clip]
            clip, mask = self._inputs(where, [crop for clip in chunk for _, crop in clip])
            with torch.no_grad():
                ps = self._per_slot(clip, mask)  # (b, T)
                if self.per_frame and self.aggregation.get("rule", "mean") != "mean":
                    m = mask.cpu().numpy() > 0  # (b, T)
                    p = np.array([aggregate(ps[i][m[i]], self.aggregation["rule"],
                                            self.aggregation.get("params"))
                                  for i in range(len(ps))])  # (b,)
                elif self.per_frame:  # the frame_mean rule
                    p = frame_mean_p(torch.from_numpy(ps), mask.cpu()).numpy()  # (b,)
                else:
                    p = engine.probabilities(self.model(clip, mask)).cpu().numpy()  # (b,)
            p_clip.append(p)
            per_slot.append(ps)
        return np.concatenate(p_clip), np.concatenate(per_slot)

    def _inputs(self, where: list[tuple[int, int]], crops: list[np.ndarray]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops placed at ``(clip, slot)``: (B, T, C, H, W) clips and (B, T) masks (gaps 0)."""
        b, t, s = max(c for c, _ in where) + 1, self.n_slots, self.image_size
        clip = torch.zeros(b, t, 3, s, s)
        mask = torch.zeros(b, t)
        x = crops_to_tensor(crops, s, self.mean, self.std)  # (n, C, H, W)
        idx_b = torch.tensor([c for c, _ in where])
        idx_t = torch.tensor([k for _, k in where])
        clip[idx_b, idx_t] = x
        mask[idx_b, idx_t] = 1.0
        return clip.to(self.device), mask.to(self.device)

    def _per_slot(self, clip: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """(B, T) per-slot p_fake: frame models score each frame (gaps 0); cnn_lstm gives running
        verdicts."""
        b, t = mask.shape
        if model_spec(self.card["scored_as"]).per_frame:
            valid = mask.bool()  # (B, T)
            out = torch.zeros(b, t)
            out[valid.cpu()] = engine.probabilities(self.model.frame(clip[valid])).cpu()  # (n,)
            return out.numpy()  # (B, T)
        feats = self.model.encoder(clip)  # (B, T, F), once
        out = np.zeros((b, t), dtype=np.float32)
        for s in range(t):
            prefix = mask.clone()
            prefix[:, s + 1:] = 0  # the LSTM has seen slots 0..s
            logits = self.model.classify(feats, prefix)  # (B,)
            out[:, s] = engine.probabilities(logits).float().cpu().numpy()
        return out


def track_statuses(faces: list[int], used: list[int], n_face_frames: int, min_share: float,
                   min_frames: int) -> list[str]:
    """Per track: ``ok`` (an identity in at least ``min_frames`` sampled frames),
    ``too_few_frames``, or ``brief`` (fewer than ``min_share`` of the frames with a face, and not
    the longest track).

    Args:
        faces: face crops per track.
        used: sampled frames that got the track's face, per track.
        n_face_frames: frames with at least one face (the share's denominator).
        min_share: minimum share of ``n_face_frames`` for a real identity.
        min_frames: minimum sampled frames for a track to be scored.
    """
    longest = max(faces, default=0)
    out = []
    for n, u in zip(faces, used, strict=True):
        if n < longest and n < min_share * n_face_frames:
            out.append("brief")
        else:
            out.append("ok" if u >= min_frames else "too_few_frames")
    return out
