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
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from spadecam._fs import json_float
from spadecam._progress import warn
from spadecam.cam import (
    apply_branch,
    eval_mode,
    grad_cam,
    normalise_roi,
    upsample_roi,
    weighted_error,
)
from spadecam.data.images import RESIZE_POLICIES
from spadecam.decision import flag_anomalous, threshold_between
from spadecam.inputs import (
    PreparedImages,
    _as_tensor,
    _channels_last,
    as_image_tensor,
    image_list,
    iter_model_batches,
    maps_to_images,
    min_input_size,
    stack_maps,
    to_model_batch,
)
from spadecam.io import ModelFormatError, load_model_parts, read_config, save_models
from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier
from spadecam.models.resnet import ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.precision import resolve_scoring_precision
from spadecam.training import TrainConfig, to_float_images, train_cnn, train_vae

_M = TypeVar("_M", bound=nn.Module)

__all__ = [
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


def _prepare(model: _M) -> _M:
    # layout only: the parameters stay the same objects (an optimizer holding them still
    # works) and the train/eval mode is left to the caller; scoring switches to eval mode
    # for its duration (_scoring_context). Module.to returns the module itself.
    # torch's stubs omit Module.to's documented memory_format keyword
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- default models


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


#: Longest image side blurred as two matrix products; longer sides use two 1-D convolutions.
BLUR_MATRIX_MAX_SIDE = 1024


@functools.lru_cache(maxsize=32)
def blur_matrix(n: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n, n) matrix B of a 1-D Gaussian blur with replicate padding: ``B @ x`` blurs
    a length-n signal x exactly as padding it with its edge values and convolving would
    (each tap that falls outside the signal is added to the edge pixel's weight).

    Rows sum to 1. Cached per (n, sigma, dtype, device); the returned tensor is shared, so
    do not modify it.
    """
    k = _gaussian_kernel(sigma, torch.float64)
    r = len(k) // 2
    rows = torch.arange(n).repeat_interleave(len(k))
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None]).clamp(0, n - 1)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((rows, cols.reshape(-1)), k.repeat(n), accumulate=True)
    return m.to(dtype=dtype, device=device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images, per channel, with replicate padding.

    Used on the residual u - u_hat by :func:`reconstruction_error` (our extension; the paper
    has no blur). Computed as ``B_H @ x @ B_W.T`` with the blur matrices of
    :func:`blur_matrix`, two matrix products that run at the CPU's GEMM speed (a depthwise
    convolution on one channel ran 10-14x slower on 84-px batches, issue 17); sides longer
    than :data:`BLUR_MATRIX_MAX_SIDE` use two 1-D convolutions instead, whose cost does not
    grow with the side. Both give the same blur up to fp32 rounding.

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
    h, w = x.shape[-2:]
    if max(h, w) <= BLUR_MATRIX_MAX_SIDE:
        rows = (x.reshape(-1, w) @ blur_matrix(w, float(sigma), x.dtype, x.device).T)
        return torch.matmul(blur_matrix(h, float(sigma), x.dtype, x.device), rows.view(x.shape))
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
    u: torch.Tensor,
    u_hat: torch.Tensor,
    smoothing: float = 0.0,
    norm: str = "l1",
    valid: torch.Tensor | None = None,
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
    valid : Tensor (N, 1, H, W) in {0, 1}, optional
        Image pixels (1) versus letterbox padding (0) (:mod:`spadecam.inputs`). The residual
        on the padding never counts, not even through the blur: the blur is a normalised
        convolution over image pixels only, blur(r * valid) / blur(valid) on the image and 0
        on the padding, so an image reconstructed exactly has e = 0 at every aspect ratio.
        An image without padding (valid all 1) gets exactly the unmasked blur.

    Returns
    -------
    Tensor (N, C, H, W), >= 0, same dtype as the inputs; 0 on the padding when ``valid``.

    Raises
    ------
    ValueError
        ``smoothing`` negative or not finite, or an unknown ``norm``.
    """
    _check_error_params(smoothing, norm)
    r = u - u_hat
    if valid is None:
        r = gaussian_blur(r, smoothing)
    else:
        v = valid.to(r)
        r = r * v
        if smoothing > 0:
            # normalised convolution: the blur's weights renormalised over image pixels, so
            # the padding's residual never leaks into the image's border (issue 17)
            full = v.flatten(1).amin(1).view(-1, 1, 1, 1) > 0  # no padding at all
            w = torch.where(full, torch.ones_like(v), gaussian_blur(v, smoothing))
            r = torch.where(v > 0, gaussian_blur(r, smoothing) / w.clamp_min(1e-12), 0.0)
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
    valid: torch.Tensor | None = None,
    roi_power: float = 1.0,
    classifier_weight: float = 0.0,
) -> torch.Tensor:
    """Weighted reconstruction error e' of SPADE (Algorithm 1), one map per image.

    Parameters
    ----------
    cnn : nn.Module
        Normal-vs-known-anomaly classifier (logit index 0 = normal).
    u, u_hat : Tensor (N, C, H, W), float in [0, 1]
        Inputs and their VAE reconstructions.
    cam_layer : int or tuple of int
        Conv block whose Grad-CAM is read (default the last). A tuple reads several and
        averages their ROIs, each upsampled and normalised (a multi-layer ROI; our option).
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
        of the ROI on the same maps, e.g. the ablations, cost no CNN pass). One layer only.
    valid : Tensor (N, 1, H, W) in {0, 1}, optional
        Image pixels (1) versus letterbox padding (0): the ROI and the error are zeroed on
        the padding before L / |L|, so padding never counts (:mod:`spadecam.inputs`).
    roi_power : float > 0
        Temperature on the ROI: L ** roi_power before L / |L| (1 = the paper; > 1 sharpens a
        flat ROI so its peaks carry more of the weight). Our option (issue 11).
    classifier_weight : float >= 0
        Multiplies e' by (1 + classifier_weight * p), p the classifier's softmax probability
        of the known-anomaly class: the classifier's evidence counts in the score, while an
        unknown anomaly (p ~ 0) keeps its reconstruction-error score. 0 = the paper. Our
        option (issue 11).

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
    if not (roi_power > 0 and classifier_weight >= 0):
        raise ValueError(f"roi_power must be > 0 and classifier_weight >= 0, got {roi_power!r}, "
                         f"{classifier_weight!r}")
    layers = cam_layer if isinstance(cam_layer, (tuple, list)) else (cam_layer,)
    if cams is not None and len(layers) > 1:
        raise ValueError("cams holds the maps of one cam_layer; a multi-layer ROI reads its own")
    rois = []
    for layer in layers:
        m_u, m_u_hat = cams if cams is not None else signed_cams(
            cnn, u, u_hat if recon_branch != "none" else None, layer, cam_method)
        if recon_branch == "none":
            rois.append(apply_branch(m_u, input_branch))
        else:
            if m_u_hat is None:
                raise ValueError(f"recon_branch={recon_branch!r} needs the map of u_hat in cams")
            rois.append(apply_branch(m_u, input_branch) + apply_branch(m_u_hat, recon_branch))
    # under bf16 autocast only the networks run in bf16: the ROI, the blur and the error
    # are fp32 (a blurred, squared residual would lose its small values in bf16)
    with torch.autocast(u.device.type, enabled=False):
        rois = [upsample_roi(r.float(), u.shape[-2:], mode=upsample) for r in rois]
        if valid is not None:  # letterbox padding never counts
            rois = [r * valid[:, 0].to(r) for r in rois]
        if roi_power != 1.0:
            rois = [r**roi_power for r in rois]
        if normalise:
            rois = [normalise_roi(r) for r in rois]
        roi = rois[0] if len(rois) == 1 else torch.stack(rois).mean(0)
        error = reconstruction_error(u.float(), u_hat.float(), error_smoothing, error_norm,
                                     valid)
        m = weighted_error(error, roi)
    if classifier_weight:
        p = cnn(u).float().softmax(dim=1)[:, 1 - NORMAL_CLASS]
        m = m * (1 + classifier_weight * p)[:, None, None]
    return m


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
    eval mode (batch norm with its running statistics, no VAE sampling) and every submodule
    gets its own train/eval flag back afterwards (:func:`spadecam.cam.eval_mode`), so a
    model passed to ``from_models`` is scored correctly and left as the caller had it.
    """
    device = next(model.parameters()).device.type
    use_bf16 = resolve_scoring_precision(precision, device) == "bf16"
    # every submodule gets its own train/eval flag back, not the top-level module's
    with eval_mode(model, *others), torch.inference_mode(), torch.autocast(
            device, dtype=torch.bfloat16, enabled=use_bf16):
        yield device


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
    "threshold_holdout", "image_size", "resize", "roi_power", "classifier_weight", "recipe",
)
#: Scoring parameters that default (None) to the recipe's value.
_RECIPE_PARAMS = ("error_smoothing", "error_norm", "roi_power", "classifier_weight")


