"""Model directories: SPADE.save / SPADE.load, backbones, and refusals (pickle, versions,
interrupted saves). Untrained tiny models are enough: only the round trip is tested."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spadecam.io as sio
from spadecam import SPADE, NaiveSPADE
from spadecam.io import FORMAT_VERSION, ModelFormatError, load_models, read_config, save_models
from spadecam.models import CNNConfig, ConvClassifier, ConvVAE, VAEConfig
from spadecam.models.resnet import ResNetClassifier, ResNetConfig

SIZE = 32
X = np.random.default_rng(0).integers(0, 256, (6, 1, SIZE, SIZE), dtype=np.uint8)
PRE = {"image_size": SIZE, "channels": 1, "resize": "resize", "normalisation": "dtype_max"}


@pytest.fixture(autouse=True)
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def models(backbone: str = "conv", seed: int = 0):
    torch.manual_seed(seed)
    vae = ConvVAE(VAEConfig(image_size=SIZE, latent_dim=4, channels=(4, 8)))
    if backbone == "resnet":
        cnn = ResNetClassifier(ResNetConfig(widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1)))
    else:
        cnn = ConvClassifier(CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)))
    # non-trivial BN statistics, so that buffers must round-trip as well as weights
    cnn.train()(torch.rand(8, 1, SIZE, SIZE))
    return vae.eval(), cnn.eval()


def detector(backbone: str = "conv", cls=SPADE, **params):
    det = cls.from_models(*models(backbone), **params)
    det.threshold_ = 0.125
    return det


@pytest.mark.parametrize("backbone", ["conv", "resnet"])
def test_save_load_round_trip(tmp_path, backbone):
    det = detector(backbone, cam_layer=-1, upsample="bicubic", threshold_quantile=0.95)
    path = det.save(tmp_path / "model", PRE, extra={"note": "hello"})
    assert sorted(p.name for p in path.iterdir()) == [
        "cnn.safetensors", "config.json", "vae.safetensors"
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert config["cnn_backbone"] == backbone
    assert config["threshold_"] == 0.125 and config["preprocessing"] == PRE
    assert config["detector"]["params"]["upsample"] == "bicubic"
    assert config["note"] == "hello"
    loaded = SPADE.load(path)
    assert type(loaded.cnn_) is type(det.cnn_)
    assert loaded.threshold_ == 0.125 and loaded.preprocessing_ == PRE
    assert (loaded.upsample, loaded.threshold_quantile) == ("bicubic", 0.95)
    np.testing.assert_array_equal(loaded.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), det.predict(X))


def test_resnet_is_a_conv_classifier_with_closed_form_grad_cam():
    from spadecam.cam import closed_form_applies, grad_cam

    _, cnn = models("resnet")
    assert isinstance(cnn, ConvClassifier) and closed_form_applies(cnn, -1)
    x = torch.rand(3, 1, SIZE, SIZE)
    torch.testing.assert_close(
        grad_cam(cnn, x, method="closed_form"), grad_cam(cnn, x, method="autograd"),
        rtol=1e-4, atol=1e-6,
    )
    full = ResNetClassifier(ResNetConfig())
    assert len(full.features) == 5 and full.config.min_input_size == 32
    n_params = sum(p.numel() for p in full.parameters())
    assert 11.1e6 < n_params < 11.2e6  # ResNet-18's 11.7M minus the 1000-class head


def test_naive_spade_directory_is_not_loaded_as_spade(tmp_path):
    path = detector(cls=NaiveSPADE).save(tmp_path / "naive", PRE)
    with pytest.raises(ModelFormatError, match="NaiveSPADE.load"):
        SPADE.load(path)
    assert NaiveSPADE.load(path).input_branch == "relu"


def test_pickle_files_are_refused(tmp_path):
    path = detector().save(tmp_path / "m", PRE)
    torch.save({"x": 1}, path / "weights.pt")
    with pytest.raises(ModelFormatError, match=r"pickle.*weights.pt"):
        SPADE.load(path)


def test_other_format_version_is_refused(tmp_path):
    path = detector().save(tmp_path / "m", PRE)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=rf"format_version {FORMAT_VERSION + 1}"):
        SPADE.load(path)


def test_missing_directory_config_and_unknown_backbone(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        read_config(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        SPADE.load(tmp_path / "empty")
    path = detector().save(tmp_path / "m", PRE)
    config = json.loads((path / "config.json").read_text())
    config["cnn_backbone"] = "vit"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="unknown cnn_backbone 'vit'"):
        load_models(path)


def test_interrupted_save_never_loads_as_a_half_model(tmp_path, monkeypatch):
    path = detector().save(tmp_path / "m", PRE)
    other_vae, other_cnn = models(seed=1)
    real = sio._atomic_bytes_writer
    calls = []

    def crash_on_second_file(target, write):
        calls.append(target.name)
        if len(calls) == 2:  # the new vae is in place, the new cnn and config are not
            raise KeyboardInterrupt("simulated crash")
        real(target, write)

    monkeypatch.setattr(sio, "_atomic_bytes_writer", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        save_models(path, other_vae, other_cnn)
    monkeypatch.undo()
    with pytest.raises(ModelFormatError, match=r"vae.safetensors does not match the sha256"):
        SPADE.load(path)
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def test_writer_leaves_no_temp_file_when_writing_fails(tmp_path):
    def failing(p):
        with open(p, "w") as f:
            f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        sio._atomic_bytes_writer(tmp_path / "config.json", failing)
    assert list(tmp_path.iterdir()) == []


def test_directory_without_hashes_or_backbone_still_loads(tmp_path):
    # model directories written before cnn_backbone / weights_sha256 existed
    path = detector().save(tmp_path / "m", PRE)
    config = json.loads((path / "config.json").read_text())
    del config["cnn_backbone"], config["weights_sha256"]
    (path / "config.json").write_text(json.dumps(config))
    vae, cnn = load_models(path)
    assert type(cnn) is ConvClassifier


def test_save_before_fit_raises():
    from spadecam.detectors import NotFittedError

    with pytest.raises(NotFittedError):
        SPADE().save("unused")
