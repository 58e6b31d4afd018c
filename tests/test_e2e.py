"""End-to-end: SPADE on a small, easier Noisy-MNIST slice, and the CLI's input errors.

The full reproduction (``spadecam reproduce noisy-mnist``) is too slow for the test suite;
here a few hundred digits on a 42-pixel canvas with weak noise are enough for SPADE to
separate 0s from the other digits clearly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import spadecam.bench.protocols
from spadecam import SPADE
from spadecam.cli import main
from spadecam.data import NoisyMNISTConfig, load_mnist, make_noisy_mnist
from spadecam.metrics import auroc
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig


def mnist_dir() -> Path | None:
    env = os.environ.get("SPADECAM_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/mnist"
    return folder if folder.is_dir() else None


DATA = mnist_dir()


@pytest.fixture()
def single_thread():
    # tiny models: one thread is faster and unaffected by other load on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.skipif(
    DATA is None,
    reason="MNIST not found: set SPADECAM_DATA or put the IDX files in ../shared/data/mnist",
)
@pytest.mark.slow
def test_spade_separates_zeros_from_other_digits(single_thread):
    x_train, y_train = load_mnist("train", DATA)
    x_test, y_test = load_mnist("test", DATA)
    cfg = NoisyMNISTConfig(
        canvas_size=42, min_digit_size=28, max_digit_size=42, noise_mean=10, noise_std=5
    )
    n = 600
    x0 = make_noisy_mnist(x_train[y_train == 0][:n], 100, cfg)
    x1 = make_noisy_mnist(x_train[y_train == 1][:n], 200, cfg)
    x = np.concatenate([x0, x1])
    y = np.r_[np.zeros(n), np.ones(n)].astype(np.int64)

    zeros = x_test[y_test == 0][:150]
    others = x_test[y_test >= 2][:150]  # unknown anomalies: digits 2-9, never seen in training
    x_eval = make_noisy_mnist(np.concatenate([zeros, others]), 999, cfg)
    labels = np.r_[np.zeros(len(zeros)), np.ones(len(others))]

    train = TrainConfig(epochs=20, batch_size=32, lr=2e-3, progress=False, seed=0)
    det = SPADE(
        vae_config=VAEConfig(image_size=42, latent_dim=8, channels=(16, 32)),
        cnn_config=CNNConfig(channels=(8, 16, 16)),
        vae_train=train,
        cnn_train=train, recipe="spadecam",
    ).fit(x, y)
    scores = det.decision_function(x_eval)
    assert scores.shape == (len(x_eval),) and np.isfinite(scores).all()
    # Training seeds 0-7 (x two training render seeds) gave 0.77-0.88 here; chance is 0.5.
    assert auroc(labels, scores) > 0.7


# --------------------------------------------------------------------------- CLI errors


@pytest.fixture()
def no_reproduction(monkeypatch):
    """Fail loudly (instead of running minutes of training) if the CLI gets past validation."""

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI started loading data despite invalid arguments")

    monkeypatch.setattr(spadecam.bench.protocols, "load_mnist", refuse)


@pytest.mark.parametrize("known", ["0", "1,1", "10", "3,-1"])
def test_cli_rejects_bad_known_digit(known, tmp_path, capsys, no_reproduction):
    out = tmp_path / "out"
    # checked while parsing (before torch is imported): argparse's exit code 2
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "noisy-mnist", "--known", known, "--quick", "--no-progress",
              "--data-dir", str(tmp_path), "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--known" in err and "1-9" in err
    assert not out.exists()


def test_cli_rejects_non_integer_known(tmp_path, capsys, no_reproduction):
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "noisy-mnist", "--known", "1,x", "--data-dir", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--known" in err and "'1,x'" in err


def test_cli_missing_data_dir_names_folder(tmp_path, capsys, no_reproduction):
    missing = tmp_path / "nonexistent"
    code = main(
        [
            "reproduce",
            "noisy-mnist",
            "--known",
            "1",
            "--quick",
            "--no-progress",
            "--data-dir",
            str(missing),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "spadecam: error" in err


def test_cli_nonexistent_absolute_data_dir(capsys, tmp_path, no_reproduction):
    code = main(
        [
            "reproduce",
            "noisy-mnist",
            "--known",
            "1",
            "--data-dir",
            "/nonexistent",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "/nonexistent" in capsys.readouterr().err


def test_cli_unknown_recipe(tmp_path, capsys, no_reproduction):
    # argparse rejects it before any work: exit code 2, the bad value and the choices named
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "noisy-mnist", "--known", "1", "--recipe", "nope",
              "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "spadecam" in err and "paper" in err
    assert not (tmp_path / "out").exists()


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
