"""Stage 6, ``dfpipe evaluate`` (``stage.evaluate``): checkpoints and the split they were trained
on (``inputs``) -> metrics with grouped intervals (``stats``) -> ``report.md`` (``report``), plots
and predictions.
"""
