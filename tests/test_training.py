"""The training loops: local seeds, a clear stop on divergence, progress that suits its output,
and the step budget with early stopping, on tiny data."""

from __future__ import annotations

import math

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


# --------------------------------------------------------------------------- step budget

VAE_1 = VAEConfig(latent_dim=2, channels=(4,))
CNN_1 = CNNConfig(channels=(4,), kernel_sizes=(3,), strides=(2,))


def images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(n),
                         dtype=torch.uint8)


@pytest.mark.parametrize("n", [20, 200])
def test_the_step_budget_does_not_depend_on_the_data_size(n):
    # 20 and 200 images (10x apart): both get exactly the 30 steps of the budget
    cfg = TrainConfig(steps=30, batch_size=4, val_fraction=0.0, progress=False)
    log = train_vae(images(n), VAE_1, cfg).training_log_
    per_epoch = math.floor(n / 4) if n > 4 else 1  # drop_last: full batches only
    assert log["steps"] == 30 and log["budget_steps"] == 30
    assert log["epochs"] == math.ceil(30 / per_epoch)  # 6 epochs of 5 steps vs 1 of 50
    assert not log["stopped_early"]


def test_epochs_still_give_an_epoch_budget_validated_each_epoch():
    # 20 images, 10% held out -> 18 for training, batches of 4 -> 4 full steps per epoch
    cfg = TrainConfig(epochs=3, batch_size=4, patience=100, progress=False)
    log = train_vae(images(20), VAE_1, cfg).training_log_
    assert (log["steps"], log["epochs"]) == (12, 3)
    assert [s for s, _ in log["validation"]] == [4, 8, 12]


def test_validation_every_ceil_budget_over_50_steps_and_early_stopping():
    # lr 0 (and a VAE: no batch-norm statistics move): the validation loss never improves,
    # so with patience 2 training stops at the third validation; ceil(200 / 50) = 4 steps
    # between validations -> step 12
    cfg = TrainConfig(steps=200, lr=0.0, batch_size=4, patience=2, progress=False)
    log = train_vae(images(20), VAE_1, cfg).training_log_
    assert [s for s, _ in log["validation"]] == [4, 8, 12]
    assert log["stopped_early"] and log["steps"] == 12 and log["best_step"] == 4


def test_classifier_gets_the_same_budget():
    y = torch.tensor([0] * 10 + [1] * 10)
    cfg = TrainConfig(steps=7, batch_size=4, val_fraction=0.0, progress=False)
    assert train_cnn(images(20), y, CNN_1, cfg).training_log_["steps"] == 7


def test_budget_settings_are_checked():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_vae(images(20), VAE_1, TrainConfig(steps=0, progress=False))
    with pytest.raises(ValueError, match="val_every must be >= 1"):
        train_vae(images(20), VAE_1, TrainConfig(steps=5, val_every=0, progress=False))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_vae(images(20), VAE_1, TrainConfig(epochs=0, progress=False))


def test_a_head_only_classifier_is_the_class_balanced_regression_on_frozen_features():
    """TrainConfig(head_only=True): the backbone keeps its weights; the logit difference is
    scikit-learn's class-balanced logistic regression on the standardised pooled features."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from spadecam.models import CNNConfig
    from spadecam.models.backbones import BACKBONES, backbone_name
    from spadecam.scoring import cnn_score
    from spadecam.training import local_rng

    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 16, 16, generator=g)
    x[20:, :, 4:10, 4:10] += 0.8
    y = torch.tensor([0] * 20 + [1] * 10)
    cfg = CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)).sized(1)
    train = TrainConfig(head_only=True, head_c=0.5, batch_size=7, seed=3)
    model = train_cnn(x.clamp(0, 1), y, cfg, train)
    with local_rng(3):
        fresh = BACKBONES[backbone_name(cfg)][0](cfg)
    for (k, v), (k2, v2) in zip(model.features.state_dict().items(),
                                fresh.features.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k  # the backbone untouched
    with torch.no_grad():
        feats = fresh.eval().forward_features(x.clamp(0, 1)).mean((2, 3)).double().numpy()
        diff = cnn_score(model(x.clamp(0, 1))).double().numpy()
    ref = make_pipeline(StandardScaler(), LogisticRegression(
        C=0.5, class_weight="balanced", max_iter=5000, random_state=3)).fit(feats, y.numpy())
    np.testing.assert_allclose(diff, ref.decision_function(feats), rtol=1e-4, atol=1e-4)
    assert model.training_log_["head_only"] is True
    with pytest.raises(ValueError, match="head_only needs normal and known-anomaly"):
        train_cnn(x.clamp(0, 1), torch.zeros(30, dtype=torch.long), cfg, train)
