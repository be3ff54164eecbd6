"""The evaluation report from synthetic predictions, and `dfpipe evaluate` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from pipeline.evaluate import stage as E
from pipeline.io.manifest import read_manifest
from pipeline.stats import metrics as M


def _predictions(n_groups: int, seed: int, models: dict[str, float]) -> pd.DataFrame:
    """One REAL original + two FAKEs per group; ``models``: name -> separation strength."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_groups):
        for k, label in enumerate(["REAL", "FAKE", "FAKE"]):
            vid = f"s{seed}_g{i}_v{k}"
            for name, strength in models.items():
                y = 1 if label == "FAKE" else 0
                logit = strength * (2 * y - 1) + rng.normal(0, 1.0)
                rows.append({"video_id": vid, "label": label, "group": f"s{seed}_g{i}",
                             "model": name, "p_fake": 1 / (1 + math.exp(-logit))})
    return pd.DataFrame(rows)


def _frames(preds: pd.DataFrame, model: str, n_frames: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for r in preds[preds["model"] == model].itertuples():
        for f in range(n_frames):
            p = float(np.clip(r.p_fake + rng.normal(0, 0.15), 0, 1))
            rows.append({"video_id": r.video_id, "label": r.label, "group": r.group,
                         "model": "frame", "slot": f, "p_fake": p})
    return pd.DataFrame(rows)


@pytest.fixture
def infos():
    hist = [{"epoch": e, "train_loss": 0.7 - 0.05 * e, "val_loss": 0.68 - 0.03 * e,
             "val_roc_auc": 0.55 + 0.05 * e} for e in range(1, 7)]
    return {
        "cnn_lstm": E.ModelInfo("cnn_lstm", "cnn_lstm", "checkpoints/a/best.pt",
                                {"synthetic": True, "n_train_videos": 24}, hist),
        "frame": E.ModelInfo("frame", "frame", "checkpoints/b/best.pt",
                             {"synthetic": False, "n_train_videos": 24}, hist[:4]),
        "frame_mean": E.ModelInfo("frame_mean", "frame_mean", "checkpoints/b/best.pt",
                                  {"synthetic": False}, derived_from="frame"),
    }


@pytest.fixture
def report(tmp_path, infos):
    models = {"cnn_lstm": 1.5, "frame": 0.6, "frame_mean": 0.9}
    test = _predictions(40, 0, models)
    val = _predictions(20, 1, models)
    out = tmp_path / "report"
    summary = E.build_report(test, val, infos, out, frame_predictions=_frames(test, "frame"),
                             n_bootstrap=200, seed=0, config={"split": "test"})
    return out, summary, test, val


def test_report_files_and_first_line_warning(report):
    out, summary, _, _ = report
    for name in ["report.md", "metrics.json", "predictions.csv", "predictions.meta.json",
                 "val_predictions.csv", "frame_predictions.csv", "roc.png", "pr.png",
                 "confusion.png", "calibration.png", "training_curves.png", "config.json"]:
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    first = md.splitlines()[0]
    assert first.startswith("**WARNING") and "cnn_lstm" in first and "SYNTHETIC" in first
    assert "frame," not in first  # only the synthetic model is named
    for m in ("cnn_lstm", "frame", "frame_mean"):
        assert f"| {m} |" in md
    assert "| metric | threshold | videos REAL / FAKE | cnn_lstm | frame | frame_mean |" in md
    assert "## Frame level" in md and "![" in md
    assert "| frame_mean - cnn_lstm |" in md
    assert not list(out.parent.glob(".tmp-*"))  # nothing half-written left behind
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_warning_without_synthetic(tmp_path, infos):
    infos = {k: v for k, v in infos.items() if k != "cnn_lstm"}
    infos["unknown"] = E.ModelInfo("unknown", "cnn_lstm", "x.pt", {"synthetic": None,
                                   "counts": {"train": {"REAL": 3, "FAKE": 6}}})
    test = _predictions(10, 0, {"frame": 1.0, "frame_mean": 1.0, "unknown": 1.0})
    E.build_report(test, None, infos, tmp_path / "r", n_bootstrap=0)
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.startswith("# dfpipe evaluation")
    assert "WARNING" not in md
    assert "| unknown (see below) |" in md and "synthetic: unknown" in md
    assert "counts: train 3 REAL / 6 FAKE" in md
    s = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert s["models"]["frame"]["val_threshold"] == 0.5
    assert "no usable val predictions" in s["models"]["frame"]["val_threshold_source"]


def test_metrics_json_recomputed_with_sklearn(report):
    out, _, test, val = report
    s = json.loads((out / "metrics.json").read_text())
    assert list(s["models"]) == ["cnn_lstm", "frame", "frame_mean"]
    for m in s["models"]:
        rows = test[test["model"] == m]
        y = (rows["label"] == "FAKE").to_numpy(int)
        p = rows["p_fake"].to_numpy()
        vrows = val[val["model"] == m]
        t_val = M.choose_threshold((vrows["label"] == "FAKE").to_numpy(int), vrows["p_fake"])
        entry = s["models"][m]
        assert entry["val_threshold"] == pytest.approx(t_val)
        assert "val split (20 REAL / 40 FAKE)" in entry["val_threshold_source"]
        for key, thr in (("at_0.5", 0.5), ("at_val", t_val)):
            res = entry[key]
            assert res["threshold"] == pytest.approx(thr)
            mm = res["metrics"]
            pred = (p >= thr).astype(int)
            assert mm["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p))
            assert mm["average_precision"]["value"] == pytest.approx(
                skm.average_precision_score(y, p))
            assert mm["log_loss"]["value"] == pytest.approx(skm.log_loss(y, p))
            assert mm["balanced_accuracy"]["value"] == pytest.approx(
                skm.balanced_accuracy_score(y, pred))
            assert mm["f1"]["value"] == pytest.approx(skm.f1_score(y, pred))
            for name, v in mm.items():
                assert v["n_real"] == 40 and v["n_fake"] == 80
                assert v["lo"] <= v["value"] <= v["hi"], (m, key, name)
    d = s["paired"]["frame - cnn_lstm"]["roc_auc"]
    a_rows, b_rows = (test[test["model"] == m].sort_values("video_id") for m in ("frame", "cnn_lstm"))
    ya = (a_rows["label"] == "FAKE").to_numpy(int)
    assert d["value"] == pytest.approx(skm.roc_auc_score(ya, a_rows["p_fake"])
                                       - skm.roc_auc_score(ya, b_rows["p_fake"]))
    assert d["lo"] <= d["value"] <= d["hi"] < 0  # the weaker frame model is visibly worse
    fl = s["frame_level"]["frame"]
    frames = pd.read_csv(out / "frame_predictions.csv")
    fy = (frames["label"] == "FAKE").to_numpy(int)
    assert fl["metrics"]["roc_auc"]["value"] == pytest.approx(
        skm.roc_auc_score(fy, frames["p_fake"]))
    assert fl["n_real_frames"] == 200 and fl["n_fake_frames"] == 400


def test_predictions_manifest_roundtrip(report):
    out, _, test, _ = report
    back = read_manifest(out / "predictions.csv", "predictions")
    assert len(back) == len(test) and set(back["model"]) == {"cnn_lstm", "frame", "frame_mean"}
    assert list(back.columns) == ["video_id", "label", "group", "model", "p_fake"]


def test_rejects_models_on_different_videos(tmp_path, infos):
    test = _predictions(5, 0, {"cnn_lstm": 1.0, "frame": 1.0})
    test = test.drop(index=test.index[(test["model"] == "frame")][:1])
    with pytest.raises(ValueError, match="different videos"):
        E.build_report(test, None, infos, tmp_path / "r", n_bootstrap=0)
    assert not (tmp_path / "r").exists()
    bad = _predictions(5, 0, {"cnn_lstm": 1.0})
    bad.loc[0, "label"] = "MAYBE"
    with pytest.raises(ValueError, match="REAL or FAKE"):
        E.build_report(bad, None, infos, tmp_path / "r", n_bootstrap=0)


def test_fpr_rule_respects_target(tmp_path, infos):
    test = _predictions(30, 0, {"frame": 1.0})
    val = _predictions(30, 1, {"frame": 1.0})
    s = E.build_report(test, val, {"frame": infos["frame"]}, tmp_path / "r",
                       threshold_rule="fpr", target_fpr=0.05, n_bootstrap=0)
    v = val[val["model"] == "frame"]
    fpr = np.mean(v.loc[v["label"] == "REAL", "p_fake"] >= s["models"]["frame"]["val_threshold"])
    assert fpr <= 0.05
    assert "FPR <= 0.05" in s["models"]["frame"]["val_threshold_source"]


# --------------------------------------------------------------------------------------------
# `dfpipe evaluate` end to end: tiny manifests + random-init tiny checkpoints (no training,
# no pretrained weights; the numbers are meaningless, the plumbing is what is tested)
# --------------------------------------------------------------------------------------------


def _save_random_checkpoint(path, name, synthetic=True, with_last=False, split_manifest=None,
                            **kwargs):
    import torch

    from pipeline.models import create_model
    from pipeline.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model(name, backbone="tiny", **kwargs)
    train_data = {"synthetic": synthetic, "n_train": 2}
    if split_manifest is not None:  # as training records it: evaluate checks it
        from pipeline.prepare.splits import split_fingerprint

        train_data["split_fingerprint"] = split_fingerprint(read_manifest(split_manifest, "split"))
    hist = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_roc_auc": 0.5},
            {"epoch": 2, "train_loss": 0.65, "val_loss": 0.68, "val_roc_auc": 0.6}]
    save_checkpoint(path, {
        "model": {"name": name, "kwargs": dict(model.model_kwargs)},
        "state_dict": model.state_dict(), "epoch": 2, "best": {"epoch": 2},
        "config": {"model": name, "image_size": 32, "frame_index": 15},
        "preprocess": {"image_size": 32, "frame_index": 15},
        "train_data": train_data,
        "history": hist, "threshold": 0.42, "threshold_rule": "balanced_accuracy",
        "thresholds": {name: 0.42, **({"frame_mean": 0.37} if name == "frame" else {})},
    })
    if with_last:  # best.pt stops at the best epoch; the run's last.pt has one epoch more
        more = hist + [{"epoch": 3, "train_loss": 0.6, "val_loss": 0.7, "val_roc_auc": 0.55}]
        save_checkpoint(path.parent / "last.pt", {
            "model": {"name": name, "kwargs": dict(model.model_kwargs)},
            "state_dict": model.state_dict(), "epoch": 3, "config": {}, "history": more})
    return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    import torch
    from train_fixtures import make_manifests

    from pipeline.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval_e2e")
    counts = {"train": 1, "val": 3, "test": 3}
    mdir = make_manifests(root, n_real=counts, n_fake=counts, size=32,
                          pad_slots={"test_fake_000": [0, 15, 29]})
    a = _save_random_checkpoint(root / "run_a" / "best.pt", "cnn_lstm", lstm_hidden=8,
                                with_last=True, split_manifest=mdir / "split.csv")
    b = _save_random_checkpoint(root / "run_b" / "best.pt", "frame", synthetic=False,
                                split_manifest=mdir / "split.csv")
    out = root / "report"
    rc = main(["evaluate", "--checkpoint", str(a), str(b), "--manifest-dir", str(mdir),
               "--out", str(out), "--bootstrap", "50", "--device", "cpu", "--batch-size", "4"])
    return rc, out, mdir, b


def test_cli_evaluate_end_to_end(e2e):
    rc, out, _, _ = e2e
    assert rc == 0
    md = (out / "report.md").read_text()
    assert md.splitlines()[0].startswith("**WARNING: cnn_lstm was trained on SYNTHETIC")
    assert "| metric | threshold | videos REAL / FAKE | cnn_lstm | frame | frame_mean |" in md
    assert "## Frame level" in md
    preds = read_manifest(out / "predictions.csv", "predictions")
    assert sorted(set(preds["model"])) == ["cnn_lstm", "frame", "frame_mean"]
    for _, rows in preds.groupby("model"):
        assert sorted(rows["video_id"]) == sorted(
            [f"test_{lab}_{k:03d}" for lab in ("real", "fake") for k in range(3)])
        assert ((rows["p_fake"] >= 0) & (rows["p_fake"] <= 1)).all()
    val = read_manifest(out / "val_predictions.csv", "predictions")
    assert len(val) == 3 * 6
    s = json.loads((out / "metrics.json").read_text())
    assert s["models"]["frame_mean"]["info"]["derived_from"] == "frame"
    assert s["models"]["cnn_lstm"]["info"]["synthetic"] is True
    assert s["models"]["frame"]["info"]["checkpoint_threshold"] == 0.42
    assert s["models"]["frame_mean"]["info"]["checkpoint_threshold"] == 0.37
    assert s["models"]["cnn_lstm"]["info"]["history_epochs"] == 3  # from last.pt
    assert s["models"]["cnn_lstm"]["info"]["best_epoch"] == 2
    assert s["models"]["frame"]["info"]["history_epochs"] == 2  # no last.pt beside it
    assert "val split (3 REAL / 3 FAKE)" in s["models"]["cnn_lstm"]["val_threshold_source"]
    frames = pd.read_csv(out / "frame_predictions.csv")
    assert len(frames) == 6 * 30 - 3  # every valid slot of the test clips, padding left out
    assert set(frames.loc[frames["video_id"] == "test_fake_000", "slot"]).isdisjoint({0, 15, 29})
    assert (out / "training_curves.png").is_file()


def test_frame_mean_matches_the_wrapper_model(e2e):
    """The one-pass frame view gives exactly what FrameMean (frame -> all frames) predicts."""
    import torch

    from pipeline.models.checkpoint import build_model, load_checkpoint
    from pipeline.train.data import split_dataset
    from pipeline.train.engine import make_loader, predict

    _, out, mdir, b = e2e
    wrapper = build_model(load_checkpoint(b), as_model="frame_mean")
    ds = split_dataset(mdir, "test", "clip", image_size=32)
    ref = predict(wrapper, make_loader(ds, 4), torch.device("cpu")).set_index("video_id")
    preds = read_manifest(out / "predictions.csv", "predictions")
    got = preds[preds["model"] == "frame_mean"].set_index("video_id")["p_fake"]
    np.testing.assert_allclose(got.loc[ref.index].to_numpy(), ref["p_fake"].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    frames = pd.read_csv(out / "frame_predictions.csv")
    mean_of_frames = frames.groupby("video_id")["p_fake"].mean()
    np.testing.assert_allclose(mean_of_frames.loc[ref.index].to_numpy(), ref["p_fake"].to_numpy(),
                               rtol=1e-5, atol=1e-6)


def test_cli_evaluate_bad_checkpoint_exit_2(tmp_path, e2e, capsys):
    from pipeline.cli import main

    _, _, mdir, _ = e2e
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["evaluate", "--checkpoint", str(bad), "--manifest-dir", str(mdir),
               "--out", str(tmp_path / "r"), "--bootstrap", "0", "--device", "cpu"])
    assert rc == 2
    assert str(bad) in capsys.readouterr().err  # the one-line error names the file
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", "--manifest-dir", str(mdir), "--out", str(tmp_path / "r")]) == 2


def test_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path, infos):
    from pipeline.core.errors import ConfigError

    test = _predictions(5, 0, {"frame": 1.0})
    keep = tmp_path / "work"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a dfpipe report"):
        E.build_report(test, None, {"frame": infos["frame"]}, keep, n_bootstrap=0)
    assert (keep / "precious.txt").read_text() == "x"
    out = tmp_path / "r"
    E.build_report(test, None, {"frame": infos["frame"]}, out, n_bootstrap=0)
    E.build_report(test, None, {"frame": infos["frame"]}, out, n_bootstrap=0)  # rerun replaces
    assert (out / "report.md").is_file()


