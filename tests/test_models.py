"""Tests for spadecam.models: ConvVAE shapes, negative ELBO (eq. 1), classifier loss (eq. 2),
CNN receptive field and config validation. Expected values are computed by formula here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spadecam.models import (
    CNNConfig,
    ConvClassifier,
    ConvVAE,
    VAEConfig,
    classifier_loss,
    negative_elbo,
)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# --------------------------------------------------------------------------- VAE shapes


@pytest.mark.parametrize("image_size", [84, 28, 27])
@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_vae_output_shapes(image_size, kernel_size):
    cfg = VAEConfig(
        image_size=image_size, latent_dim=6, channels=(4, 4, 4, 4), kernel_size=kernel_size
    )
    vae = ConvVAE(cfg).eval()
    u = torch.rand(2, 1, image_size, image_size)
    logits, mu, logvar = vae(u)
    assert logits.shape == (2, 1, image_size, image_size)
    assert mu.shape == logvar.shape == (2, 6)
    u_hat = vae.reconstruct(u)
    assert u_hat.shape == u.shape
    assert ((u_hat >= 0) & (u_hat <= 1)).all()
    torch.testing.assert_close(u_hat, torch.sigmoid(logits.detach()))


def test_vae_colour_and_two_layer_shapes():
    vae = ConvVAE(VAEConfig(in_channels=3, image_size=32, latent_dim=4, channels=(8, 8)))
    logits, mu, _ = vae(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 3, 32, 32) and mu.shape == (3, 4)


def test_vae_eval_is_deterministic_and_train_samples():
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(image_size=28, latent_dim=4, channels=(4, 4)))
    u = torch.rand(2, 1, 28, 28)
    vae.eval()
    a, _, _ = vae(u)
    b, _, _ = vae(u)
    assert torch.equal(a, b)
    vae.train()
    c, _, _ = vae(u)
    d, _, _ = vae(u)
    assert not torch.equal(c, d)  # reparameterised samples differ
    torch.testing.assert_close(vae(u, sample=False)[0], a)


def test_vae_image_too_small_raises():
    with pytest.raises(ValueError, match="too small"):
        ConvVAE(VAEConfig(image_size=2, channels=(4, 4, 4, 4)))


# --------------------------------------------------------------------------- negative ELBO


# Tiny case: batch of 2 images of shape 1x2x2, latent dimension 2.
LOGITS = [[0.5, -1.0, 2.0, 0.0], [-0.3, 1.2, 0.0, -2.5]]
TARGET = [[1.0, 0.0, 0.3, 0.8], [0.0, 1.0, 0.5, 0.1]]
MU = [[0.5, -1.0], [0.0, 0.2]]
LOGVAR = [[0.2, -0.4], [0.0, 1.0]]


def as_tensors():
    logits = torch.tensor(LOGITS, dtype=torch.float64).view(2, 1, 2, 2)
    u = torch.tensor(TARGET, dtype=torch.float64).view(2, 1, 2, 2)
    mu = torch.tensor(MU, dtype=torch.float64)
    return logits, u, mu, torch.tensor(LOGVAR, dtype=torch.float64)


def hand_bce() -> float:
    # -sum [u log s(l) + (1 - u) log(1 - s(l))] over all pixels of both images
    total = 0.0
    for ls, us in zip(LOGITS, TARGET):
        for logit, u in zip(ls, us):
            s = sigmoid(logit)
            total -= u * math.log(s) + (1 - u) * math.log(1 - s)
    return total


def hand_kl() -> float:
    # KL(N(mu, e^lv) || N(0, 1)) = 0.5 * sum (mu^2 + e^lv - 1 - lv)
    return sum(
        0.5 * (m * m + math.exp(lv) - 1.0 - lv)
        for ms, lvs in zip(MU, LOGVAR)
        for m, lv in zip(ms, lvs)
    )


def hand_squared_error() -> float:
    return sum(
        (sigmoid(logit) - u) ** 2 for ls, us in zip(LOGITS, TARGET) for logit, u in zip(ls, us)
    )


def test_negative_elbo_bernoulli_matches_formula():
    got = negative_elbo(*as_tensors(), likelihood="bernoulli")
    expected = (hand_bce() + hand_kl()) / 2  # averaged over the 2 images
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_negative_elbo_single_image_hand_numbers():
    # one image, logits 0 everywhere -> s = 1/2, BCE per pixel = log 2 whatever u is;
    # 4 pixels -> 4 log 2. mu = (1, 0), logvar = (0, 0) -> KL = 0.5 * (1 + 1 - 1 - 0) = 0.5
    logits = torch.zeros(1, 1, 2, 2)
    u = torch.tensor([[[[0.0, 1.0], [0.25, 0.9]]]])
    got = negative_elbo(logits, u, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2))
    assert float(got) == pytest.approx(4 * math.log(2) + 0.5, rel=1e-6)


def test_negative_elbo_gaussian_and_beta():
    var, beta = 0.05, 0.25
    got = negative_elbo(*as_tensors(), likelihood="gaussian", gaussian_var=var, beta=beta)
    expected = (hand_squared_error() / (2 * var) + beta * hand_kl()) / 2
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_kl_is_zero_for_standard_normal_posterior():
    logits, u, _, _ = as_tensors()
    zero = torch.zeros(2, 2, dtype=torch.float64)
    with_kl = negative_elbo(logits, u, zero, zero)
    assert float(with_kl) == pytest.approx(hand_bce() / 2, rel=1e-10)
    # and beta has no effect then
    assert float(negative_elbo(logits, u, zero, zero, beta=7.0)) == pytest.approx(
        float(with_kl), rel=1e-12
    )


def test_kl_is_positive_otherwise():
    logits, u, mu, logvar = as_tensors()
    zero = torch.zeros_like(mu)
    assert float(negative_elbo(logits, u, mu, logvar)) > float(negative_elbo(logits, u, zero, zero))


def test_negative_elbo_bad_likelihood():
    with pytest.raises(ValueError, match="likelihood"):
        negative_elbo(*as_tensors(), likelihood="poisson")


# --------------------------------------------------------------------------- classifier loss


def test_classifier_loss_eq2_matches_hand_computation():
    # image 1: logits (2, 0), normal (t = (1, 0)); softmax = (e^2, 1) / (e^2 + 1)
    #   t - f = (1 - p, -(1 - p)) with 1 - p = 1 / (e^2 + 1) -> norm sqrt(2) / (e^2 + 1)
    # image 2: logits (0.5, 1.5), anomaly (t = (0, 1)); softmax = (1, e) / (1 + e)
    #   t - f = (-1 / (1 + e), 1 / (1 + e)) -> norm sqrt(2) / (1 + e)
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    n1 = math.sqrt(2) / (math.exp(2) + 1)
    n2 = math.sqrt(2) / (1 + math.e)
    got = classifier_loss(logits, y, "eq2")
    assert float(got) == pytest.approx((n1 + n2) / 2, rel=1e-6)
    assert float(got) == pytest.approx(0.27445, abs=1e-4)  # (0.16857 + 0.38033) / 2


def test_classifier_loss_eq2_perfect_has_finite_gradient():
    logits = torch.tensor([[50.0, -50.0]], requires_grad=True)
    loss = classifier_loss(logits, torch.tensor([0]), "eq2")
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_classifier_loss_cross_entropy_matches_formula():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    # -log softmax of the true class: log(1 + e^-2) and log(1 + e^-1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert float(classifier_loss(logits, y, "cross_entropy")) == pytest.approx(expected, rel=1e-10)


def test_classifier_loss_bad_kind():
    with pytest.raises(ValueError, match="loss"):
        classifier_loss(torch.zeros(1, 2), torch.tensor([0]), "hinge")


# --------------------------------------------------------------------------- CNN


@pytest.mark.parametrize(
    "kernels,strides,expected",
    [
        ((3, 3, 3), (2, 2, 2), 15),  # 1 + 2*1 + 2*2 + 2*4
        ((3, 3), (1, 1), 5),
        ((5,), (3,), 5),
        ((3, 5, 3), (2, 1, 2), 15),  # 1 + 2*1 + 4*2 + 2*2
    ],
)
def test_receptive_field_formula(kernels, strides, expected):
    cfg = CNNConfig(channels=(1,) * len(kernels), kernel_sizes=kernels, strides=strides)
    assert cfg.receptive_field == expected


@pytest.mark.parametrize("kernels,strides", [((3, 3, 3), (2, 2, 2)), ((3, 5, 3), (2, 1, 2))])
def test_receptive_field_matches_gradient_support(kernels, strides):
    """Independent check: the input pixels reaching one central unit of the last block."""
    cfg = CNNConfig(
        channels=(1,) * len(kernels), kernel_sizes=kernels, strides=strides, batch_norm=False
    )
    model = ConvClassifier(cfg)
    with torch.no_grad():
        for block in model.features:
            block[0].weight.fill_(1.0)
            block[0].bias.fill_(0.0)
    x = (torch.rand(1, 1, 64, 64) + 0.1).requires_grad_(True)  # positive: every ReLU active
    a = model.forward_features(x, -1)
    h, w = a.shape[-2:]
    a[0, 0, h // 2, w // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(dim=0)).flatten()
    assert int(rows.max() - rows.min() + 1) == cfg.receptive_field
    assert int(cols.max() - cols.min() + 1) == cfg.receptive_field


def test_conv_classifier_shapes_and_head():
    model = ConvClassifier(CNNConfig(channels=(4, 6), kernel_sizes=(3, 3), strides=(2, 2))).eval()
    x = torch.rand(5, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 2)
    a = model.forward_features(x, -1)
    assert a.shape == (5, 6, 7, 7)
    # head = GAP then linear, written out
    torch.testing.assert_close(logits, a.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias)
    assert model.forward_features(x, 0).shape == (5, 4, 14, 14)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(channels=(8, 8), kernel_sizes=(3,), strides=(2, 2)),
        dict(channels=(8,), kernel_sizes=(3,), strides=(2, 2)),
        dict(channels=(), kernel_sizes=(), strides=()),
    ],
)
def test_cnn_config_validation(kwargs):
    with pytest.raises(ValueError, match="same non-zero length"):
        CNNConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(likelihood="laplace"), "likelihood"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(channels=()), "channels"),
    ],
)
def test_vae_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_configs_to_dict_round_trip():
    c = CNNConfig(channels=[4, 5], kernel_sizes=[3, 5], strides=[1, 2])
    assert CNNConfig(**c.to_dict()) == c
    assert c.to_dict()["channels"] == [4, 5]
    v = VAEConfig(channels=[4, 8], latent_dim=3)
    assert VAEConfig(**v.to_dict()) == v
    assert v.channels == (4, 8)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3"])
def test_a_zero_channel_or_size_is_refused_not_taken_for_unset(value):
    # `in_channels or 1` built a 1-channel VAE from VAEConfig(in_channels=0)
    from spadecam.models import ResNetConfig

    for make, name in ((lambda v: VAEConfig(in_channels=v), "in_channels"),
                       (lambda v: VAEConfig(image_size=v), "image_size"),
                       (lambda v: CNNConfig(in_channels=v), "in_channels"),
                       (lambda v: ResNetConfig(in_channels=v), "in_channels")):
        with pytest.raises(ValueError, match=f"{name} must be None or an integer >= 1"):
            make(value)
    # None (sized from the data) and numpy integers are fine
    assert VAEConfig(in_channels=np.int64(3), image_size=None).in_channels == 3


@pytest.mark.parametrize("bf16", [False, True])
def test_in_place_activations_give_the_same_values_and_gradients(monkeypatch, bf16):
    # the VAE's leaky ReLUs and the classifiers' ReLUs run in place (one
    # activation less to allocate and write per layer in training); the outputs and every
    # parameter's gradient must be those of out-of-place activations, bit for bit
    import torch.nn.functional as F

    from spadecam.models.resnet import ResNetClassifier, ResNetConfig

    torch.manual_seed(0)
    x = torch.rand(4, 1, 27, 27)
    vae = ConvVAE(VAEConfig(latent_dim=4, channels=(8, 8), image_size=27))
    cnn = ConvClassifier(CNNConfig(channels=(8, 8, 8)))
    resnet = ResNetClassifier(ResNetConfig(widths=(4, 8), blocks=(1, 1)))
    assert any(getattr(m, "inplace", False) for m in vae.modules())
    assert any(getattr(m, "inplace", False) for m in cnn.modules())
    params = [*vae.parameters(), *cnn.parameters(), *resnet.parameters()]

    def step() -> list[torch.Tensor]:
        for m in (vae, cnn, resnet):
            m.zero_grad()
        # bf16 autocast as in bf16-mixed training (the VAE's 27 px decoder takes the crop
        # path of _upsample there: an in-place activation on a view)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = vae(x, sample=False)
            loss = negative_elbo(logits.float(), x, mu.float(), logvar.float())
            ys = [c(x).float() for c in (cnn, resnet)]
        loss.backward()
        for y in ys:
            (y[:, 0] - 2 * y[:, 1]).sum().backward()
        return [logits.detach(), *(y.detach() for y in ys), *(p.grad.clone() for p in params)]

    got = step()
    relu, leaky = F.relu, F.leaky_relu
    monkeypatch.setattr(F, "relu", lambda h, inplace=False: relu(h))
    monkeypatch.setattr(F, "leaky_relu", lambda h, slope=0.01, inplace=False: leaky(h, slope))
    monkeypatch.setattr(torch, "relu_", torch.relu)
    want = step()
    assert len(got) == len(want) == 3 + len(params)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert all(g.abs().sum() > 0 for g in got[2:])  # every parameter gets a gradient