class _BaseDetector:
    """Shared PyOD-style plumbing: input sizes, threshold_, predict, batching."""

    batch_size: int
    precision: str
    threshold_quantile: float
    threshold_holdout: float
    image_size: int | None
    resize: str
    # fitted attributes (set by fit / from_models / load); which ones: _model_attrs
    threshold_: float | None
    vae_: ConvVAE
    cnn_: ConvClassifier
    # each detector's own signature: VAEDetector(vae), CNNDetector(cnn), SPADE(vae, cnn)
    from_models: Callable[..., Any]

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        """Scores (B,) and, if wanted, maps (B, S, S) of a batch at the model's input size."""
        raise NotImplementedError

    def _param(self, name: str) -> Any:
        """A scoring parameter: the constructor's value, or the recipe's when it is None."""
        value = getattr(self, name, None)
        if value is not None:
            return value
        recipe = getattr(self, "recipe", "spadecam")
        _check_recipe(recipe)
        return RECIPE_DEFAULTS[recipe][name]

    # ------------------------------------------------------------------ sizes

    def _input_spec(self) -> tuple[int | None, int | None]:
        """(model input side or None = any, channels or None = any) of the fitted models."""
        return getattr(self, "image_size_", None), getattr(self, "in_channels_", None)

    def _set_input_from_models(self) -> None:
        vae = getattr(self, "vae_", None)
        cnn = getattr(self, "cnn_", None)
        self.image_size_ = vae.config.image_size if vae is not None else self.image_size
        model = vae if vae is not None else cnn
        self.in_channels_ = model.config.in_channels if model is not None else None

    def _fit_size(
        self, imgs: torch.Tensor | list[torch.Tensor], vae_config: Any, cnn_config: Any
    ) -> int:
        """The model input side S for fit: ``image_size``, else the VAE config's, else the
        data's longest side (the images' own size when they are square and alike).

        Raises ValueError naming where S came from when it is below the networks' minimum.
        """
        cfg_size = getattr(vae_config, "image_size", None)
        if self.image_size is not None and cfg_size is not None and self.image_size != cfg_size:
            raise ValueError(
                f"image_size={self.image_size} differs from vae_config.image_size={cfg_size}; "
                "give one of them"
            )
        sizes = [tuple(imgs.shape[-2:])] if isinstance(imgs, torch.Tensor) else [
            tuple(t.shape[-2:]) for t in imgs]
        if self.image_size is not None:
            size, source = int(self.image_size), f"image_size={self.image_size}"
        elif cfg_size is not None:
            size, source = int(cfg_size), f"vae_config.image_size={cfg_size}"
        else:
            size = int(max(max(hw) for hw in sizes))
            source = (f"X (images of {sizes[0][0]}x{sizes[0][1]} pixels; the model input is "
                      "their longest side)")
        need = min_input_size(vae_config, cnn_config)
        if size < need:
            raise ValueError(
                f"{source} is below the minimum input side of {need} pixels the networks "
                f"accept; pass image_size >= {need} (images are resized to it)"
            )
        return size

    def _fit_inputs(
        self, X: Any, y: Any, vae_config: Any, cnn_config: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int, int]:
        """Validated fit images at the model's input: (x, valid, y, size S, channels C).

        x is (N, C, S, S) (uint8 kept when no resizing is needed, else float32 in [0, 1]);
        valid is the letterbox mask (N, 1, S, S) or None (:mod:`spadecam.inputs`).
        """
        if isinstance(X, PreparedImages):
            x = as_image_tensor(X.x)
            valid = None if X.valid is None else _as_tensor(X.valid).float()
            if x.shape[-1] != x.shape[-2] or (valid is not None and valid.shape[-2:] != x.shape[-2:]):
                raise ValueError("PreparedImages.x must be square (N, C, S, S) and valid (N, 1, S, S)")
            size = self._fit_size(x, vae_config, cnn_config)
            return x, valid, _as_labels(y, len(x)), size, x.shape[1]
        imgs = image_list(X)
        yt = _as_labels(y, len(imgs))
        channels = imgs[0].shape[1] if isinstance(imgs, list) else imgs.shape[1]
        for name, cfg in (("vae_config", vae_config), ("cnn_config", cnn_config)):
            c = getattr(cfg, "in_channels", None)
            if c is not None and c != channels:
                raise ValueError(f"{name}.in_channels={c} but X has {channels} channel(s)")
        size = self._fit_size(imgs, vae_config, cnn_config)
        if isinstance(imgs, torch.Tensor) and tuple(imgs.shape[-2:]) == (size, size):
            return imgs, None, yt, size, channels
        mb = to_model_batch(imgs, size, self.resize, name="X")
        return mb.u.contiguous(), mb.valid, yt, size, channels

    # ------------------------------------------------------------------ scoring

    def _iter_scores(self, X: Any, want_maps: bool) -> Iterator[tuple[torch.Tensor, Any]]:
        size, channels = self._input_spec()
        for mb in iter_model_batches(X, self.batch_size, size, self.resize, channels):
            scores, maps = self._scores_and_maps(mb.u, mb.valid, want_maps)
            yield scores, (maps_to_images(maps, mb) if want_maps else None)

    def _score_prepared(self, x: torch.Tensor, valid: torch.Tensor | None) -> np.ndarray:
        """Scores of images already at the model's input (fit's threshold)."""
        out = []
        for i in range(0, len(x), self.batch_size):
            v = None if valid is None else valid[i : i + self.batch_size]
            u = _channels_last(to_float_images(x[i : i + self.batch_size]))
            out.append(self._scores_and_maps(u, v, False)[0])
        scores = torch.cat(out).double().numpy()
        _check_finite(self, scores)
        return scores

    def _maps(self, X: Any) -> np.ndarray | list[np.ndarray]:
        maps = [m for _, ms in self._iter_scores(X, True) for m in ms]
        bad = [i for i, m in enumerate(maps) if not np.isfinite(m).all()]
        if bad:
            _check_finite(self, np.array([np.nan if i in bad else 0.0 for i in range(len(maps))]))
        return stack_maps(maps)

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly score per image, higher = more anomalous.

        Parameters
        ----------
        X : array-like (N, H, W) or (N, C, H, W), uint8 [0, 255] or float [0, 1], any H and W;
            a list of single images (H, W) / (C, H, W) whose sizes may differ; or an
            iterable of batches (e.g. a DataLoader), consumed with flat memory. Images are
            brought to the model's input (``image_size_``, ``resize``; :mod:`spadecam.inputs`).

        Returns
        -------
        ndarray (N,), float64, finite: the sum of the per-pixel map over the image's pixels
        on the model's input grid (letterbox padding excluded).

        Raises
        ------
        ValueError
            Bad shapes, dtypes, ranges, or a channel count the models do not take.
        NonFiniteScoreError
            A score is NaN or infinite (models with non-finite weights); names the images.
        """
        out = [s for s, _ in self._iter_scores(X, False)]
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
        assert self.threshold_ is not None  # _require raised NotFittedError otherwise
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
        # resolved values, so a saved model scores the same whatever later recipes default to
        params = {k: (self._param(k) if k in _RECIPE_PARAMS else getattr(self, k))
                  for k in self._saved_params()}
        config = {
            "detector": {"class": type(self).__name__, "params": params},
            "threshold_": getattr(self, "threshold_", None),
            "threshold_source": getattr(self, "threshold_source_", None),
            "threshold_n_images": getattr(self, "threshold_n_images_", None),
            "preprocessing": preprocessing or getattr(self, "preprocessing_", None),
            # the model's input, read back by load: images of any size are brought to it
            "input": {"image_size": self._input_spec()[0], "channels": self._input_spec()[1],
                      "resize": self.resize},
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
        if isinstance(params.get("cam_layer"), list):  # a multi-layer ROI, stored as a list
            params["cam_layer"] = tuple(params["cam_layer"])
        pre = config.get("preprocessing") or {}
        if "resize" not in params and pre.get("resize") in RESIZE_POLICIES:
            params["resize"] = pre["resize"]  # a model directory from before the "input" entry
        det = cls.from_models(*models, **params)
        try:
            det.threshold_ = json_float(config.get("threshold_"), "threshold_")
        except ValueError as exc:
            raise ModelFormatError(f"{path}/config.json: {exc}") from None
        det.preprocessing_ = config.get("preprocessing")
        size = (config.get("input") or {}).get("image_size") or pre.get("image_size")
        if size is not None:
            det.image_size_ = int(size)
        return det

    def _threshold_split(self, y: torch.Tensor) -> torch.Tensor | None:
        """Which images to hold out for ``threshold_``: ``threshold_holdout`` of the normals
        and of the known anomalies (bool mask (N,)), or None when ``threshold_holdout == 0``.

        At least 2 normals and 1 known anomaly stay for training; a class too small to spare
        an image holds none out (normals: error).
        """
        frac = self.threshold_holdout
        if not 0 <= frac < 1:
            raise ValueError(f"threshold_holdout must be in [0, 1), got {frac!r}")
        if frac == 0:
            return None
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
        return hold

    def _fit_with_threshold(self, X: Any, y: Any, vae_config: Any, cnn_config: Any,
                            need_anomalies: bool, train: Any) -> None:
        """The fit shared by the detectors: inputs at the model's size, the threshold split,
        ``train(x, y, size, channels)`` on the images kept for training, then ``threshold_``.
        """
        x, valid, yt, size, channels = self._fit_inputs(X, y, vae_config, cnn_config)
        if need_anomalies and not ((yt == 0).any() and (yt == 1).any()):
            raise ValueError("fit needs both normal (y == 0) and known-anomaly (y == 1) images")
        if not need_anomalies and (yt == 0).sum() < 2:
            raise ValueError("fit needs at least 2 normal images (y == 0)")
        hold = self._threshold_split(yt)
        keep = torch.ones(len(yt), dtype=torch.bool) if hold is None else ~hold
        with self._fitting():  # every fitted attribute set, or on an error none
            train(x[keep], yt[keep], size, channels)
            self.image_size_, self.in_channels_ = size, channels
            self._set_threshold(x, valid, yt, hold)

    def _set_threshold(self, x: torch.Tensor, valid: torch.Tensor | None, yt: torch.Tensor,
                       hold: torch.Tensor | None) -> None:
        """``threshold_`` from the held-out images' scores (the training normals' without a
        hold-out), padding masked by ``valid``; sets ``threshold_source_`` / ``_n_images_``."""
        def scores(mask: torch.Tensor) -> np.ndarray:
            return self._score_prepared(x[mask], None if valid is None else valid[mask])

        # See fit_threshold: F1-max when held-out anomalies exist, else a normal quantile.
        anomaly = None
        if hold is None:
            normal, held_out = scores(yt == 0), False
        else:
            normal, held_out = scores(hold & (yt == 0)), True
            if (hold & (yt == 1)).any():
                anomaly = scores(hold & (yt == 1))
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
    image_size : int, optional
        Side of the square model input in pixels; images of any size are brought to it.
        None (default): the VAE config's ``image_size`` if set, else the longest image side
        seen by ``fit``. Must be at least the networks' minimum
        (:func:`spadecam.inputs.min_input_size`, 16 for the default VAE).
    resize : {"letterbox", "resize"}
        How an image of another size reaches the input: "letterbox" (default) keeps the
        aspect ratio and pads, the padding never counting in the score; "resize" stretches.
        Maps are returned at each image's own size either way (:mod:`spadecam.inputs`).
    """

    _model_attrs = ("vae_",)

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        vae_train: TrainConfig | None = None,
        error_smoothing: float | None = None,
        error_norm: str | None = None,
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
        image_size: int | None = None,
        resize: str = "letterbox",
        recipe: str = "spadecam",
    ) -> None:
        self.vae_config = vae_config
        self.vae_train = vae_train
        self.error_smoothing = error_smoothing
        self.error_norm = error_norm
        self.batch_size = batch_size
        self.precision = precision
        self.threshold_quantile = threshold_quantile
        self.threshold_holdout = threshold_holdout
        self.image_size = image_size
        self.resize = resize
        self.recipe = recipe

    def fit(self, X: Any, y: Any = None) -> VAEDetector:
        """Train the VAE on the normal images (y == 0) of X (eq. 1). Returns self."""
        vae_config = self.vae_config or default_vae_config(self.recipe)

        def train(x: torch.Tensor, y: torch.Tensor, size: int, channels: int) -> None:
            cfg = vae_config.sized(channels, size)
            self.vae_ = _prepare(train_vae(x[y == 0], cfg, self.vae_train))

        self._fit_with_threshold(X, y, vae_config, None, False, train)
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
        det._set_input_from_models()
        return det

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        _require(self, "vae_")
        with _scoring_context(self.precision, self.vae_) as device:
            u = u.to(device)
            u_hat = self.vae_.reconstruct(u).float()
            with torch.autocast(device, enabled=False):  # the error in fp32, as in SPADE
                # letterbox padding never counts, not even blurred into the image's border
                e = reconstruction_error(u, u_hat, self._param("error_smoothing"),
                                         self._param("error_norm"), valid)
            e = e.sum(dim=1).cpu()
        return e.sum(dim=(1, 2)), (e if want_maps else None)

    def anomaly_map(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Reconstruction error e per pixel, summed over channels, at each image's own size.

        Returns
        -------
        ndarray (N, H, W) float32 >= 0 when all images share one size, else a list of
        (H_i, W_i) arrays (:func:`spadecam.inputs.maps_to_images`).
        """
        return self._maps(X)


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
    recipe : {"spadecam", "paper"}
        Which default classifier (:func:`default_cnn_config`).
    cnn_train : TrainConfig, optional
    loss : {"eq2", "cross_entropy"}
        Classifier loss (eq. 2 by default).
    threshold_holdout : float in [0, 1)
        Share of the normal (and of the known-anomaly) images split off with the training
        seed before training and used only to set ``threshold_`` (:func:`fit_threshold`:
        F1-max with held-out anomalies, else the quantile of held-out normal scores).
        0 (default) keeps every image for training and takes the quantile of the normal
        training scores, which runs low because the models have seen those images.
    image_size : int, optional
        Side of the square model input in pixels; images of any size are brought to it.
        None (default): the VAE config's ``image_size`` if set, else the longest image side
        seen by ``fit``. Must be at least the networks' minimum
        (:func:`spadecam.inputs.min_input_size`, 16 for the default VAE).
    resize : {"letterbox", "resize"}
        How an image of another size reaches the input: "letterbox" (default) keeps the
        aspect ratio and pads, the padding never counting in the score; "resize" stretches.
        Maps are returned at each image's own size either way (:mod:`spadecam.inputs`).
    """

    _model_attrs = ("cnn_",)

    def __init__(
        self,
        cnn_config: CNNConfig | ResNetConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
        image_size: int | None = None,
        resize: str = "letterbox",
        recipe: str = "spadecam",
    ) -> None:
        self.cnn_config = cnn_config
        self.cnn_train = cnn_train
        self.loss = loss
        self.batch_size = batch_size
        self.precision = precision
        self.threshold_quantile = threshold_quantile
        self.threshold_holdout = threshold_holdout
        self.image_size = image_size
        self.resize = resize
        self.recipe = recipe

    def fit(self, X: Any, y: Any) -> CNNDetector:
        """Train the classifier on normal (y == 0) and known-anomaly (y == 1) images (eq. 2)."""
        cnn_config = self.cnn_config or default_cnn_config(None, self.recipe)

        def train(x: torch.Tensor, y: torch.Tensor, size: int, channels: int) -> None:
            cfg = (self.cnn_config or default_cnn_config(size, self.recipe)).sized(channels)
            self.cnn_ = _prepare(train_cnn(x, y, cfg, self.cnn_train, self.loss))

        self._fit_with_threshold(X, y, None, cnn_config, True, train)
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
        det._set_input_from_models()
        return det

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        # the classifier sees the letterboxed image whole, as in training (valid unused)
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
        Model hyper-parameters; default :func:`default_vae_config` and
        :func:`default_cnn_config` of ``recipe``, sized to the data (spadecam: 4-conv VAE with
        an 8-d latent, 3-conv CNN with kernels from the image size; paper: 128-d latent,
        3x3 kernels).
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
    error_smoothing : float >= 0, pixels, optional
        Gaussian blur (standard deviation, pixels) of the residual u - u_hat before the norm.
        0 is the paper's e; None (default) takes the recipe's: 2 for ``spadecam`` (our
        extension: it averages out pixel noise, +0.08-0.12 AUROC on Noisy-MNIST, README).
    error_norm : {"l1", "l2"}, optional
        "l1" is the paper's |r|; "l2" squares the (smoothed) residual. None: the recipe's
        ("l2" spadecam, "l1" paper).
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
    image_size : int, optional
        Side of the square model input in pixels; images of any size are brought to it.
        None (default): ``vae_config.image_size`` if set, else the longest image side seen
        by ``fit``. Must be at least the networks' minimum
        (:func:`spadecam.inputs.min_input_size`, 16 for the default VAE).
    resize : {"letterbox", "resize"}
        How an image of another size reaches the input: "letterbox" (default) keeps the
        aspect ratio and pads, the padding never counting in the score; "resize" stretches.
        Maps are returned at each image's own size either way (:mod:`spadecam.inputs`).
    roi_power, classifier_weight : float, optional
        Our ROI options (1 and 0 = the paper): a temperature L ** roi_power on the ROI and a
        factor (1 + classifier_weight * p_known_anomaly) on e' (:func:`spade_error_map`).
        None: the recipe's.
    recipe : {"spadecam", "paper"}
        Defaults for every argument left at None (:data:`RECIPE_DEFAULTS`); "paper" is the
        paper's architecture and error, one argument away: ``SPADE(recipe="paper")``.

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
    image_size_ : int
        Side of the model input the images are brought to (recorded in saved models).
    in_channels_ : int
        Channels the models take.
    """

    _model_attrs = ("vae_", "cnn_")

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        cnn_config: CNNConfig | ResNetConfig | None = None,
        vae_train: TrainConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        cam_layer: int = -1,
        input_branch: str = "abs",
        recon_branch: str = "relu",
        normalise: bool = True,
        upsample: str = "bilinear",
        cam_method: str = "auto",
        error_smoothing: float | None = None,
        error_norm: str | None = None,
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
        image_size: int | None = None,
        resize: str = "letterbox",
        roi_power: float | None = None,
        classifier_weight: float | None = None,
        recipe: str = "spadecam",
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
        self.image_size = image_size
        self.resize = resize
        self.recipe = recipe
        self.roi_power = roi_power
        self.classifier_weight = classifier_weight

    def fit(self, X: Any, y: Any) -> SPADE:
        """Train the VAE on X[y == 0] (eq. 1) and the classifier on all of X (eq. 2).

        Parameters
        ----------
        X : array-like (N, H, W) or (N, C, H, W), uint8 [0, 255] or float [0, 1], any H, W;
            or a list of single images (H, W) / (C, H, W) whose sizes may differ. They are
            brought to ``image_size_`` (see ``image_size``, ``resize``).
        y : array-like (N,), 0 = normal, 1 = known anomaly

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad shapes, dtypes or ranges; labels other than 0/1; no normal or no known-anomaly
            images; too few normal images for ``threshold_holdout``; a model input side below
            the networks' minimum (naming ``image_size``, ``vae_config.image_size`` or X);
            configs whose ``in_channels`` differ from the images'.

        Notes
        -----
        With ``threshold_holdout > 0`` the held-out images are split off first (seeded by the
        training seed) and neither model sees them; ``threshold_`` comes from their scores.
        """
        vae_config = self.vae_config or default_vae_config(self.recipe)
        cnn_config = self.cnn_config or default_cnn_config(None, self.recipe)

        def train(x: torch.Tensor, y: torch.Tensor, size: int, channels: int) -> None:
            cnn = (self.cnn_config or default_cnn_config(size, self.recipe)).sized(channels)
            self.vae_ = _prepare(train_vae(x[y == 0], vae_config.sized(channels, size),
                                           self.vae_train))
            self.cnn_ = _prepare(train_cnn(x, y, cnn, self.cnn_train, self.loss))

        self._fit_with_threshold(X, y, vae_config, cnn_config, True, train)
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
        det._set_input_from_models()
        return det

    def _map_kwargs(self) -> dict[str, Any]:
        return dict(
            cam_layer=self.cam_layer,
            input_branch=self.input_branch,
            recon_branch=self.recon_branch,
            normalise=self.normalise,
            upsample=self.upsample,
            cam_method=self.cam_method,
            error_smoothing=self._param("error_smoothing"),
            error_norm=self._param("error_norm"),
            roi_power=self._param("roi_power"),
            classifier_weight=self._param("classifier_weight"),
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
            u_hat_d = None if self.recon_branch == "none" else u_hat.to(device)
            return signed_cams(self.cnn_, u.to(device), u_hat_d, self.cam_layer, self.cam_method)

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        _require(self, "vae_", "cnn_")
        with _scoring_context(self.precision, self.cnn_, self.vae_) as device:
            u = u.to(device)
            u_hat = self.vae_.reconstruct(u)
            v = None if valid is None else valid.to(device)
            m = spade_error_map(self.cnn_, u, u_hat, valid=v, **self._map_kwargs()).float().cpu()
        return m.sum(dim=(1, 2)), (m if want_maps else None)

    def anomaly_map(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Weighted reconstruction error e' per pixel, at each image's own size.

        Returns
        -------
        ndarray (N, H, W) float32 >= 0 when all images share one size, else a list of
        (H_i, W_i) arrays. For an image at the model's input size its sum is
        :meth:`decision_function`; otherwise the map is the image's region of e' resized to
        the image (:func:`spadecam.inputs.maps_to_images`) and the score stays the sum on the
        model grid. Raises NonFiniteScoreError as :meth:`decision_function` does.
        """
        return self._maps(X)

    def decision_function_and_map(self, X: Any) -> tuple[np.ndarray, Any]:
        """:meth:`decision_function` and :meth:`anomaly_map` from one scoring pass.

        Returns
        -------
        scores : ndarray (N,), float64, higher = more anomalous
        maps : ndarray (N, H, W) float32 >= 0 (or a list of (H_i, W_i) arrays for mixed
            sizes), the weighted error e' (Algorithm 1) at each image's size
        """
        out = list(self._iter_scores(X, True))
        scores = torch.cat([s for s, _ in out]).double().numpy()
        _check_finite(self, scores)
        return scores, stack_maps([m for _, ms in out for m in ms])


class NaiveSPADE(SPADE):
    """Naive SPADE baseline: e * ReLU(Grad-CAM(u)), not normalised (paper section III).

    Same parameters as :class:`SPADE` with ``input_branch="relu"``, ``recon_branch="none"``,
    ``normalise=False`` as defaults (plain Grad-CAM on the input only).
    """

    def _param(self, name: str) -> Any:
        # the recipe's ROI options are SPADE's; the baseline keeps plain Grad-CAM unless told
        if name in ("roi_power", "classifier_weight") and getattr(self, name) is None:
            return RECIPE_DEFAULTS["paper"][name]
        return super()._param(name)

    def __init__(
        self,
        vae_config: VAEConfig | None = None,
        cnn_config: CNNConfig | ResNetConfig | None = None,
        vae_train: TrainConfig | None = None,
        cnn_train: TrainConfig | None = None,
        loss: str = "eq2",
        cam_layer: int = -1,
        input_branch: str = "relu",
        recon_branch: str = "none",
        normalise: bool = False,
        upsample: str = "bilinear",
        cam_method: str = "auto",
        error_smoothing: float | None = None,
        error_norm: str | None = None,
        batch_size: int = 256,
        precision: str = "auto",
        threshold_quantile: float = 0.99,
        threshold_holdout: float = 0.0,
        image_size: int | None = None,
        resize: str = "letterbox",
        roi_power: float | None = None,
        classifier_weight: float | None = None,
        recipe: str = "spadecam",
    ) -> None:
        super().__init__(
            vae_config, cnn_config, vae_train, cnn_train, loss, cam_layer, input_branch,
            recon_branch, normalise, upsample, cam_method, error_smoothing, error_norm,
            batch_size, precision, threshold_quantile, threshold_holdout, image_size, resize,
            roi_power, classifier_weight, recipe,
        )
