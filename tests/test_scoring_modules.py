"""One scoring nn.Module per detector kind: forward(u, valid) -> (score, map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.error import reconstruction_error
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.scoring import CNNScorer, SPADEScorer, VAEScorer, scoring_context

S = 16


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(image_size=S, latent_dim=4, channels=(4, 8))).eval()
    cnn = ConvClassifier(CNNConfig(channels=(4, 8), kernel_sizes=(3, 3), strides=(2, 2)))
    cnn.train()(torch.rand(8, 1, S, S))  # BN statistics that are not the identity
    return vae, cnn.eval()


def _u(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, S, S, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("cls", "scorer_cls", "has_map"),
    [(SPADE, SPADEScorer, True), (NaiveSPADE, SPADEScorer, True),
     (VAEDetector, VAEScorer, True), (CNNDetector, CNNScorer, False)],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_each_detector_scores_through_its_module(models, cls, scorer_cls, has_map):
    vae, cnn = models
    args = {SPADE: (vae, cnn), NaiveSPADE: (vae, cnn), VAEDetector: (vae,),
            CNNDetector: (cnn,)}[cls]
    # the from-scratch recipe, no bank (random models)
    extra = {"knn_power": 0.0, "recipe": "spadecam"} if cls is SPADE else {}
    det = cls.from_models(*args, precision="32", error_smoothing=1.0, **extra) \
        if cls is not CNNDetector else cls.from_models(*args, precision="32")
    scorer = det.scorer()
    assert isinstance(scorer, nn.Module) and type(scorer) is scorer_cls
    u = _u()
    with scoring_context("32", scorer):
        score, m = scorer(u, torch.ones(5, 1, S, S))
    np.testing.assert_allclose(score.double().numpy(), det.decision_function(u.numpy()),
                               rtol=1e-6, atol=1e-7)
    if has_map:
        assert m.shape == (5, S, S)
        torch.testing.assert_close(m.sum(dim=(1, 2)), score)
        np.testing.assert_allclose(m.numpy(), det.anomaly_map(u.numpy()), rtol=1e-6, atol=1e-8)
    else:
        assert m is None


def test_vae_scorer_is_the_reconstruction_error(models):
    vae, _ = models
    u = _u()
    with scoring_context("32", vae):
        score, m = VAEScorer(vae, 2.0, "l2")(u)
        e = reconstruction_error(u, vae.reconstruct(u), 2.0, "l2").sum(1)
    torch.testing.assert_close(m, e)
    torch.testing.assert_close(score, e.sum(dim=(1, 2)))


def _count_classifier_passes(cnn: ConvClassifier) -> list:
    calls: list = []
    cnn.features[0].register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    return calls


def test_classifier_weight_costs_no_second_classifier_pass(models):
    # classifier_weight used to run cnn(u) again after the Grad-CAM forward of [u, u_hat]
    vae, cnn = models
    cnn = ConvClassifier(cnn.config)
    cnn.load_state_dict(models[1].state_dict())
    cnn.eval()
    calls = _count_classifier_passes(cnn)
    det = SPADE.from_models(vae, cnn, precision="32", classifier_weight=10.0, knn_power=0.0,
        recipe="spadecam")
    det.decision_function(_u(3).numpy())
    assert calls == [6]  # one pass of the 2N images u and u_hat


def test_classifier_weight_is_the_hand_formula(models):
    # e'(w) = e'(0) * (1 + w * p), p = softmax(cnn(u))[:, known anomaly]
    vae, cnn = models
    u = _u()
    with scoring_context("32", vae, cnn):
        u_hat = vae.reconstruct(u)
        plain = SPADEScorer(vae, cnn, error_smoothing=2.0, error_norm="l2").error_map(u, u_hat)
        weighted = SPADEScorer(vae, cnn, error_smoothing=2.0, error_norm="l2",
                               classifier_weight=3.0).error_map(u, u_hat)
        p = cnn(u).softmax(dim=1)[:, 1]
    torch.testing.assert_close(weighted, plain * (1 + 3.0 * p)[:, None, None], rtol=1e-5,
                               atol=1e-8)


def test_cached_maps_give_the_same_error_map(models):
    vae, cnn = models
    u = _u()
    scorer = SPADEScorer(vae, cnn, classifier_weight=2.0)
    with scoring_context("32", vae, cnn):
        u_hat = vae.reconstruct(u)
        cams = scorer.cams(u, u_hat)
        torch.testing.assert_close(scorer.error_map(u, u_hat, cams=cams),
                                   scorer.error_map(u, u_hat))
        # the (M(u), M(u_hat)) pair without logits: the classifier is run for p
        torch.testing.assert_close(scorer.error_map(u, u_hat, cams=cams[:2]),
                                   scorer.error_map(u, u_hat), rtol=1e-6, atol=1e-9)


def test_scorer_refuses_bad_roi_parameters(models):
    with pytest.raises(ValueError, match="roi_power must be > 0"):
        SPADEScorer(*models, roi_power=0.0)
    with pytest.raises(ValueError, match="only computes error_map"):
        SPADEScorer(None, models[1])(_u())
