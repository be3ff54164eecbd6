"""Plain Python types for JSON files and ``weights_only`` checkpoints: anything -> plain types.

The one sanitiser: checkpoints (``checkpoint``), resolved configs (``config.to_dict``), report
metrics (``evaluation``), RNG states (``distributed``) and result journals (``json_default``) all
go through ``plain``, so numpy scalars, arrays, tuples and paths become the same plain values
everywhere.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

import numpy as np


def plain(obj: Any, *, finite: bool = False) -> Any:
    """``obj`` with numpy scalars/arrays, tuples and paths turned into plain Python types.

    Dicts get string keys, tuples and arrays become lists, recursively; other values pass
    through unchanged.

    Args:
        obj: any nesting of dicts, lists, tuples, numpy values, paths and plain values.
        finite: also turn NaN and +-inf into None (strict JSON has no such numbers).
    """
    if isinstance(obj, dict):
        return {str(k): plain(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, finite=finite) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), finite=finite)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if finite and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy values and paths as ``plain`` makes
    them, anything else as its ``str``."""
    if isinstance(obj, (np.generic, np.ndarray, PurePath)):
        return plain(obj)
    return str(obj)
