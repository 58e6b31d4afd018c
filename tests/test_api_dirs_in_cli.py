"""Every model directory the Python API writes is one the CLI scores, evaluates and exports,
with the preprocessing the API used: ``SPADE(...).fit(X, y).save(d)`` (and the three
baselines') used to be refused by ``spadecam score`` / ``evaluate`` ("no preprocessing or
threshold_ in config.json") while ``spadecam export`` took it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.cli import main
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN = TrainConfig(epochs=2, batch_size=8, lr=3e-3, progress=False, seed=0)
VAE = VAEConfig(latent_dim=4, channels=(4, 8))
CNN = CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2))
SIZES = [(20, 30), (30, 20), (24, 24), (18, 36), (27, 21)]  # non-square, mixed


def _image(rng: np.random.Generator, hw: tuple[int, int], defect: bool) -> np.ndarray:
    x = np.clip(rng.normal(60, 12, hw), 0, 255)
    if defect:
        r, c = rng.integers(0, min(hw) - 6, 2)
        x[r : r + 6, c : c + 6] = 235
    return x.astype(np.uint8)


def _detector(name: str):
    common = dict(image_size=16, precision="32", batch_size=8)
    return {
        "SPADE": lambda: SPADE(vae_config=VAE, cnn_config=CNN, vae_train=TRAIN, cnn_train=TRAIN,
                               **common, recipe="spadecam"),
        "NaiveSPADE": lambda: NaiveSPADE(vae_config=VAE, cnn_config=CNN, vae_train=TRAIN,
                                         cnn_train=TRAIN, **common),
        "VAEDetector": lambda: VAEDetector(vae_config=VAE, vae_train=TRAIN, **common),
        "CNNDetector": lambda: CNNDetector(cnn_config=CNN, cnn_train=TRAIN, **common),
    }[name]()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SPADE", "NaiveSPADE", "VAEDetector", "CNNDetector"])
def test_a_directory_saved_by_the_api_is_scored_evaluated_and_exported_by_the_cli(
        tmp_path, capsys, name):
    rng = np.random.default_rng(0)
    train = [_image(rng, SIZES[i % 5], i >= 30) for i in range(40)]
    y = np.r_[np.zeros(30), np.ones(10)]
    det = _detector(name).fit(train, y)
    det.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["preprocessing"]["channels"] == 1  # what fit did, recorded

    test = {"good": [_image(rng, SIZES[i % 5], False) for i in range(6)],
            "bad": [_image(rng, SIZES[i % 5], True) for i in range(6)]}
    for kind, images in test.items():
        (tmp_path / kind).mkdir()
        for i, a in enumerate(images):
            Image.fromarray(a).save(tmp_path / kind / f"{i}.png")
    api = det.decision_function(test["good"] + test["bad"])

    out = tmp_path / "scores.csv"
    assert main(["score", str(tmp_path / "model"), str(tmp_path / "good"), str(tmp_path / "bad"),
                 "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    cli = np.array([float(r["score"]) for r in _rows(out)])
    np.testing.assert_allclose(cli, api, rtol=1e-5)  # the same preprocessing as the API
    assert [int(r["label"]) for r in _rows(out)] == list((api > det.threshold_).astype(int))

    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(tmp_path / "model"), "--normal", str(tmp_path / "good"),
                 "--anomaly", str(tmp_path / "bad"), "--out", str(metrics),
                 "--no-progress"]) == 0, capsys.readouterr().err
    auroc = json.loads(metrics.read_text())["image_auroc"]
    assert auroc == pytest.approx(roc_auc_score(np.r_[np.zeros(6), np.ones(6)], api), abs=1e-9)

    pytest.importorskip("onnxruntime")
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 0
    onnx_out = tmp_path / "onnx.csv"
    assert main(["score", "--onnx", str(tmp_path / "m.onnx"), str(tmp_path / "good"),
                 str(tmp_path / "bad"), "--out", str(onnx_out)]) == 0
    np.testing.assert_allclose([float(r["score"]) for r in _rows(onnx_out)], api, rtol=1e-4,
                               atol=1e-4 * np.abs(api).max())


def test_a_directory_saved_before_preprocessing_was_recorded_is_scored_too(tiny_model, tmp_path,
                                                                           capsys):
    """Directories the API saved earlier carry no preprocessing: the CLI derives it from the
    models' input (what fit did) instead of refusing them."""
    import shutil

    model = Path(shutil.copytree(tiny_model[0], tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    ref = tmp_path / "ref.csv"
    good = str(tiny_model[1]["test/good"])
    assert main(["score", str(model), good, "--out", str(ref)]) == 0
    del config["preprocessing"]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "s.csv"
    assert main(["score", str(model), good, "--out", str(out)]) == 0, capsys.readouterr().err
    assert _rows(out) == _rows(ref)
    # a threshold is still needed, and the message says how to set it
    config["threshold_"] = None
    (model / "config.json").write_text(json.dumps(config))
    assert main(["score", str(model), good]) == 2
    assert "set det.threshold_ before save" in capsys.readouterr().err


def test_a_closed_stdout_after_scoring_takes_no_finished_output_back(tiny_model, tmp_path,
                                                                     monkeypatch, capsys):
    """`spadecam score ... --maps ov | head`: the pipe closing while the CSV is printed must
    not roll back the overlays, which were complete."""
    import errno

    from spadecam import cli

    def closed(*_args, **_kwargs):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cli, "_print_scored", closed)
    maps = tmp_path / "ov"
    code = main(["score", str(tiny_model[0]), str(tiny_model[1]["test/good"]), "--maps",
                 str(maps)])
    assert code == 2 and "Broken pipe" in capsys.readouterr().err
    assert len(list(maps.rglob("*.png"))) == len(list(tiny_model[1]["test/good"].iterdir()))
