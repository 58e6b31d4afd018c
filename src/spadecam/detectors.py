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

import contextlib
import inspect
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from spadecam._fs import json_float
from spadecam._progress import warn
from spadecam.cam import (
    apply_branch,
    grad_cam,
    normalise_roi,
    upsample_roi,
    weighted_error,
)
from spadecam.decision import flag_anomalous, threshold_between
from spadecam.io import ModelFormatError, load_model_parts, read_config, save_models
from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.precision import resolve_scoring_precision
from spadecam.training import TrainConfig, to_float_images, train_cnn, train_vae

__all__ = [
    "SPADE",
    "CNNDetector",
    "NaiveSPADE",
    "NonFiniteScoreError",
    "NotFittedError",
    "VAEDetector",
    "as_image_tensor",
    "fit_threshold",
    "gaussian_blur",
    "reconstruction_error",
    "signed_cams",
    "spade_error_map",
]


#: Fewest normal scores a quantile threshold is set from without a warning.
MIN_QUANTILE_NORMALS = 20


class NotFittedError(RuntimeError):
    """A detector was used before ``fit`` (or ``from_models``)."""


class NonFiniteScoreError(ValueError):
    """The models gave NaN or infinite scores; ``indices`` lists the images (input order)."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


def _check_finite(det: Any, values: np.ndarray, offset: int = 0) -> None:
    """NonFiniteScoreError naming the images whose score (or map) is not finite."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        idx = [int(i) + offset for i in np.flatnonzero(bad)]
        raise NonFiniteScoreError(
            f"{type(det).__name__}: the models gave non-finite scores for {len(idx)} image(s) "
            f"(index {', '.join(map(str, idx[:5]))}{', ...' if len(idx) > 5 else ''}); their "
            "weights are probably not finite (a diverged training?). Re-train with a lower "
            "learning rate.",
            idx,
        )


# --------------------------------------------------------------------------- input checks


def as_image_tensor(X: Any, name: str = "X") -> torch.Tensor:
    """Validate images and return them as a (N, C, H, W) tensor, uint8 or float32.

    Parameters
    ----------
    X : array-like or Tensor
        uint8 in [0, 255] or float in [0, 1], shape (N, H, W) or (N, C, H, W).
    name : str
        Argument name used in error messages.

    Raises
    ------
    ValueError
        Wrong number of dimensions, empty batch, a dtype other than uint8/float, float values
        outside [0, 1] or NaN.
    """
    t = torch.as_tensor(np.asarray(X)) if not isinstance(X, torch.Tensor) else X
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise ValueError(
            f"{name} must have shape (N, H, W) or (N, C, H, W), got shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise ValueError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got {t.dtype}")
    t = t.float()
    if torch.isnan(t).any() or t.min() < 0 or t.max() > 1:
        raise ValueError(
            f"{name} is float, so it must lie in [0, 1] without NaN; got range "
            f"[{float(t.min()):.4g}, {float(t.max()):.4g}] (pass uint8 for 0-255 images)"
        )
    return t


