"""The one table of defaults: what every detector, the CLI and the benchmarks use for an
argument left unset, per recipe ("spadecam", the default, or "paper").

:data:`RECIPE_DEFAULTS` holds the scoring and latent defaults; :func:`default_vae_config` and
:func:`default_cnn_config` build the networks a detector trains when given no configs.
"""

from __future__ import annotations

from typing import Any

from spadecam.models.cnn import CNNConfig
from spadecam.models.vae import VAEConfig

#: What the detectors use for arguments left at None, per ``recipe``. "paper": the paper's
#: architecture (128-d latent, 3-conv CNN with 3x3 kernels) and error |u - u_hat|.
#: "spadecam" (default): the settings that won on the validation splits of Noisy-MNIST and
#: ELPV (README, "Defaults"); the CNN's kernels come from the image size
#: (:func:`default_cnn_config`).
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "spadecam": {"latent_dim": 8, "error_smoothing": 2.0, "error_norm": "l2",
                 "roi_power": 1.0, "classifier_weight": 0.0},
    "paper": {"latent_dim": 128, "error_smoothing": 0.0, "error_norm": "l1",
              "roi_power": 1.0, "classifier_weight": 0.0},
}


def _check_recipe(recipe: Any) -> None:
    if recipe not in RECIPE_DEFAULTS:
        raise ValueError(f"recipe must be one of {sorted(RECIPE_DEFAULTS)}, got {recipe!r}")


def default_vae_config(recipe: str = "spadecam") -> VAEConfig:
    """The VAE a detector builds when given no ``vae_config`` (sized to the data in fit).

    Four stride-2 conv layers (paper, section III-B) and the recipe's latent dimension: 8 for
    "spadecam" (Noisy-MNIST: an oracle-ROI error reached AUROC 0.85 at 8-d vs 0.79 at 16-d;
    README), 128 for "paper".
    """
    _check_recipe(recipe)
    return VAEConfig(latent_dim=RECIPE_DEFAULTS[recipe]["latent_dim"])


def default_cnn_config(image_size: int | None = None, recipe: str = "spadecam") -> CNNConfig:
    """The classifier a detector builds when given no ``cnn_config``, for a model input side.

    "paper": three 3x3 stride-2 conv layers (32, 64, 64 channels). "spadecam": three
    stride-2 layers (32, 32, 64 channels) with odd kernels k chosen so the receptive field of
    the last layer, 1 + 7 (k - 1) pixels, is closest to a third of the image side (k in
    3..9): 5 at 84 px (29 px, the Noisy-MNIST recipe: CNN-based AUROC known 3 0.84 -> 0.91
    with 3 -> 5) and at 64 px, 3 at 32 px, 7 at 128 px. Grad-CAM reads the last layer, a
    grid of side / 8 cells.
    """
    _check_recipe(recipe)
    if recipe == "paper":
        return CNNConfig(channels=(32, 64, 64), kernel_sizes=(3, 3, 3), strides=(2, 2, 2))
    k = 5
    if image_size is not None:
        k = int(round((image_size / 3 - 1) / 7)) + 1
        k = min(9, max(3, k + (k % 2 == 0)))
    return CNNConfig(channels=(32, 32, 64), kernel_sizes=(k, k, k), strides=(2, 2, 2))
