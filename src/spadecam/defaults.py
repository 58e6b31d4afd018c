"""The networks and training settings a detector starts from when given none, per recipe:
built from the tables of :mod:`spadecam.recipes` (the latent dimension, the classifier's
kernels from the input side, the ImageNet backbone of "pretrained", the head-only training).
"""

from __future__ import annotations

from typing import Any

from spadecam.models.cnn import CNNConfig
from spadecam.models.efficientnet import EfficientNetLiteConfig
from spadecam.models.vae import VAEConfig
from spadecam.recipes import RECIPE_DEFAULTS, check_recipe, fit_default
from spadecam.training import TrainConfig

__all__ = ["default_cnn_config", "default_cnn_train", "default_vae_config", "starts_pretrained"]


def starts_pretrained(cnn_config: Any) -> bool:
    """Whether a classifier config starts from ImageNet weights: EfficientNet-Lite0's shipped
    ones (``pretrained``) or a ResNet's torchvision-format file (``weights``)."""
    return bool(getattr(cnn_config, "pretrained", False) or getattr(cnn_config, "weights", None))


def default_cnn_train(recipe: str = "spadecam", cnn_config: Any = None) -> TrainConfig:
    """The classifier's training when a detector is given no ``cnn_train``: ``TrainConfig()``
    with the recipe's settings (:data:`RECIPE_FIT`: "pretrained" fits the head alone, on a
    backbone that starts from ImageNet weights: ``cnn_config`` None (the recipe's) or one
    :func:`starts_pretrained` accepts; a from-scratch backbone is trained whole)."""
    check_recipe(recipe)
    head_only = fit_default("head_only", recipe) and (
        cnn_config is None or starts_pretrained(cnn_config))
    return TrainConfig(lr=fit_default("lr", recipe), steps=fit_default("steps", recipe),
                       head_only=head_only)


def default_vae_config(recipe: str = "spadecam") -> VAEConfig:
    """The VAE a detector builds when given no ``vae_config`` (sized to the data in fit).

    Four stride-2 conv layers (paper, section III-B) and the recipe's latent dimension: 8 for
    "spadecam" (Noisy-MNIST: an oracle-ROI error reached AUROC 0.85 at 8-d vs 0.79 at 16-d;
    README), 128 for "paper".
    """
    check_recipe(recipe)
    return VAEConfig(latent_dim=RECIPE_DEFAULTS[recipe]["latent_dim"])


def default_cnn_config(image_size: int | None = None, recipe: str = "spadecam") -> Any:
    """The classifier a detector builds when given no ``cnn_config``, for a model input side.

    "pretrained": EfficientNet-Lite0 from its ImageNet weights
    (:class:`~spadecam.models.efficientnet.EfficientNetLiteConfig`), any side.

    "paper": three 3x3 stride-2 conv layers (32, 64, 64 channels). "spadecam": three
    stride-2 layers (32, 32, 64 channels) with odd kernels k: the k whose receptive field of
    the last layer, 1 + 7 (k - 1) pixels, is closest to a third of the image side, raised to
    the next odd number when even (k in 3..9): 5 at 84 px (29 px, the Noisy-MNIST recipe:
    CNN-based AUROC known 3 0.84 -> 0.91 with 3 -> 5) and at 64 px, 3 at 32 and 48 px, 7 at
    128 px. Grad-CAM reads the last layer, a
    grid of side / 8 cells.
    """
    check_recipe(recipe)
    if recipe == "pretrained":
        return EfficientNetLiteConfig()
    if recipe == "paper":
        return CNNConfig(channels=(32, 64, 64), kernel_sizes=(3, 3, 3), strides=(2, 2, 2))
    k = 5
    if image_size is not None:
        k = int(round((image_size / 3 - 1) / 7)) + 1
        k = min(9, max(3, k + (k % 2 == 0)))
    return CNNConfig(channels=(32, 32, 64), kernel_sizes=(k, k, k), strides=(2, 2, 2))