def _as_labels(y: Any, n: int) -> torch.Tensor:
    if y is None:
        return torch.zeros(n, dtype=torch.long)
    ya = np.asarray(y).reshape(-1)
    if ya.shape[0] != n:
        raise ValueError(f"y must have one label per image: {n} images, {ya.shape[0]} labels")
    bad = sorted(set(np.unique(ya).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"y must hold 0 (normal) or 1 (known anomaly), found {bad[:5]}")
    return torch.as_tensor(ya.astype(np.int64))


def _batches(X: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield float32 (B, C, H, W) batches from an array/tensor or an iterable of batches.

    An iterable (e.g. a DataLoader) may yield arrays/tensors or tuples whose first element is
    the images; it is consumed lazily, so memory stays flat whatever the number of images.
    """
    if isinstance(X, (np.ndarray, torch.Tensor, list)):
        t = as_image_tensor(X)
        for i in range(0, t.shape[0], batch_size):
            yield _channels_last(to_float_images(t[i : i + batch_size]))
        return
    if not isinstance(X, Iterable):
        raise ValueError(f"X must be an array, a tensor or an iterable of batches, got {type(X)}")
    for j, batch in enumerate(X):
        if isinstance(batch, (tuple, list)) and not isinstance(batch, np.ndarray):
            batch = batch[0]
        yield _channels_last(to_float_images(as_image_tensor(batch, name=f"X batch {j}")))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # NHWC is the fast layout for oneDNN convolutions on the CPU (about 1.5-2x here)
    return x.contiguous(memory_format=torch.channels_last)


def _prepare(model: nn.Module) -> nn.Module:
    # layout only: the parameters stay the same objects (an optimizer holding them still
    # works) and the train/eval mode is left to the caller; scoring switches to eval mode
    # for its duration (_scoring_context)
    return model.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- threshold


def fit_threshold(
    normal_scores: Any, anomaly_scores: Any = None, quantile: float = 0.99
) -> float:
    """Decision threshold t for ``predict``: an image is anomalous when its score > t.

    The rule is :data:`spadecam.decision.THRESHOLD_RULE`, the one every decision uses.

    * Only normal scores (or no anomaly scores): t = the ``quantile`` of the normal scores
      (numpy's linear interpolation), e.g. their 99th percentile, so about 1% of normal
      images are flagged.
    * With anomaly scores too: t maximises F1 (anomalous = positive) over the midpoints
      between consecutive distinct scores; ties go to the lowest such t (higher recall).

    t is never below the smallest score, so held-out data of a single class never yields
    a threshold that flags every image.

    Parameters
    ----------
    normal_scores : array-like (n,), float, n >= 1
        Scores of normal images not used for training.
    anomaly_scores : array-like (m,), float, optional
        Scores of labelled anomalous images not used for training.
    quantile : float in (0, 1]

    Returns
    -------
    float

    Raises
    ------
    ValueError
        No normal scores, non-finite scores, or ``quantile`` outside (0, 1].
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"threshold_quantile must be in (0, 1], got {quantile!r}")
    n = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    a = np.asarray([] if anomaly_scores is None else anomaly_scores, dtype=np.float64).reshape(-1)
    if n.size == 0:
        raise ValueError("fit_threshold needs at least one normal score")
    if not (np.isfinite(n).all() and np.isfinite(a).all()):
        raise ValueError("fit_threshold: scores must be finite")
    if a.size == 0:
        return float(np.quantile(n, quantile))
    u = np.unique(np.concatenate([n, a]))  # sorted distinct scores
    if u.size == 1:
        return float(u[0])  # all scores tie: flag nothing rather than everything
    # the midpoint between u[i] and u[i + 1] flags exactly the scores >= u[i + 1]
    tp = a.size - np.searchsorted(np.sort(a), u[1:], side="left")
    fp = n.size - np.searchsorted(np.sort(n), u[1:], side="left")
    f1 = 2 * tp / (2 * tp + fp + (a.size - tp))
    i = int(np.argmax(f1))
    return threshold_between(float(u[i]), float(u[i + 1]))


# --------------------------------------------------------------------------- scoring blocks


ERROR_NORMS = ("l1", "l2")


def _gaussian_kernel(sigma: float, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images, per channel, with replicate padding.

    Used on the residual u - u_hat by :func:`reconstruction_error` (our extension; the paper
    has no blur).

    Parameters
    ----------
    x : Tensor (N, C, H, W), float (any range)
    sigma : float >= 0, standard deviation in pixels
        The kernel has radius ceil(3 sigma) pixels and sums to 1, so a constant image is
        unchanged. 0 returns ``x`` itself.

    Returns
    -------
    Tensor of the shape, dtype and device of ``x``.

    Raises
    ------
    ValueError
        ``sigma`` negative or not finite.
    """
    _check_error_params(sigma, "l1", names=("sigma", "norm"))
    if sigma == 0:
        return x
    k = _gaussian_kernel(sigma, x.dtype).to(x.device)
    r, c = len(k) // 2, x.shape[1]
    x = nn.functional.pad(x, (r, r, 0, 0), mode="replicate")
    x = nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = nn.functional.pad(x, (0, 0, r, r), mode="replicate")
    return nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _check_error_params(
    smoothing: Any, norm: Any, names: tuple[str, str] = ("error_smoothing", "error_norm")
) -> None:
    """ValueError naming the argument (or CLI option, via ``names``) unless both are valid."""
    if not (isinstance(smoothing, (int, float)) and np.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"{names[0]} must be a finite number >= 0 (pixels), got {smoothing!r}")
    if norm not in ERROR_NORMS:
        raise ValueError(f"{names[1]} must be one of {ERROR_NORMS}, got {norm!r}")


def reconstruction_error(
    u: torch.Tensor, u_hat: torch.Tensor, smoothing: float = 0.0, norm: str = "l1"
) -> torch.Tensor:
    """Per-pixel reconstruction error e between images and their reconstructions.

    Parameters
    ----------
    u, u_hat : Tensor (N, C, H, W), float on the [0, 1] scale
    smoothing : float >= 0, pixels
        Standard deviation of a Gaussian blur applied to the residual u - u_hat before the
        norm. 0 (default) is the paper's e = |u - u_hat| (Algorithm 1). A blur of about 2 px
        averages out pixel noise (uncorrelated between pixels) while keeping stroke-sized
        residuals; this is our extension, not in the paper (README, "Reconstruction error").
    norm : {"l1", "l2"}
        "l1" (paper): |r|; "l2": r ** 2, which weighs large residuals over many small ones.

    Returns
    -------
    Tensor (N, C, H, W), >= 0, same dtype as the inputs.

    Raises
    ------
    ValueError
        ``smoothing`` negative or not finite, or an unknown ``norm``.
    """
    _check_error_params(smoothing, norm)
    r = gaussian_blur(u - u_hat, smoothing)
    return r.abs() if norm == "l1" else r * r


def spade_error_map(
    cnn: nn.Module,
    u: torch.Tensor,
    u_hat: torch.Tensor,
    *,
    cam_layer: int = -1,
    input_branch: str = "abs",
    recon_branch: str = "relu",
    normalise: bool = True,
    upsample: str = "bilinear",
    cam_method: str = "auto",
    error_smoothing: float = 0.0,
    error_norm: str = "l1",
    cams: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Weighted reconstruction error e' of SPADE (Algorithm 1), one map per image.

    Parameters
    ----------
    cnn : nn.Module
        Normal-vs-known-anomaly classifier (logit index 0 = normal).
    u, u_hat : Tensor (N, C, H, W), float in [0, 1]
        Inputs and their VAE reconstructions.
    cam_layer : int
        Conv block whose Grad-CAM is read (default the last).
    input_branch, recon_branch : str
        Functions on the signed maps of u and u_hat (eq. 5: "abs" and "relu"; "none" drops
        the term). NaiveSPADE uses ("relu", "none").
    normalise : bool
        Divide the upsampled ROI by its per-image sum (L / |L|).
    upsample : str
        Interpolation of the ROI to the image size.
    error_smoothing, error_norm :
        The reconstruction error e, see :func:`reconstruction_error` (defaults: the paper's
        |u - u_hat|).
    cams : (Tensor (N, h, w), Tensor (N, h, w) or None), optional
        The signed Grad-CAM maps M(u) and M(u_hat) (eq. 4) from :func:`signed_cams` with the
        same ``cam_layer`` / ``cam_method``; given, the classifier is not run again (variants
        of the ROI on the same maps, e.g. the ablations, cost no CNN pass).

    Returns
    -------
    Tensor (N, H, W) float32; ``.sum((1, 2))`` is the anomaly score.

    Raises
    ------
    ValueError
        Unknown branch, or bad ``error_smoothing`` / ``error_norm``.

    References
    ----------
    Narita et al., arXiv 1810.02607, eq. 3-5 and Algorithm 1.
    """
    if cams is None:
        cams = signed_cams(cnn, u, u_hat if recon_branch != "none" else None, cam_layer, cam_method)
    m_u, m_u_hat = cams
    if recon_branch == "none":
        roi = apply_branch(m_u, input_branch)
    else:
        if m_u_hat is None:
            raise ValueError(f"recon_branch={recon_branch!r} needs the map of u_hat in cams")
        roi = apply_branch(m_u, input_branch) + apply_branch(m_u_hat, recon_branch)
    # under bf16 autocast only the networks run in bf16: the ROI, the blur and the error
    # are fp32 (a blurred, squared residual would lose its small values in bf16)
    with torch.autocast(u.device.type, enabled=False):
        roi = upsample_roi(roi.float(), u.shape[-2:], mode=upsample)
        if normalise:
            roi = normalise_roi(roi)
        error = reconstruction_error(u.float(), u_hat.float(), error_smoothing, error_norm)
        return weighted_error(error, roi)


def signed_cams(
    cnn: nn.Module,
    u: torch.Tensor,
    u_hat: torch.Tensor | None,
    cam_layer: int = -1,
    cam_method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Signed Grad-CAM maps M(u) and M(u_hat) (eq. 3-4) for :func:`spade_error_map`.

    Parameters
    ----------
    cnn : nn.Module, the normal-vs-known-anomaly classifier
    u, u_hat : Tensor (N, C, H, W), float in [0, 1]; ``u_hat`` None skips its map
        With ``u_hat``, both go through the classifier as one batch of 2N images (one
        forward, and one backward if the autograd path is needed).
    cam_layer, cam_method : see :func:`spadecam.cam.grad_cam`

    Returns
    -------
    (Tensor (N, h, w), Tensor (N, h, w) or None), at the feature-map resolution, signed.
    """
    if u_hat is None:
        return grad_cam(cnn, u, layer=cam_layer, method=cam_method), None
    n = u.shape[0]
    m = grad_cam(cnn, torch.cat([u, u_hat]), layer=cam_layer, method=cam_method)
    return m[:n], m[n:]


@contextlib.contextmanager
def _scoring_context(precision: str, model: nn.Module, *others: nn.Module) -> Iterator[str]:
    """Eval mode, inference_mode and bf16 autocast where ``precision`` resolves to it.

    Yields the device type. ``precision`` is "auto", "32" or "bf16"
    (:func:`spadecam.precision.resolve_scoring_precision`). ``model`` and ``others`` run in
    eval mode (batch norm with its running statistics, no VAE sampling) and get their own
    train/eval mode back afterwards, so a model passed to ``from_models`` is scored
    correctly and left as the caller had it.
    """
    device = next(model.parameters()).device.type
    use_bf16 = resolve_scoring_precision(precision, device) == "bf16"
    modes = [(m, m.training) for m in (model, *others)]
    try:
        for m, _ in modes:
            m.eval()
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                    enabled=use_bf16):
            yield device
    finally:
        for m, training in modes:
            m.train(training)


def _require(det: Any, *attrs: str) -> None:
    for a in attrs:
        if getattr(det, a, None) is None:
            if a == "threshold_" and hasattr(det, "decision_function"):
                raise NotFittedError(
                    f"{type(det).__name__}.threshold_ is not set: fit(X, y) learns it; after "
                    "from_models(...) set it yourself (e.g. a quantile of normal scores)"
                )
            raise NotFittedError(
                f"{type(det).__name__} is not fitted: call fit(X, y) or from_models(...) first"
            )


# --------------------------------------------------------------------------- detectors

#: Detector parameters stored in a model directory (the models carry their own configs); each
#: class stores those its constructor takes (:meth:`_BaseDetector._saved_params`).
_SAVED_PARAMS = (
    "loss", "cam_layer", "input_branch", "recon_branch", "normalise", "upsample", "cam_method",
    "error_smoothing", "error_norm", "batch_size", "precision", "threshold_quantile",
    "threshold_holdout",
)


class _BaseDetector:
    """Shared PyOD-style plumbing: threshold_, predict, batching."""

    batch_size: int
    precision: str
    threshold_quantile: float
    threshold_holdout: float

    def _scores_and_maps(self, u: torch.Tensor, want_maps: bool) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly score per image, higher = more anomalous.

        Parameters
        ----------
        X : array-like (N, H, W) or (N, C, H, W), uint8 [0, 255] or float [0, 1];
            or an iterable of such batches (e.g. a DataLoader), consumed with flat memory.

        Returns
        -------
        ndarray (N,), float64, finite

        Raises
        ------
        NonFiniteScoreError
            A score is NaN or infinite (models with non-finite weights); names the images.
        """
        out = [self._scores_and_maps(u, False)[0] for u in _batches(X, self.batch_size)]
        scores = torch.cat(out).double().numpy()
        _check_finite(self, scores)
        return scores

    def predict(self, X: Any) -> np.ndarray:
        """0 = normal, 1 = anomalous: ``decision_function(X) > threshold_``. (N,) int64.

        A score exactly equal to ``threshold_`` is normal (:mod:`spadecam.decision`).

        Raises
        ------
        NotFittedError
            No ``threshold_``.
        ValueError
            ``threshold_`` is NaN; NonFiniteScoreError for non-finite scores.
        """
        _require(self, "threshold_")
        return flag_anomalous(self.decision_function(X), self.threshold_)

    #: Fitted models of this detector, in the order ``from_models`` takes them.
    _model_attrs: tuple[str, ...] = ()

    @contextlib.contextmanager
    def _fitting(self) -> Iterator[None]:
        """All fitted attributes (``name_``) set in the block, or, on an error, none.

        A fit that fails half-way (e.g. the classifier diverges after the VAE trained) leaves
        the detector as it was before ``fit``: unfitted, or with its previous fit.
        """

        def fitted() -> dict[str, Any]:
            return {k: v for k, v in vars(self).items()
                    if k.endswith("_") and not k.startswith("_")}

        before = fitted()
        try:
            yield
        except BaseException:
            for k in fitted():
                delattr(self, k)
            vars(self).update(before)
            raise

    def save(
        self,
        path: str | os.PathLike,
        preprocessing: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> os.PathLike:
        """Write a model directory: safetensors weights + config.json (:mod:`spadecam.io`).

        config.json holds the format version, the model configs (the VAE's, the classifier's
        and its backbone, whichever the detector has), the detector's class and scoring
        parameters, ``threshold_`` and ``preprocessing``. Every file is written to a temp file
        and renamed, config.json last.

        Parameters
        ----------
        path : str or PathLike, the model directory (created if missing)
        preprocessing : dict, optional
            How images become inputs, e.g. ``{"image_size": 128, "channels": 1, "resize":
            "resize", "normalisation": "dtype_max"}``; default ``self.preprocessing_`` if set.
        extra : dict, optional
            More JSON-serialisable fields for config.json.

        Returns
        -------
        pathlib.Path of the directory.

        Raises
        ------
        NotFittedError
            Before ``fit`` / ``from_models``.
        """
        _require(self, *self._model_attrs)
        params = {k: getattr(self, k) for k in self._saved_params()}
        config = {
            "detector": {"class": type(self).__name__, "params": params},
            "threshold_": getattr(self, "threshold_", None),
            "threshold_source": getattr(self, "threshold_source_", None),
            "threshold_n_images": getattr(self, "threshold_n_images_", None),
            "preprocessing": preprocessing or getattr(self, "preprocessing_", None),
            **(extra or {}),
        }
        return save_models(path, getattr(self, "vae_", None), getattr(self, "cnn_", None),
                           extra=config)

    @classmethod
    def _saved_params(cls) -> list[str]:
        accepted = inspect.signature(cls.__init__).parameters
        return [k for k in _SAVED_PARAMS if k in accepted]

    @classmethod
    def load(cls, path: str | os.PathLike):
        """A fitted detector from a model directory written by :meth:`save` or the CLI.

        Sets ``threshold_`` (None if the directory has none) and ``preprocessing_`` (dict or
        None) from config.json.

        Raises
        ------
        ModelFormatError
            Missing or malformed directory, another format version, pickle files, weights
            that do not fit the config, a directory saved by another detector class, or one
            without a model this detector needs.
        """
        config = read_config(path)
        saved = config.get("detector") or {}
        other = saved.get("class", cls.__name__)
        if other != cls.__name__:
            raise ModelFormatError(f"{path} holds a {other} model; load it with {other}.load")
        vae, cnn = load_model_parts(path)
        found = {"vae_": vae, "cnn_": cnn}
        models = [found[a] for a in cls._model_attrs]
        if any(m is None for m in models):
            raise ModelFormatError(
                f"{path}/config.json lacks a model {cls.__name__} needs "
                f"({', '.join(a.rstrip('_') for a in cls._model_attrs)})"
            )
        allowed = cls._saved_params()
        params = {k: v for k, v in (saved.get("params") or {}).items() if k in allowed}
        det = cls.from_models(*models, **params)
        try:
            det.threshold_ = json_float(config.get("threshold_"), "threshold_")
        except ValueError as exc:
            raise ModelFormatError(f"{path}/config.json: {exc}") from None
        det.preprocessing_ = config.get("preprocessing")
        return det

    def _threshold_split(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Split off ``threshold_holdout`` of the normals and of the known anomalies.

        Returns (x_fit, y_fit, x_normal_held_out, x_anomaly_held_out); the held-out parts
        are None when ``threshold_holdout == 0``. At least 2 normals and 1 known anomaly stay
        for training; a class too small to spare an image holds none out (normals: error).
        """
        frac = self.threshold_holdout
        if not 0 <= frac < 1:
            raise ValueError(f"threshold_holdout must be in [0, 1), got {frac!r}")
        if frac == 0:
            return x, y, None, None
        seed = next(
            (t.seed for t in (getattr(self, "vae_train", None), getattr(self, "cnn_train", None))
             if t is not None),
            TrainConfig().seed,
        )
        g = torch.Generator().manual_seed(seed + 104729)  # the training seed, offset
        hold = torch.zeros(len(y), dtype=torch.bool)
        for label, keep in ((0, 2), (1, 1)):
            idx = torch.nonzero(y == label).flatten()
            k = min(max(1, round(frac * len(idx))), len(idx) - keep) if len(idx) else 0
            if label == 0 and k < 1:
                raise ValueError(
                    f"threshold_holdout={frac} needs at least 3 normal images (y == 0) to hold "
                    f"one out and train on 2, got {len(idx)}; add images or set it to 0"
                )
            if k > 0:
                hold[idx[torch.randperm(len(idx), generator=g)[:k]]] = True
        return x[~hold], y[~hold], x[hold & (y == 0)], x[hold & (y == 1)]

    def _set_threshold(
        self, x_normal: torch.Tensor, x_anomaly: torch.Tensor | None = None, held_out: bool = False
    ) -> None:
        # See fit_threshold: F1-max when held-out anomalies exist, else a normal quantile.
        normal = self.decision_function(x_normal)
        anomaly = None
        if x_anomaly is not None and len(x_anomaly):
            anomaly = self.decision_function(x_anomaly)
        self.threshold_ = fit_threshold(normal, anomaly, self.threshold_quantile)
        self.threshold_n_images_ = {"normal": len(normal),
                                    "anomaly": 0 if anomaly is None else len(anomaly)}
        if anomaly is not None:
            self.threshold_source_ = "f1_max_held_out"
            return
        self.threshold_source_ = "quantile_held_out" if held_out else "quantile_train"
        if len(normal) < MIN_QUANTILE_NORMALS:
            which = "held-out" if held_out else "training"
            warn(
                f"threshold_ is the {self.threshold_quantile:g} quantile of only {len(normal)} "
                f"{which} normal score(s); below {MIN_QUANTILE_NORMALS} such a quantile is "
                "little more than their maximum and flags an unpredictable share of normal "
                "images. Hold out more normal images (threshold_holdout), add known anomalies "
                "to hold out (F1-max is used then), or set threshold_ yourself."
            )


class VAEDetector(_BaseDetector):
    """VAE-based baseline: score = sum over pixels of |u - u_hat| (paper section III).

    Parameters
    ----------
    vae_config : VAEConfig, optional
        Defaults to the paper's 4 conv layers and 128-d latent, sized to the data.
    vae_train : TrainConfig, optional
    error_smoothing : float >= 0, pixels
        Gaussian blur of the residual before the norm (0 = the paper's error; see
        :func:`reconstruction_error`).
    error_norm : {"l1", "l2"}
        |r| (paper) or r ** 2.
    batch_size : int
        Images per scoring batch.
    precision : {"auto", "32", "bf16"}
        Scoring precision (see :class:`SPADE`; "auto" = bf16 where the device has it).
    threshold_quantile : float
        Quantile of normal training scores used as ``threshold_``.
    threshold_holdout : float in [0, 1)
        Share of the normal (and of the known-anomaly) images split off with the training
        seed before training and used only to set ``threshold_`` (:func:`fit_threshold`:
        F1-max with held-out anomalies, else the quantile of held-out normal scores).
        0 (default) keeps every image for training and takes the quantile of the normal
        training scores, which runs low because the models have seen those images.
    """

    _model_attrs = ("vae_",)

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        vae_train: TrainConfig | None = None,
        error_smoothing: float = 0.0,
        error_norm: str = "l1",
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
    ) -> None:
        self.vae_config = vae_config
        self.vae_train = vae_train
        self.error_smoothing = error_smoothing
        self.error_norm = error_norm
        self.batch_size = batch_size
        self.precision = precision
        self.threshold_quantile = threshold_quantile
        self.threshold_holdout = threshold_holdout

    def fit(self, X: Any, y: Any = None) -> VAEDetector:
        """Train the VAE on the normal images (y == 0) of X (eq. 1). Returns self."""
        x = as_image_tensor(X)
        yt = _as_labels(y, x.shape[0])
        if (yt == 0).sum() < 2:
            raise ValueError("fit needs at least 2 normal images (y == 0)")
        xf, yf, x_hold, a_hold = self._threshold_split(x, yt)
        cfg = self.vae_config or VAEConfig(in_channels=x.shape[1], image_size=x.shape[-1])
        with self._fitting():
            self.vae_ = _prepare(train_vae(xf[yf == 0], cfg, self.vae_train))
            self._set_threshold(xf[yf == 0] if x_hold is None else x_hold, a_hold,
                                held_out=x_hold is not None)
        return self

    @classmethod
    def from_models(cls, vae: ConvVAE, **params: Any) -> VAEDetector:
        """A fitted detector around an already trained VAE (``threshold_`` left unset).

        The VAE is used, not copied; its train/eval mode is left as it is (scoring runs in
        eval mode and restores it).
        """
        det = cls(**params)
        det.vae_ = _prepare(vae)
        det.threshold_ = None
        return det

    def _scores_and_maps(self, u: torch.Tensor, want_maps: bool) -> tuple[torch.Tensor, Any]:
        _require(self, "vae_")
        with _scoring_context(self.precision, self.vae_) as device:
            u = u.to(device)
            u_hat = self.vae_.reconstruct(u).float()
            with torch.autocast(device, enabled=False):  # the error in fp32, as in SPADE
                e = reconstruction_error(u, u_hat, self.error_smoothing, self.error_norm)
            e = e.sum(dim=1).cpu()
        return e.sum(dim=(1, 2)), (e if want_maps else None)

    def anomaly_map(self, X: Any) -> np.ndarray:
        """Reconstruction error e per pixel, summed over channels: (N, H, W) float32, >= 0."""
        maps = torch.cat(
            [self._scores_and_maps(u, True)[1] for u in _batches(X, self.batch_size)]
        ).numpy()
        _check_finite(self, maps)
        return maps


class CNNDetector(_BaseDetector):
    """CNN-based baseline: the classifier's likelihood of the known-anomaly class.

    The score is the logit difference y_anomaly - y_normal, a monotone function of the
    softmax probability of the anomaly class (same AUROC) that does not saturate to ties.

    Parameters
    ----------
    cnn_config : CNNConfig or ResNetConfig, optional
        Defaults to the paper's 3 conv layers with a GAP + linear head; a
        :class:`~spadecam.models.resnet.ResNetConfig` selects the ResNet-18-style backbone.
    cnn_train : TrainConfig, optional
    loss : {"eq2", "cross_entropy"}
        Classifier loss (eq. 2 by default).
    threshold_holdout : float in [0, 1)
        Share of the normal (and of the known-anomaly) images split off with the training
        seed before training and used only to set ``threshold_`` (:func:`fit_threshold`:
        F1-max with held-out anomalies, else the quantile of held-out normal scores).
        0 (default) keeps every image for training and takes the quantile of the normal
        training scores, which runs low because the models have seen those images.
    """

    _model_attrs = ("cnn_",)

    def __init__(
        self,
        cnn_config: CNNConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
    ) -> None:
        self.cnn_config = cnn_config
        self.cnn_train = cnn_train
        self.loss = loss
        self.batch_size = batch_size
        self.precision = precision
        self.threshold_quantile = threshold_quantile
        self.threshold_holdout = threshold_holdout

    def fit(self, X: Any, y: Any) -> CNNDetector:
        """Train the classifier on normal (y == 0) and known-anomaly (y == 1) images (eq. 2)."""
        x = as_image_tensor(X)
        yt = _as_labels(y, x.shape[0])
        if not ((yt == 0).any() and (yt == 1).any()):
            raise ValueError("fit needs both normal (y == 0) and known-anomaly (y == 1) images")
        xf, yf, x_hold, a_hold = self._threshold_split(x, yt)
        cfg = self.cnn_config or CNNConfig(in_channels=x.shape[1])
        with self._fitting():
            self.cnn_ = _prepare(train_cnn(xf, yf, cfg, self.cnn_train, self.loss))
            self._set_threshold(xf[yf == 0] if x_hold is None else x_hold, a_hold,
                                held_out=x_hold is not None)
        return self

    @classmethod
    def from_models(cls, cnn: ConvClassifier, **params: Any) -> CNNDetector:
        """A fitted detector around an already trained classifier (``threshold_`` unset).

        The classifier is used, not copied; its train/eval mode is left as it is (scoring
        runs in eval mode and restores it).
        """
        det = cls(**params)
        det.cnn_ = _prepare(cnn)
        det.threshold_ = None
        return det

    def _scores_and_maps(self, u: torch.Tensor, want_maps: bool) -> tuple[torch.Tensor, Any]:
        _require(self, "cnn_")
        with _scoring_context(self.precision, self.cnn_) as device:
            logits = self.cnn_(u.to(device)).float().cpu()
        return logits[:, 1 - NORMAL_CLASS] - logits[:, NORMAL_CLASS], None


class SPADE(_BaseDetector):
    """Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607, Algorithm 1).

    score(u) = sum_ij e_ij * L_ij / |L|, with e = |u - VAE(u)| the reconstruction error and
    L = Abs(M(u)) + ReLU(M(u_hat)) the ROI from the signed Grad-CAM map M of the classifier's
    normal-class logit (eq. 3-5), bilinearly upsampled to the image.

    Parameters
    ----------
    vae_config, cnn_config : optional
        Model hyper-parameters; default the paper's (4-conv VAE with 128-d latent, 3-conv CNN).
        A :class:`~spadecam.models.resnet.ResNetConfig` as ``cnn_config`` selects the
        ResNet-18-style classifier (the paper's Table II).
    vae_train, cnn_train : TrainConfig, optional
    loss : {"eq2", "cross_entropy"}
        Classifier loss.
    cam_layer : int
        Conv block of the classifier read by Grad-CAM (default -1, the last; the paper says
        "a convolutional layer").
    input_branch, recon_branch : str
        Functions applied to the signed maps of u and u_hat ("abs", "relu", "identity",
        "none"); eq. 5 is ("abs", "relu").
    normalise : bool
        Use L / |L| with |L| = sum of L (our reading of Algorithm 1); False = raw L.
    upsample : str
        ROI interpolation to the image size (bilinear by default; paper silent).
    cam_method : {"auto", "closed_form", "autograd"}
        Grad-CAM computation; "auto" uses the exact closed form for a GAP + linear head.
    error_smoothing : float >= 0, pixels
        Gaussian blur (standard deviation, pixels) of the residual u - u_hat before the norm.
        0 (default) is the paper's e; 2 is the ``spadecam`` recipe's (our extension: it
        averages out pixel noise, +0.08-0.12 AUROC on Noisy-MNIST, README).
    error_norm : {"l1", "l2"}
        "l1" is the paper's |r|; "l2" squares the (smoothed) residual.
    batch_size : int
    precision : {"auto", "32", "bf16"}
        Scoring precision: "auto" (default) is bf16 autocast where the device computes bf16
        natively (CPU with AMX or AVX512-BF16, CUDA with bf16), else fp32; "32" is exact fp32
        (:mod:`spadecam.precision`). bf16 moved SPADE's Noisy-MNIST AUROC by <= 0.005 (README).
    threshold_quantile : float
        Quantile of the normal images' scores used as ``threshold_`` (held-out normals when
        ``threshold_holdout > 0`` and no known anomaly is held out; training normals at 0).
    threshold_holdout : float in [0, 1)
        Share of the normal (and of the known-anomaly) images split off with the training
        seed before training and used only to set ``threshold_`` (:func:`fit_threshold`:
        F1-max with held-out anomalies, else the quantile of held-out normal scores).
        0 (default) keeps every image for training and takes the quantile of the normal
        training scores, which runs low because the models have seen those images.

    Attributes
    ----------
    vae_ : ConvVAE
    cnn_ : ConvClassifier (or its subclass ResNetClassifier)
    threshold_ : float
        ``predict`` flags scores above it.
    threshold_source_ : str
        How it was set: "f1_max_held_out", "quantile_held_out" or "quantile_train".
    threshold_n_images_ : dict
        How many images set it: ``{"normal": n, "anomaly": m}``. A quantile threshold from
        fewer than :data:`MIN_QUANTILE_NORMALS` normal scores gives a SpadecamWarning.
    """

    _model_attrs = ("vae_", "cnn_")

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        cnn_config: CNNConfig | None = None,
        vae_train: TrainConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        cam_layer: int = -1,
        input_branch: str = "abs",
        recon_branch: str = "relu",
        normalise: bool = True,
        upsample: str = "bilinear",
        cam_method: str = "auto",
        error_smoothing: float = 0.0,
        error_norm: str = "l1",
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
    ) -> None:
        self.vae_config = vae_config
        self.cnn_config = cnn_config
        self.vae_train = vae_train
        self.cnn_train = cnn_train
        self.loss = loss
        self.cam_layer = cam_layer
        self.input_branch = input_branch
        self.recon_branch = recon_branch
        self.normalise = normalise
        self.upsample = upsample
        self.cam_method = cam_method
        self.error_smoothing = error_smoothing
        self.error_norm = error_norm
        self.batch_size = batch_size
        self.precision = precision
        self.threshold_quantile = threshold_quantile
        self.threshold_holdout = threshold_holdout

    def fit(self, X: Any, y: Any) -> SPADE:
        """Train the VAE on X[y == 0] (eq. 1) and the classifier on all of X (eq. 2).

        Parameters
        ----------
        X : array-like (N, H, W) or (N, C, H, W), uint8 [0, 255] or float [0, 1]
        y : array-like (N,), 0 = normal, 1 = known anomaly

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad shapes, dtypes or ranges; labels other than 0/1; no normal or no known-anomaly
            images; too few normal images for ``threshold_holdout``.

        Notes
        -----
        With ``threshold_holdout > 0`` the held-out images are split off first (seeded by the
        training seed) and neither model sees them; ``threshold_`` comes from their scores.
        """
        x = as_image_tensor(X)
        yt = _as_labels(y, x.shape[0])
        if not ((yt == 0).any() and (yt == 1).any()):
            raise ValueError("fit needs both normal (y == 0) and known-anomaly (y == 1) images")
        xf, yf, x_hold, a_hold = self._threshold_split(x, yt)
        vcfg = self.vae_config or VAEConfig(in_channels=x.shape[1], image_size=x.shape[-1])
        ccfg = self.cnn_config or CNNConfig(in_channels=x.shape[1])
        with self._fitting():
            self.vae_ = _prepare(train_vae(xf[yf == 0], vcfg, self.vae_train))
            self.cnn_ = _prepare(train_cnn(xf, yf, ccfg, self.cnn_train, self.loss))
            self._set_threshold(xf[yf == 0] if x_hold is None else x_hold, a_hold,
                                held_out=x_hold is not None)
        return self

    @classmethod
    def from_models(cls, vae: ConvVAE, cnn: ConvClassifier, **params: Any):
        """A fitted detector around a trained VAE and classifier (``threshold_`` unset).

        Used by the reproduction, which trains the VAE once and a classifier per known class.
        The models are used, not copied; their train/eval modes are left as they are
        (scoring runs in eval mode and restores them).
        """
        det = cls(**params)
        det.vae_ = _prepare(vae)
        det.cnn_ = _prepare(cnn)
        det.threshold_ = None
        return det

    def _map_kwargs(self) -> dict[str, Any]:
        return dict(
            cam_layer=self.cam_layer,
            input_branch=self.input_branch,
            recon_branch=self.recon_branch,
            normalise=self.normalise,
            upsample=self.upsample,
            cam_method=self.cam_method,
            error_smoothing=self.error_smoothing,
            error_norm=self.error_norm,
        )

    def error_map_from_reconstruction(
        self, u: torch.Tensor, u_hat: torch.Tensor, cams: Any = None
    ) -> torch.Tensor:
        """Weighted error e' (N, H, W) given precomputed reconstructions (float [0, 1]).

        ``cams``: the signed maps from :meth:`signed_cams` of a detector with the same
        classifier, ``cam_layer``, ``cam_method`` and precision (then no CNN pass is run).
        """
        _require(self, "cnn_")
        with _scoring_context(self.precision, self.cnn_) as device:
            m = spade_error_map(self.cnn_, u.to(device), u_hat.to(device), cams=cams,
                                **self._map_kwargs())
            return m.float().cpu()

    def signed_cams(
        self, u: torch.Tensor, u_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """M(u), M(u_hat) (eq. 4) in this detector's precision, for :meth:`error_map_from_reconstruction`.

        The map of u_hat is None when ``recon_branch == "none"`` (it would not be used).
        """
        _require(self, "cnn_")
        with _scoring_context(self.precision, self.cnn_) as device:
            u_hat = None if self.recon_branch == "none" else u_hat.to(device)
            return signed_cams(self.cnn_, u.to(device), u_hat, self.cam_layer, self.cam_method)

    def _scores_and_maps(self, u: torch.Tensor, want_maps: bool) -> tuple[torch.Tensor, Any]:
        _require(self, "vae_", "cnn_")
        with _scoring_context(self.precision, self.cnn_, self.vae_) as device:
            u = u.to(device)
            u_hat = self.vae_.reconstruct(u)
            m = spade_error_map(self.cnn_, u, u_hat, **self._map_kwargs()).float().cpu()
        return m.sum(dim=(1, 2)), (m if want_maps else None)

    def anomaly_map(self, X: Any) -> np.ndarray:
        """Weighted reconstruction error e' per pixel: (N, H, W) float32, >= 0.

        Its sum over pixels is :meth:`decision_function`. Raises NonFiniteScoreError as
        :meth:`decision_function` does.
        """
        maps = torch.cat(
            [self._scores_and_maps(u, True)[1] for u in _batches(X, self.batch_size)]
        ).numpy()
        _check_finite(self, maps)
        return maps

    def decision_function_and_map(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`decision_function` and :meth:`anomaly_map` from one scoring pass.

        Returns
        -------
        scores : ndarray (N,), float64, higher = more anomalous
        maps : ndarray (N, H, W), float32, >= 0, the weighted error e' (Algorithm 1)
        """
        out = [self._scores_and_maps(u, True) for u in _batches(X, self.batch_size)]
        scores = torch.cat([s for s, _ in out]).double().numpy()
        _check_finite(self, scores)
        return scores, torch.cat([m for _, m in out]).numpy()


class NaiveSPADE(SPADE):
    """Naive SPADE baseline: e * ReLU(Grad-CAM(u)), not normalised (paper section III).

    Same parameters as :class:`SPADE` with ``input_branch="relu"``, ``recon_branch="none"``,
    ``normalise=False`` as defaults (plain Grad-CAM on the input only).
    """

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        cnn_config: CNNConfig | None = None,
        vae_train: TrainConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        cam_layer: int = -1,
        input_branch: str = "relu",
        recon_branch: str = "none",
        normalise: bool = False,
        upsample: str = "bilinear",
        cam_method: str = "auto",
        error_smoothing: float = 0.0,
        error_norm: str = "l1",
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
    ) -> None:
        super().__init__(
            vae_config, cnn_config, vae_train, cnn_train, loss, cam_layer, input_branch,
            recon_branch, normalise, upsample, cam_method, error_smoothing, error_norm,
            batch_size, precision, threshold_quantile, threshold_holdout,
        )
