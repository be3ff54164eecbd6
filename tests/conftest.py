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
