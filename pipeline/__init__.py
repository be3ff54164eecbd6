"""dfpipe: video-level deepfake detection for DFDC-style data.

Stages talk through manifests (see ``data_manifests/README.md``)::

    raw videos -> extract -> prepare (filter, sample, split) -> train -> evaluate -> score
"""

__version__ = "0.1.0"
