"""Layer 1, files in and out: video decoding (``video.open_video``, with ``prefetch``), still
images (``images``), finding inputs (``discovery.discover_inputs``), manifests with their schemas
(``manifest``: ``read_manifest``, ``write_manifest``, ``ManifestWriter``; ``manifest_schema``,
``manifest_paths``, ``manifest_write``) and ``dfpipe manifest show|export`` (``manifest_cli.run``).
"""
