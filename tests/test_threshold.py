"""threshold_ from held-out data: F1-max with held-out anomalies, else a quantile of
held-out normal scores — and never a threshold that flags every image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spadecam import SPADE, VAEDetector
from spadecam._progress import SpadecamWarning
from spadecam.detectors import fit_threshold
from spadecam.models import CNNConfig, VAEConfig
from spadecam.threshold import choose_threshold
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
    return SPADE(vae_config=VAE, cnn_config=CNN, vae_train=TRAIN, cnn_train=TRAIN, **params,
        recipe="spadecam")


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
    # brute force: the F1-max cut (lowest of the best) among the cuts that flag no more normals
    # than the quantile, else the quantile; quantile 0.8 of 30 normals flags 6; anomalies
    # drawn high and low, so both branches are taken here
    rng = np.random.default_rng(0)
    rules = set()
    for k in range(40):
        n, a = rng.normal(0, 1, 30), rng.normal(0.7 if k % 2 else -3.0, 1, 10)
        choice = choose_threshold(n, a, quantile=0.8)
        t = choice.threshold
        s = np.r_[n, a]
        y = np.r_[np.zeros(30), np.ones(10)]

        def f1(th, s=s, y=y):
            p = s > th
            tp = (p & (y == 1)).sum()
            return 2 * tp / (2 * tp + (p & (y == 0)).sum() + (~p & (y == 1)).sum())

        u = np.unique(s)
        q = np.quantile(n, 0.8)
        cuts = [th for th in (u[:-1] + u[1:]) / 2 if (n > th).sum() <= (n > q).sum()]
        best = max(f1(th) for th in cuts)
        if best > 0:
            lowest_best = min(th for th in cuts if f1(th) == best)
            assert choice.rule == "f1_max" and t == pytest.approx(lowest_best)
        else:
            assert choice.rule == "quantile_f1_rejected" and t == q
        assert (n > t).sum() <= (n > q).sum()
        assert t > s.min()
        rules.add(choice.rule)
    assert rules == {"f1_max", "quantile_f1_rejected"}


def test_tied_scores_flag_nothing():
    with pytest.warns(SpadecamWarning, match="does not separate that kind of anomaly"):
        assert fit_threshold([2.0, 2.0], [2.0]) == 2.0  # score > 2.0 is false for all
    assert choose_threshold([2.0, 2.0], [2.0]).rule == "quantile_f1_rejected"


def test_anomalies_below_every_normal_keep_the_quantile_not_the_lowest_cut():
    # F1 is 0 at every cut; the old tie-break took the lowest cut, 0.75, flagging all 4 normals.
    # The 0.5 quantile of [1, 2, 3, 4] is 2.5 (flags 3 and 4).
    n, a = [1.0, 2.0, 3.0, 4.0], [0.5]
    choice = choose_threshold(n, a, quantile=0.5)
    assert choice.threshold == 2.5 and choice.rule == "quantile_f1_rejected"
    for text in ("(0.75, catching 0 of those anomalies)",
                 "no held-out known anomaly scores above the lowest held-out normal score "
                 "(F1 is 0 at every cut), so the detector does not separate that kind of anomaly",
                 "the F1-max cut would flag 4 of the 4 held-out normal images, the 0.5 quantile "
                 "of their scores 2", "It is that quantile instead (2.5, catching 0 of the 1)"):
        assert text in choice.warning, text
    with pytest.warns(SpadecamWarning, match=r"would flag 4 of the 4 held-out normal"):
        assert fit_threshold(n, a, quantile=0.5) == 2.5


def test_an_f1_max_cut_flagging_more_normals_than_the_quantile_gives_way():
    n = np.arange(10.0)  # 0..9; the 0.99 quantile is 8 + 0.91 * (9 - 8) = 8.91: flags 9 only
    # cuts: 7.25 F1 8/10 (flags 8, 9: two normals, not allowed); 8.25 6/8 (flags 9); 8.75
    # 4/7; 9.5 4/6 (no normal); 10.5 2/5: the best allowed cut is 8.25
    assert choose_threshold(n, [7.5, 8.5, 10.0, 11.0]) == (8.25, "f1_max", None)
    # no allowed cut catches an anomaly (the only one, 8.5, flags just the normal 9): the
    # quantile, and the warning names the unconstrained F1-max cut 7.25 (F1 4/6)
    choice = choose_threshold(n, [7.5, 8.0])
    assert choice.rule == "quantile_f1_rejected"
    assert choice.threshold == pytest.approx(8.91, abs=1e-12)
    assert ("it would flag 2 of the 10 held-out normal images, more than the 0.99 quantile "
            "of their scores flags (1)") in choice.warning
    assert "(7.25, catching 2 of those anomalies)" in choice.warning
    assert "catching 0 of the 2)" in choice.warning
    assert "does not separate" not in choice.warning  # some anomalies score above normals


def test_an_f1_max_cut_flagging_no_more_normals_than_the_quantile_is_kept():
    n = np.arange(10.0)  # the 0.99 quantile flags 1 normal (9)
    # >= 8.5: tp 3, fp 1 (9), F1 6/7, the best; the cut 8.25 flags as many normals: kept
    assert choose_threshold(n, [8.5, 9.5, 10.0]) == (8.25, "f1_max", None)
    assert choose_threshold([0.0, 1.0, 2.0], [5.0, 6.0]) == (3.5, "f1_max", None)
    # quantile 1 (the maximum) flags no normal: the cut 8.25 flagging one gives way to 9.25
    assert choose_threshold(n, [8.5, 9.5, 10.0], quantile=1.0) == (9.25, "f1_max", None)
    assert choose_threshold(n, None) == (pytest.approx(8.91, abs=1e-12), "quantile", None)


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
    det = VAEDetector(vae_config=VAE, vae_train=TRAIN, threshold_holdout=0.2).fit(x)
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
    det = spade(threshold_holdout=0.0).fit(x, y)  # the default holds out 0.1
    assert det.threshold_holdout == 0.0 and det.threshold_source_ == "quantile_train"
    assert det.threshold_ == pytest.approx(np.quantile(det.decision_function(x[y == 0]), 0.99))


def test_predict_counts_a_score_equal_to_the_threshold_as_normal():
    from spadecam.models import ConvClassifier, ConvVAE

    torch.manual_seed(0)
    det = SPADE.from_models(ConvVAE(VAE).eval(), ConvClassifier(CNN).eval(), knn_power=0.0, recipe="spadecam")
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
    x, _ = data(24, 0)
    with pytest.warns(SpadecamWarning, match=r"0.99 quantile of only 2 held-out normal score"):
        det = VAEDetector(vae_config=VAE, vae_train=TRAIN, threshold_holdout=0.1).fit(x)
    assert det.threshold_n_images_ == {"normal": 2, "anomaly": 0}


def test_the_few_normals_warning_is_true_for_a_low_quantile():
    # the median of 2 held-out normals is halfway between them, not "about their maximum"
    x, _ = data(24, 0)
    with pytest.warns(SpadecamWarning, match="quantile of only") as record:
        VAEDetector(vae_config=VAE, vae_train=TRAIN, threshold_holdout=0.1, threshold_quantile=0.5).fit(x)
    text = next(str(w.message) for w in record if "quantile of only" in str(w.message))
    assert "0.5 quantile of only 2 held-out normal" in text
    assert "maximum" not in text
    assert "rests on one or two of them (here between their largest and smallest)" in text


def test_the_few_normals_warning_says_which_scores_the_quantile_rests_on():
    from spadecam.threshold import few_normals_text

    # numpy's position q * (n - 1): 0.99 of 2 -> 0.99, between the two, nearly the larger
    assert "(here between their largest and smallest: about their maximum)" in (
        few_normals_text(2, 0.99))
    assert "(here exactly their 3rd largest)" in few_normals_text(5, 0.5)  # position 2
    assert "(here between their 5th largest and smallest)" in few_normals_text(6, 0.1)
    assert "(here their only score)" in few_normals_text(1, 0.99)
    for n, q in ((2, 0.5), (5, 0.5), (6, 0.1), (10, 0.95)):
        assert "maximum" not in few_normals_text(n, q), (n, q)


def test_printed_thresholds_and_scores_read_back_to_the_same_decisions():
    from spadecam.decision import format_score, format_threshold

    t = 0.171333755
    assert float(format_threshold(t)) == t and format_threshold(0.99) == "0.99"
    assert format_threshold(float("inf")) == "inf"
    assert format_score(0.17133376, t) == "0.171334"  # "0.17133" would read as below t
    assert format_score(0.17133505, 0.1713351) == "0.171335"  # "0.17134" would read as above
    assert format_score(0.5, t) == "0.5" and format_score(0.17133376, None) == "0.17133"
    s = float(np.float32(0.17133376))  # a float32 score; the threshold one float below it
    t = float(np.nextafter(s, -np.inf))
    assert float(format_score(s, t)) > float(format_threshold(t))


def test_threshold_story_names_each_source_and_no_unknown_one_as_a_quantile():
    from spadecam.threshold import describe_threshold as _threshold_story

    n = {"normal": 12, "anomaly": 3}
    assert _threshold_story("quantile_train", n, 0.99) == (
        "the 0.99 quantile of 12 training normal images' scores")
    assert _threshold_story("quantile_held_out_f1_rejected", n, 0.99).startswith(
        "the 0.99 quantile of 12 held-out normal images' scores, not the F1-max point on them "
        "and 3 held-out known-anomaly images")
    assert _threshold_story("a_later_rule", n, 0.99) == (
        "set by a rule this version does not know ('a_later_rule')")
