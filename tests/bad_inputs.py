"""A corpus of bad (and awkward but valid) inputs, generated on the fly: nothing binary is committed.

``write_corpus(root)`` writes every case under ``root`` and returns ``Case`` rows saying what
``dfpipe extract`` and ``dfpipe score`` must answer for each. The single generators are public
so that other tests can make one case at a time.

Layout::

    root/dfdc_train_part_0/   metadata.json (valid) + the per-file cases
    root/dfdc_train_part_1/   metadata.json that is not JSON + one good clip
    root/dfdc_train_part_2/   metadata.json with wrong field types + one good clip
    root/vidéo avec espace/   clip ü.mp4 (a path with spaces and non-ASCII characters)
    root/locked/              locked.mp4 (the folder made unreadable by the test, see below)

The unreadable folder is only unreadable for a non-root user: the corpus writes it readable and
``lock_folder``/``unlock_folder`` change its mode (root ignores modes; the tests say so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.synth.dataset import ClipSpec, make_clip, render_frames, write_clip

GOOD_PART = "dfdc_train_part_0"
BAD_JSON_PART = "dfdc_train_part_1"
BAD_TYPES_PART = "dfdc_train_part_2"
ODD_DIR = "vidéo avec espace"
ODD_NAME = "clip ü.mp4"
LOCKED_DIR = "locked"


@dataclass(frozen=True)
class Case:
    """One corpus item: its id in the manifests and what each stage must say about it."""

    video_id: str
    path: Path
    extract: str  # expected videos.csv status
    score: str | None  # expected score status (None: score never sees it, e.g. metadata)
    what: str  # the case, in words (the table in docs/bad-input.md)


# ------------------------------------------------------------------------------ generators


def write_good(path: Path, n_frames: int = 12, **kw) -> Path:
    """A synthetic clip with one face (``pipeline.synth.dataset.make_clip``)."""
    make_clip(path, n_frames=n_frames, **kw)
    return path


def write_truncated(path: Path, source: Path, share: float = 0.1) -> Path:
    """The first ``share`` of a real encoded clip (mp4 ``moov`` index written last: lost)."""
    data = source.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * share))])
    return path


def write_random(path: Path, n_bytes: int = 50_000, seed: int = 0) -> Path:
    """Random bytes named ``.mp4``."""
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def write_text(path: Path) -> Path:
    """A text file named ``.mp4``."""
    path.write_text("this is a text file, not a video\n" * 20, encoding="utf-8")
    return path


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    """An mp4 holding only an AAC audio stream (a 440 Hz tone), written with PyAV."""
    import av

    n = int(seconds * rate)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        s.layout = "mono"
        step = 1024
        for start in range(0, n, step):
            chunk = tone[None, start:start + step]  # (channels=1, samples)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def write_no_face(path: Path, n_frames: int = 8, width: int = 128, height: int = 96) -> Path:
    """A readable video of plain grey frames with a moving dark bar (no face anywhere)."""
    def frames() -> Iterator[np.ndarray]:
        for t in range(n_frames):
            f = np.full((height, width, 3), 120, np.uint8)
            f[:, (t * 7) % width:(t * 7) % width + 10] = 30
            yield f
    write_clip(frames(), path, 30.0)
    return path


def write_vfr(path: Path, n_frames: int = 24, width: int = 480, height: int = 270,
              seed: int = 3) -> Path:
    """A face clip with a variable frame rate: frame gaps of 20-80 ms (explicit PyAV pts)."""
    import av

    spec = ClipSpec(video_id=path.stem, part="", label="REAL", original=None, n_frames=n_frames,
                    width=width, height=height, fps=30.0, scene_seed=seed)
    gaps = np.random.default_rng(seed).integers(20, 81, size=n_frames)  # milliseconds
    pts = np.concatenate([[0], np.cumsum(gaps[:-1])])
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"preset": "veryfast", "crf": "20", "threads": "1", "bframes": "0"}
        for p, img in zip(pts, render_frames(spec), strict=True):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = int(p)
            frame.time_base = Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def frame_times(path: Path) -> list[float]:
    """Presentation times (s) of every frame: shows whether a clip's frame rate varies."""
    import av

    with av.open(str(path)) as c:
        return [float(f.time) for f in c.decode(c.streams.video[0])]


