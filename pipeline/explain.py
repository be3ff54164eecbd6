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
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


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
    layer, where = cam_layer(model)
    store: dict[str, torch.Tensor] = {}
    owner = threading.get_ident()

    def hook(_module, inputs, output):
        if threading.get_ident() == owner:  # another request's forward on the same model: not ours
            store["act"] = inputs[0] if where == "input" else output

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
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


def render_sheet(
    path: str | os.PathLike,
    *,
    title: str,
    verdict: str,
    faces: Sequence[np.ndarray],
    frames: Sequence[int],
    timeline: Sequence[dict[str, Any]],
    threshold: float,
    heatmaps: Sequence[tuple[int, np.ndarray, np.ndarray]],
    timeline_label: str = "p_fake per frame",
) -> Path:
    """Write the evidence PNG: face strip, score timeline, Grad-CAM overlays.

    Args:
        path: destination PNG (written atomically).
        title: first line (video name, model).
        verdict: second line (label, p_fake, threshold).
        faces: RGB uint8 crops the model saw, in order.
        frames: their source frame indices.
        timeline: ``[{"frame": f, "p_fake": p}, ...]`` for the deciding face track.
        threshold: decision threshold drawn on the timeline.
        heatmaps: ``(frame, face, cam)`` for the frames that drove the verdict.
        timeline_label: y-axis label of the timeline.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_strip = len(faces)
    cols = min(max(n_strip, 1), 15)
    strip_rows = max(1, int(np.ceil(n_strip / cols)))
    n_heat = len(heatmaps)
    # a Figure of its own, not pyplot's global figure manager: safe in concurrent threads
    fig = Figure(figsize=(15, 2.0 + 1.1 * strip_rows + 2.4 + (2.6 if n_heat else 0)))
    FigureCanvasAgg(fig)
    heights = [1.1] * strip_rows + [2.2] + ([2.6] if n_heat else [])
    gs = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.45)
    fig.suptitle(f"{title}\n{verdict}", fontsize=13, fontweight="bold", y=0.995)

    for r in range(strip_rows):
        sub = gs[r].subgridspec(1, cols, wspace=0.05)
        for c in range(cols):
            ax = fig.add_subplot(sub[c])
            ax.axis("off")
            i = r * cols + c
            if i < n_strip:
                ax.imshow(faces[i])
                ax.set_title(f"f{frames[i]}", fontsize=7, pad=1)
        if r == 0:
            fig.text(0.01, 1 - 0.02, "", fontsize=8)

    ax = fig.add_subplot(gs[strip_rows])
    if timeline:
        xs = [p["frame"] for p in timeline]
        ys = [p["p_fake"] for p in timeline]
        ax.plot(xs, ys, marker="o", ms=3, color="#b00020", lw=1.5)
    ax.axhline(threshold, ls="--", color="grey", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel(timeline_label)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    if n_heat:
        sub = gs[strip_rows + 1].subgridspec(1, max(n_heat, 1) * 2, wspace=0.05)
        for k, (frame, face, cam) in enumerate(heatmaps):
            a1 = fig.add_subplot(sub[2 * k])
            a1.imshow(face)
            a1.set_title(f"frame {frame}", fontsize=8)
            a1.axis("off")
            a2 = fig.add_subplot(sub[2 * k + 1])
            a2.imshow(overlay(face, cam))
            flat = float(cam.max()) <= 0.0
            a2.set_title("Grad-CAM (flat: no positive evidence)" if flat else "Grad-CAM",
                         fontsize=8)
            a2.axis("off")

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    return path


def render_html(path: str | os.PathLike, result: dict[str, Any], png_name: str) -> Path:
    """A small self-contained HTML page per video: verdict, tracks, and the evidence PNG."""
    e = html.escape
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            t["track"], "" if t.get("p_fake") is None else f"{t['p_fake']:.3f}",
            t.get("frames_used", ""))
        for t in result.get("tracks", [])
    )
    p = result.get("p_fake")
    verdict = (f"{result.get('label')} (p_fake = {p:.3f}, threshold {result.get('threshold')})"
               if p is not None else f"no verdict: {result.get('status')} ({result.get('reason')})")
    ck = result.get("checkpoint", {})
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{e(str(result.get('video_id', '')))}: {e(verdict)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;}} td,th{{border:1px solid #ccc;padding:.2rem .5rem}}
table{{border-collapse:collapse}} img{{max-width:100%}}</style></head><body>
<h1>{e(str(result.get('path', '')))}</h1>
<h2>{e(verdict)}</h2>
<p>model: {e(str(ck.get('model', '')))} · checkpoint {e(str(ck.get('id', '')))} ·
trained on: {e(str(ck.get('trained_on', '')))}</p>
<p>{result.get('frames_used', 0)} frames used, {result.get('faces_found', 0)} faces found,
{result.get('seconds', 0):.1f} s</p>
<table><tr><th>track</th><th>p_fake</th><th>frames used</th></tr>{rows}</table>
<p><img src="{e(png_name)}" alt="evidence sheet"></p></body></html>
"""
    path = Path(path)
    atomic_write_text(path, page)
    return path
