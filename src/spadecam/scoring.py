"""The scoring graph of SPADE (Algorithm 1): signed Grad-CAM maps of u and u_hat (eq. 3-4),
the ROI (eq. 5), the weighted reconstruction error e', and the context every detector scores
in (eval mode, inference mode, bf16 autocast where chosen).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from spadecam.cam import eval_mode, grad_cam
from spadecam.error import reconstruction_error
from spadecam.models.cnn import NORMAL_CLASS
from spadecam.precision import resolve_scoring_precision
from spadecam.roi import roi_weights, weighted_error


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
        rois.append(roi_weights(m_u, m_u_hat, u.shape[-2:], input_branch=input_branch,
                                recon_branch=recon_branch, upsample=upsample, valid=valid,
                                power=roi_power, normalise=normalise))
    # under bf16 autocast only the networks run in bf16: the ROI, the blur and the error
    # are fp32 (a blurred, squared residual would lose its small values in bf16)
    with torch.autocast(u.device.type, enabled=False):
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
def scoring_context(precision: str, model: nn.Module, *others: nn.Module) -> Iterator[str]:
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
