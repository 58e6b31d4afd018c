"""The Noisy-MNIST recipes: the demo's (``--quick``) training lengths."""

from __future__ import annotations

import pytest

from spadecam.bench.configs import noisy_mnist_benchmark
from spadecam.training import _split

#: Digits 0 in the MNIST training set (the demo trains its VAE on all of them).
MNIST_TRAIN_ZEROS = 5923


@pytest.mark.parametrize("name", ["spadecam", "paper"])
def test_quick_recipe_trains_short_in_small_batches(name):
    full, quick = noisy_mnist_benchmark(name), noisy_mnist_benchmark(name, quick=True)
    v, c = quick.vae_train, quick.cnn_train
    # chosen on the Noisy-MNIST validation split (recipes._quick's docstring)
    assert (v.epochs, v.batch_size, v.lr) == (4, 32, 2 * full.vae_train.lr)
    assert (c.epochs, c.batch_size, c.lr) == (2, 32, full.cnn_train.lr)
    assert v.schedule == full.vae_train.schedule and c.schedule == full.cnn_train.schedule
    assert (quick.n_train_normal, quick.n_train_known, quick.n_test) == (None, 2000, 2000)
    assert quick.name == name + "-quick"


def test_quick_recipe_step_counts_by_hand():
    """The demo's optimiser steps, as its log says them: VAE 664, each classifier 444.

    VAE: 5,923 zeros, 592 held out (10 %), 5,331 train: 5,331 // 32 = 166 steps per epoch,
    x 4 epochs = 664. Classifier: 5,923 zeros + 2,000 known = 7,923, 792 held out, 7,131
    train: 222 per epoch x 2 = 444.
    """
    q = noisy_mnist_benchmark("spadecam", quick=True)
    for cfg, n, steps in ((q.vae_train, MNIST_TRAIN_ZEROS, 664),
                          (q.cnn_train, MNIST_TRAIN_ZEROS + q.n_train_known, 444)):
        train, _ = _split(n, cfg)
        assert cfg.epochs * (len(train) // cfg.batch_size) == steps


def test_the_benchmarks_paper_recipes_score_spade_as_the_paper_does():
    """A benchmark recipe named "paper" scored SPADE with the detector's default recipe's
    classifier weight (10) and feature bank (power 1): its SPADE row was not Algorithm 1.
    Every paper recipe (Noisy-MNIST, its demo, ELPV) now reaches the detector as
    recipe="paper"."""
    from spadecam.bench.configs import elpv_benchmark, noisy_mnist_benchmark
    from spadecam.bench.runner import detector_params
    from spadecam.detectors import SPADE
    from spadecam.recipes import RECIPE_DEFAULTS

    for r in (noisy_mnist_benchmark("paper"), noisy_mnist_benchmark("paper", quick=True),
              elpv_benchmark("paper")):
        det = SPADE(**detector_params(r))
        for k in ("classifier_weight", "knn_power", "roi_power", "score"):
            assert det._param(k) == RECIPE_DEFAULTS["paper"][k], (r.name, k)
    det = SPADE(**detector_params(noisy_mnist_benchmark("spadecam")))
    assert det._param("classifier_weight") == RECIPE_DEFAULTS["spadecam"]["classifier_weight"]


def test_the_default_recipe_is_pretrained_and_fits_the_head_alone_on_imagenet_weights_only():
    """SPADE() and spadecam train default to the pretrained recipe; its head-only training
    applies to a backbone that starts from ImageNet weights, and a from-scratch classifier
    given with it is trained whole. The VAE-based baseline and Naive SPADE default to the
    from-scratch recipe (the pretrained one trains no VAE) and refuse the pretrained one."""
    import pytest

    from spadecam.defaults import default_cnn_train
    from spadecam.detectors import SPADE
    from spadecam.models import CNNConfig
    from spadecam.models.efficientnet import EfficientNetLiteConfig
    from spadecam.models.resnet import ResNetConfig
    from spadecam.workflow import build_detector, default_recipe

    assert SPADE().recipe == "pretrained" and SPADE()._param("score") == "margin"
    assert default_cnn_train("pretrained").head_only
    assert default_cnn_train("pretrained", EfficientNetLiteConfig()).head_only
    assert default_cnn_train("pretrained", ResNetConfig(weights="resnet18.pth")).head_only
    assert not default_cnn_train("pretrained", CNNConfig()).head_only
    assert not default_cnn_train("pretrained", EfficientNetLiteConfig(pretrained=False)).head_only
    assert not default_cnn_train("spadecam", EfficientNetLiteConfig()).head_only
    det = build_detector(progress=False)
    assert det.recipe == "pretrained" and det.cnn_train.head_only
    assert det.image_size is None and det.input_side([(300, 300)]) == 224  # fit's rule
    assert not build_detector(backbone="small", progress=False).cnn_train.head_only
    for kind in ("vae", "naive-spade"):
        assert default_recipe(kind) == "spadecam"
        assert build_detector(detector=kind, progress=False).recipe == "spadecam"
        with pytest.raises(ValueError, match="--recipe spadecam"):
            build_detector(detector=kind, recipe="pretrained", progress=False)
    assert build_detector(detector="cnn", progress=False).recipe == "pretrained"


def test_the_classifier_kernels_follow_the_documented_rule():
    """default_cnn_config's kernels at the sides docs/elpv.md and its docstring name: the
    receptive field 1 + 7 (k - 1) nearest a third of the side, raised to odd."""
    from spadecam.defaults import default_cnn_config

    want = {32: 3, 48: 3, 64: 5, 84: 5, 128: 7}
    assert {s: default_cnn_config(s).kernel_sizes[0] for s in want} == want
