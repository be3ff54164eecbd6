"""The shipped model end to end on data in the deepfake_faces layout: import a set of crops,
prepare it, and ``dfpipe evaluate --checkpoint default --split all`` writes a report whose
numbers come from probabilities, with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline import cli
from pipeline.release import default_checkpoint_path

DFDC_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dfdc_faces"


@pytest.mark.real_data
def test_import_prepare_evaluate_default_on_a_faces_folder(tmp_path):
    if not (DFDC_FACES / "metadata.csv").is_file():
        pytest.skip(f"dfdc_faces not present at {DFDC_FACES}")
    if not default_checkpoint_path().is_file():
        pytest.skip(f"{default_checkpoint_path()} not present (written by the release export)")
    meta = pd.read_csv(DFDC_FACES / "metadata.csv")
    # whole groups: every REAL of 12 originals with their fakes (an external set in miniature)
    reals = meta[meta["label"] == "REAL"].head(12)["videoname"]
    keep = meta[meta["videoname"].isin(reals) | meta["original"].isin(reals)]
    src = tmp_path / "faces_224"
    src.mkdir()
    for name in keep["videoname"]:
        jpg = name.replace(".mp4", ".jpg")
        (src / jpg).symlink_to(DFDC_FACES / "faces_224" / jpg)
    keep.to_csv(tmp_path / "metadata.csv", index=False)
    m = tmp_path / "m"
    assert cli.main(["extract", "--from-faces", str(src), "--metadata",
                     str(tmp_path / "metadata.csv"), "--manifest-dir", str(m)]) == 0
    assert cli.main(["prepare", "--manifest-dir", str(m)]) == 0
    out = tmp_path / "report"
    assert cli.main(["evaluate", "--checkpoint", "default", "--manifest-dir", str(m),
                     "--split", "all", "--out", str(out), "--bootstrap", "200"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["split"] == "all" and summary["data"]["n_videos"] == len(keep)
    auc = summary["models"]["frame"]["at_0.5"]["metrics"]["roc_auc"]
    assert 0.0 <= auc["value"] <= 1.0 and auc["lo"] <= auc["value"] <= auc["hi"]
    report = (out / "report.md").read_text()
    assert "SYNTHETIC" not in report.split("\n", 1)[0]  # a real-data model: no synthetic warning
    preds = pd.read_csv(out / "predictions.csv")
    assert preds["p_fake"].between(0, 1).all() and len(preds) >= len(keep)
