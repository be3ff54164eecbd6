"""Evidence for analysts: Grad-CAM heatmaps and a per-video evidence sheet (PNG + HTML).

Grad-CAM (Selvaraju et al. 2017) on the encoder's last convolution: the feature maps ``A`` of that
layer are weighted by the spatial mean of d(logit)/dA and summed over channels, then ReLU'd and
upsampled. For a clip model the T frames are folded into the batch inside the encoder, so one
backward pass of the *video* logit gives one heatmap per frame: where in each face the video
verdict came from.

Safe with concurrent calls on one shared model (the service's ``--max-concurrent``): the forward
hook that reads the feature map keeps only the activations of the thread that installed it (a
forward pass runs in its caller's thread), nothing is written to the parameters' ``.grad``, and
the sheets are drawn on their own ``Figure`` (no pyplot global state).
"""

from __future__ import annotations

import html
import logging
import os
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


PROVENANCE_WIDTH = 150
"""Characters per line of the provenance text on a sheet (fits its 15 inches at 10 pt)."""

SYNTHETIC_WARNING = ("WARNING: this model was trained on SYNTHETIC data: its verdicts on real "
                     "videos mean nothing")


def provenance_line(card: dict[str, Any]) -> str:
    """One line naming the model, its checkpoint id and what it was trained on.

    ``card``: the scorer's ``info()`` (``scored_as``, ``checkpoint_id``, ...) or a result's
    ``checkpoint`` summary (``model``, ``id``, ...).
    """
    model = card.get("scored_as") or card.get("model") or "?"
    backbone = card.get("backbone")
    ck = card.get("checkpoint_id") or card.get("id") or "?"
    title = card.get("card_title")
    return (f"{title + ': ' if title else ''}model {model}{f' ({backbone})' if backbone else ''}, "
            f"checkpoint {ck}, trained on {card.get('trained_on') or 'unknown data'}")


def synthetic_warning(card: dict[str, Any]) -> str | None:
    """``SYNTHETIC_WARNING`` when the card says the training data was synthetic, else None."""
    flag = card.get("synthetic_training_data")
    if flag is None:
        flag = card.get("synthetic")
    if flag is None:  # an older summary without the flag: what ``trained_on`` says
        flag = str(card.get("trained_on", "")).startswith("SYNTHETIC")
    return SYNTHETIC_WARNING if flag else None


def cam_layer(model: nn.Module) -> tuple[nn.Module, str]:
    """Where Grad-CAM reads the encoder's last feature map, and whether it is the layer's input.

    The input of the last global-average-pooling layer is the final post-activation feature map
    of every torchvision CNN (and of our tiny CNN); without such a layer, the output of the last
    ``nn.Conv2d`` is used. The search runs inside the model's image backbone, which its
    registry entry names (``pipeline.models.backbone_of``; the whole model when it has none).
    """
    from pipeline.models import backbone_of

    if hasattr(model, "model_name") or hasattr(model, "encoder"):
        model = backbone_of(model)
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if pools:
        return pools[-1], "input"
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no conv feature map for Grad-CAM")
    return convs[-1], "output"


