"""``dfpipe synth``: config -> a synthetic DFDC-like dataset with a real face.

Output (``OUT_DIR``)::

    dfdc_train_part_0/metadata.json     exact DFDC schema: {"x.mp4": {"label", "split", "original"}}
    dfdc_train_part_0/<video_id>.mp4    H.264 (PyAV/libx264, yuv420p) or mp4v (OpenCV) clips
    synth_config.json                   the resolved SynthConfig (resume check)
    synth_truth.json                    per clip: id, part, label, original, n_frames, fps, size,
                                        frames showing two faces, frames showing no face

The face is the astronaut's head from ``skimage.data.astronaut()`` (a real face that MTCNN finds),
cut with a soft elliptical alpha and composited onto a per-clip background (two-colour gradient +
low-frequency texture). Every *group* (a REAL original and its fakes) shares one scene: background,
smooth motion path, per-clip face scale (face height 23-40 % of the frame height, i.e. about
62-108 px at the default 480x270) breathing +-6 % over time, and per-clip lighting (a colour gain
and gamma on the head) that is CONSTANT within a clip but differs between clips; the REAL's face
gain (below) is part of the scene, so a fake with no flicker equals its original.

Design of the manipulation (deliberate, so that a temporal model can beat a single-frame one):

* Face lighting. Every clip's face region (a feathered elliptical mask inside the head) carries a
  gain relative to the rest of the frame: brightness ``1 + 0.25 z`` and colour ``1 + 0.05 z_c``
  per channel, with ``z ~ N(0, 1)`` clipped to +-2 (so up to +-50 % brightness and +-10 % colour).
  Measured through H.264 + MTCNN + JPEG (48+48 clips): at brightness sd 0.09 and 0.15 a random-init
  tiny CNN+LSTM did not learn the flicker in 30-40 epochs (val AUC ~0.5) although a hand-made
  statistic separated the clips perfectly; at 0.25 it reached 0.89 val / 0.92 test AUC while the
  single-frame model stayed near chance. A REAL clip draws its gain ONCE (constant over time, like a face lit differently from
  its background). A FAKE draws it for EVERY frame from the same distribution, so one frame of a
  fake is distributed exactly like one frame of a real; only the frame-to-frame variation
  (flicker) differs. ``temporal_strength`` ``w`` in [0, 1] (default 1) sets the flicker: the fake's
  frame ``t`` uses ``sqrt(1 - w) z_orig + sqrt(w) e_t`` (``z_orig`` its original's draw, ``e_t``
  fresh each frame), which keeps the per-frame distribution N(0, 1) for every ``w`` while the
  frame-to-frame variance grows as ``2 w`` (``w = 0``: the fake equals its original).
* A FAKE is its original's exact scene; only pixels under the face mask change, so pixels outside
  it are identical to the original before encoding.
* Spatial artefact, ``spatial_strength`` (default 0): a per-clip constant colour shift of the face
  layer (up to +-12 % per channel at strength 1) and a Gaussian blur (sigma 1.2 px x strength x
  face scale). It is a single-frame cue, so it is off by default: with it at 0.5 (and the former
  per-frame positional jitter) a single-frame model reached 0.88 validation AUC and the mean of its
  frame scores 0.996, above the CNN+LSTM; the data would not test temporal modelling.
* There is no positional jitter of the pasted face relative to the head: a patch that moves
  against the head leaves a seam visible in every single frame (a single-frame cue again).

Scene properties are chosen per group, so fakes have the same length, two-face frames and face gaps
as their original; the shares (``outlier_share``, ``two_face_share``, ``gap_share``) are shares of
groups, rounded to a whole number of groups (two-face and gap groups are disjoint while possible).
Lengths: ``frames`` +- ``frames_jitter`` (uniform); outlier groups get exactly 150 (short) or 450
(long) frames, alternating short/long. Two-face groups show a mirrored, recoloured second head in
one contiguous stretch (30-60 % of the clip); gap groups hide every face in one stretch (15-30 % of
the clip, never at the very start or end). Groups are spread over ``parts`` folders round-robin;
a fake always sits in its original's part.

Determinism: all randomness comes from ``numpy.random.default_rng`` seeded by ``cfg.seed``, with a
sub-seed per group (scene) and per fake (its artefacts); H.264 is encoded with one thread and fixed
options, so the same config gives the same bytes. Rerunning on a finished folder with the same
config skips existing clips; a different config on a non-empty folder is refused.

Rendering lives in ``pipeline.synth.render`` (spec -> frames) and encoding in
``pipeline.synth.encode`` (frames -> mp4); this module plans the data set, writes it resumably and
records its truth.
"""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import SynthConfig, to_dict
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import atomic_write_json, remove_stale_temps
from pipeline.synth.encode import h264_available, resolve_codec, write_clip  # noqa: F401
from pipeline.synth.render import (  # noqa: F401
    FACE_BOX_IN_SPRITE,
    FACE_BRIGHTNESS_SD,
    FACE_COLOUR_SD,
    FACE_Z_CLIP,
    ClipSpec,
    Scene,
    face_box,
    face_gains,
    make_scene,
    render_frames,
)

