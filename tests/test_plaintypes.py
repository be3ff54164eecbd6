"""The one plain-types helper (checkpoints, configs, report metrics, result journals)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.core.plaintypes import json_default, plain


def test_plain_turns_numpy_tuples_and_paths_into_python_types():
    got = plain({1: (np.int64(3), np.float32(0.5)), "p": Path("a/b"), "a": np.arange(3),
                 "b": np.bool_(True), "nested": [{"x": np.float64(math.nan)}]})
    nested = got.pop("nested")
    assert got == {"1": [3, 0.5], "p": "a/b", "a": [0, 1, 2], "b": True}
    assert type(got["1"][0]) is int and type(got["1"][1]) is float and type(got["b"]) is bool
    assert isinstance(nested, list) and math.isnan(nested[0]["x"])  # kept unless finite=True


def test_plain_finite_drops_nan_and_inf_for_strict_json():
    got = plain({"a": float("nan"), "b": np.float64(np.inf), "c": [1.5, -math.inf]}, finite=True)
    assert got == {"a": None, "b": None, "c": [1.5, None]}
    json.dumps(got, allow_nan=False)  # strict JSON


def test_json_default_for_journals():
    text = json.dumps({"p": np.float32(0.25), "n": np.int16(2), "path": Path("x"), "o": object},
                      default=json_default)
    back = json.loads(text)
    assert back["p"] == 0.25 and back["n"] == 2 and back["path"] == "x"
    assert back["o"].startswith("<class")
