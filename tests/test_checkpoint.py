"""Checkpoint save/load/rebuild (RANDOM INIT models on CPU)."""

from __future__ import annotations

import collections
import os

import pytest
import torch

from pipeline.core.errors import CheckpointError
from pipeline.models import checkpoint as C
from pipeline.models import create_model, list_models

torch.set_num_threads(1)


def _payload(model) -> dict:
    return {"model": {"name": model.model_name, "kwargs": model.model_kwargs},
            "state_dict": model.state_dict(), "epoch": 3, "config": {"seed": 0},
            "metrics": {"roc_auc": 0.5}, "threshold": 0.42}


def _inputs(model, size=32):
    g = torch.Generator().manual_seed(1)
    if model.input_key == "clip":
        return (torch.randn(2, 4, 3, size, size, generator=g), torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1.0]]))
    return (torch.randn(2, 3, size, size, generator=g),)


@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, backbone="tiny", **({"lstm_hidden": 8, "bidirectional": True}
                                                   if name == "cnn_lstm" else {})).eval()
    path = C.save_checkpoint(tmp_path / "m.pt", _payload(model))
    ckpt = C.load_checkpoint(path, expect_model=name)
    assert ckpt["format_version"] == C.FORMAT_VERSION and ckpt["epoch"] == 3
    rebuilt = C.build_model(ckpt)
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(*_inputs(rebuilt)), model(*_inputs(model)))


def test_frame_checkpoint_rebuilds_as_frame_mean(tmp_path):
    torch.manual_seed(0)
    frame = create_model("frame", backbone="tiny").eval()
    ckpt = C.load_checkpoint(C.save_checkpoint(tmp_path / "f.pt", _payload(frame)))
    fm = C.build_model(ckpt, as_model="frame_mean")
    clip = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        p = torch.sigmoid(frame(clip[0])).mean()
        torch.testing.assert_close(torch.sigmoid(fm(clip))[0], p)
    with pytest.raises(CheckpointError, match="cnn_lstm.* cannot be used as .frame_mean. \\(it offers: none\\)"):
        C.build_model({**ckpt, "model": {"name": "cnn_lstm", "kwargs": {"lstm_hidden": 4}},
                       "state_dict": create_model("cnn_lstm", lstm_hidden=4).state_dict()},
                      as_model="frame_mean")


def test_expect_model_mismatch_is_reported(tmp_path):
    path = C.save_checkpoint(tmp_path / "f.pt", _payload(create_model("frame")))
    with pytest.raises(CheckpointError, match="is a 'frame' model, expected 'cnn_lstm'"):
        C.load_checkpoint(path, expect_model="cnn_lstm")


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    path = C.save_checkpoint(tmp_path / "f.pt", _payload(create_model("frame")))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="f.pt: unreadable checkpoint"):
        C.load_checkpoint(path)


class Evil:  # a custom class: weights_only loading must refuse to build it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    payload = _payload(create_model("frame"))
    payload.update(kind=C.KIND, format_version=C.FORMAT_VERSION, extra=Evil())
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        C.load_checkpoint(path)
    torch.save(collections.Counter(a=1), tmp_path / "counter.pt")  # not a dfpipe checkpoint
    with pytest.raises(CheckpointError):
        C.load_checkpoint(tmp_path / "counter.pt")


def test_wrong_format_version_and_missing_file(tmp_path):
    path = C.save_checkpoint(tmp_path / "f.pt", {**_payload(create_model("frame")), "format_version": 99})
    with pytest.raises(CheckpointError, match="format 99"):
        C.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        C.load_checkpoint(tmp_path / "nope.pt")


def test_save_is_atomic_no_temp_left_and_old_file_kept_on_failure(tmp_path, monkeypatch):
    path = C.save_checkpoint(tmp_path / "f.pt", _payload(create_model("frame")))
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"payload\['bad'\] is a"):  # the old file survives intact
        C.save_checkpoint(path, {"bad": torch.__version__})  # TorchVersion: not a plain str

    def dies_halfway(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(C.torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, _payload(create_model("frame")))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.pt"]
