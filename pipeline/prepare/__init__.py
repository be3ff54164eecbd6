"""Stages 2-4, ``dfpipe prepare`` (``stage.run``): the frame-count filter (``filtering``), the
30-frame subsampling (``sampling``, columnar in ``columns``; one-image videos in ``single``) and
the grouped train/val/test split (``splits``); ``provenance`` summarises the data a checkpoint
was trained on.
"""
