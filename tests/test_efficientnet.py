"""EfficientNet-Lite0 with its ImageNet weights behind the classifier protocol: the reference
implementation's outputs on the shipped weights, the weights file checked key by key, the
input normalisation the weights expect, grey images as three channels, and SPADE on it end to
end (fit, save, load, ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spadecam.models.efficientnet import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLiteClassifier,
    EfficientNetLiteConfig,
    PretrainedWeightsError,
    imagenet_weights_path,
    load_imagenet_weights,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def lite() -> EfficientNetLiteClassifier:
    return EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=3)).load_imagenet().eval()


def _normalised(x: torch.Tensor, mean=LITE_MEAN, std=LITE_STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("hw", [(224, 224), (200, 260), (97, 131)])
def test_the_reference_implementations_outputs_on_the_shipped_weights(lite, hw):
    """efficientnet-lite-pytorch 0.1.0 (lukemelas-style, TensorFlow "SAME" padding) on the
    same weights: the head's feature map and the ImageNet logits through its classifier."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        ref = ref_mod.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(imagenet_weights_path()),
            **({} if hw == (224, 224) else {"image_size": None})).eval()
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = ref.extract_features(_normalised(x))
        ours = lite.forward_features(x, -1)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        logits = ref._fc(ours.mean(dim=(2, 3)))  # the ImageNet head on our features
        torch.testing.assert_close(logits, ref(_normalised(x)), rtol=1e-5, atol=1e-4)
    # the stages' strides and widths the module notes give
    shapes = []
    with torch.no_grad():
        h = x
        for block in lite.features:
            h = block(h)
            shapes.append((h.shape[1], -(-hw[0] // h.shape[2])))
    assert [c for c, _ in shapes] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]


def test_the_weights_expect_127_128_not_imagenets_mean_and_std(lite):
    """The stem's per-channel means over two natural photographs (scikit-learn's sample
    images) follow the weights' batch-norm running means under (v - 127) / 128 (correlation
    0.92), not under ImageNet's mean and std (0.49)."""
    from sklearn.datasets import load_sample_images

    photos = torch.stack([torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1) / 255
                          for a in load_sample_images().images])
    stem = lite.features[0]
    running = stem.bn.running_mean.numpy()

    def corr(mean, std) -> float:
        with torch.no_grad():
            a = stem.conv(_normalised(photos, mean, std)).mean(dim=(0, 2, 3)).numpy()
        return float(np.corrcoef(a, running)[0, 1])

    lite_corr = corr(LITE_MEAN, LITE_STD)
    imagenet_corr = corr((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert lite_corr > 0.9 and imagenet_corr < 0.6


def test_a_grey_image_is_three_equal_channels(lite):
    grey = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1)).load_imagenet().eval()
    grey.fc.load_state_dict(lite.fc.state_dict())
    x = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(grey(x), lite(x.expand(-1, 3, -1, -1)))
    assert grey.config.min_input_size == 32


def test_a_weights_file_that_does_not_fit_is_refused_naming_it(tmp_path):
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert set(load_imagenet_weights()) == set(
        EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=3)).features.state_dict())
    missing = {k: v for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing.pth is not a state dict of "
                                                     r"EfficientNet-Lite0.*missing 1 keys.*"
                                                     r"3.0.depthwise"):
        load_imagenet_weights(tmp_path / "missing.pth")
    wrong = dict(state)
    wrong["_conv_head.weight"] = torch.zeros(1000, 320, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(PretrainedWeightsError, match=r"wrong.pth: _conv_head.weight has shape "
                                                     r"\(1000, 320, 1, 1\), but EfficientNet-"
                                                     r"Lite0 .* expects \(1280, 320, 1, 1\)"):
        load_imagenet_weights(tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="junk.pth: not a state dict"):
        load_imagenet_weights(tmp_path / "junk.pth")
    with pytest.raises(PretrainedWeightsError, match="no such weights file"):
        load_imagenet_weights(tmp_path / "none.pth")


def test_spade_on_efficientnet_fits_saves_loads_and_exports(tmp_path):
    """SPADE with the pretrained classifier: the closed-form Grad-CAM, the feature bank, a
    model directory that loads to the same scores and an ONNX graph that gives them."""
    from spadecam import SPADE
    from spadecam.detectors import load_detector
    from spadecam.models import VAEConfig
    from spadecam.training import TrainConfig

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(60, 12, (24, 40, 40)), 0, 255).astype(np.uint8)
    x[18:, 10:20, 10:20] = 230
    y = np.r_[np.zeros(18), np.ones(6)]
    train = TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
    det = SPADE(image_size=32, vae_config=VAEConfig(latent_dim=4, channels=(4, 8)),
                cnn_config=EfficientNetLiteConfig(), vae_train=train, cnn_train=train,
                precision="32", batch_size=8, recipe="spadecam").fit(x, y)
    assert det.cnn_.config.in_channels == 1 and det.cnn_.config.pretrained
    # training started from the ImageNet weights: one epoch leaves the stem's conv close
    start = load_imagenet_weights()["0.conv.weight"]
    stem = det.cnn_.features[0].conv.weight.detach()
    assert float((stem - start).abs().max()) < 0.1 * float(start.abs().max())
    scores = det.decision_function(x[:6])
    det.save(tmp_path / "m")
    np.testing.assert_array_equal(load_detector(tmp_path / "m").decision_function(x[:6]), scores)
    pytest.importorskip("onnxruntime")
    from spadecam.deploy import OnnxSPADE, export_onnx

    onnx = OnnxSPADE(export_onnx(tmp_path / "m", tmp_path / "m.onnx"))
    np.testing.assert_allclose(onnx.decision_function(x[:6]), scores, rtol=1e-4,
                               atol=1e-4 * np.abs(scores).max())


@pytest.mark.slow
def test_spadecam_train_takes_the_pretrained_backbone(tmp_path, capsys):
    from _own_images import make_folders
    from spadecam.cli import main

    folders = make_folders(tmp_path / "data", n_normal=12, n_anomaly=4, n_test=2)
    out = tmp_path / "model"
    assert main(["train", "--recipe", "spadecam", "--normal", str(folders["train/good"]), "--anomaly",
                 str(folders["train/defect"]), "--out", str(out), "--backbone",
                 "efficientnet_lite0", "--image-size", "32", "--latent-dim", "4", "--epochs",
                 "1", "--batch-size", "8", "--no-progress"]) == 0, capsys.readouterr().err
    import json

    config = json.loads((out / "config.json").read_text())
    assert config["cnn_backbone"] == "efficientnet_lite0"
    assert config["cnn_config"]["in_channels"] == 1 and config["cnn_config"]["pretrained"]
    assert main(["score", str(out), str(folders["test/good"]), "--no-progress"]) == 0
