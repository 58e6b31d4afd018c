"""SPADE and the paper's three baselines behind one PyOD-style API.

All detectors follow the scikit-learn / PyOD contract: the constructor only stores
parameters; ``fit(X, y)`` learns and sets attributes ending in ``_``; ``decision_function``
returns one float64 score per image, higher = more anomalous; ``predict`` compares it with
``threshold_``.

Labels: ``y = 0`` normal, ``y = 1`` known anomaly. The VAE sees only ``y == 0``; the classifier
sees both. Methods (Narita et al., arXiv 1810.02607, section III):

* :class:`VAEDetector` — sum of the reconstruction error e = |u - u_hat|.
* :class:`CNNDetector` — the classifier's likelihood of the known-anomaly class.
* :class:`NaiveSPADE` — sum of e * ReLU(Grad-CAM(u)), not normalised.
* :class:`SPADE` — sum of e * L / |L| with L = Abs(M(u)) + ReLU(M(u_hat)) (eq. 5, Algorithm 1).
"""

from __future__ import annotations

import os
from typing import Any

from spadecam.defaults import default_cnn_config, default_vae_config
from spadecam.detectors._base import _BaseDetector
from spadecam.detectors.baselines import CNNDetector, NaiveSPADE, VAEDetector
from spadecam.detectors.spade import SPADE
from spadecam.error import gaussian_blur, reconstruction_error
from spadecam.exceptions import ModelFormatError, NonFiniteScoreError, NotFittedError
from spadecam.inputs import as_image_tensor
from spadecam.recipes import RECIPE_DEFAULTS
from spadecam.scoring import signed_cams, spade_error_map
from spadecam.threshold import fit_threshold

__all__ = [
    "DETECTOR_CLASSES",
    "RECIPE_DEFAULTS",
    "SPADE",
    "CNNDetector",
    "NaiveSPADE",
    "NonFiniteScoreError",
    "NotFittedError",
    "VAEDetector",
    "as_image_tensor",
    "default_cnn_config",
    "default_vae_config",
    "fit_threshold",
    "gaussian_blur",
    "load_detector",
    "reconstruction_error",
    "signed_cams",
    "spade_error_map",
]

#: The detector classes a model directory may hold (config.json's ``detector.class``).
DETECTOR_CLASSES: dict[str, type[_BaseDetector]] = {
    c.__name__: c for c in (SPADE, NaiveSPADE, VAEDetector, CNNDetector)}


def load_detector(path: str | os.PathLike, config: dict[str, Any] | None = None) -> _BaseDetector:
    """The fitted detector of a model directory, of the class its config.json names.

    ``config``: config.json as :func:`spadecam.io.read_config` already read it. A directory
    without ``detector.class`` (spadecam 0.1) holds a SPADE.

    Raises
    ------
    ModelFormatError
        As the class's ``load``, or a class that is not one of :data:`DETECTOR_CLASSES`.
    """
    from spadecam.io import read_config

    config = read_config(path) if config is None else config
    name = (config.get("detector") or {}).get("class", "SPADE")
    if name not in DETECTOR_CLASSES:
        raise ModelFormatError(f"{path}/config.json: detector.class is {name!r}; expected one "
                               f"of {sorted(DETECTOR_CLASSES)}")
    return DETECTOR_CLASSES[name].load(path, config=config)
