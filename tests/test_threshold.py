"""threshold_ from held-out data: F1-max with held-out anomalies, else a quantile of
held-out normal scores — and never a threshold that flags every image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spadecam import SPADE, VAEDetector
from spadecam.detectors import fit_threshold
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

SIZE = 28


pytestmark = pytest.mark.usefixtures("single_thread")


def data(n_normal: int, n_anomaly: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(10, 5, (n_normal + n_anomaly, SIZE, SIZE)), 0, 255).astype(np.uint8)
    for i in range(n_normal, n_normal + n_anomaly):
        r, c = rng.integers(2, SIZE - 10, size=2)
        x[i, r : r + 8, c : c + 8] = 230
    return x, np.r_[np.zeros(n_normal), np.ones(n_anomaly)].astype(np.int64)


TRAIN = TrainConfig(epochs=8, batch_size=8, lr=3e-3, progress=False, seed=3)
VAE = VAEConfig(image_size=SIZE, latent_dim=4, channels=(8, 8))
CNN = CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2))


def spade(**params) -> SPADE:
    return SPADE(vae_config=VAE, cnn_config=CNN, vae_train=TRAIN, cnn_train=TRAIN, **params)


# --------------------------------------------------------------------------- fit_threshold


def test_normal_only_uses_the_quantile_and_not_the_minimum():
    n = np.arange(100.0)
    assert fit_threshold(n) == pytest.approx(np.quantile(n, 0.99))
    assert fit_threshold(n, [], quantile=0.9) == pytest.approx(np.quantile(n, 0.9))
    two = np.array([1.0, 5.0])
    t = fit_threshold(two)
    assert t == pytest.approx(4.96) and t > two.min()  # linear interpolation, not the min


def test_separated_anomalies_give_the_midpoint_between_the_classes():
    t = fit_threshold([0.0, 1.0, 2.0], [5.0, 6.0])
    assert t == 3.5


def test_f1_max_matches_brute_force_and_never_flags_everything():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, a = rng.normal(0, 1, 30), rng.normal(0.7, 1, 10)
        t = fit_threshold(n, a)
        s = np.r_[n, a]
        y = np.r_[np.zeros(30), np.ones(10)]

        def f1(th, s=s, y=y):
            p = s > th
            tp = (p & (y == 1)).sum()
            return 2 * tp / (2 * tp + (p & (y == 0)).sum() + (~p & (y == 1)).sum())

        u = np.unique(s)
        best = max(f1(th) for th in (u[:-1] + u[1:]) / 2)
        assert f1(t) == pytest.approx(best)
        assert t > s.min()


def test_tied_scores_flag_nothing():
    assert fit_threshold([2.0, 2.0], [2.0]) == 2.0  # score > 2.0 is false for all


@pytest.mark.parametrize(
    "args, match",
    [(([],), "at least one normal"), (([1.0], None, 0.0), "threshold_quantile"),
     (([np.nan],), "finite"), (([1.0], [np.inf]), "finite")],
)
def test_fit_threshold_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fit_threshold(*args)


# --------------------------------------------------------------------------- in fit


def split(det, x, y):
    """(x_fit, y_fit, held-out normals, held-out anomalies) of the detector's threshold split."""
    xt, yt = torch.as_tensor(x)[:, None], torch.as_tensor(y)
    hold = det._threshold_split(yt)
    return xt[~hold], yt[~hold], xt[hold & (yt == 0)], xt[hold & (yt == 1)]


def test_spade_holdout_sets_threshold_by_f1_on_held_out_images():
    x, y = data(40, 12)
    det = spade(threshold_holdout=0.25).fit(x, y)
    assert det.threshold_source_ == "f1_max_held_out"
    xf, yf, xn, xa = split(det, x, y)
    assert (len(xn), len(xa), len(xf)) == (10, 3, 39)  # 25% of 40 normals and of 12 anomalies
    expected = fit_threshold(det.decision_function(xn), det.decision_function(xa))
    assert det.threshold_ == expected
    # the split is the training seed's: the same seed holds out the same images
    again = split(spade(threshold_holdout=0.25), x, y)
    assert torch.equal(again[2], xn) and torch.equal(again[3], xa)
    x_test, y_test = data(8, 8, seed=1)
    assert det.predict(x_test)[y_test == 1].all()


def test_normal_only_validation_uses_held_out_quantile():
    x, _ = data(30, 0)
    det = VAEDetector(VAE, TRAIN, threshold_holdout=0.2).fit(x)
    assert det.threshold_source_ == "quantile_held_out"
    _, _, xn, xa = split(det, x, np.zeros(30, dtype=np.int64))
    assert len(xn) == 6 and len(xa) == 0
    held = det.decision_function(xn)
    assert det.threshold_ == pytest.approx(np.quantile(held, 0.99))
    assert det.threshold_ > held.min()
    assert det.predict(xn).sum() <= 1  # not "everything is anomalous"


def test_single_known_anomaly_stays_in_training():
    x, y = data(20, 1)
    det = spade(threshold_holdout=0.1)
    _, yf, xn, xa = split(det, x, y)
    assert (yf == 1).sum() == 1 and len(xa) == 0 and len(xn) == 2


def test_holdout_needs_enough_normals_and_a_valid_fraction():
    x, y = data(2, 4)
    with pytest.raises(ValueError, match=r"threshold_holdout=0.1 needs at least 3 normal"):
        spade(threshold_holdout=0.1).fit(x, y)
    with pytest.raises(ValueError, match=r"threshold_holdout must be a finite number in \[0, 1\), got 1.0"):
        spade(threshold_holdout=1.0).fit(*data(10, 4))


def test_zero_holdout_keeps_the_training_quantile():
    x, y = data(20, 6)
    det = spade(threshold_holdout=0.0).fit(x, y)  # the default holds out 0.1 (issue 18)
    assert det.threshold_holdout == 0.0 and det.threshold_source_ == "quantile_train"
    assert det.threshold_ == pytest.approx(np.quantile(det.decision_function(x[y == 0]), 0.99))


def test_predict_counts_a_score_equal_to_the_threshold_as_normal():
    from spadecam.models import ConvClassifier, ConvVAE

    torch.manual_seed(0)
    det = SPADE.from_models(ConvVAE(VAE).eval(), ConvClassifier(CNN).eval(), knn_power=0.0)
    x, _ = data(4, 0)
    s = det.decision_function(x)
    det.threshold_ = float(s[0])  # exactly the first image's score
    expected = (s > s[0]).astype(int)
    assert det.predict(x)[0] == 0 and det.predict(x).tolist() == expected.tolist()
    det.threshold_ = float(np.nextafter(s[0], -np.inf))
    assert det.predict(x)[0] == 1
    det.threshold_ = float("nan")
    with pytest.raises(ValueError, match="threshold is NaN"):
        det.predict(x)


def test_a_quantile_of_few_held_out_normals_gives_a_warning():
    # 24 normals with threshold_holdout 0.1 hold out 2: their "99th percentile" is no such thing
    from spadecam._progress import SpadecamWarning

    x, _ = data(24, 0)
    with pytest.warns(SpadecamWarning, match=r"0.99 quantile of only 2 held-out normal score"):
        det = VAEDetector(VAE, TRAIN, threshold_holdout=0.1).fit(x)
    assert det.threshold_n_images_ == {"normal": 2, "anomaly": 0}
