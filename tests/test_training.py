"""The training loops: local seeds, a clear stop on divergence, progress that suits its output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spadecam._progress as progress
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig, TrainingDivergedError, train_cnn, train_vae

pytestmark = pytest.mark.usefixtures("single_thread")

SIZE = 16
X = torch.as_tensor(np.random.default_rng(0).integers(0, 60, (24, 1, SIZE, SIZE), np.uint8))
Y = torch.as_tensor(np.r_[np.zeros(16), np.ones(8)]).long()
VAE = VAEConfig(image_size=SIZE, latent_dim=2, channels=(4, 4))
CNN = CNNConfig(channels=(4, 4), kernel_sizes=(3, 3), strides=(2, 2))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 8, "progress": False, **kw})


def weights(model) -> list[torch.Tensor]:
    return [v.clone() for v in model.state_dict().values()]


def test_seeds_are_local_to_the_training_call():
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    a = train_vae(X, VAE, cfg(seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(100)  # the caller moves its RNG on; the same seed gives the same model
    b = train_vae(X, VAE, cfg(seed=4))
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))
    c = train_cnn(X, Y, CNN, cfg(seed=4))
    torch.manual_seed(123)
    d = train_cnn(X, Y, CNN, cfg(seed=4))
    assert all(torch.equal(p, q) for p, q in zip(weights(c), weights(d)))


def test_a_non_finite_loss_stops_training_naming_model_epoch_and_hint():
    x = X.float() / 255
    x[0, 0, 0, 0] = float("nan")  # a bad pixel makes the first loss NaN
    with pytest.raises(TrainingDivergedError) as exc:
        train_cnn(x, Y, CNN, cfg(val_fraction=0.0))
    text = str(exc.value)
    assert text.startswith("classifier training diverged: the training loss is nan in epoch 1/3")
    assert "lower learning rate (lr=0.001" in text


def test_without_a_terminal_each_epoch_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setattr("spadecam.training.interactive", lambda: False)
    train_vae(X, VAE, cfg(progress=True, patience=10))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["VAE epoch 1/3", "VAE epoch 2/3", "VAE epoch 3/3"]
    assert all("training loss" in ln and "validation loss" in ln for ln in lines)


def test_on_a_terminal_a_bar_is_drawn(capsys, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    monkeypatch.setattr("spadecam.training.interactive", lambda: True)
    train_vae(X, VAE, cfg(progress=True, epochs=1))
    err = capsys.readouterr().err
    assert "\r" in err and "VAE epoch 1/1" in err


def test_progress_false_prints_nothing(capsys):
    train_vae(X, VAE, cfg(epochs=1))
    assert capsys.readouterr().err == ""
