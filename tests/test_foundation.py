"""CLI skeleton, config mapping and manifest I/O."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys

import pandas as pd
import pytest

from pipeline import cli, config
from pipeline.core.errors import ConfigError, ManifestError
from pipeline.core.fsutil import atomic_path, atomic_write_text, remove_stale_temps
from pipeline.io import manifest


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ["synth", "extract", "prepare", "train", "evaluate", "score", "serve", "bench", "run"]:
        assert name in out


def test_exit_statuses_are_distinct_and_documented(monkeypatch, capfd):
    """Issue #12.14: 0 ok, 1 some items failed, 2 could not run, 3 crashed; said in --help."""
    import pipeline.score.batch

    def crash(cfg):
        raise RuntimeError("unexpected\nsecond line")

    monkeypatch.setattr(pipeline.score.batch, "score_all", crash)
    assert cli.main(["score", "x.mp4", "--checkpoint", "c.pt"]) == 3
    err = capfd.readouterr().err
    assert "crashed" in err and "RuntimeError: unexpected second line" in err
    monkeypatch.setattr(pipeline.score.batch, "score_all", lambda cfg: (1, []))
    assert cli.main(["score", "x.mp4", "--checkpoint", "c.pt"]) == 1

    def cannot(cfg):
        raise ConfigError("no such thing")

    monkeypatch.setattr(pipeline.score.batch, "score_all", cannot)
    assert cli.main(["score", "x.mp4", "--checkpoint", "c.pt"]) == 2
    for text in (cli.build_parser().format_help(),
                 cli.build_parser()._subparsers._group_actions[0].choices["score"].format_help()):
        for code, words in ((0, "worked"), (1, "some items failed"), (2, "could not run"),
                            (3, "crashed")):
            assert f"  {code}  " in text and words in text, (code, text)


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "dfpipe" in r.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_parses_its_defaults(name):
    cls = cli.COMMANDS[name][0]
    parser = cli.build_parser()
    positional = [f for f in dataclasses.fields(cls) if f.metadata.get("positional")]
    argv = [name] + ["x"] * len(positional)
    cfg = cli.from_namespace(cls, parser.parse_args(argv))
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            continue
        assert getattr(cfg, f.name) == getattr(defaults, f.name), f.name


def test_flags_map_onto_fields():
    parser = cli.build_parser()
    ns = parser.parse_args(["extract", "a", "b", "--workers", "3", "--detect-every", "5",
                            "--overwrite", "--engine", "inline"])
    cfg = cli.from_namespace(config.ExtractConfig, ns)
    assert cfg.inputs == ("a", "b") and cfg.workers == 3 and cfg.detect_every == 5
    assert cfg.overwrite is True and cfg.engine == "inline"


def test_repeated_list_flags_accumulate_and_replace_the_default():
    parser = cli.build_parser()
    ns = parser.parse_args(["evaluate", "--checkpoint", "a.pt", "--checkpoint", "b.pt", "c.pt"])
    assert cli.from_namespace(config.EvaluateConfig, ns).checkpoint == ("a.pt", "b.pt", "c.pt")
    ns = parser.parse_args(["train", "--augment", "jpeg"])
    assert cli.from_namespace(config.TrainConfig, ns).augment == ("jpeg",)
    ns = parser.parse_args(["train"])
    assert cli.from_namespace(config.TrainConfig, ns).augment == config.TrainConfig().augment


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key"):
        config.from_dict(config.PrepareConfig, {"min_faces": 1, "nope": 2})
    cfg = config.from_dict(config.TrainConfig, config.to_dict(config.TrainConfig(augment=("flip", "jpeg"))))
    assert cfg.augment == ("flip", "jpeg")


