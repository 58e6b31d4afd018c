"""`spadecam train` is a thin layer over SPADE(): the same detector from the same images.

The CLI once trained with a 0.1 threshold hold-out and batches of 32 while SPADE() held out
nothing and trained in batches of 128; both now read recipes.FIT_DEFAULTS. Given only the step
budget (so the test is quick) and the input side, the CLI's model directory and SPADE() fitted
on the same images in the same order give the same threshold and the same scores.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
from PIL import Image

from spadecam import SPADE
from spadecam.cli import _build_parser, main
from spadecam.defaults import default_cnn_train
from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS
from spadecam.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(rng: np.random.Generator, n: int, square: bool) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        x = np.clip(rng.normal(60, 20, (32, 32)), 0, 255).astype(np.uint8)
        if square:
            r, c = rng.integers(4, 20, 2)
            x[r : r + 8, c : c + 8] = 230
        out.append(x)
    return out


@pytest.mark.parametrize("recipe", [None, "spadecam"])
def test_cli_train_and_spade_fit_give_the_same_detector(tmp_path, recipe):
    """None: both defaults (the pretrained recipe: the head on the frozen ImageNet backbone,
    the feature-space error, the margin fusion); "spadecam": the from-scratch recipe."""
    rng = np.random.default_rng(0)
    normal, known = _images(rng, 24, False), _images(rng, 8, True)
    for name, imgs in (("good", normal), ("defect", known)):
        (tmp_path / name).mkdir()
        for i, x in enumerate(imgs):  # folder order = sorted names = list order
            Image.fromarray(x).save(tmp_path / name / f"{i:03d}.png")
    assert main(["train", "--normal", str(tmp_path / "good"), "--anomaly",
                 str(tmp_path / "defect"), "--out", str(tmp_path / "model"), "--image-size",
                 "32", "--steps", "3", "--no-progress",
                 *(["--recipe", recipe] if recipe else [])]) == 0
    cli = SPADE.load(tmp_path / "model")

    budget = TrainConfig(steps=3, progress=False)
    given = {"recipe": recipe} if recipe else {}
    head = default_cnn_train(recipe or "pretrained").head_only
    assert head is (recipe is None)
    api = SPADE(image_size=32, vae_train=budget,
                cnn_train=dataclasses.replace(budget, head_only=head), **given).fit(
        normal + known, np.r_[np.zeros(24), np.ones(8)].astype(int))
    assert api.recipe == (recipe or "pretrained")

    test = _images(np.random.default_rng(1), 4, False) + _images(np.random.default_rng(2), 4, True)
    assert cli.threshold_ == api.threshold_
    assert cli.threshold_source_ == api.threshold_source_ == "f1_max_held_out"
    np.testing.assert_array_equal(cli.decision_function(test), api.decision_function(test))
    for k in ("threshold_holdout", "threshold_quantile", "resize", "cam_layer", "precision",
              "recipe"):
        assert getattr(cli, k) == getattr(api, k), k
    for k in ("error_smoothing", "error_norm", "roi_power", "classifier_weight"):
        assert cli._param(k) == api._param(k), k  # saved resolved; the API's from the recipe


def _train_parser() -> argparse.ArgumentParser:
    sub = _build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    return sub.choices["train"]


def test_every_train_default_is_the_tables():
    defaults = {a.dest: a.default for a in _train_parser()._actions}
    for k in ("threshold_holdout", "threshold_quantile", "resize", "cam_layer", "batch_size",
              "seed", "lr"):
        assert defaults[k] == FIT_DEFAULTS[k], k
    # None: the recipe's, resolved by the detector exactly as SPADE() resolves it
    for k in ("latent_dim", "error_smoothing", "error_norm", "roi_power", "classifier_weight",
              "steps", "image_size", "backbone", "head_only"):
        assert defaults[k] is None, k
    # ... and resolved to the same values as the API's
    from spadecam.defaults import default_cnn_train
    from spadecam.recipes import fit_default
    from spadecam.workflow import build_detector

    for recipe in ("spadecam", "pretrained"):
        det = build_detector(recipe=recipe, progress=False)
        api = SPADE(recipe=recipe)
        assert det.image_size is None and api.image_size is None  # sized by fit's one rule
        assert det.vae_config is None and det.cnn_config is None  # the recipe's, as SPADE()'s
        for sizes in ([(300, 200)], [(40, 24), (30, 50)]):
            assert det.input_side(sizes) == api.input_side(sizes)
        assert det.cnn_train.head_only == default_cnn_train(recipe).head_only
    # the rule: the recipe's side ("pretrained": 224), else the longest side, at most 128
    assert SPADE().input_side([(300, 200)]) == fit_default("image_size", "pretrained") == 224
    assert SPADE(recipe="spadecam").input_side([(300, 200)]) == FIT_DEFAULTS["max_image_size"]
    assert SPADE(recipe="spadecam").input_side([(40, 24), (30, 50)]) == 50
    assert SPADE(recipe="paper", image_size=64).input_side([(300, 200)]) == 64
    assert TrainConfig().steps == FIT_DEFAULTS["steps"]
    assert TrainConfig().batch_size == FIT_DEFAULTS["batch_size"]
    assert SPADE(recipe="spadecam").threshold_holdout == FIT_DEFAULTS["threshold_holdout"]
    assert set(RECIPE_DEFAULTS) == {"spadecam", "paper", "pretrained"}


def test_cli_and_api_size_non_square_images_of_mixed_sizes_alike(tmp_path):
    """Folders of non-square images of different sizes and no --image-size: spadecam train and
    SPADE().fit on the same images train at the same side (the longest, 50 px) with the same
    kernels and letterbox, and give the same threshold and scores. Images thinner or smaller
    than the networks' minimum side (16 px) are taken by both, resized to that side."""
    rng = np.random.default_rng(3)
    shapes = [(40, 24), (30, 50), (10, 40), (36, 36), (20, 44), (8, 8), (48, 30), (26, 26)]

    def make(n: int, bright: bool) -> list[np.ndarray]:
        out = []
        for i in range(n):
            h, w = shapes[i % len(shapes)]
            x = np.clip(rng.normal(60, 20, (h, w)), 0, 255).astype(np.uint8)
            if bright:
                x[h // 4 : h // 4 + 6, w // 4 : w // 4 + 6] = 230
            out.append(x)
        return out

    normal, known = make(18, False), make(6, True)
    for name, imgs in (("good", normal), ("defect", known)):
        (tmp_path / name).mkdir()
        for i, x in enumerate(imgs):
            Image.fromarray(x).save(tmp_path / name / f"{i:03d}.png")
    assert main(["train", "--normal", str(tmp_path / "good"), "--anomaly",
                 str(tmp_path / "defect"), "--out", str(tmp_path / "model"), "--steps", "3",
                 "--recipe", "spadecam", "--no-progress"]) == 0
    cli = SPADE.load(tmp_path / "model")
    budget = TrainConfig(steps=3, progress=False)
    api = SPADE(recipe="spadecam", vae_train=budget, cnn_train=budget).fit(
        normal + known, np.r_[np.zeros(18), np.ones(6)].astype(int))
    assert cli.image_size_ == api.image_size_ == 50
    assert cli.cnn_.config.kernel_sizes == api.cnn_.config.kernel_sizes == (3, 3, 3)
    assert cli.vae_.config == api.vae_.config
    assert cli.threshold_ == api.threshold_
    test = make(6, False) + make(6, True)
    np.testing.assert_array_equal(cli.decision_function(test), api.decision_function(test))