def test_evaluate_help_renders(capsys):
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "--help"])
    assert e.value.code == 0
    assert "--threshold-rule" in capsys.readouterr().out


def test_model_names_disambiguate_by_run_folder(tmp_path):
    from pathlib import Path

    a, b = Path("ck/cnn_lstm_s0/best.pt"), Path("ck/cnn_lstm_s1/best.pt")
    f = Path("ck/frame_s0/best.pt")
    assert E.model_names(["cnn_lstm", "frame", "frame_mean"], [a, f, f]) == [
        "cnn_lstm", "frame", "frame_mean"]
    assert E.model_names(["cnn_lstm", "cnn_lstm", "frame"], [a, b, f]) == [
        "cnn_lstm@cnn_lstm_s0", "cnn_lstm@cnn_lstm_s1", "frame"]
    assert E.model_names(["frame", "frame"], [f, f]) == ["frame@frame_s0", "frame@frame_s0#2"]


def _other_split_copy(mdir, dest, *, move: bool):
    """A copy of the manifest folder whose split.csv is rewritten: rows reversed and groups
    renamed (content that does not matter), plus, with ``move``, one test video swapped with a
    val video of the same label (content that does)."""
    import shutil

    from pipeline.io.manifest import write_manifest

    shutil.copytree(mdir, dest)
    split = read_manifest(dest / "split.csv", "split").iloc[::-1].reset_index(drop=True)
    split["group"] = "g_" + split["group"]
    if move:
        split = split.set_index("video_id")
        split.loc[["test_real_000", "val_real_000"], "split"] = ["val", "test"]
        split = split.reset_index()
    write_manifest(split, dest / "split.csv", "split")
    return dest


