"""Layer 0, what every stage uses: typed errors (``errors``), plain types for JSON and
checkpoints (``plaintypes``), atomic file writes (``fsutil``), the CPU cores, memory and torch
device this process may use (``resources``, ``device``).
"""
