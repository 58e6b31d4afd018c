"""config.json of a model directory is validated on load (a model directory that a user
edited or damaged).

One model directory of tiny untrained models is written per module; each test copies it,
edits config.json and expects one :class:`ModelFormatError` line that names the file, the
dotted key and what was expected, raised by :func:`read_config` and so by every loader
(``SPADE.load``, ``spadecam score``) before any weights are read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from spadecam import SPADE, CNNDetector, VAEDetector, workflow
from spadecam.cli import main
from spadecam.io import ModelFormatError, read_config
from spadecam.models import CNNConfig, ConvClassifier, ConvVAE, VAEConfig

SIZE = 16
#: the networks' minimum input side: the classifier's total stride (2 * 2 * 2)
MIN_SIZE = 8
X = np.random.default_rng(0).integers(0, 256, (5, 1, SIZE, SIZE), dtype=np.uint8)
PRE = {"image_size": SIZE, "channels": 1, "resize": "letterbox", "normalisation": "dtype_max",
       "min_input_size": MIN_SIZE}


def tiny_models() -> tuple[ConvVAE, ConvClassifier]:
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(image_size=SIZE, latent_dim=4, channels=(4, 8)))
    # three conv blocks: cam_layer may be -3 .. 2
    cnn = ConvClassifier(CNNConfig(channels=(4, 8, 8), kernel_sizes=(3, 3, 3), strides=(2, 2, 2)))
    cnn.train()(torch.rand(8, 1, SIZE, SIZE))  # non-trivial batch-norm statistics
    return vae.eval(), cnn.eval()


@pytest.fixture(scope="module")
def written(tmp_path_factory, single_thread):
    """(root, detector, scores of X): a SPADE model directory as `spadecam train` writes one
    (preprocessing, threshold_, overlay_scale), the VAE- and CNN-only baselines' beside it,
    and a folder of 16x16 grey PNGs to score."""
    root = tmp_path_factory.mktemp("config_validation")
    vae, cnn = tiny_models()
    det = SPADE.from_models(vae, cnn, cam_layer=1, batch_size=4, knn_power=0.0, recipe="spadecam")
    det.threshold_ = float(np.median(det.decision_function(X)))
    det.save(root / "model", PRE, {"overlay_scale": 1.0})
    vdet = VAEDetector.from_models(vae)
    vdet.threshold_ = 1.0
    vdet.save(root / "vae_only", PRE)
    cdet = CNNDetector.from_models(cnn)
    cdet.threshold_ = 0.0
    cdet.save(root / "cnn_only", PRE)
    images = root / "images"
    images.mkdir()
    for i, x in enumerate(X):
        Image.fromarray(x[0]).save(images / f"x{i}.png")
    return root, det, det.decision_function(X)


def _set(key: str, value: Any):
    """An edit setting a dotted key (the last part may hold a dot: "vae.safetensors")."""
    def edit(config: dict) -> None:
        if key.startswith("weights_sha256."):
            config["weights_sha256"][key.split(".", 1)[1]] = value
            return
        *parents, last = key.split(".")
        node = config
        for k in parents:
            node = node[k]
        node[last] = value

    return edit


def edited(written, tmp_path: Path, edit: Any, which: str = "model") -> Path:
    """A copy of the ``which`` directory whose config.json went through ``edit``: a function
    of the config (returning a replacement, or None after editing it in place) or a
    (dotted key, value) pair to set (:func:`_set`)."""
    d = tmp_path / which
    shutil.copytree(written[0] / which, d)
    config = json.loads((d / "config.json").read_text())
    new = (edit if callable(edit) else _set(*edit))(config)
    config = config if new is None else new
    (d / "config.json").write_text(json.dumps(config))  # NaN as the bare token Python reads
    return d


def assert_one_line(message: str, d: Path, key: str) -> None:
    assert str(d / "config.json") in message, message
    assert key in message, message
    assert "\n" not in message.strip(), message


NAN = float("nan")

# (dotted key set, value[, key named instead]): the key must be named in the message
BAD_VALUES: list[tuple[Any, ...]] = [
    # the examples
    ("input.image_size", 7),  # below the networks' minimum: a kernel-size RuntimeError
    ("input.image_size", 64),  # a 16-px VAE: "mat1 and mat2 shapes cannot be multiplied"
    ("input.image_size", "abc"),  # ValueError of int() naming no file
    ("detector.params.cam_layer", 7),  # IndexError
    ("detector.params.batch_size", 0),  # "range() arg 3 must not be zero"
    ("preprocessing.min_input_size", "x"),  # TypeError in spadecam score
    # input: wrong type, out of range, inconsistent with the models
    ("input.image_size", True),
    ("input.image_size", 0),
    ("input.image_size", -16),
    ("input.image_size", 16.0),
    ("input.image_size", [16]),
    ("input.image_size", 32),
    ("input.channels", 3),
    ("input.channels", "1"),
    ("input.channels", True),
    ("input.channels", 0),
    ("input.resize", "stretch"),
    ("input.resize", 1),
    ("input", [16, 1]),
    # preprocessing
    ("preprocessing.image_size", 64),
    ("preprocessing.image_size", "16"),
    ("preprocessing.image_size", True),
    ("preprocessing.channels", 2),
    ("preprocessing.channels", 3),
    ("preprocessing.channels", "1"),
    ("preprocessing.channels", True),
    ("preprocessing.min_input_size", 0),
    ("preprocessing.min_input_size", True),
    ("preprocessing.min_input_size", 2.5),
    ("preprocessing.resize", "crop"),
    ("preprocessing.normalisation", "zscore"),
    ("preprocessing", "yes"),
    # detector.params
    ("detector.params.cam_layer", 3),
    ("detector.params.cam_layer", -4),
    ("detector.params.cam_layer", "last"),
    ("detector.params.cam_layer", True),
    ("detector.params.cam_layer", 1.5),
    ("detector.params.cam_layer", []),
    ("detector.params.cam_layer", [0, 5]),
    ("detector.params.cam_layer", [0, "1"]),
    ("detector.params.batch_size", -1),
    ("detector.params.batch_size", "256"),
    ("detector.params.batch_size", True),
    ("detector.params.batch_size", 2.0),
    ("detector.params.loss", "mse"),
    ("detector.params.input_branch", "square"),
    ("detector.params.recon_branch", 1),
    ("detector.params.normalise", "yes"),
    ("detector.params.normalise", 1),
    ("detector.params.upsample", "linear"),
    ("detector.params.upsample", "trilinear"),
    ("detector.params.cam_method", "fast"),
    ("detector.params.error_smoothing", -1.0),
    ("detector.params.error_smoothing", "2"),
    ("detector.params.error_smoothing", NAN),
    ("detector.params.error_smoothing", True),
    ("detector.params.error_norm", "l3"),
    ("detector.params.precision", "16"),
    ("detector.params.precision", 32),
    ("detector.params.threshold_quantile", 0),
    ("detector.params.threshold_quantile", 1.5),
    ("detector.params.threshold_quantile", "0.99"),
    ("detector.params.threshold_holdout", 1),
    ("detector.params.threshold_holdout", -0.1),
    ("detector.params.image_size", 64),
    ("detector.params.image_size", "16"),
    ("detector.params.resize", "crop"),
    ("detector.params.roi_power", 0),
    ("detector.params.roi_power", -1.0),
    ("detector.params.classifier_weight", -0.5),
    ("detector.params.recipe", "fast"),
    ("detector.params", [1]),
    ("detector.class", 5),
    ("detector", "SPADE"),
    # the other fields loaders read
    ("format_version", True),
    ("threshold_", NAN),
    ("overlay_scale", "big"),
    ("overlay_scale", -1.0),
    ("overlay_scale", "Infinity"),
    ("cnn_backbone", 5),
    ("weights_sha256", ["abc"]),
    ("weights_sha256.vae.safetensors", 5),
    # model configs: their own fields, each other, the weights' shapes
    ("vae_config.image_size", "abc"),
    ("vae_config.image_size", True),
    ("vae_config.image_size", 32),  # consistent with nothing: input says 16, weights too
    ("vae_config.latent_dim", 0),
    ("vae_config.latent_dim", 8, "vae_config"),  # the weights hold a 4-d latent
    ("vae_config.channels", []),
    ("vae_config.channels", [4, "8"]),
    ("vae_config.kernel_size", 0),
    ("vae_config.likelihood", "poisson"),
    ("vae_config.gaussian_var", 0),
    ("vae_config.beta", -1.0),
    ("vae_config.foo", 1),
    ("vae_config.in_channels", 3),
    ("vae_config", [1]),
    ("cnn_config.channels", [4, 8]),  # three kernel sizes and strides
    ("cnn_config.channels", [4, 8, 16], "cnn_config"),  # 8 channels in the weights
    ("cnn_config.strides", "2"),
    ("cnn_config.strides", [2, 2, 0]),
    ("cnn_config.batch_norm", "yes"),
    ("cnn_config.num_classes", 3),
    ("cnn_config.in_channels", 3),
    ("cnn_config.bar", 1),
    ("cnn_config", None),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[f"{c[0]}={json.dumps(c[1])}" for c in BAD_VALUES])
def test_a_bad_value_is_one_format_error_naming_file_and_key(written, tmp_path, case):
    key, value, *shown_as = case  # shown_as: the key named when the weights disagree
    d = edited(written, tmp_path, (key, value))
    shown = shown_as[0] if shown_as else key
    for load in (read_config, SPADE.load):
        with pytest.raises(ModelFormatError) as info:
            load(d)
        assert_one_line(str(info.value), d, shown)


def test_a_list_at_the_top_level_is_a_format_error(written, tmp_path):
    d = edited(written, tmp_path, lambda config: [config])  # was AttributeError
    for load in (read_config, SPADE.load, VAEDetector.load):
        with pytest.raises(ModelFormatError, match="JSON object") as info:
            load(d)
        assert_one_line(str(info.value), d, "top level")


@pytest.mark.parametrize("key", ["input.image_size", "preprocessing.image_size",
                                 "detector.params.image_size"])
def test_the_message_says_what_was_expected_and_what_was_found(written, tmp_path, key):
    d = edited(written, tmp_path, (key, 64))
    with pytest.raises(ModelFormatError, match=rf"{key}.*vae_config.image_size.*16.*64"):
        read_config(d)


def test_below_the_networks_minimum_names_the_minimum(written, tmp_path):
    # a CNN-only model has no VAE size to agree with, only the classifier's minimum
    d = edited(written, tmp_path, ("input.image_size", MIN_SIZE - 1), "cnn_only")
    with pytest.raises(ModelFormatError, match=rf"input.image_size.*>= {MIN_SIZE}.*got 7") as info:
        CNNDetector.load(d)
    assert_one_line(str(info.value), d, "input.image_size")


@pytest.mark.parametrize(("which", "cls", "key", "value"), [
    ("vae_only", VAEDetector, "input.image_size", 64),
    ("vae_only", VAEDetector, "detector.params.error_norm", "l3"),
    ("vae_only", VAEDetector, "input.channels", 3),
    ("cnn_only", CNNDetector, "input.channels", 3),
    ("cnn_only", CNNDetector, "detector.params.batch_size", 0),
    ("cnn_only", CNNDetector, "cnn_config.channels", [4, 8, 16]),
])
def test_the_baselines_directories_are_validated_too(written, tmp_path, which, cls, key, value):
    d = edited(written, tmp_path, (key, value), which)
    with pytest.raises(ModelFormatError) as info:
        cls.load(d)
    assert_one_line(str(info.value), d, key.split(".")[0] if "config" in key else key)


def test_validation_happens_before_any_weights_are_read(written, tmp_path, monkeypatch):
    d = edited(written, tmp_path, ("detector.params.cam_layer", 7))
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: read.append(p.name) or real(p))
    with pytest.raises(ModelFormatError, match="cam_layer"):
        SPADE.load(d)
    assert not [n for n in read if n.endswith(".safetensors")]


# the edits that `spadecam score` used to meet as tracebacks (or errors naming no file)
SCORE_EDITS = [
    ("preprocessing.min_input_size", "x"),
    ("preprocessing.channels", 2),
    ("preprocessing.channels", "1"),
    ("input.image_size", 7),
    ("input.image_size", 64),
    ("detector.params.cam_layer", 7),
    ("detector.params.batch_size", 0),
    ("overlay_scale", "big"),
]


@pytest.mark.parametrize(("key", "value"), SCORE_EDITS,
                         ids=[f"{k}={json.dumps(v)}" for k, v in SCORE_EDITS])
def test_workflow_score_refuses_the_edited_directory(written, tmp_path, key, value):
    d = edited(written, tmp_path, (key, value))
    with pytest.raises(ModelFormatError) as info:
        workflow.score(d, [written[0] / "images"], maps=tmp_path / "maps", progress=False)
    assert_one_line(str(info.value), d, key)
    assert not (tmp_path / "maps").exists()


@pytest.mark.parametrize(("key", "value"), SCORE_EDITS,
                         ids=[f"{k}={json.dumps(v)}" for k, v in SCORE_EDITS])
def test_cli_score_exits_2_with_one_line(written, tmp_path, capsys, key, value):
    d = edited(written, tmp_path, (key, value))
    capsys.readouterr()
    assert main(["score", str(d), str(written[0] / "images"), "--maps", str(tmp_path / "maps"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err  # may start with the scoring-precision line
    assert "Traceback" not in err and "spadecam: error: " in err, err
    message = err[err.index("spadecam: error: "):]
    assert_one_line(message, d, key)  # the error is stderr's last line, and one line


# --------------------------------------------------------------------------- still loads


def test_an_unedited_directory_loads_and_scores_identically(written):
    root, det, scores = written
    d = root / "model"
    assert read_config(d) == json.loads((d / "config.json").read_text())
    loaded = SPADE.load(d)
    assert (loaded.cam_layer, loaded.batch_size, loaded.threshold_) == (1, 4, det.threshold_)
    np.testing.assert_array_equal(loaded.decision_function(X), scores)
    rows = workflow.score(d, [root / "images"], progress=False)  # x0.png .. x4.png, in order
    np.testing.assert_array_equal([r["score"] for r in rows], scores)
    for which, baseline in (("vae_only", VAEDetector.from_models(det.vae_)),
                            ("cnn_only", CNNDetector.from_models(det.cnn_))):
        np.testing.assert_array_equal(type(baseline).load(root / which).decision_function(X),
                                      baseline.decision_function(X))


def _drop(*keys: str):
    def edit(config: dict) -> None:
        for key in keys:
            *parents, last = key.split(".")
            node = config
            for k in parents:
                node = node[k]
            del node[last]

    return edit


@pytest.mark.parametrize("edit", [
    ("detector.params.cam_layer", [0, -1]),  # a multi-layer ROI
    ("detector.params.cam_layer", -3),
    ("detector.params.cam_layer", 2),
    ("detector.params.error_smoothing", None),  # the recipe's
    ("detector.params.image_size", SIZE),
    ("detector.params.upsample", "nearest"),
    ("threshold_", "Infinity"),
    ("threshold_", None),
    ("overlay_scale", None),
    ("preprocessing", None),
    ("input.image_size", None),
    ("future_field", {"anything": [1, 2]}),  # unknown keys: forward compatibility
    ("detector.params.future_param", "x"),
    ("input.future", 1),
    _drop("input"),  # a directory from before the "input" entry
    _drop("detector.params.batch_size", "preprocessing.min_input_size", "weights_sha256",
          "cnn_backbone", "overlay_scale", "vae_config.beta"),
], ids=lambda e: f"{e[0]}={json.dumps(e[1])}" if isinstance(e, tuple) else "dropped keys")
def test_valid_edits_and_older_directories_still_load(written, tmp_path, edit):
    # a guard against over-strict checks: these pass before and after the validation
    d = edited(written, tmp_path, edit)
    loaded = SPADE.load(d)
    assert np.isfinite(loaded.decision_function(X)).all()