logger = logging.getLogger(__name__)

PART_PREFIX = "dfdc_train_part_"
CONFIG_FILE = "synth_config.json"
TRUTH_FILE = "synth_truth.json"
SHORT_OUTLIER_FRAMES = 150
LONG_OUTLIER_FRAMES = 450


def validate(cfg: SynthConfig) -> None:
    """Raise ``ConfigError`` for impossible settings."""
    problems = []
    if cfg.n_originals < 1:
        problems.append("n_originals must be >= 1")
    if cfg.fakes_per_original < 0:
        problems.append("fakes_per_original must be >= 0")
    if not 1 <= cfg.parts <= max(cfg.n_originals, 1):
        problems.append("parts must be between 1 and n_originals")
    if cfg.frames < 1:
        problems.append("frames must be >= 1")
    if not 0 <= cfg.frames_jitter < cfg.frames:
        problems.append("frames_jitter must be >= 0 and < frames")
    for name in ("outlier_share", "two_face_share", "gap_share"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"{name} must be in [0, 1]")
    if cfg.width < 160 or cfg.height < 90 or cfg.width % 2 or cfg.height % 2:
        problems.append("width/height must be even and at least 160x90")
    if cfg.width < cfg.height:
        problems.append("width must be >= height (landscape frames)")
    if cfg.fps <= 0:
        problems.append("fps must be > 0")
    if cfg.spatial_strength < 0:
        problems.append("spatial_strength must be >= 0")
    if not 0.0 <= cfg.temporal_strength <= 1.0:
        problems.append("temporal_strength must be between 0 and 1")
    if cfg.codec not in ("auto", "h264", "mp4v"):
        problems.append("codec must be auto, h264 or mp4v")
    if problems:
        raise ConfigError("synth: " + "; ".join(problems))


def _video_ids(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_lowercase))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        vid = "".join(letters[rng.integers(0, 26, size=10)])
        if vid not in seen:
            seen.add(vid)
            out.append(vid)
    return out


def _stretch(rng: np.random.Generator, n: int, lo: float, hi: float, edge: float) -> tuple[int, int]:
    """A [start, stop) stretch of ``lo..hi`` of ``n`` frames, ``edge`` of ``n`` away from both ends."""
    length = max(1, int(round(rng.uniform(lo, hi) * n)))
    first = int(np.ceil(edge * n))
    last = max(first, n - int(np.ceil(edge * n)) - length)
    start = int(rng.integers(first, last + 1))
    return start, min(n, start + length)


def plan_dataset(cfg: SynthConfig) -> list[ClipSpec]:
    """The deterministic plan: one ``ClipSpec`` per clip, REAL original first in each group."""
    validate(cfg)
    rng = np.random.default_rng(cfg.seed)
    n_groups = cfg.n_originals
    n_clips = n_groups * (1 + cfg.fakes_per_original)
    ids = _video_ids(rng, n_clips)
    scene_seeds = rng.integers(0, 2**31 - 1, size=n_groups)
    fake_seeds = rng.integers(0, 2**31 - 1, size=(n_groups, max(cfg.fakes_per_original, 1)))

    def pick(share: float) -> int:
        return min(n_groups, int(round(share * n_groups)))

    perm = [int(i) for i in rng.permutation(n_groups)]
    k2, kg = pick(cfg.two_face_share), pick(cfg.gap_share)
    two_face_groups = set(perm[:k2])
    gap_groups = set((perm[k2:] + perm[:k2])[:kg])  # disjoint from two-face while possible
    outlier_order = [int(i) for i in rng.permutation(n_groups)][: pick(cfg.outlier_share)]
    outlier_len = {g: (SHORT_OUTLIER_FRAMES if j % 2 == 0 else LONG_OUTLIER_FRAMES)
                   for j, g in enumerate(outlier_order)}

    specs: list[ClipSpec] = []
    for g in range(n_groups):
        grng = np.random.default_rng(int(scene_seeds[g]) + 1)  # group-level planning draws
        if g in outlier_len:
            n = outlier_len[g]
        elif cfg.frames_jitter:
            n = cfg.frames + int(grng.integers(-cfg.frames_jitter, cfg.frames_jitter + 1))
        else:
            n = cfg.frames
        two = _stretch(grng, n, 0.3, 0.6, 0.05) if g in two_face_groups else None
        gap = _stretch(grng, n, 0.15, 0.3, 0.1) if g in gap_groups else None
        part = f"{PART_PREFIX}{g % cfg.parts}"
        base = dict(part=part, n_frames=n, width=cfg.width, height=cfg.height, fps=cfg.fps,
                    scene_seed=int(scene_seeds[g]), two_face=two, gap=gap,
                    outlier=g in outlier_len)
        first = g * (1 + cfg.fakes_per_original)
        orig = ClipSpec(video_id=ids[first], label="REAL", original=None, **base)
        specs.append(orig)
        for k in range(cfg.fakes_per_original):
            specs.append(ClipSpec(
                video_id=ids[first + 1 + k], label="FAKE", original=orig.filename,
                fake_seed=int(fake_seeds[g, k]), spatial_strength=cfg.spatial_strength,
                temporal_strength=cfg.temporal_strength, **base))
    return specs


