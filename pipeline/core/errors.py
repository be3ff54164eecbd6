"""Typed errors. Library code raises these; the CLI turns them into one-line messages."""


class PipelineError(Exception):
    """Base class: a problem the user can act on (its message says how)."""


class ConfigError(PipelineError):
    """A configuration value or combination is invalid."""


class ManifestError(PipelineError):
    """A manifest is missing, malformed or of the wrong kind."""


class VideoReadError(PipelineError):
    """A video cannot be opened or decoded; ``status`` is the per-video status it maps to
    (``read_error``, ``missing_file`` or ``empty_file``)."""

    def __init__(self, message: str, status: str = "read_error") -> None:
        super().__init__(message)
        self.status = status


class MetadataError(PipelineError):
    """A DFDC ``metadata.json`` is unreadable or has the wrong shape."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, truncated, tampered with, or for another model."""


class MissingDependencyError(PipelineError):
    """An optional dependency is not installed; the message names the install command."""


class SplitError(PipelineError):
    """A train/val/test split is impossible or leaks a group across splits."""
