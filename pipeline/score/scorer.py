"""``dfpipe score``, one input: a video or still image -> a verdict with the evidence it rests on.

``VideoScorer`` holds a checkpoint's model, a face detector and the sampling rules of its training
data; ``score(path)`` walks a video down the scoring steps, each a module entered once, in order:

1. ``score.find``: decode and find the faces (``faces.video.extract_faces``, the extract stage's
   own code) on the slot frames of the video's windows (``score.plan``: windows of ``n_slots``
   frames at the training spacing in seconds, from the checkpoint; one denser window for a clip
   shorter than that; consecutive windows for a longer one, so every part of the video is looked
   at), cropped as the training crops were (the checkpoint's ``crop`` recipe,
   ``score.card.crop_recipe``, and its JPEG round trip: no train/serve skew);
2. ``score.windows``: each face track into the windows' slots; which tracks are identities;
3. ``score.predict``: p_fake per window and per slot (the training preprocessing; a window with
   gaps is a masked clip);
4. ``score.verdict``: a track's p_fake = the mean of its windows' p_fake weighted by the frames
   each rests on; the video's = the max over its identity tracks (any fake identity makes the
   video fake), FAKE at the checkpoint's threshold;
5. ``score.evidence`` (with ``explain_dir``): the evidence sheet, PNG + HTML.

A still image (``io.images.is_image`` by suffix or first bytes) goes to ``score.image``: faces
scored one by one with the frame model, max over faces. ``score(path)`` is the one entry point for
a CLI input, a batch item (``score.batch``) or a web upload (``service``).

A track is scored when its face is in at least ``min_frames`` (3) sampled frames;
``frames_used`` says how many distinct frames the verdict rests on and ``low_evidence`` is true
below ``low_evidence_frames`` (10, a third of the model's 30 slots). A failure has a status and a
reason and no score; never a made-up 0.5.

Statuses: ``ok``; ``no_face`` (readable, no face found); ``too_few_frames`` (faces, but no track
in ``min_frames`` sampled frames); ``duplicate`` (batch only, ``score.batch``); ``needs_video``
(an image with a ``cnn_lstm`` checkpoint); ``read_error`` / ``empty_file`` / ``missing_file`` /
``too_short`` (the input cannot be used); ``error`` (anything unexpected, with its message).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import ExtractConfig
from pipeline.core.device import resolve_device
from pipeline.core.errors import ConfigError, VideoReadError
from pipeline.faces.detect import detector_from_config
from pipeline.faces.records import VideoFaces
from pipeline.io.images import is_image
from pipeline.models import model_spec
from pipeline.models.checkpoint import build_model, load_checkpoint
from pipeline.models.fuse import fuse_for_inference
from pipeline.release import resolve_checkpoint
from pipeline.score.card import (
    card_title,
    checkpoint_threshold,
    crop_recipe,
    file_id,
    scored_as,
    trained_on,
)
from pipeline.score.evidence import video_sheet
from pipeline.score.find import find_faces
from pipeline.score.image import score_image
from pipeline.score.plan import Window, score_windows, slot_plan, window_frames
from pipeline.score.predict import Predictor, window_clips
from pipeline.score.verdict import verdict, video_rule
from pipeline.score.windows import place
from pipeline.train.data import normalization_of
from pipeline.train.engine import inference_precision

log = logging.getLogger(__name__)


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
        self.device = resolve_device(device)
        self.ckpt_path = str(ckpt_path)
        self.model_name = ckpt["model"]["name"]
        # a frame checkpoint scores videos as frame_mean: every sampled frame, probabilities averaged
        model = build_model(ckpt, as_model=model_spec(self.model_name).scores_as)
        model.to(self.device).eval()
        fuse_for_inference(model)  # batch norms folded into the convolutions: same outputs
        pre = ckpt.get("preprocess", {})
        self.plan = slot_plan(ckpt)  # n_slots frames slot_seconds apart, as the training clips
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
        mean, std = normalization_of(pre)  # the statistics the model was trained with
        self.predictor = Predictor(
            model, self.device, scored_as=self.card["scored_as"],
            image_size=int(pre.get("image_size", ckpt["config"].get("image_size", 160))),
            mean=mean, std=std, n_slots=self.plan.n_slots, aggregation=self.aggregation)

    @property
    def model(self) -> Any:
        """The checkpoint's model (evaluation mode, folded for inference): the predictor's."""
        return self.predictor.model

    @property
    def image_size(self) -> int:
        """Input size of the model in pixels."""
        return self.predictor.image_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None, **kwargs: Any) -> VideoScorer:
        """Load ``path`` (weights_only; empty or ``default``: the shipped model) and build the
        scorer; ``kwargs`` as ``__init__``."""
        path = resolve_checkpoint(None if path is None else str(path))
        ckpt = load_checkpoint(path, map_location="cpu")
        return cls(ckpt, str(path), **kwargs)

    def info(self) -> dict[str, Any]:
        """The model card: which model, which checkpoint, thresholds, sampling, training data,
        and the precision its predictions run in here (``train.engine.inference_precision``)."""
        return {**self.card, "precision": inference_precision(self.device)}

    # ------------------------------------------------------------------------------ one input

    def score(self, path: str | os.PathLike, *, explain_dir: str | os.PathLike | None = None,
              display_name: str | None = None, faces: VideoFaces | None = None) -> dict[str, Any]:
        """Score one video or still image (by suffix or content: ``io.images.is_image``).
        Never raises for a bad input: the result has a status and a reason.

        ``faces``: a video's faces already found (a ``faces.records.VideoFaces`` as
        ``find_faces`` returns, e.g. re-cropped at another margin by the crop-margin bench): no
        decoding or detection then.
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
                score_image(path, result, explain_dir, name, predictor=self.predictor,
                            detector=self.detector, crop=self.crop,
                            threshold=self.image_threshold, card=self.card)
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
                "trained_on": self.card["trained_on"], "card_title": self.card["card_title"],
                "precision": inference_precision(self.device)}

    def windows(self, n_frames: int, fps: float | None = None) -> list[Window]:
        """The scoring windows of a video (``score.plan.score_windows``; fps None: 30)."""
        return score_windows(n_frames, fps or 0.0, self.plan)

    def slot_frames(self, n_frames: int, fps: float | None = None) -> list[int] | None:
        """Frames MTCNN runs on: every window's slot frames (``detect='slots'``), None = all."""
        if self.detect == "slots":
            return window_frames(self.windows(n_frames, fps))
        return None

    def find_faces(self, path: str | os.PathLike) -> VideoFaces:
        """Decode, detect, track and crop (the recipe's crops, JPEG round trip done):
        ``score.find.find_faces`` with this scorer's detector, crops and plan.

        Raises:
            VideoReadError: the video cannot be read, or has under 2 frames (status
                ``too_short``).
        """
        return find_faces(path, self.detector, self.extract_cfg, self.crop["jpeg_quality"],
                          self.plan if self.detect == "slots" else None)

    def _score_video(self, path: Path, result: dict, explain_dir, display_name: str,
                     faces: VideoFaces | None) -> None:
        """The video's walk: find -> windows -> predict -> verdict -> evidence."""
        faces = faces if faces is not None else self.find_faces(path)
        info = faces.info
        fps = float(info.fps) if info.fps and info.fps > 0 else None
        result.update(faces_found=len(faces.records), n_frames=info.n_frames, fps=fps)
        if not faces.records:
            result.update(status="no_face", reason=f"{path}: no face found")
            return
        placed = place(faces, self.plan, fps, self.min_track_share, self.min_frames)
        result["tracks"] = [t["summary"] for t in placed.tracks]
        scorable = placed.scorable
        if not scorable:
            result.update(status="too_few_frames",
                          reason=f"{path}: no face track is in {self.min_frames} sampled frames "
                                 f"(best: {placed.best_unscored()} of {placed.n_slots})")
            return
        clips, slots = window_clips(scorable, placed.crop_of)
        p_clip, per_slot = self.predictor.predict(slots)  # (B,), (B, T)
        fields, deciding = verdict(scorable, clips, p_clip, per_slot, placed.windows, fps,
                                   threshold=self.threshold, per_frame=self.per_frame,
                                   aggregation=self.aggregation)
        result.update(fields, verdict_rule=self.verdict_rule,
                      low_evidence=deciding["used"] < self.low_evidence_frames)
        if explain_dir is not None:
            fake = result["label"] == "FAKE"  # Grad-CAM on the window leaning furthest that way
            c = max(deciding["clips"], key=lambda i: p_clip[i] if fake else -p_clip[i])
            video_sheet(self.predictor, self.card, self.threshold, Path(explain_dir), result,
                        deciding, slots[c], float(p_clip[c]), display_name)
