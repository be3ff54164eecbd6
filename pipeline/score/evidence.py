"""Evidence sheets for scored inputs: a result + the crops it rests on -> PNG + HTML.

What goes on the sheet is decided here (which window, which frames, the verdict and provenance
lines); drawing is ``explain.render_sheet`` / ``explain.render_html``. A video's sheet shows the
deciding track's faces of the window that leans furthest towards the verdict, Grad-CAM on the
``N_EVIDENCE`` frames that drove it, and the timeline over every window of the video; an image's
sheet shows its faces and Grad-CAM on the deciding one.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.score.predict import Predictor

N_EVIDENCE = 3


def evidence_stem(path: str | os.PathLike) -> str:
    """File stem of an input's evidence sheet: ``<stem>-<8 hex of its resolved path>``.

    ``a/clip.mp4`` and ``b/clip.mp4`` get different sheets in one ``--explain`` folder, and the
    same input gets the same name on every rerun.
    """
    p = Path(path)
    digest = hashlib.sha256(str(p.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{p.stem}-{digest[:8]}"


def video_sheet(predictor: Predictor, card: dict[str, Any], threshold: float, out_dir: Path,
                result: dict, track: dict, slots: list[tuple[Any, np.ndarray]], p_window: float,
                display_name: str) -> None:
    """Evidence sheet of a video's deciding ``track``: Grad-CAM on one of its windows (``slots``:
    the window's used slots and crops, ``p_window`` its p_fake), the timeline over the whole
    video; ``card`` (the scorer's model card) and ``threshold`` name the model and its decision.
    Adds ``evidence_png`` and ``evidence_html`` to ``result``."""
    from pipeline.score.explain import grad_cam, render_html, render_sheet

    fake = result["label"] == "FAKE"
    used = [s for s, _ in slots]
    faces = [crop for _, crop in slots]
    clip, mask = predictor.inputs([(0, s.slot) for s in used], faces)  # (1, T, C, H, W), (1, T)
    # maps at the crops' own size (the model may see them smaller); grad_cam touches no
    # shared state (no .grad, its hook only sees this thread's forward), so concurrent
    # requests on one scorer get their own maps
    model = predictor.model
    cams = grad_cam(partial(model, clip, mask), model, faces[0].shape[:2])  # (T, h, w)
    window = used[0].window
    scores = np.array([p["p_fake"] for p in result["timeline"] if p["window"] == window])
    per_frame = predictor.per_frame
    if per_frame:
        # the frames whose own score is furthest towards the verdict
        order = np.argsort(-scores if fake else scores)
    else:
        # the frames after which the running verdict moved most towards the final one
        steps = np.diff(np.concatenate([[0.5], scores]))
        order = np.argsort(-steps if fake else steps)
    picks = sorted(int(i) for i in order[:N_EVIDENCE])
    heat = [(int(used[i].frame), faces[i], cams[used[i].slot]) for i in picks]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = evidence_stem(result["path"])
    low = (f"; LOW EVIDENCE: {result['frames_used']} frames" if result["low_evidence"] else
           f"; {result['frames_used']} frames")
    png = render_sheet(
        out_dir / f"{stem}.png",
        title=f"{display_name}  ·  model {card['scored_as']} ({card['backbone']}), "
              f"checkpoint {card['checkpoint_id']}\ntrained on {card['trained_on']}",
        verdict=f"{result['label']}  p_fake = {result['p_fake']:.3f}  "
                f"(threshold {threshold:.3f}; track {track['track']} of "
                f"{len(result['tracks'])}{low}; faces: window {window + 1} of "
                f"{len(result['windows'])}, "
                f"p {p_window:.3f})",
        faces=faces, frames=[s.frame for s in used], timeline=result["timeline"],
        threshold=threshold, heatmaps=heat,
        timeline_label="p_fake of the frame" if per_frame
        else "running p_fake (LSTM, per window)",
        card=card, frames_used=result["frames_used"], n_frames=result.get("n_frames"),
        fps=result.get("fps"),
    )
    result["evidence_png"] = str(png)
    html = render_html(out_dir / f"{stem}.html", {**result, "path": display_name}, png.name,
                       card=card)
    result["evidence_html"] = str(html)


def image_sheet(model: nn.Module, card: dict[str, Any], threshold: float, out_dir: Path,
                result: dict, crops: list[np.ndarray], x: torch.Tensor, display_name: str) -> None:
    """Evidence sheet of a still image: its faces, Grad-CAM on the deciding one (``x``: its
    model input (1, C, H, W)); ``threshold``: the image threshold. Adds ``evidence_png`` and
    ``evidence_html`` to ``result``."""
    from pipeline.score.explain import grad_cam, render_html, render_sheet

    k = result["deciding_track"]
    cam = grad_cam(partial(model.frame, x), model, crops[k].shape[:2])[0]  # (h, w)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = evidence_stem(result["path"])
    png = render_sheet(
        out_dir / f"{stem}.png",
        title=f"{display_name} (still image)  ·  model frame ({card['backbone']}), checkpoint "
              f"{card['checkpoint_id']}\ntrained on {card['trained_on']}",
        verdict=f"{result['label']}  p_fake = {result['p_fake']:.3f}  (threshold "
                f"{threshold:.3f}; face {k + 1} of {len(crops)}, the highest)",
        faces=crops, frames=[0] * len(crops), timeline=[], threshold=threshold,
        heatmaps=[(0, crops[k], cam)], timeline_label="(a still image has no timeline)",
        card=card, frames_used=result.get("frames_used"))
    result["evidence_png"] = str(png)
    html = render_html(out_dir / f"{stem}.html", {**result, "path": display_name}, png.name,
                       card=card)
    result["evidence_html"] = str(html)
