"""The one table of defaults: what every detector, the CLI and the benchmarks use for an
argument left unset, per recipe ("pretrained", the default, "spadecam" or "paper").

:data:`RECIPE_DEFAULTS` holds the scoring and latent defaults, :data:`RECIPE_FIT` and
:data:`FIT_DEFAULTS` the fitting ones. Plain data: this module imports nothing of spadecam,
torch or numpy (the CLI reads it to build its options; ``spadecam --help`` starts in about
0.1 s). The networks a detector builds from these tables are :mod:`spadecam.defaults`'; the
benchmarks' settings of each recipe are :mod:`spadecam.bench.configs`'.
"""

from __future__ import annotations

from typing import Any

#: What the detectors use for arguments left at None, per ``recipe``. "paper": the paper's
#: architecture (128-d latent, 3-conv CNN with 3x3 kernels) and error |u - u_hat|.
#: "spadecam" (default): the Noisy-MNIST recipe's latent and error, chosen on seed-0 TEST
#: numbers of Noisy-MNIST (docs/noisy-mnist.md says so next to the table; ELPV's validation
#: split preferred latent 16, which the ELPV recipe uses), the paper's ROI, and the classifier
#: weight 10 that makes the known kind count and the feature bank's distance (both chosen on
#: the validation splits of both); the
#: CNN's kernels come from the image size (:func:`spadecam.defaults.default_cnn_config`). docs/elpv.md,
#: "Defaults and how they were chosen".
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    # classifier_weight 10: e' x (1 + 10 p(known anomaly)), chosen on both validation splits
    # (benchmarks/validate_scores.py): Noisy-MNIST's, full recipe, known 3 / 9, SPADE 0.861 /
    # 0.864 at 0 -> 0.955 / 0.974 at 10 (30: 0.957 / 0.972); ELPV's, unseen_type/all 0.693 ->
    # 0.766 (48 px) and 0.688 -> 0.780 (64 px), the unknown kind (poly) 0.742 -> 0.730 and
    # 0.762 -> 0.758
    # knn_power 1 (the feature bank's distance d at the last block, e' x d): chosen on both
    # validation splits (benchmarks/validate_scores.py): Noisy-MNIST known 3 / 9
    # 0.955 / 0.974 with and without (powers 2 and 4 lose 0.006-0.045); ELPV seeds 0-2
    # few_labels_10 / few_labels_50 / unseen_type 0.724 / 0.732 / 0.781 -> 0.785 / 0.788 / 0.812
    "spadecam": {"latent_dim": 8, "error_smoothing": 2.0, "error_norm": "l2",
                 "roi_power": 1.0, "classifier_weight": 10.0, "knn_power": 1.0,
                 "error": "reconstruction", "score": "weighted_error",
                 "evidence_weight": 1.0, "evidence_margin": 3.0, "patch_stride": 1},
    "paper": {"latent_dim": 128, "error_smoothing": 0.0, "error_norm": "l1",
              "roi_power": 1.0, "classifier_weight": 0.0, "knn_power": 0.0,
              "error": "reconstruction", "score": "weighted_error",
              "evidence_weight": 1.0, "evidence_margin": 3.0, "patch_stride": 1},
    # "pretrained": an ImageNet EfficientNet-Lite0 as the classifier's backbone (eq. 2,
    # fine-tuned), the feature-space error of its frozen copy as e, and the margin fusion
    # (spadecam.fusion) instead of Algorithm 1's sum; no VAE is trained. The weight and the
    # margin: ELPV's validation split, seeds 0-2 (benchmarks/choose_fusion.py, its log
    # benchmarks/results/choose_fusion_val.log; docs/elpv.md, "A pretrained backbone"): the
    # largest mean gain over the one-class score (+0.024) among the pairs that lower no
    # column of any seed by more than 0.005. knn_power 1: the image-level feature bank on
    # the head's pooled features joins the error term with the patch maximum's weight; on
    # the same split it lifted every column of every seed (benchmarks/validate_image_bank.py,
    # logs benchmarks/results/elpv_validation_image_bank_seed0.log and _seeds12.log)
    "pretrained": {"latent_dim": 8, "error_smoothing": 0.0, "error_norm": "l1",
                   "roi_power": 1.0, "classifier_weight": 0.0, "knn_power": 1.0,
                   "error": "feature", "score": "margin",
                   "evidence_weight": 2.0, "evidence_margin": 2.0, "patch_stride": 1},
}

#: Fit settings of a recipe where they differ from :data:`FIT_DEFAULTS` (the API's and
#: ``spadecam train``'s, :func:`fit_default`). "pretrained": the model input side (the
#: ImageNet weights' own; the field's detectors use 224 to 448), the backbone, and the
#: classifier's training: its linear head alone on the frozen ImageNet features
#: (``TrainConfig.head_only``). ELPV's validation split, seed 0 (docs/elpv.md): the head
#: alone scored the kind it was shown at AUROC 0.977 against 0.951 fine-tuned (lr 3e-4, 4
#: epochs; 0.678 at lr 1e-3), subtracted less on the unknown kind within the margin fusion,
#: and costs one forward pass instead of 150 training steps.
RECIPE_FIT: dict[str, dict[str, Any]] = {
    "pretrained": {"image_size": 224, "backbone": "efficientnet_lite0", "head_only": True},
}


#: What fitting a detector uses for an argument left unset, the same for the Python API
#: (the detectors' and :class:`~spadecam.training.TrainConfig`'s defaults) and for
#: ``spadecam train`` (its option defaults): the CLI once held out 10 % for the
#: threshold and training in batches of 32 while ``SPADE()`` held out nothing and trained in
#: batches of 128. Both size the model input by one rule
#: (:func:`spadecam.inputs.model_input_side`): ``image_size`` when given, else the recipe's
#: (224 for "pretrained"), else the training images' longest side, at most ``max_image_size``.
FIT_DEFAULTS: dict[str, Any] = {
    "threshold_holdout": 0.1,  # held-out images set the threshold (the training scores run low)
    "threshold_quantile": 0.99,
    "resize": "letterbox",
    "cam_layer": -1,
    "knn_layer": -1,  # the feature bank's block (spadecam.knn): the last, as Grad-CAM's
    "knn_k": 5,
    "patch_bank_size": 16384,  # rows of the feature-space error's memory bank
    "steps": 2000,  # per model, with early stopping on a validation split
    "batch_size": 32,
    "lr": 1e-3,
    "seed": 0,
    # the model input side: None = the training images' longest side, at most max_image_size
    # (spadecam.inputs.model_input_side, the one rule of fit and of spadecam train)
    "image_size": None,
    "max_image_size": 128,
    "backbone": "small",
    "head_only": False,  # the classifier trained whole (eq. 2), not its head alone
}


def fit_default(name: str, recipe: str = "spadecam") -> Any:
    """A fit setting left unset: the recipe's (:data:`RECIPE_FIT`), else
    :data:`FIT_DEFAULTS`'. Raises KeyError for an unknown setting."""
    return RECIPE_FIT.get(recipe, {}).get(name, FIT_DEFAULTS[name])


def check_recipe(recipe: Any) -> None:
    """Raise ValueError naming the recipes unless ``recipe`` is one of them."""
    if recipe not in RECIPE_DEFAULTS:
        raise ValueError(f"recipe must be one of {sorted(RECIPE_DEFAULTS)}, got {recipe!r}")
