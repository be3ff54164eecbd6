"""Layer 4, numbers from probabilities: video-level metrics and thresholds (``metrics``), grouped
bootstrap intervals (``bootstrap``), frame -> video rules chosen on validation (``aggregation``),
report figures (``plots``).
"""
