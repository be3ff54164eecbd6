"""The model that ships with dfpipe, and how ``--checkpoint default`` finds it.

The file lives inside the installed package (``setup.cfg`` package_data: ``*.pt``, ``*.md``), so
``dfpipe score VIDEO`` works on a fresh install without a ``--checkpoint``. This module imports
nothing heavy: ``dfpipe score --help`` names the model without loading torch.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import CheckpointError

RELEASE_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = "dfdc_frame_lite2.pt"
"""File name of the shipped model (in this folder)."""
DEFAULT_CARD = "dfdc_frame_lite2.md"
"""Its model card (markdown; the checkpoint carries the same text under ``card``)."""
DEFAULT_ALIAS = "default"
"""What ``--checkpoint`` accepts (besides an empty value) to mean the shipped model."""
DEFAULT_DESCRIPTION = ("frame model (EfficientNet-Lite2, ImageNet-pretrained) fine-tuned on real "
                       "DFDC face crops (dfdc_faces), scored per face track as frame_mean")
"""One line for ``--help`` (the card's first line says the same, with its numbers)."""


def default_checkpoint_path() -> Path:
    """Where the shipped checkpoint is (whether or not it exists)."""
    return RELEASE_DIR / DEFAULT_CHECKPOINT


def is_default(value: str | None) -> bool:
    """True when a ``--checkpoint`` value asks for the shipped model."""
    return not value or value == DEFAULT_ALIAS


def resolve_checkpoint(value: str | None) -> str:
    """``--checkpoint`` value -> a checkpoint path: empty or ``default`` -> the shipped model.

    Raises:
        CheckpointError: the shipped model was asked for but is not part of this install.
    """
    if not is_default(value):
        return str(value)
    path = default_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(
            f"{path}: the default model is not part of this install (pipeline/release/ has no "
            f"{DEFAULT_CHECKPOINT}); pass --checkpoint PATH (a best.pt from dfpipe train)")
    return str(path)


def card_title(path: str | Path | None = None) -> str:
    """First non-empty line of the model card (``#`` stripped), or ``DEFAULT_DESCRIPTION``."""
    card = Path(path) if path is not None else RELEASE_DIR / DEFAULT_CARD
    try:
        for line in card.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.strip().lstrip("#").strip()
    except OSError:
        pass
    return DEFAULT_DESCRIPTION


def checkpoint_help() -> str:
    """``--checkpoint`` help text of ``score``/``serve``: which model the default is."""
    installed = "" if default_checkpoint_path().is_file() else "; NOT installed here"
    return (f"checkpoint file, or '{DEFAULT_ALIAS}' (also when omitted): the shipped model "
            f"pipeline/release/{DEFAULT_CHECKPOINT}: {card_title()}{installed}")
