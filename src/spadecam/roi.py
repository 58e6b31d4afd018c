"""The SPADE region of interest (ROI), eq. 5 of Narita et al. (arXiv 1810.02607), written once.

From the signed Grad-CAM maps M(u) and M(u_hat) of :mod:`spadecam.cam` (eq. 3-4, at the
feature resolution h x w) to the per-pixel weights of the reconstruction error:

1. branches: L = Abs(M(u)) + ReLU(M(u_hat)) (:func:`eq5`; other branches serve ablations and
   Naive SPADE, whose ROI is ReLU(M(u)) alone);
2. upsampling to the image, H x W (:func:`upsample_roi`; bilinear, ``align_corners=False``);
3. letterbox padding set to 0 (``valid``);
4. the power L ** p (our option, ``roi_power``; 1 = the paper);
5. normalisation L / |L| with |L| the per-image sum (:func:`normalise_roi`; Algorithm 1).

:func:`roi_weights` runs 2-5 after 1, in fp32 whatever the autocast state; every path in
spadecam (scoring, figures, benchmarks) takes the ROI from it. The weighted error
e' = e * L / |L| is :func:`weighted_error`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "BRANCHES",
    "apply_branch",
    "eq5",
    "normalise_roi",
    "roi_weights",
    "upsample_roi",
    "weighted_error",
]

#: Elementwise functions a map can go through before it enters the ROI (eq. 5 uses
#: "abs" on the input and "relu" on the reconstruction; the others serve ablations).
BRANCHES = ("abs", "relu", "none", "identity")


def apply_branch(m: torch.Tensor, branch: str) -> torch.Tensor:
    """Apply one of :data:`BRANCHES` to a signed map.

    ``"abs"`` — Abs (eq. 5, input branch), ``"relu"`` — ReLU (eq. 5, reconstruction branch and
    plain Grad-CAM), ``"identity"`` — the signed map unchanged, ``"none"`` — drop the term
    (zeros).

    Raises
    ------
    ValueError
        An unknown branch.
    """
    if branch == "abs":
        return m.abs()
    if branch == "relu":
        return m.clamp_min(0)
    if branch == "identity":
        return m
    if branch == "none":
        return torch.zeros_like(m)
    raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")


def eq5(
    m_u: torch.Tensor,
    m_u_hat: torch.Tensor | None,
    input_branch: str = "abs",
    recon_branch: str = "relu",
) -> torch.Tensor:
    """L = input_branch(M(u)) + recon_branch(M(u_hat)) at feature resolution (eq. 5).

    Parameters
    ----------
    m_u, m_u_hat : Tensor (N, h, w), the signed Grad-CAM maps of u and u_hat (eq. 4);
        ``m_u_hat`` may be None when ``recon_branch`` is "none".
    input_branch, recon_branch : str, see :func:`apply_branch`; defaults are the paper's.

    Returns
    -------
    Tensor (N, h, w) in the maps' dtype; >= 0 for the paper's branches.

    Raises
    ------
    ValueError
        An unknown branch, or ``m_u_hat`` None with a recon_branch other than "none".
    """
    if recon_branch == "none":
        return apply_branch(m_u, input_branch)
    if m_u_hat is None:
        raise ValueError(f"recon_branch={recon_branch!r} needs the map of u_hat")
    return apply_branch(m_u, input_branch) + apply_branch(m_u_hat, recon_branch)


def upsample_roi(roi: torch.Tensor, size: tuple[int, ...], mode: str = "bilinear") -> torch.Tensor:
    """Upsample an ROI (N, h, w) to the image size (N, H, W).

    Bilinear with ``align_corners=False`` by default (the paper does not say; this is what
    common Grad-CAM code does). ``mode`` is any of ``F.interpolate``'s 2-D modes.
    """
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(roi.unsqueeze(1), size=size, mode=mode, **kwargs).squeeze(1)


def normalise_roi(roi: torch.Tensor) -> torch.Tensor:
    """L / |L| per image, with |L| read as the sum of L over pixels (Algorithm 1).

    Under this reading the weights of an image sum to 1 and the SPADE score is a weighted
    mean of the reconstruction error. An all-zero ROI gives all-zero weights, not NaN.

    Parameters
    ----------
    roi : Tensor (N, H, W), float, >= 0

    Returns
    -------
    Tensor (N, H, W), each image summing to 1 (or all zeros).
    """
    total = roi.sum(dim=(1, 2), keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, roi / safe, torch.zeros_like(roi))


def roi_weights(
    m_u: torch.Tensor,
    m_u_hat: torch.Tensor | None,
    size: tuple[int, ...],
    *,
    input_branch: str = "abs",
    recon_branch: str = "relu",
    upsample: str = "bilinear",
    valid: torch.Tensor | None = None,
    power: float = 1.0,
    normalise: bool = True,
) -> torch.Tensor:
    """The ROI of eq. 5 at the image size: the weights of the reconstruction error.

    Parameters
    ----------
    m_u, m_u_hat : Tensor (N, h, w), signed Grad-CAM maps (eq. 4), any float dtype
    size : (H, W), the image size in pixels
    input_branch, recon_branch : see :func:`eq5`
    upsample : an ``F.interpolate`` 2-D mode, see :func:`upsample_roi`
    valid : Tensor (N, 1, H, W) in {0, 1}, optional
        Image pixels (1) versus letterbox padding (0); the ROI is 0 on the padding before
        the power and L / |L|, so padding never counts (:mod:`spadecam.inputs`).
    power : float > 0
        L ** power before L / |L| (1 = the paper; our option ``roi_power``).
    normalise : bool
        Divide by the per-image sum (Algorithm 1); False gives the upsampled L itself
        (Naive SPADE, figures).

    Returns
    -------
    Tensor (N, H, W) float32, >= 0 for the paper's branches; each image sums to 1 (or is all
    zeros) when ``normalise``.

    Raises
    ------
    ValueError
        An unknown branch, a missing ``m_u_hat``, or ``power`` <= 0.
    """
    if not power > 0:
        raise ValueError(f"roi_power must be > 0, got {power!r}")
    roi = eq5(m_u, m_u_hat, input_branch, recon_branch)
    # the networks may run under bf16 autocast; the ROI's arithmetic is fp32
    with torch.autocast(roi.device.type, enabled=False):
        roi = upsample_roi(roi.float(), size, mode=upsample)
        if valid is not None:
            roi = roi * valid[:, 0].to(roi)
        if power != 1.0:
            roi = roi**power
        return normalise_roi(roi) if normalise else roi


def weighted_error(error: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """e' = e * L (Algorithm 1), summed over channels.

    Parameters
    ----------
    error : Tensor (N, C, H, W), reconstruction error |u - u_hat| on the [0, 1] scale
    weights : Tensor (N, H, W)

    Returns
    -------
    Tensor (N, H, W); its per-image sum is the anomaly score.
    """
    return (error * weights.unsqueeze(1)).sum(dim=1)