def lock_folder(folder: Path) -> None:
    """Make ``folder`` unreadable (mode 000); ineffective for root."""
    folder.chmod(0)


def unlock_folder(folder: Path) -> None:
    """Undo ``lock_folder`` (so that pytest can delete the tmp dir)."""
    folder.chmod(0o755)


def running_as_root() -> bool:
    """Root ignores file modes, so an unreadable folder cannot be made by chmod."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------ the corpus


def write_corpus(root: Path, *, with_4k: bool = False) -> list[Case]:
    """Write every case under ``root``; return the cases with their expected statuses.

    Args:
        root: an empty folder.
        with_4k: include a 3840x2160 face clip (20 frames; slower to write and to extract).
    """
    part = root / GOOD_PART
    part.mkdir(parents=True)
    cases: list[Case] = []

    def add(vid, path, extract, score, what):
        cases.append(Case(vid, path, extract, score, what))

    add("good", write_good(part / "good.mp4"), "ok", "ok", "a valid face clip (control)")
    add("zero", part / "zero.mp4", "empty_file", "empty_file", "zero-byte file")
    (part / "zero.mp4").write_bytes(b"")
    add("truncated", write_truncated(part / "truncated.mp4", part / "good.mp4"), "read_error",
        "read_error", "truncated mp4 (first 10 % of a clip)")
    add("random", write_random(part / "random.mp4"), "read_error", "read_error",
        "random bytes named .mp4")
    add("text", write_text(part / "text.mp4"), "read_error", "read_error", "text file named .mp4")
    add("audio_only", write_audio_only(part / "audio_only.mp4"), "read_error", "read_error",
        "audio-only mp4 (no video stream)")
    add("one_frame", write_good(part / "one_frame.mp4", n_frames=1), "too_short", "too_short",
        "1-frame video")
    add("no_face", write_no_face(part / "no_face.mp4"), "no_face", "no_face",
        "video with no faces (an answer, not a failure)")
    add("vfr", write_vfr(part / "vfr.mp4"), "ok", "ok", "variable frame rate (20-80 ms gaps)")
    add("portrait", write_good(part / "portrait.mp4", width=270, height=480, seed=4), "ok", "ok",
        "portrait 270x480")
    if with_4k:
        add("big_4k", write_good(part / "big_4k.mp4", n_frames=20, width=3840, height=2160,
                                 seed=5), "ok", "ok", "3840x2160 (4K)")
    listed = [c.path.name for c in cases] + ["missing.mp4"]
    (part / "metadata.json").write_text(json.dumps(
        {name: {"label": "REAL", "split": "train", "original": None} for name in listed}))
    add("missing", part / "missing.mp4", "missing_file", None,
        "metadata.json names a file that does not exist")

    bad_json = root / BAD_JSON_PART
    bad_json.mkdir()
    (bad_json / "metadata.json").write_text('{"in_bad_json.mp4": {"label": "FAKE",')
    add(f"{BAD_JSON_PART}/metadata.json", bad_json / "metadata.json", "bad_metadata", None,
        "metadata.json that is not valid JSON")
    add("in_bad_json", write_good(bad_json / "in_bad_json.mp4", seed=6), "ok", "ok",
        "a clip beside invalid metadata (processed, label '')")

    bad_types = root / BAD_TYPES_PART
    bad_types.mkdir()
    (bad_types / "metadata.json").write_text(json.dumps(
        {"in_bad_types.mp4": {"label": 1, "split": ["train"], "original": 7}}))
    add(f"{BAD_TYPES_PART}/metadata.json", bad_types / "metadata.json", "bad_metadata", None,
        "metadata.json with wrong field types")
    add("in_bad_types", write_good(bad_types / "in_bad_types.mp4", seed=7), "ok", "ok",
        "a clip beside wrongly typed metadata (processed, label '')")

    odd = root / ODD_DIR
    odd.mkdir()
    add(Path(ODD_NAME).stem, write_good(odd / ODD_NAME, seed=8), "ok", "ok",
        "path with spaces and non-ASCII characters")
    return cases


def locked_case(root: Path) -> Case:
    """A folder (to be made unreadable) holding one good clip; written readable."""
    folder = root / LOCKED_DIR
    folder.mkdir(parents=True)
    path = write_good(folder / "locked.mp4", seed=9)
    return Case(f"{LOCKED_DIR}", path, "read_error", "read_error", "folder without read permission")
