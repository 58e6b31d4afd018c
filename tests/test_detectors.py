"""Contract tests for the four detectors (SPADE, NaiveSPADE, VAEDetector, CNNDetector).

Tiny models on tiny synthetic data: normal images are dark with faint noise, the known
anomaly is a bright square. Each detector is fitted once per module (cached) and refitted
once for the determinism test.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.detectors import NotFittedError
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

NAMES = ["spade", "naive_spade", "vae", "cnn"]
CLASSES = {"spade": SPADE, "naive_spade": NaiveSPADE, "vae": VAEDetector, "cnn": CNNDetector}
MAP_BASED = ["spade", "naive_spade", "vae"]
SIZE = 28


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- data and models


def normal_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.normal(10, 5, (n, SIZE, SIZE)), 0, 255).round().astype(np.uint8)


def square_images(rng: np.random.Generator, n: int) -> np.ndarray:
    x = normal_images(rng, n)
    for i in range(n):
        r, c = rng.integers(2, SIZE - 10, size=2)
        x[i, r : r + 8, c : c + 8] = 230
    return x


def make_split(seed: int, n_normal: int, n_anomalous: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([normal_images(rng, n_normal), square_images(rng, n_anomalous)])
    y = np.r_[np.zeros(n_normal), np.ones(n_anomalous)].astype(np.int64)
    return x, y


X_TRAIN, Y_TRAIN = make_split(0, 48, 16)  # 64 images
X_TEST, Y_TEST = make_split(1, 8, 8)  # held out, squares at new random places

TRAIN = TrainConfig(epochs=15, batch_size=8, lr=3e-3, progress=False, seed=0)
VAE_CFG = VAEConfig(image_size=SIZE, latent_dim=4, channels=(8, 8))
CNN_CFG = CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2))


def params(name: str, **extra) -> dict:
    # the paper's recipe: these tests write the paper's formulas out (e = |u - u_hat|)
    p: dict = {"recipe": "paper"}
    if name != "cnn":
        p.update(vae_config=VAE_CFG, vae_train=TRAIN)
    if name != "vae":
        p.update(cnn_config=CNN_CFG, cnn_train=TRAIN)
    p.update(extra)
    return p


def make(name: str, **extra):
    return CLASSES[name](**params(name, **extra))


_CACHE: dict = {}


def fitted(name: str):
    if name not in _CACHE:
        # exact fp32 scoring: the tests below compare with written-out fp32 formulas
        det = make(name, precision="32")
        out = det.fit(X_TRAIN, Y_TRAIN)
        assert out is det
        _CACHE[name] = det
    return _CACHE[name]


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("name", NAMES)
def test_constructor_only_stores_parameters(name):
    p = params(name, batch_size=17, threshold_quantile=0.95)
    det = CLASSES[name](**p)
    assert not [a for a in vars(det) if a.endswith("_")]
    sig = inspect.signature(CLASSES[name].__init__)
    for pname, par in sig.parameters.items():
        if pname == "self":
            continue
        expected = p.get(pname, par.default)
        assert getattr(det, pname) is expected or getattr(det, pname) == expected, pname


def test_naive_spade_defaults():
    det = NaiveSPADE()
    assert (det.input_branch, det.recon_branch, det.normalise) == ("relu", "none", False)
    det = SPADE(recipe="spadecam")
    assert (det.input_branch, det.recon_branch, det.normalise) == ("abs", "relu", True)


@pytest.mark.parametrize("name", NAMES)
def test_use_before_fit_raises_not_fitted(name):
    det = make(name)
    with pytest.raises(NotFittedError):
        det.decision_function(X_TEST)
    with pytest.raises(NotFittedError):
        det.predict(X_TEST)
    if name in MAP_BASED:
        with pytest.raises(NotFittedError):
            det.anomaly_map(X_TEST)


# --------------------------------------------------------------------------- fitted contract


@pytest.mark.parametrize("name", NAMES)
def test_fit_sets_threshold_from_normal_training_scores(name):
    # with no hold-out (the default holds out 0.1: test_default_fit_holds_out_a_tenth)
    det = make(name, precision="32", threshold_holdout=0.0).fit(X_TRAIN, Y_TRAIN)
    assert isinstance(det.threshold_, float)
    normal_scores = det.decision_function(X_TRAIN[Y_TRAIN == 0])
    assert det.threshold_ == pytest.approx(np.quantile(normal_scores, 0.99), rel=1e-6)
    if name != "cnn":
        assert not det.vae_.training
    if name != "vae":
        assert not det.cnn_.training


@pytest.mark.parametrize("name", NAMES)
def test_default_fit_holds_out_a_tenth_for_the_threshold(name):
    # the API's default is spadecam train's (recipes.FIT_DEFAULTS): 0.1 of the normal and of
    # the known-anomaly images held out, never trained on, setting the threshold; was 0.0
    det = fitted(name)
    assert det.threshold_holdout == 0.1
    assert det.threshold_n_images_ == {"normal": round(0.1 * 48), "anomaly": round(0.1 * 16)}
    # the F1-max cut on the held-out images, unless it flags more held-out normals than the
    # quantile does (then the quantile, and the source says so)
    assert det.threshold_source_ in ("f1_max_held_out", "quantile_held_out_f1_rejected")
    from spadecam.threshold import choose_threshold

    hold = det._threshold_split(torch.as_tensor(Y_TRAIN)).numpy()
    normal = det.decision_function(X_TRAIN[hold & (Y_TRAIN == 0)])
    anomaly = det.decision_function(X_TRAIN[hold & (Y_TRAIN == 1)])
    choice = choose_threshold(normal, anomaly, det.threshold_quantile)
    assert det.threshold_ == pytest.approx(choice.threshold, rel=1e-6)
    assert det.threshold_source_ == {"f1_max": "f1_max_held_out",
                                     "quantile_f1_rejected": "quantile_held_out_f1_rejected"
                                     }[choice.rule]


@pytest.mark.parametrize("name", NAMES)
def test_decision_function_shape_dtype_finite(name):
    s = fitted(name).decision_function(X_TEST)
    assert s.shape == (len(X_TEST),)
    assert s.dtype == np.float64
    assert np.isfinite(s).all()


@pytest.mark.parametrize("name", NAMES)
def test_input_forms_give_same_scores(name):
    det = fitted(name)
    ref = det.decision_function(X_TEST)  # uint8 (N, H, W)
    x_float = (X_TEST.astype(np.float32) / 255.0)[:, None]  # float (N, 1, H, W) in [0, 1]
    forms = {
        "float32 (N,1,H,W)": x_float,
        "float64 (N,H,W)": X_TEST.astype(np.float64) / 255.0,
        "uint8 tensor (N,1,H,W)": torch.from_numpy(X_TEST)[:, None],
        "DataLoader float": DataLoader(TensorDataset(torch.from_numpy(x_float)), batch_size=5),
        "DataLoader uint8": DataLoader(TensorDataset(torch.from_numpy(X_TEST)), batch_size=3),
        "generator of arrays": (X_TEST[i : i + 4] for i in range(0, len(X_TEST), 4)),
    }
    for label, x in forms.items():
        s = det.decision_function(x)
        assert s.shape == ref.shape and s.dtype == np.float64, label
        np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6, err_msg=label)


@pytest.mark.parametrize("name", NAMES)
def test_scores_do_not_depend_on_batch_size(name):
    det = fitted(name)
    models = {k: getattr(det, k) for k in ("vae_", "cnn_") if hasattr(det, k)}
    small = CLASSES[name].from_models(
        *[models[k] for k in ("vae_", "cnn_") if k in models], batch_size=3, precision="32",
        recipe="paper",
    )
    np.testing.assert_allclose(
        small.decision_function(X_TEST), det.decision_function(X_TEST), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", MAP_BASED)
def test_anomaly_map_shape_and_sum(name):
    det = fitted(name)
    maps = det.anomaly_map(X_TEST)
    assert maps.shape == (len(X_TEST), SIZE, SIZE)
    assert (maps >= 0).all()
    np.testing.assert_allclose(
        maps.astype(np.float64).sum(axis=(1, 2)), det.decision_function(X_TEST), rtol=1e-5
    )


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_thresholded_decision_function(name):
    det = fitted(name)
    pred = det.predict(X_TEST)
    assert pred.shape == (len(X_TEST),)
    assert np.issubdtype(pred.dtype, np.integer)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (det.decision_function(X_TEST) > det.threshold_))


# --------------------------------------------------------------------------- scores by formula


def reference_maps(det, x_uint8: np.ndarray, naive: bool) -> np.ndarray:
    """e * L / |L| (or e * ReLU(M(u)) for Naive SPADE) written out from the fitted models."""
    u = torch.from_numpy(x_uint8).float().div(255.0)[:, None]
    vae, cnn = det.vae_, det.cnn_
    with torch.no_grad():
        u_hat = torch.sigmoid(vae.decode_logits(vae.encode(u)[0]))  # posterior mean

        def cam(x):  # eq. 3-4 with the GAP + linear head: alpha_k = w_0k / Z
            a = cnn.forward_features(x, -1)
            return torch.einsum("nkhw,k->nhw", a, cnn.fc.weight[0]) / (a.shape[2] * a.shape[3])

        if naive:
            roi = cam(u).clamp(min=0)
        else:
            roi = cam(u).abs() + cam(u_hat).clamp(min=0)  # eq. 5
        roi = F.interpolate(roi[:, None], size=u.shape[-2:], mode="bilinear", align_corners=False)[
            :, 0
        ]
        if not naive:
            roi = roi / roi.sum(dim=(1, 2), keepdim=True)
        e = (u - u_hat).abs().sum(dim=1)
        return (e * roi).numpy()


@pytest.mark.parametrize("name", ["spade", "naive_spade"])
def test_spade_maps_match_written_out_formula(name):
    det = fitted(name)
    expected = reference_maps(det, X_TEST, naive=name == "naive_spade")
    got = det.anomaly_map(X_TEST)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    if name == "spade":  # weighted mean of the error: weights sum to one
        e = det.anomaly_map(X_TEST).sum(axis=(1, 2))
        u = X_TEST.astype(np.float32) / 255.0
        u_hat = det.vae_.reconstruct(torch.from_numpy(u)[:, None]).numpy()[:, 0]
        err = np.abs(u - u_hat)
        assert (e <= err.max(axis=(1, 2)) + 1e-6).all()
        assert (e >= err.min(axis=(1, 2)) - 1e-6).all()


def test_vae_map_is_reconstruction_error():
    det = fitted("vae")
    u = torch.from_numpy(X_TEST).float().div(255.0)[:, None]
    with torch.no_grad():
        expected = (u - torch.sigmoid(det.vae_(u, sample=False)[0])).abs()[:, 0].numpy()
    np.testing.assert_allclose(det.anomaly_map(X_TEST), expected, rtol=1e-5, atol=1e-6)


def test_cnn_score_is_anomaly_log_odds():
    det = fitted("cnn")
    u = torch.from_numpy(X_TEST).float().div(255.0)[:, None]
    with torch.no_grad():
        p = det.cnn_(u).softmax(dim=1).double().numpy()
    np.testing.assert_allclose(
        det.decision_function(X_TEST), np.log(p[:, 1] / p[:, 0]), rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("name", ["spade", "vae", "cnn"])
def test_bright_square_scores_above_normal(name):
    det = fitted(name)
    s = det.decision_function(X_TEST)
    assert s[Y_TEST == 1].min() > s[Y_TEST == 0].max(), (s[Y_TEST == 0], s[Y_TEST == 1])
    # and the fitted threshold flags every held-out square
    assert det.predict(X_TEST)[Y_TEST == 1].all()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_scores(name):
    again = make(name, precision="32").fit(X_TRAIN, Y_TRAIN)
    np.testing.assert_array_equal(
        again.decision_function(X_TEST), fitted(name).decision_function(X_TEST)
    )
    assert again.threshold_ == fitted(name).threshold_


def test_other_seed_other_scores():
    train = TrainConfig(epochs=2, batch_size=8, lr=3e-3, progress=False)
    a = VAEDetector(vae_config=VAE_CFG, vae_train=train).fit(X_TRAIN[:16])
    other = TrainConfig(**{**train.to_dict(), "seed": 1})
    b = VAEDetector(vae_config=VAE_CFG, vae_train=other).fit(X_TRAIN[:16])
    assert not np.array_equal(a.decision_function(X_TEST), b.decision_function(X_TEST))


def test_vae_fit_accepts_float_images_like_uint8():
    train = TrainConfig(epochs=2, batch_size=8, lr=3e-3, progress=False)
    a = VAEDetector(vae_config=VAE_CFG, vae_train=train).fit(X_TRAIN[:16])
    b = VAEDetector(vae_config=VAE_CFG, vae_train=train).fit(
        (X_TRAIN[:16].astype(np.float32) / 255)[:, None])
    np.testing.assert_allclose(a.decision_function(X_TEST), b.decision_function(X_TEST), rtol=1e-5)


def test_from_models_scores_like_fitted_and_needs_threshold_for_predict():
    det = fitted("spade")
    wrapped = SPADE.from_models(det.vae_, det.cnn_, precision=det.precision, recipe="paper")
    np.testing.assert_allclose(
        wrapped.decision_function(X_TEST), det.decision_function(X_TEST), rtol=1e-6
    )
    with pytest.raises(NotFittedError):
        wrapped.predict(X_TEST)


def test_bf16_scoring_keeps_the_obvious_order():
    det = fitted("spade")
    s = SPADE.from_models(det.vae_, det.cnn_, precision="bf16", knn_power=0.0,
        recipe="spadecam").decision_function(X_TEST)
    assert s.dtype == np.float64 and np.isfinite(s).all()
    assert s[Y_TEST == 1].min() > s[Y_TEST == 0].max()
    with pytest.raises(ValueError, match="precision"):
        SPADE.from_models(det.vae_, det.cnn_, precision="16", knn_power=0.0,
            recipe="spadecam").decision_function(X_TEST)


# --------------------------------------------------------------------------- bad input


BAD_X = {
    "float above 1": X_TRAIN.astype(np.float32),  # 0-255 floats
    "negative float": -(X_TRAIN.astype(np.float32) / 255.0),
    "NaN": np.full((4, SIZE, SIZE), np.nan, dtype=np.float32),
    "1-D": np.zeros(64, dtype=np.uint8),
    "5-D": np.zeros((64, 1, 1, SIZE, SIZE), dtype=np.uint8),
    "int64": X_TRAIN.astype(np.int64),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(BAD_X))
def test_fit_rejects_bad_images(name, case):
    x = BAD_X[case]
    y = np.zeros(len(x), dtype=np.int64)
    y[: len(x) // 2] = 1
    with pytest.raises(ValueError, match=r"\bX\b"):
        make(name).fit(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_fit_rejects_bad_labels(name):
    bad = Y_TRAIN.copy()
    bad[0] = 2
    with pytest.raises(ValueError, match=r"\by\b"):
        make(name).fit(X_TRAIN, bad)
    with pytest.raises(ValueError, match=r"\by\b"):
        make(name).fit(X_TRAIN, Y_TRAIN[:-1])  # one label short
    with pytest.raises(ValueError, match=r"\by\b"):
        make(name).fit(X_TRAIN, -Y_TRAIN)


@pytest.mark.parametrize("name", ["spade", "cnn"])
def test_fit_rejects_fractional_labels(name):
    bad = Y_TRAIN.astype(np.float64)
    bad[:4] = 0.5
    with pytest.raises(ValueError, match=r"\by\b"):
        quick = TrainConfig(epochs=1, progress=False)
        make(name, cnn_train=quick, **({"vae_train": quick} if name == "spade" else {})).fit(
            X_TRAIN, bad
        )


@pytest.mark.parametrize("name", ["spade", "naive_spade", "cnn"])
def test_supervised_fit_needs_known_anomalies(name):
    with pytest.raises(ValueError, match=r"y == 1"):
        make(name).fit(X_TRAIN, np.zeros(len(X_TRAIN), dtype=np.int64))
    with pytest.raises(ValueError, match=r"y == 1"):
        make(name).fit(X_TRAIN[Y_TRAIN == 0], np.zeros(48))


def test_vae_fit_needs_normal_images():
    with pytest.raises(ValueError, match=r"y == 0"):
        make("vae").fit(X_TRAIN, np.ones(len(X_TRAIN), dtype=np.int64))


@pytest.mark.parametrize("name", NAMES)
def test_decision_function_rejects_bad_images(name):
    det = fitted(name)
    with pytest.raises(ValueError, match=r"\bX\b"):
        det.decision_function(X_TEST.astype(np.float32))
    with pytest.raises(ValueError, match=r"\bX\b"):
        det.decision_function(X_TEST[0, 0])
    loader = DataLoader(TensorDataset(torch.from_numpy(X_TEST).float()), batch_size=4)
    with pytest.raises(ValueError, match=r"X batch 0"):
        det.decision_function(loader)
    with pytest.raises(ValueError, match=r"\bX\b"):
        det.decision_function(3.0)


def test_spade_with_intermediate_cam_layer():
    det = fitted("spade")
    wrapped = SPADE.from_models(det.vae_, det.cnn_, cam_layer=0, knn_power=0.0, recipe="spadecam")
    maps = wrapped.anomaly_map(X_TEST)
    assert maps.shape == (len(X_TEST), SIZE, SIZE) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), wrapped.decision_function(X_TEST), rtol=1e-5)


# --------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize(
    "vae_config, lr_vae, lr_cnn, model",
    # the paper's default VAE at lr 1e4 (the example); a classifier at lr 1e30
    [(None, 1e4, 3e-3, "VAE"), (VAE_CFG, 3e-3, 1e30, "classifier")],
)
def test_divergent_training_stops_with_a_clear_error_and_stays_unfitted(
    vae_config, lr_vae, lr_cnn, model
):
    from spadecam.training import TrainingDivergedError

    small = dict(epochs=3, batch_size=8, progress=False, seed=0)
    det = SPADE(vae_config=vae_config, cnn_config=CNN_CFG,
                vae_train=TrainConfig(lr=lr_vae, **small),
                cnn_train=TrainConfig(lr=lr_cnn, **small), recipe="spadecam")
    x = np.concatenate([X_TRAIN[:24], X_TRAIN[-8:]])  # 32 tiny images: 24 normal, 8 squares
    y = np.r_[np.zeros(24), np.ones(8)].astype(np.int64)
    with pytest.raises(TrainingDivergedError, match=rf"^{model} training diverged") as exc:
        det.fit(x, y)
    message = str(exc.value)
    assert "epoch" in message and "lower learning rate" in message and "[0, 1]" in message
    # not half-fitted: the VAE that trained before the classifier diverged is not kept
    assert not [k for k in vars(det) if k.endswith("_")]
    with pytest.raises(NotFittedError):
        det.decision_function(X_TEST)


def test_a_failed_refit_keeps_the_previous_fit():
    from spadecam.training import TrainingDivergedError

    det = fitted("spade")
    before = det.decision_function(X_TEST)
    vae, cnn, t = det.vae_, det.cnn_, det.threshold_
    det.cnn_train = TrainConfig(epochs=3, batch_size=8, progress=False, lr=1e30)
    try:
        with pytest.raises(TrainingDivergedError, match="classifier"):
            det.fit(X_TRAIN, Y_TRAIN)
    finally:
        det.cnn_train = TRAIN
    assert det.vae_ is vae and det.cnn_ is cnn and det.threshold_ == t
    np.testing.assert_array_equal(det.decision_function(X_TEST), before)


def test_non_finite_weights_give_an_error_naming_the_images_not_nan_scores():
    from spadecam.detectors import NonFiniteScoreError

    det = fitted("spade")
    vae = type(det.vae_)(det.vae_.config)
    vae.load_state_dict(det.vae_.state_dict())
    with torch.no_grad():
        next(vae.parameters()).fill_(float("nan"))
    broken = SPADE.from_models(vae, det.cnn_, knn_power=0.0, recipe="spadecam")
    broken.threshold_ = det.threshold_
    for call in (broken.decision_function, broken.anomaly_map, broken.predict):
        with pytest.raises(NonFiniteScoreError, match=r"non-finite scores for 16 image\(s\)"):
            call(X_TEST)


# --------------------------------------------------------------------------- no side effects


def rng_states():
    import random

    return torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def assert_same_rng(before, after):
    assert torch.equal(before[0], after[0]), "torch's global RNG was changed"
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]


@pytest.mark.parametrize("name", NAMES)
def test_fit_and_scoring_leave_the_callers_rng_untouched(name):
    # fit used to re-seed torch's global RNG: torch.rand after it was the same for any caller
    short = TrainConfig(epochs=2, batch_size=8, lr=3e-3, progress=False, seed=0)
    extra = {k: short for k in ("vae_train", "cnn_train") if k in params(name)}
    torch.manual_seed(1234)
    before = rng_states()
    det = make(name, threshold_holdout=0.25, **extra).fit(X_TRAIN, Y_TRAIN)
    det.decision_function(X_TEST)
    det.predict(X_TEST)
    if name in MAP_BASED:
        det.anomaly_map(X_TEST)
    assert_same_rng(before, rng_states())
    # and the seed alone sets the numbers: the caller's RNG state does not enter them
    torch.manual_seed(99)
    again = make(name, threshold_holdout=0.25, **extra).fit(X_TRAIN, Y_TRAIN)
    np.testing.assert_array_equal(again.decision_function(X_TEST), det.decision_function(X_TEST))


def _copies_of_networks(det):
    """Fresh VAE and CNN with ``det``'s weights: the caller's own networks in these tests."""
    vae = type(det.vae_)(det.vae_.config)
    cnn = type(det.cnn_)(det.cnn_.config)
    vae.load_state_dict(det.vae_.state_dict())
    cnn.load_state_dict(det.cnn_.state_dict())
    return vae, cnn


def test_from_models_leaves_the_callers_models_in_their_mode():
    # from_models used to call .eval() on the caller's networks: training them further after
    # scoring silently ran batch norm in eval mode
    det = fitted("spade")
    vae, cnn = _copies_of_networks(det)
    vae.train(), cnn.train()
    wrapped = SPADE.from_models(vae, cnn, precision=det.precision, recipe="paper")
    scores = wrapped.decision_function(X_TEST)
    wrapped.anomaly_map(X_TEST)
    CNNDetector.from_models(cnn).decision_function(X_TEST)
    assert vae.training and cnn.training
    assert all(m.training for m in cnn.modules())
    # scored in eval mode all the same: batch norm with its running statistics
    np.testing.assert_allclose(scores, det.decision_function(X_TEST), rtol=1e-6)


def test_scoring_restores_every_submodules_own_mode():
    # Module.train(flag) sets every submodule: restoring only the top-level flag used to
    # reset an encoder in train mode inside an eval VAE, and a frozen (eval) batch norm
    # inside a training classifier
    det = fitted("spade")
    vae, cnn = _copies_of_networks(det)
    vae.eval()
    encoder = next(m for m in vae.children() if len(list(m.children())) > 0)
    encoder.train()
    cnn.train()
    frozen = [m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen, "the test needs a batch norm in the classifier"
    frozen[0].eval()
    before = {name: m.training for name, m in [*vae.named_modules(prefix="vae"),
                                               *cnn.named_modules(prefix="cnn")]}
    spade = SPADE.from_models(vae, cnn, precision="32", recipe="paper")
    scores = spade.decision_function(X_TEST)
    spade.anomaly_map(X_TEST)
    spade.decision_function_and_map(X_TEST)
    NaiveSPADE.from_models(vae, cnn, precision="32", recipe="paper").decision_function(X_TEST)
    VAEDetector.from_models(vae, precision="32", recipe="paper").decision_function(X_TEST)
    CNNDetector.from_models(cnn, precision="32").decision_function(X_TEST)
    from spadecam.cam import grad_cam

    grad_cam(cnn, torch.rand(2, 1, SIZE, SIZE), method="autograd")
    grad_cam(cnn, torch.rand(2, 1, SIZE, SIZE), method="closed_form")
    after = {name: m.training for name, m in [*vae.named_modules(prefix="vae"),
                                              *cnn.named_modules(prefix="cnn")]}
    assert after == before
    # scored in eval mode all the same
    np.testing.assert_allclose(scores, det.decision_function(X_TEST), rtol=1e-6)