def test_evaluate_refuses_a_split_the_checkpoint_was_not_trained_on(tmp_path, e2e, capsys):
    from pipeline.cli import main

    _, _, mdir, b = e2e
    moved = _other_split_copy(mdir, tmp_path / "moved", move=True)
    argv = ["evaluate", "--checkpoint", str(b), "--manifest-dir", str(moved), "--bootstrap", "0",
            "--device", "cpu", "--batch-size", "4"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(b) in err and str(moved / "split.csv") in err and "--allow-other-split" in err
    assert not (tmp_path / "r").exists()

    assert main([*argv, "--out", str(tmp_path / "r2"), "--allow-other-split"]) == 0
    assert "--allow-other-split" in capsys.readouterr().out
    first = (tmp_path / "r2" / "report.md").read_text().splitlines()[:6]
    i = next(k for k, line in enumerate(first) if "split other than the one" in line)
    assert first[i].startswith("**WARNING: frame, frame_mean evaluated on a split other")
    assert str(moved / "split.csv") in first[i + 1]
    s = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert set(s["other_split"]) == {"frame", "frame_mean"}
    assert s["models"]["frame"]["info"]["other_split"] == s["other_split"]["frame"]


def test_evaluate_accepts_the_same_split_rewritten(tmp_path, e2e):
    """Row order and group names changed, every video in its split: the same split."""
    from pipeline.cli import main

    _, _, mdir, b = e2e
    same = _other_split_copy(mdir, tmp_path / "same", move=False)
    assert (same / "split.csv").read_bytes() != (mdir / "split.csv").read_bytes()
    assert main(["evaluate", "--checkpoint", str(b), "--manifest-dir", str(same), "--bootstrap",
                 "0", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-frame-level"]) == 0
    s = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert s["other_split"] == {}


def test_checkpoint_without_a_recorded_split_is_refused_or_named(tmp_path, e2e):
    from pipeline.core.errors import ConfigError
    from pipeline.prepare.splits import check_checkpoint_split, split_fingerprint

    _, _, mdir, _ = e2e
    split = read_manifest(mdir / "split.csv", "split")
    kw = dict(checkpoint="c.pt", manifest=str(mdir / "split.csv"), use="evaluated on")
    with pytest.raises(ConfigError, match="c.pt records no training split"):
        check_checkpoint_split({}, split, allow=False, **kw)
    assert "records no training split" in check_checkpoint_split({}, split, allow=True, **kw)
    # checkpoints from before fingerprints: the split file's bytes decide
    from pipeline.core.fsutil import sha256_file

    assert check_checkpoint_split({"split_sha256": sha256_file(mdir / "split.csv")}, split,
                                  allow=False, **kw) == ""
    with pytest.raises(ConfigError, match="not the split file"):
        check_checkpoint_split({"split_sha256": "0" * 64}, split, allow=False, **kw)
    assert check_checkpoint_split({"split_fingerprint": split_fingerprint(split)}, split,
                                  allow=False, **kw) == ""


def test_cli_evaluate_split_all_uses_every_video_and_the_checkpoint_threshold(tmp_path, e2e):
    """--split all: every labelled video of the manifests, thresholds from the checkpoint."""
    from pipeline.cli import main

    _, _, mdir, b = e2e
    out = tmp_path / "all"
    rc = main(["evaluate", "--checkpoint", str(b), "--manifest-dir", str(mdir), "--split", "all",
               "--out", str(out), "--bootstrap", "20", "--device", "cpu", "--batch-size", "4"])
    assert rc == 0
    preds = read_manifest(out / "predictions.csv", "predictions")
    split = read_manifest(mdir / "split.csv", "split")
    for _, rows in preds.groupby("model"):
        assert sorted(rows["video_id"]) == sorted(split["video_id"])  # train, val and test
    assert not (out / "val_predictions.csv").exists()
    s = json.loads((out / "metrics.json").read_text())
    assert s["split"] == "all"
    frame = s["models"]["frame"]
    assert frame["val_threshold"] == pytest.approx(0.42)
    assert frame["val_threshold_source"] == "checkpoint (stored at training; no val split used)"
    assert frame["at_val"]["threshold"] == pytest.approx(0.42)
    fm = s["models"]["frame_mean"]  # the checkpoint's own frame_mean threshold
    assert fm["val_threshold"] == pytest.approx(0.37)
    assert fm["val_threshold_source"] == "checkpoint (stored at training; no val split used)"
    md = (out / "report.md").read_text()
    assert "# dfpipe evaluation: `all` split" in md
    assert "no validation split is used" in md
    # b was trained on these very manifests: scored anyway, and the report says so
    assert "WARNING: trained on these manifests" in md

    # a model trained on another split of other data: no such warning
    from pipeline.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(b)
    ck.pop("sha256", None)
    ck["train_data"] = {**ck["train_data"], "split_fingerprint": "0" * 64}
    other = save_checkpoint(tmp_path / "other" / "best.pt", ck)
    rc = main(["evaluate", "--checkpoint", str(other), "--manifest-dir", str(mdir), "--split", "all",
               "--out", str(tmp_path / "other_r"), "--bootstrap", "0", "--device", "cpu",
               "--no-frame-level"])
    assert rc == 0  # no --allow-other-split needed: --split all is another data set
    assert "trained on these manifests" not in (tmp_path / "other_r" / "report.md").read_text()