def test_manifest_round_trip_and_sidecar(tmp_path):
    df = pd.DataFrame({"video_id": ["a", "b"], "label": ["REAL", "FAKE"], "group": ["a", "a"],
                       "split": ["train", "test"]})
    src = tmp_path / "input.txt"
    src.write_text("x")
    path = manifest.write_manifest(df, tmp_path / "split.csv", "split", config={"seed": 1},
                                   inputs=[src], counts={"videos": 2})
    back = manifest.read_manifest(path, "split")
    assert back.to_dict("records") == df.to_dict("records")
    meta = json.loads(manifest.meta_path(path).read_text())
    assert meta["kind"] == "split" and meta["rows"] == 2 and meta["config"] == {"seed": 1}
    assert str(src) in meta["inputs"]


def test_manifest_missing_columns_named(tmp_path):
    p = tmp_path / "faces.csv"
    p.write_text("video_id,frame\na,1\n")
    with pytest.raises(ManifestError, match="missing column"):
        manifest.read_manifest(p, "faces")
    with pytest.raises(ManifestError, match="not found"):
        manifest.read_manifest(tmp_path / "nope.csv", "faces")


def test_manifest_nullable_ints(tmp_path):
    df = manifest.empty("clips")
    df.loc[0] = ["v", "FAKE", "o", 0, pd.NA, pd.NA, "", 0]
    path = manifest.write_manifest(df, tmp_path / "clips.csv", "clips")
    back = manifest.read_manifest(path, "clips")
    assert back["frame"].isna().all() and back["mask"].tolist() == [0]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert remove_stale_temps(tmp_path) == 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_dir_replaces_whole(tmp_path):
    d = tmp_path / "vid"
    with atomic_path(d, is_dir=True) as tmp:
        (tmp / "a.jpg").write_text("1")
    with atomic_path(d, is_dir=True) as tmp:
        (tmp / "b.jpg").write_text("2")
    assert sorted(x.name for x in d.iterdir()) == ["b.jpg"]


@pytest.mark.parametrize(
    "mask, dir_mode, file_mode",
    [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)],
)
def test_atomic_outputs_keep_the_umask_permissions(tmp_path, mask, dir_mode, file_mode):
    old = os.umask(mask)
    try:
        with atomic_path(tmp_path / "out", is_dir=True) as tmp:
            (tmp / "a.jpg").write_text("1")
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == file_mode


def test_atomic_write_fsyncs_the_parent_folder(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "f.txt", "x")
    with atomic_path(tmp_path / "d", is_dir=True):
        pass
    assert synced == [tmp_path.stat().st_ino] * 2


@pytest.mark.parametrize(
    "cell, column, what",
    [("abc", "x1", "a number"), ("1.5", "frame", "an integer"), ("", "frame", "an integer"),
     ("12x", "prob", "a number")],
)
def test_manifest_bad_number_names_file_line_column_and_value(tmp_path, cell, column, what):
    cols = list(manifest.SCHEMAS["faces"].columns)
    good = {"video_id": "v", "frame": "3", "track": "0", "x1": "1", "y1": "2", "x2": "3",
            "y2": "4", "prob": "", "crop_path": "/c.jpg"}
    rows = [dict(good), dict(good), dict(good, **{column: cell})]
    p = tmp_path / "faces.csv"
    pd.DataFrame(rows, columns=cols).to_csv(p, index=False)
    with pytest.raises(ManifestError) as e:
        manifest.read_manifest(p, "faces")
    assert str(e.value) == f"{p}: line 4, column '{column}': {cell!r} is not {what}"


def test_manifest_empty_and_nan_cells_stay_missing(tmp_path):
    p = tmp_path / "faces.csv"
    p.write_text("video_id,frame,track,x1,y1,x2,y2,prob,crop_path\n"
                 "v,3,0,1,2,3,4,,/c.jpg\nv,4,0,1,2,3,4,nan,/c.jpg\nv,5,0,1,2,3,4,0.5,/c.jpg\n")
    back = manifest.read_manifest(p, "faces")
    assert back["prob"].isna().tolist() == [True, True, False]
    assert back["frame"].tolist() == [3, 4, 5]
