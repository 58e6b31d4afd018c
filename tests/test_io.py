"""Model directories: save / load of SPADE and the baselines, backbones, and refusals (pickle,
versions, interrupted saves). Untrained tiny models are enough: only the round trip is tested."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spadecam.io as sio
from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam._fs import atomic_write
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


def models(backbone: str = "small", seed: int = 0):
    torch.manual_seed(seed)
    vae = ConvVAE(VAEConfig(image_size=SIZE, latent_dim=4, channels=(4, 8)))
    if backbone == "resnet18":
        cnn = ResNetClassifier(ResNetConfig(widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1)))
    else:
        cnn = ConvClassifier(CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)))
    # non-trivial BN statistics, so that buffers must round-trip as well as weights
    cnn.train()(torch.rand(8, 1, SIZE, SIZE))
    return vae.eval(), cnn.eval()


def detector(backbone: str = "small", cls=SPADE, **params):
    # resize as PRE says: a model directory records one policy; no feature bank
    # (random models; tests/test_knn.py saves and loads one)
    if cls is SPADE:  # the from-scratch recipe: these are a VAE and a CNN
        params.setdefault("knn_power", 0.0)
        params.setdefault("recipe", "spadecam")
    det = cls.from_models(*models(backbone), **{"resize": PRE["resize"], **params})
    det.threshold_ = 0.125
    return det


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
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


@pytest.mark.parametrize(("old", "new"), [("conv", "small"), ("resnet", "resnet18")])
def test_model_directories_of_0_1_load_with_their_backbone_names(tmp_path, old, new):
    # 0.1 wrote "conv" / "resnet"; one name set now ("small" / "resnet18"), the old ones read
    det = detector(new)
    path = det.save(tmp_path / "model", PRE)
    config = json.loads((path / "config.json").read_text())
    assert config["cnn_backbone"] == new
    config["cnn_backbone"] = old
    (path / "config.json").write_text(json.dumps(config))
    loaded = SPADE.load(path)
    assert type(loaded.cnn_) is type(det.cnn_)
    np.testing.assert_array_equal(loaded.decision_function(X), det.decision_function(X))


def test_resnet_is_a_feature_classifier_with_closed_form_grad_cam():
    from spadecam.cam import closed_form_applies, grad_cam
    from spadecam.models import FeatureClassifier

    _, cnn = models("resnet18")
    # the classifier protocol (features + GAP + linear head), not a skipped ConvClassifier
    # __init__
    assert isinstance(cnn, FeatureClassifier) and not isinstance(cnn, ConvClassifier)
    assert closed_form_applies(cnn, -1)
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
    real = sio.atomic_write_bytes
    calls = []

    def crash_on_second_file(target, data):
        calls.append(target.name)
        if len(calls) == 2:  # the new vae is in place, the new cnn and config are not
            raise KeyboardInterrupt("simulated crash")
        real(target, data)

    monkeypatch.setattr(sio, "atomic_write_bytes", crash_on_second_file)
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
        atomic_write(tmp_path / "config.json", failing)
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
        SPADE(recipe="spadecam").save("unused")


def test_baseline_detectors_round_trip_with_one_model(tmp_path):
    vae, cnn = models()
    vdet = VAEDetector.from_models(vae, error_smoothing=1.5, error_norm="l2", resize="resize")
    vdet.threshold_ = 3.0
    cdet = CNNDetector.from_models(cnn, loss="cross_entropy", resize="resize")
    cdet.threshold_ = -0.5
    for det, kept, gone in ((vdet, "vae", "cnn"), (cdet, "cnn", "vae")):
        path = det.save(tmp_path / type(det).__name__, PRE)
        assert sorted(p.name for p in path.iterdir()) == sorted(["config.json", f"{kept}.safetensors"])
        config = json.loads((path / "config.json").read_text())
        assert f"{kept}_config" in config and f"{gone}_config" not in config
        loaded = type(det).load(path)
        assert loaded.threshold_ == det.threshold_ and loaded.preprocessing_ == PRE
        np.testing.assert_array_equal(loaded.decision_function(X), det.decision_function(X))
    assert VAEDetector.load(tmp_path / "VAEDetector").error_norm == "l2"
    assert CNNDetector.load(tmp_path / "CNNDetector").loss == "cross_entropy"
    # the saved parameters are those the class takes: no SPADE-only keys for the baselines
    params = json.loads((tmp_path / "CNNDetector" / "config.json").read_text())["detector"]
    assert "cam_layer" not in params["params"] and "error_norm" not in params["params"]


def test_one_model_directory_is_refused_where_two_are_needed(tmp_path):
    vae, _ = models()
    path = VAEDetector.from_models(vae, resize="resize").save(tmp_path / "v", PRE)
    with pytest.raises(ModelFormatError, match="VAEDetector.load"):
        SPADE.load(path)
    with pytest.raises(ModelFormatError, match="holds no classifier"):
        load_models(path)
    config = json.loads((path / "config.json").read_text())
    del config["detector"]  # a bare directory: the class check passes, the model check not
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="lacks a model SPADE needs"):
        SPADE.load(path)
    with pytest.raises(ValueError, match="neither"):
        save_models(tmp_path / "none", None, None)


def test_resave_with_one_model_fewer_removes_the_stale_weights(tmp_path):
    path = detector().save(tmp_path / "m", PRE)
    vae, _ = models()
    VAEDetector.from_models(vae, resize="resize").save(path, PRE)
    assert not (path / "cnn.safetensors").exists()
    assert VAEDetector.load(path).threshold_ is None


# --------------------------------------------------------------------------- strict JSON


def strict_json(text: str):
    """Parse as RFC 8259 JSON: the bare tokens NaN / Infinity that Python allows are errors."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_an_infinite_threshold_is_saved_as_strict_json_and_read_back(tmp_path, value):
    det = detector()
    det.threshold_ = float(value)
    path = det.save(tmp_path / "model", PRE)
    config = strict_json((path / "config.json").read_text())  # Python wrote `Infinity` before
    assert config["threshold_"] == ("Infinity" if value > 0 else "-Infinity")
    again = SPADE.load(path)
    assert again.threshold_ == value
    assert again.predict(X).tolist() == ([0] * 6 if value > 0 else [1] * 6)


