"""The paper's three baselines (Narita et al., section III-C): the VAE-based and the
CNN-based scores, and Naive SPADE (:class:`NaiveSPADE`, SPADE with plain Grad-CAM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spadecam.defaults import default_cnn_config, default_cnn_train, default_vae_config
from spadecam.detectors._base import _BaseDetector, _prepare
from spadecam.detectors._docs import with_common_parameters
from spadecam.detectors.spade import SPADE
from spadecam.exceptions import _require
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig
from spadecam.models.resnet import ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.recipes import RECIPE_DEFAULTS
from spadecam.scoring import CNNScorer, VAEScorer
from spadecam.training import TrainConfig, train_cnn, train_vae


@with_common_parameters
@dataclass(eq=False, repr=False, kw_only=True)
class VAEDetector(_BaseDetector):
    """VAE-based baseline: score = sum over pixels of |u - u_hat| (paper section III).

    Parameters
    ----------
    vae_config : VAEConfig, optional
        Default :func:`default_vae_config` of ``recipe``, sized to the data.
    vae_train : TrainConfig, optional
        Default ``TrainConfig()``: a budget of 2000 optimiser steps with early stopping.
    error_smoothing : float >= 0, pixels, optional
        Gaussian blur of the residual before the norm (0 = the paper's error; see
        :func:`reconstruction_error`). None: the recipe's (spadecam 2.0, paper 0).
    error_norm : {"l1", "l2"}, optional
        |r| (paper) or r ** 2. None: the recipe's (spadecam "l2", paper "l1").
    recipe : {"spadecam", "paper"}
        Defaults for the arguments left at None (:data:`RECIPE_DEFAULTS`).
    {common_parameters}
    """

    _model_attrs = ("vae_",)

    vae_config: VAEConfig | None = None
    vae_train: TrainConfig | None = None
    error_smoothing: float | None = None
    error_norm: str | None = None

    def _fit_configs(self, size: int | None = None) -> tuple[Any, Any]:
        return self.vae_config or default_vae_config(self.recipe), None

    def fit(self, X: Any, y: Any = None) -> VAEDetector:
        """Train the VAE on the normal images (y == 0) of X (eq. 1). Returns self."""
        self._fit_with_threshold(X, y, need_anomalies=False)
        return self

    def _train(self, x: torch.Tensor, y: torch.Tensor, size: int, valid: torch.Tensor | None,
               configs: tuple[Any, Any]) -> None:
        cfg = configs[0].sized(int(x.shape[1]), size)
        self.vae_ = _prepare(train_vae(x[y == 0], cfg, self.vae_train))

    @classmethod
    def from_models(cls, vae: ConvVAE, **params: Any) -> VAEDetector:
        """A fitted detector around an already trained VAE (``threshold_`` left unset).

        The VAE is used, not copied; its train/eval mode is left as it is (scoring runs in
        eval mode and restores it).
        """
        return cls._around(params, vae_=vae)

    def scorer(self) -> VAEScorer:
        """The scoring graph: ``forward(u, valid) -> (sum of e, e summed over channels)``.

        A :class:`~spadecam.scoring.VAEScorer` around the fitted VAE (not a copy); inputs at
        the model's input size, (N, C, S, S) float in [0, 1].
        """
        _require(self, "vae_")
        return VAEScorer(self.vae_, self._param("error_smoothing"), self._param("error_norm"))

    def anomaly_map(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Reconstruction error e per pixel, summed over channels, at each image's own size.

        Returns
        -------
        ndarray (N, H, W) float32 >= 0 when all images share one size, else a list of
        (H_i, W_i) arrays (:func:`spadecam.inputs.maps_to_images`).
        """
        return self._maps(X)


@with_common_parameters
@dataclass(eq=False, repr=False, kw_only=True)
class CNNDetector(_BaseDetector):
    """CNN-based baseline: the classifier's likelihood of the known-anomaly class.

    The score is the logit difference y_anomaly - y_normal, a monotone function of the
    softmax probability of the anomaly class (same AUROC) that does not saturate to ties.

    Parameters
    ----------
    cnn_config : CNNConfig or ResNetConfig, optional
        Default :func:`default_cnn_config` of ``recipe`` for the input size (3 conv layers
        with a GAP + linear head); a :class:`~spadecam.models.resnet.ResNetConfig` selects
        the ResNet-18-style backbone.
    recipe : {"spadecam", "paper", "pretrained"}
        Which default classifier (:func:`default_cnn_config`) and its training
        (:func:`~spadecam.defaults.default_cnn_train`).
    cnn_train : TrainConfig, optional
    loss : {"eq2", "cross_entropy"}
        Classifier loss (eq. 2 by default).
    {common_parameters}
    """

    _model_attrs = ("cnn_",)
    has_anomaly_map = False

    cnn_config: CNNConfig | ResNetConfig | None = None
    cnn_train: TrainConfig | None = None
    loss: str = "eq2"

    def _fit_configs(self, size: int | None = None) -> tuple[Any, Any]:
        return None, self.cnn_config or default_cnn_config(size, self.recipe)

    def fit(self, X: Any, y: Any) -> CNNDetector:
        """Train the classifier on normal (y == 0) and known-anomaly (y == 1) images (eq. 2)."""
        self._fit_with_threshold(X, y, need_anomalies=True)
        return self

    def _train(self, x: torch.Tensor, y: torch.Tensor, size: int, valid: torch.Tensor | None,
               configs: tuple[Any, Any]) -> None:
        cfg = configs[1].sized(int(x.shape[1]))
        self.cnn_ = _prepare(train_cnn(x, y, cfg, self.cnn_train or default_cnn_train(
            self.recipe, cfg), self.loss))

    @classmethod
    def from_models(cls, cnn: FeatureClassifier, **params: Any) -> CNNDetector:
        """A fitted detector around an already trained classifier (``threshold_`` unset).

        The classifier is used, not copied; its train/eval mode is left as it is (scoring
        runs in eval mode and restores it).
        """
        return cls._around(params, cnn_=cnn)

    def scorer(self) -> CNNScorer:
        """The scoring graph: ``forward(u, valid) -> (logit difference, None)``.

        A :class:`~spadecam.scoring.CNNScorer` around the fitted classifier (not a copy).
        """
        _require(self, "cnn_")
        return CNNScorer(self.cnn_)


@dataclass(eq=False, repr=False, kw_only=True)
class NaiveSPADE(SPADE):
    """Naive SPADE baseline: e * ReLU(Grad-CAM(u)), not normalised (paper section III).

    Same parameters as :class:`SPADE` with ``input_branch="relu"``, ``recon_branch="none"``,
    ``normalise=False`` as defaults (plain Grad-CAM on the input only).
    """

    def _param(self, name: str) -> Any:
        # the recipe's ROI options are SPADE's; the baseline keeps plain Grad-CAM unless told
        if name in ("roi_power", "classifier_weight", "knn_power", "score") and getattr(
                self, name) is None:
            return RECIPE_DEFAULTS["paper"][name]
        return super()._param(name)

    # SPADE's parameters with the baseline's defaults (the dataclass fields of SPADE, so
    # no parameter is passed on by position)
    input_branch: str = "relu"
    recon_branch: str = "none"
    normalise: bool = False
    recipe: str = "spadecam"
