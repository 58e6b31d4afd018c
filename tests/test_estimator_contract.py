"""The scikit-learn estimator contract, over all four detectors.

The constructor only stores its arguments; ``get_params`` / ``set_params`` expose them, so
``sklearn.base.clone`` works; every parameter is checked at the start of ``fit`` (and of
``from_models``), before any training: a bad value fails in milliseconds with its name, where
it used to fail after training (``error_norm="l3"`` 1.26 s into a 1.32 s fit,
``upsample="bilinearr"`` as a torch NotImplementedError, ``resize="crop"`` only at scoring).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

import spadecam.detectors.baselines as baselines
import spadecam.detectors.spade as spade_module
from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector

DETECTORS = [SPADE, NaiveSPADE, VAEDetector, CNNDetector]
#: A bad value for each parameter, and which detectors take it.
BAD = [
    ("error_norm", "l3", (SPADE, NaiveSPADE, VAEDetector)),
    ("error_smoothing", -1.0, (SPADE, NaiveSPADE, VAEDetector)),
    ("upsample", "bilinearr", (SPADE, NaiveSPADE)),
    ("input_branch", "square", (SPADE, NaiveSPADE)),
    ("cam_method", "backprop", (SPADE, NaiveSPADE)),
    ("cam_layer", "last", (SPADE, NaiveSPADE)),
    ("roi_power", 0.0, (SPADE, NaiveSPADE)),
    ("classifier_weight", -1.0, (SPADE, NaiveSPADE)),
    ("loss", "hinge", (SPADE, NaiveSPADE, CNNDetector)),
    ("resize", "crop", tuple(DETECTORS)),
    ("batch_size", 0, tuple(DETECTORS)),
    ("precision", "fp8", tuple(DETECTORS)),
    ("threshold_quantile", 1.5, tuple(DETECTORS)),
    ("threshold_holdout", 1.0, tuple(DETECTORS)),
    ("image_size", 0, tuple(DETECTORS)),
    ("recipe", "fast", tuple(DETECTORS)),
    ("vae_config", {"latent_dim": 4}, (SPADE, NaiveSPADE, VAEDetector)),
]


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (8, 16, 16), dtype=np.uint8), np.array([0] * 6 + [1] * 2)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("training started before the parameters were checked")

    for module in (baselines, spade_module):
        monkeypatch.setattr(module, "train_vae", refuse)
        monkeypatch.setattr(module, "train_cnn", refuse)


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_clone_gives_an_unfitted_copy_with_the_same_params(cls):
    det = cls(batch_size=7, threshold_quantile=0.95, resize="resize")
    copy = clone(det)
    assert copy is not det and type(copy) is cls
    assert copy.get_params() == det.get_params()
    assert copy.get_params()["batch_size"] == 7
    assert copy.set_params(batch_size=3) is copy and copy.batch_size == 3
    assert det.batch_size == 7  # the copy's params are its own
    with pytest.raises(ValueError, match="no_such_param"):
        copy.set_params(no_such_param=1)


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_constructor_stores_its_arguments_unchanged(cls):
    # no validation or conversion in __init__ (scikit-learn's rule): even a bad value is kept
    det = cls(batch_size=0, resize="crop")
    assert (det.batch_size, det.resize) == (0, "crop")


CASES = [(cls, name, value) for name, value, classes in BAD for cls in classes]


@pytest.mark.parametrize(("cls", "name", "value"), CASES,
                         ids=[f"{c.__name__}-{n}" for c, n, _ in CASES])
def test_a_bad_parameter_fails_before_any_training(cls, name, value, no_training):
    x, y = _data()
    with pytest.raises((ValueError, TypeError), match=f"{cls.__name__}: {name}"):
        cls(**{name: value}).fit(x, y)


def test_the_same_rules_as_a_model_directory():
    # the API and config.json's detector.params share one check: the message names the
    # owner where the file check names the file
    with pytest.raises(ValueError, match=r'SPADE: error_norm must be one of "l1", "l2" or '
                                         r'null, got "l3"'):
        SPADE(error_norm="l3", recipe="spadecam")._check_params()
    SPADE(cam_layer=(0, -1), batch_size=np.int64(4),
        recipe="spadecam")._check_params()  # Python forms accepted


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_documented_once(cls):
    # the shared ones come from one fragment (detectors._docs.COMMON_PARAMETERS_DOC); the
    # threshold_holdout entry said "0 (default)" after the default became 0.1
    import inspect

    doc = (SPADE if cls is NaiveSPADE else cls).__doc__
    assert "{common_parameters}" not in doc
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        entries = [line for line in doc.splitlines()
                   if line.startswith("    ") and not line.startswith("     ")
                   and name in [p.strip() for p in line.split(":")[0].split(",")]]
        assert len(entries) == 1, (name, entries)
    assert "Default 0.1" in doc and "0 (default)" not in doc


def test_every_parameter_reaches_its_own_attribute_through_the_subclass():
    """NaiveSPADE takes SPADE's parameters (the dataclass fields, keyword-only): each one,
    given alone with a value no other parameter has, lands on its own attribute, and none is
    taken by position (a positional call would misassign them after any reordering)."""
    import inspect

    from spadecam.detectors import SPADE, NaiveSPADE

    names = [p for p in inspect.signature(SPADE.__init__).parameters if p != "self"]
    assert names == [p for p in inspect.signature(NaiveSPADE.__init__).parameters
                     if p != "self"]
    for name in names:
        marker = object()
        det = NaiveSPADE(**{name: marker})
        assert getattr(det, name) is marker, name
        assert [k for k, v in det.get_params().items() if v is marker] == [name]


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.__name__)
def test_parameters_are_keyword_only(cls):
    import inspect

    kinds = {p.kind for name, p in inspect.signature(cls.__init__).parameters.items()
             if name != "self"}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}
    with pytest.raises(TypeError):
        cls(None)


@pytest.mark.parametrize("cls", [SPADE, CNNDetector], ids=lambda c: c.__name__)
def test_one_fit_builds_one_classifier_config_at_the_input_side(cls, monkeypatch):
    """fit builds the default classifier config once, for the side it trains at (its kernels
    follow the side), and trains that very config."""
    from spadecam.defaults import default_cnn_config
    from spadecam.training import TrainConfig

    module = spade_module if cls is SPADE else baselines
    calls, trained = [], []

    def counting(size=None, recipe="spadecam"):
        calls.append(size)
        return default_cnn_config(size, recipe)

    monkeypatch.setattr(module, "default_cnn_config", counting)
    real_train = module.train_cnn

    def keep(x, y, cfg, *a, **k):
        trained.append(cfg)
        return real_train(x, y, cfg, *a, **k)

    monkeypatch.setattr(module, "train_cnn", keep)
    x, y = _data()
    budget = TrainConfig(steps=2, progress=False)
    params = {"cnn_train": budget, "recipe": "spadecam", "threshold_holdout": 0.0}
    if cls is SPADE:
        params.update(vae_train=budget, knn_power=0.0)
    det = cls(**params).fit(x, y)
    assert calls == [16] and det.image_size_ == 16
    assert trained[0].kernel_sizes == default_cnn_config(16, "spadecam").kernel_sizes


def test_fitted_attributes_are_not_parameters_and_a_dataclass_subclass_works():
    """The detectors are dataclasses of their parameters only: asdict reads them on an
    unfitted detector, and a user's dataclass subclass adds a field, keeps the rest, and
    prints and compares before any fit."""
    import dataclasses

    assert dataclasses.asdict(SPADE(batch_size=3))["batch_size"] == 3
    assert "threshold_" not in {f.name for f in dataclasses.fields(SPADE)}

    @dataclasses.dataclass(kw_only=True)
    class Mine(SPADE):
        note: str = "mine"

    det = Mine(note="x", recipe="paper")
    assert "note='x'" in repr(det) and det == Mine(note="x", recipe="paper")
    assert clone(det).get_params()["note"] == "x"
