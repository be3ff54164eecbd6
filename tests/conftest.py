"""Shared fixtures. Everything runs on CPU, offline; real samples are optional."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# one torch/BLAS thread per test process: faster on 2 cores, and deterministic
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REAL_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_samples"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """``../shared/data/real_samples`` (research-use clips; never copied into the project)."""
    if not (REAL_SAMPLES / "README.md").is_file():
        pytest.skip(f"real samples not present at {REAL_SAMPLES}")
    return REAL_SAMPLES


# --- synthetic data (pipeline.synth.dataset) ------------------------------------------------------------

SYNTH_SMALL = dict(n_originals=2, fakes_per_original=1, parts=1, frames=60, width=480, height=270,
                   fps=30.0, two_face_share=0.5, gap_share=0.5, seed=7)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic DFDC-like dataset (written once per test session).

    2 originals x 1 fake, one part, 60 frames at 480x270 and 30 fps: one group (REAL + FAKE)
    shows a second face in a stretch of frames, the other has a stretch with no face.
    ``pipeline.synth.dataset.load_truth(synth_dir)`` gives the per-clip truth (two-face and no-face frames).
    """
    from pipeline.config import SynthConfig
    from pipeline.synth.dataset import write_dataset

    return write_dataset(SynthConfig(out=str(tmp_path_factory.mktemp("synth") / "data"),
                                     **SYNTH_SMALL))


@pytest.fixture
def clip_factory():
    """``make_clip(path, n_frames=30, *, width=480, height=270, fps=30.0, seed=0, fake=False,
    two_face=None, gap=None, codec="auto") -> ClipSpec``: one synthetic clip with a face.

    ``two_face``/``gap`` are [start, stop) frame ranges; the returned spec reproduces the frames
    (``pipeline.synth.dataset.render_frames(spec)``) and the face box (``pipeline.synth.dataset.face_box``).
    """
    from pipeline.synth.dataset import make_clip

    return make_clip


# --- a tiny trained checkpoint (random-init tiny CNN, 1 epoch; no pretrained weights) ----------


def _train_tiny(root: Path, model: str) -> Path:
    from train_fixtures import make_manifests

    from pipeline.config import TrainConfig
    from pipeline.train.stage import run as train_run

    manifests = make_manifests(root, size=32, seed=3)
    rc = train_run(TrainConfig(model=model, backbone="tiny", manifest_dir=str(manifests),
                               out_dir=str(root / "ckpt"), run_name=model, image_size=32,
                               epochs=1, batch_size=4, seed=0))
    assert rc == 0
    return root / "ckpt" / model / "best.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a ``cnn_lstm`` with the tiny backbone (random init, trained 1 epoch on 32 px
    synthetic crops): a real checkpoint for scoring/serving tests, not a meaningful detector."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_cnn_lstm"), "cnn_lstm")


@pytest.fixture(scope="session")
def tiny_frame_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a ``frame`` model, tiny backbone, random init, 1 epoch (see tiny_checkpoint)."""
    return _train_tiny(tmp_path_factory.mktemp("tiny_frame"), "frame")