def grad_cam(forward: Callable[[], torch.Tensor], model: nn.Module,
             out_size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM heatmaps for every image the encoder sees during ``forward()``.

    Args:
        forward: runs ``model`` and returns logits; their sum is differentiated.
        model: the model (its last feature map is found by ``cam_layer``).
        out_size: (H, W) of the returned maps (the input crop size).

    Returns:
        (N, H, W) float32 maps in [0, 1], N = images seen by the encoder (B*T for clips).
    """
    from pipeline.models.temporal import no_tta

    layer, where = cam_layer(model)
    store: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def hook(_module, inputs, output):
        if threading.get_ident() == owner:  # another request's forward on the same model: not ours
            store["act"] = inputs[0] if where == "input" else output

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad(), no_tta():  # one view: maps aligned with the crops given
            logits = forward()
            if "act" not in store:
                raise RuntimeError(f"forward() never ran {type(layer).__name__} of the model "
                                   "in this thread")
            act = store["act"]  # (N, K, h, w)
            (grads,) = torch.autograd.grad(logits.sum(), act)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
    flat = cam.flatten(1)  # (N, H*W)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    cam = (cam - lo) / (hi - lo).clamp_min(1e-8)
    return cam.detach().float().cpu().numpy()


def overlay(face: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over an RGB uint8 face of the same size."""
    import matplotlib

    cmap = matplotlib.colormaps["jet"]
    heat = (cmap(np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    out = (1 - alpha) * face.astype(np.float32) + alpha * heat
    return np.clip(out, 0, 255).astype(np.uint8)


def timeline_seconds(timeline: Sequence[dict[str, Any]], fps: float | None) -> list[float] | None:
    """Each point's time in seconds: its ``time_s`` when given, else ``frame / fps``; None when
    neither is known (the sheet then falls back to frame numbers)."""
    if all(p.get("time_s") is not None for p in timeline):
        return [float(p["time_s"]) for p in timeline]
    if fps:
        return [float(p["time_s"]) if p.get("time_s") is not None else p["frame"] / fps
                for p in timeline]
    return None


def evidence_line(frames_used: int | None, n_frames: int | None, fps: float | None) -> str:
    """E.g. ``verdict rests on 30 face frames, sampled over the whole video (300 frames, 10.0 s)``."""
    if frames_used is None:
        return ""
    whole = ""
    if n_frames:
        whole = f" (video: {n_frames:,} frames" + (f", {n_frames / fps:.1f} s)" if fps else ")")
    return f"verdict rests on {frames_used} face frame{'s' if frames_used != 1 else ''}{whole}"


def sheet_figure(
    *,
    title: str,
    verdict: str,
    faces: Sequence[np.ndarray],
    frames: Sequence[int],
    timeline: Sequence[dict[str, Any]],
    threshold: float,
    heatmaps: Sequence[tuple[int, np.ndarray, np.ndarray]],
    timeline_label: str = "p_fake per frame",
    card: dict[str, Any] | None = None,
    frames_used: int | None = None,
    n_frames: int | None = None,
    fps: float | None = None,
) -> Any:
    """The evidence sheet as a matplotlib ``Figure`` (see ``render_sheet`` for the arguments):
    the provenance line and, for a synthetic-data model, a red warning banner are drawn on it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_strip = len(faces)
    cols = min(max(n_strip, 1), 15)
    strip_rows = max(1, int(np.ceil(n_strip / cols)))
    n_heat = len(heatmaps)
    warning = synthetic_warning(card) if card else None
    head = 0.1 + 0.26 * (f"{title}\n{verdict}".count("\n") + 1)  # inches of the bold lines
    # the provenance line wrapped to the sheet's width (a long model-card title once stretched
    # the saved figure far past its panels)
    lines = [textwrap.fill(provenance_line(card), PROVENANCE_WIDTH) if card else "",
             evidence_line(frames_used if frames_used is not None else n_strip, n_frames, fps)]
    small = "\n".join(x for x in lines if x)
    top = head + 0.35 + 0.2 * small.count("\n") + (0.5 if warning else 0.0)  # header inches
    has_timeline = bool(timeline) or bool(n_frames)  # a still image has none: no empty axes
    panels = 1.1 * strip_rows + (2.4 if has_timeline else 0) + (2.6 if n_heat else 0)
    height = top + panels
    # a Figure of its own, not pyplot's global figure manager: safe in concurrent threads
    fig = Figure(figsize=(15, height))
    FigureCanvasAgg(fig)
    heights = [1.1] * strip_rows + ([2.2] if has_timeline else []) + ([2.6] if n_heat else [])
    gs = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.45,
                          top=1 - top / height, bottom=0.02)
    y = 1 - 0.08 / height
    fig.text(0.5, y, f"{title}\n{verdict}", ha="center", va="top", fontsize=13,
             fontweight="bold")
    y -= head / height
    fig.text(0.5, y, small, ha="center", va="top", fontsize=10)
    if warning:
        y -= (0.3 + 0.2 * small.count("\n")) / height
        fig.text(0.5, y, warning, ha="center", va="top", fontsize=13, fontweight="bold",
                 color="white", bbox={"boxstyle": "square,pad=0.4", "facecolor": "#b00020",
                                      "edgecolor": "#b00020"})

    seconds = timeline_seconds([{"frame": f} for f in frames], fps)
    for r in range(strip_rows):
        sub = gs[r].subgridspec(1, cols, wspace=0.05)
        for c in range(cols):
            ax = fig.add_subplot(sub[c])
            ax.axis("off")
            i = r * cols + c
            if i < n_strip:
                ax.imshow(faces[i])
                label = f"f{frames[i]}" + (f" {seconds[i]:.1f}s" if seconds else "")
                ax.set_title(label, fontsize=7, pad=1)

    if has_timeline:
        _draw_timeline(fig.add_subplot(gs[strip_rows]), timeline, threshold, timeline_label,
                       n_frames, fps)

    if n_heat:
        sub = gs[strip_rows + int(has_timeline)].subgridspec(1, max(n_heat, 1) * 2, wspace=0.05)
        for k, (frame, face, cam) in enumerate(heatmaps):
            a1 = fig.add_subplot(sub[2 * k])
            a1.imshow(face)
            a1.set_title(f"frame {frame}" + (f" ({frame / fps:.1f} s)" if fps else ""),
                         fontsize=8)
            a1.axis("off")
            a2 = fig.add_subplot(sub[2 * k + 1])
            a2.imshow(overlay(face, cam))
            flat = float(cam.max()) <= 0.0
            a2.set_title("Grad-CAM (flat: no positive evidence)" if flat else "Grad-CAM",
                         fontsize=8)
            a2.axis("off")
    return fig


def _draw_timeline(ax: Any, timeline: Sequence[dict[str, Any]], threshold: float, label: str,
                   n_frames: int | None, fps: float | None) -> None:
    """p_fake over the video on ``ax``: seconds when known, the axis spanning the whole video;
    points of different scoring ``window``s (a long video) are separate lines."""
    xs = timeline_seconds(timeline, fps) if timeline else None
    in_seconds = xs is not None or (not timeline and bool(fps))
    if timeline:
        xs = xs if xs is not None else [p["frame"] for p in timeline]
        runs: dict[Any, tuple[list[float], list[float]]] = {}
        for x, p in zip(xs, timeline, strict=True):
            run = runs.setdefault(p.get("window", 0), ([], []))
            run[0].append(x)
            run[1].append(p["p_fake"])
        for rx, ry in runs.values():
            ax.plot(rx, ry, marker="o", ms=3, color="#b00020", lw=1.5)
    if n_frames:  # the axis spans the whole video, whichever part the points cover
        ax.set_xlim(0, n_frames / fps if in_seconds and fps else n_frames)
    ax.axhline(threshold, ls="--", color="grey", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time in the video (s)" if in_seconds else "frame")
    ax.set_ylabel(label)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def figure_text(fig: Any) -> str:
    """Every text drawn on a figure (figure texts, titles, axis labels, legends), one per line."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        if ax.get_legend() is not None:
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(t for t in out if t)


def render_sheet(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the evidence PNG: header (verdict, provenance line, synthetic-data warning, the
    frames the verdict rests on), face strip, score timeline over the whole video, Grad-CAM.

    Args:
        path: destination PNG (written atomically).
        title: first line (video name, model).
        verdict: second line (label, p_fake, threshold).
        faces: RGB uint8 crops the model saw, in order.
        frames: their source frame indices.
        timeline: ``[{"frame": f, "p_fake": p, "time_s": seconds (optional)}, ...]`` for the deciding
            face track (drawn as given: it may span several windows of a long video).
        threshold: decision threshold drawn on the timeline.
        heatmaps: ``(frame, face, cam)`` for the frames that drove the verdict.
        timeline_label: y-axis label of the timeline.
        card: the scorer's model card (``info()``): the provenance line and the warning.
        frames_used: face frames the verdict rests on (default: the faces shown).
        n_frames: frames in the whole video (the timeline's axis spans them).
        fps: the video's frame rate (times in seconds; frame numbers without it).
    """
    fig = sheet_figure(**kwargs)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    return path


def render_html(path: str | os.PathLike, result: dict[str, Any], png_name: str,
                card: dict[str, Any] | None = None) -> Path:
    """A small self-contained HTML page per video: verdict, provenance (and the synthetic-data
    warning), the frames the verdict rests on, tracks, and the evidence PNG.

    ``card``: the scorer's model card; without it, the result's ``checkpoint`` summary."""
    e = html.escape
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            t["track"], "" if t.get("p_fake") is None else f"{t['p_fake']:.3f}",
            t.get("frames_used", ""))
        for t in result.get("tracks", [])
    )
    p = result.get("p_fake")
    t = result.get("threshold")
    verdict = (f"{result.get('label')} (p_fake = {p:.3f}, threshold "
               f"{t if not isinstance(t, float) else f'{t:.3f}'})"
               if p is not None else f"no verdict: {result.get('status')} ({result.get('reason')})")
    ck = card or result.get("checkpoint", {})
    warning = synthetic_warning(ck)
    banner = (f'<p style="background:#b00020;color:#fff;font-weight:700;padding:.5rem">'
              f'{e(warning)}</p>' if warning else "")
    rests = evidence_line(result.get("frames_used", 0), result.get("n_frames"), result.get("fps"))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{e(str(result.get('video_id', '')))}: {e(verdict)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;}} td,th{{border:1px solid #ccc;padding:.2rem .5rem}}
table{{border-collapse:collapse}} img{{max-width:100%}}</style></head><body>
<h1>{e(str(result.get('path', '')))}</h1>
<h2>{e(verdict)}</h2>
{banner}
<p class="provenance">{e(provenance_line(ck))}</p>
<p>{e(rests)}; {result.get('faces_found', 0)} faces found</p>
<table><tr><th>track</th><th>p_fake</th><th>frames used</th></tr>{rows}</table>
<p><img src="{e(png_name)}" alt="evidence sheet"></p></body></html>
"""
    path = Path(path)
    atomic_write_text(path, page)
    return path
