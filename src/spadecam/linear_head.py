"""The classifier's linear head fitted alone on a frozen pretrained backbone
(``TrainConfig.head_only``, the "pretrained" recipe): a class-balanced logistic regression
on the globally pooled last-block features, written into the head so the logit difference
is the regression's decision function; and the classifier built from its config with its
initial weights drawn from a seed.
"""

from __future__ import annotations

from typing import Any

import torch

from spadecam import inputs as _inputs
from spadecam._progress import tick
from spadecam.models.backbones import BACKBONES, backbone_name
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import NORMAL_CLASS, CNNConfig
from spadecam.train_config import TrainConfig, local_rng

__all__ = ["build_classifier", "fit_linear_head", "pooled_last_features"]


def build_classifier(config: Any, channels: int, seed: int) -> FeatureClassifier:
    """The classifier of ``config`` (default ``CNNConfig()``) for images of ``channels``
    channels, its initial weights drawn from ``seed`` (the caller's RNG untouched), then the
    pretrained weights the config names (ImageNet, a user's file), if any."""
    config = (config or CNNConfig()).sized(channels)
    with local_rng(seed):
        model = BACKBONES[backbone_name(config)][0](config)
    return model.load_pretrained()


@torch.no_grad()
def pooled_last_features(model: FeatureClassifier, x: torch.Tensor,
                         batch_size: int = 32) -> torch.Tensor:
    """The globally pooled last-block features (N, K) float32 of images x (N, C, H, W), uint8
    [0, 255] or float [0, 1], the model in eval mode on the CPU: what its linear head reads."""
    model = model.to("cpu").eval()
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model.forward_features(_inputs.to_float_images(x[i : i + batch_size]))
                   .mean((2, 3)))
        tick(f"classifier head: pooled features of {i + len(out[-1])}/{len(x)} images")
    return torch.cat(out)


@torch.no_grad()
def fit_linear_head(model: FeatureClassifier, x: torch.Tensor, y: torch.Tensor,
                    train: TrainConfig, features: torch.Tensor | None = None
                    ) -> FeatureClassifier:
    """Fit ``model``'s linear head on its frozen backbone (``TrainConfig.head_only``).

    x : (N, C, H, W) uint8 [0, 255] or float [0, 1]; y : (N,) 0 = normal, 1 = known anomaly.
    A class-balanced logistic regression with ``C = train.head_c`` on the standardised,
    globally pooled last-block features (float64), seeded by ``train.seed``; its weights,
    divided by the features' spread, become the known-anomaly row of ``model.fc`` and the
    normal row is 0, so the logit difference y_anomaly - y_normal is the regression's
    decision function. ``features``: x's :func:`pooled_last_features`, already computed
    (then x is not read). Returns the model on the CPU in eval mode, its backbone unchanged,
    with ``training_log_``. Raises ValueError without both classes, or for ``head_c <= 0``.
    """
    from sklearn.linear_model import LogisticRegression

    yv = y.long().numpy()
    if not ((yv == 0).any() and (yv == 1).any()) or not train.head_c > 0:
        raise ValueError(f"head_only needs normal and known-anomaly images and head_c > 0, got "
                         f"classes {sorted(set(yv.tolist()))} and head_c={train.head_c!r}")
    model = model.to("cpu").eval()
    if features is None:
        features = pooled_last_features(model, x, train.batch_size)
    feats = features.double().numpy()
    mean, sd = feats.mean(0), feats.std(0)
    sd[sd == 0] = 1.0
    reg = LogisticRegression(C=train.head_c, class_weight="balanced", max_iter=5000,
                             random_state=train.seed).fit((feats - mean) / sd, yv)
    w = reg.coef_[0] / sd
    b = float(reg.intercept_[0] - (w * mean).sum())
    anomaly = 1 - NORMAL_CLASS
    model.fc.weight.zero_()
    model.fc.bias.zero_()
    model.fc.weight[anomaly] = torch.as_tensor(w, dtype=model.fc.weight.dtype)
    model.fc.bias[anomaly] = b
    log = {"steps": 0, "epochs": 0, "budget_steps": 0, "best_step": 0, "stopped_early": False,
           "validation": [], "precision": "32-true", "head_only": True,
           "iterations": int(reg.n_iter_[0])}
    model.__dict__["training_log_"] = log  # as _finish sets it, for reports
    return model