# ------------------------------------------------------------------------------------------
# Rendering (pure: spec -> frames)


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------


def metadata_for(specs: Sequence[ClipSpec]) -> dict[str, dict[str, dict[str, Any]]]:
    """DFDC ``metadata.json`` content per part: ``{part: {"x.mp4": {...}}}``."""
    parts: dict[str, dict[str, dict[str, Any]]] = {}
    for s in specs:
        parts.setdefault(s.part, {})[s.filename] = {
            "label": s.label, "split": "train", "original": s.original}
    return parts


def _recorded_config(cfg: SynthConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    d.pop("out", None)
    d["codec"] = resolve_codec(cfg.codec)
    return d


def _check_out_dir(out: Path, cfg: SynthConfig) -> None:
    """Refuse a non-empty folder that holds another config (or is not a synth output)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose a folder for the dataset")
    if not out.exists() or not any(out.iterdir()):
        return
    rec = out / CONFIG_FILE
    if not rec.is_file():
        raise ConfigError(f"{out}: folder is not empty and has no {CONFIG_FILE}; "
                          "choose an empty or new folder")
    try:
        old = json.loads(rec.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{rec}: unreadable ({e}); delete the folder or choose another") from e
    new = _recorded_config(cfg)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{out}: holds a dataset made with another config (differs in {diff}); "
                          "choose another folder or delete it")


def make_clip(path: str | os.PathLike, n_frames: int = 30, *, width: int = 480, height: int = 270,
              fps: float = 30.0, seed: int = 0, fake: bool = False,
              two_face: tuple[int, int] | None = None, gap: tuple[int, int] | None = None,
              spatial_strength: float = 0.0, temporal_strength: float = 1.0,
              codec: str = "auto") -> ClipSpec:
    """Write one synthetic clip with a face to ``path`` (for tests and benchmarks).

    Returns:
        The clip's spec (``render_frames(spec)`` reproduces its frames before encoding).
    """
    spec = ClipSpec(
        video_id=Path(path).stem, part="", label="FAKE" if fake else "REAL",
        original="original.mp4" if fake else None, n_frames=n_frames, width=width, height=height,
        fps=fps, scene_seed=seed, fake_seed=seed + 1 if fake else None,
        spatial_strength=spatial_strength if fake else 0.0,
        temporal_strength=temporal_strength if fake else 0.0, two_face=two_face, gap=gap)
    write_clip(render_frames(spec), path, fps, codec)
    return spec


def write_dataset(cfg: SynthConfig, out: str | os.PathLike | None = None) -> Path:
    """Write (or finish) the dataset described by ``cfg``; return the output folder."""
    out = Path(out if out is not None else cfg.out)
    if not str(out):
        raise ConfigError("synth: an output folder is required")
    specs = plan_dataset(cfg)
    codec = resolve_codec(cfg.codec)
    _check_out_dir(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, _recorded_config(cfg))
    meta = metadata_for(specs)
    for part in meta:
        (out / part).mkdir(exist_ok=True)
        remove_stale_temps(out / part)
    done = 0
    for spec in tqdm(specs, desc="synth clips", unit="clip"):
        path = out / spec.part / spec.filename
        if path.is_file():
            done += 1
            continue
        write_clip(render_frames(spec), path, spec.fps, codec)
    for part, entries in meta.items():
        atomic_write_json(out / part / "metadata.json", entries)
    atomic_write_json(out / TRUTH_FILE, {"clips": [s.truth() for s in specs]})
    n_real = sum(s.label == "REAL" for s in specs)
    logger.info(
        "synth: %d clips (%d REAL, %d FAKE) in %d part(s) at %s; %d outliers, %d two-face, "
        "%d with face gaps; %d already present; codec %s",
        len(specs), n_real, len(specs) - n_real, len(meta), out,
        sum(s.outlier for s in specs), sum(s.two_face is not None for s in specs),
        sum(s.gap is not None for s in specs), done, codec)
    return out


def load_truth(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-clip rows of ``OUT_DIR/synth_truth.json``."""
    return json.loads((Path(out) / TRUTH_FILE).read_text())["clips"]


def run(cfg: SynthConfig) -> int:
    """CLI entry: write the dataset; 0 on success (errors raise typed exceptions)."""
    write_dataset(cfg)
    return 0


__all__ = [
    "ClipSpec", "Scene", "plan_dataset", "make_scene", "render_frames", "face_box", "write_clip",
    "write_dataset", "make_clip", "metadata_for", "load_truth", "resolve_codec", "run", "face_gains",
]