def test_a_nan_threshold_is_refused_and_nothing_is_written(tmp_path):
    det = detector()
    det.save(tmp_path / "model", PRE)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    other = detector()
    torch.nn.init.constant_(other.cnn_.fc.weight, 0.5)  # other weights, so a write would show
    other.threshold_ = float("nan")
    with pytest.raises(ValueError, match="threshold_ is NaN"):
        other.save(tmp_path / "model", PRE)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    with pytest.raises(ValueError, match="threshold_ is NaN"):
        other.save(tmp_path / "new", PRE)
    assert not (tmp_path / "new").exists()


def test_a_malformed_threshold_in_config_is_a_format_error(tmp_path):
    path = detector().save(tmp_path / "model", PRE)
    config = json.loads((path / "config.json").read_text())
    config["threshold_"] = "high"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="threshold_ must be a number"):
        SPADE.load(path)


def test_loading_a_model_leaves_the_callers_rng_untouched(tmp_path):
    # building the networks drew their (then overwritten) initial weights from the global RNG
    path = detector().save(tmp_path / "model", PRE)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    SPADE.load(path)
    load_models(path)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_model_directory_records_one_resize_policy(tmp_path):
    # the policy was stored three times (input, preprocessing, detector params) and
    # nothing made them agree; save refuses a disagreeing preprocessing, load a damaged file
    det = detector(resize="letterbox")
    with pytest.raises(ValueError, match="records one policy"):
        det.save(tmp_path / "bad", PRE)  # PRE says "resize"
    path = detector().save(tmp_path / "m", PRE)
    config = json.loads((path / "config.json").read_text())
    assert "resize" not in config["detector"]["params"] and config["input"]["resize"] == "resize"
    config["preprocessing"]["resize"] = "letterbox"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="preprocessing.resize must be equal to input.resize"):
        SPADE.load(path)

