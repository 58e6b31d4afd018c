"""The reconstruction error e = |u - u_hat| of Algorithm 1, and our options on it: a
Gaussian blur of the residual (:func:`gaussian_blur`, a matrix product) and the l2 norm;
letterbox padding never counts (:func:`reconstruction_error` with ``valid``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from spadecam._runtime import is_exporting

ERROR_NORMS = ("l1", "l2")


def _gaussian_kernel(sigma: float, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return (k / k.sum()).to(dtype)


#: Longest image side blurred as two matrix products; longer sides use two 1-D convolutions.
BLUR_MATRIX_MAX_SIDE = 1024


def blur_matrix(n: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n, n) matrix B of a 1-D Gaussian blur with replicate padding: ``B @ x`` blurs
    a length-n signal x exactly as padding it with its edge values and convolving would
    (each tap that falls outside the signal is added to the edge pixel's weight).

    Rows sum to 1. Cached per (n, sigma, dtype, device) as a plain tensor built outside any
    autograd, inference or tracing mode, so that no caller's context leaks into the cache
    (an export's traced tensor, an inference-mode tensor that autograd refuses); while
    ``torch.export`` traces (``spadecam export``) the matrix is built afresh and not cached.
    The returned tensor may be shared: do not modify it.
    """
    # torch.compiler.is_compiling is missing before torch 2.3 (the range allows 2.2)
    if is_exporting() or getattr(torch.compiler, "is_compiling", lambda: False)():
        return _build_blur_matrix(n, sigma, dtype, device)
    return _cached_blur_matrix(n, float(sigma), dtype, torch.device(device))


@functools.lru_cache(maxsize=32)
def _cached_blur_matrix(n: int, sigma: float, dtype: torch.dtype,
                        device: torch.device) -> torch.Tensor:
    # a normal tensor whatever mode the first caller was in (inference_mode, no_grad)
    with torch.inference_mode(False), torch.no_grad():
        return _build_blur_matrix(n, sigma, dtype, device)


def _build_blur_matrix(n: int, sigma: float, dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor:
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
    convolution on one channel ran 10-14x slower on 84-px batches); sides longer
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
            # the padding's residual never leaks into the image's border
            full = v.flatten(1).amin(1).view(-1, 1, 1, 1) > 0  # no padding at all
            # no image padded: the plain blur (w = 1), one blur fewer; an exported graph
            # (ONNX, spadecam.deploy) cannot branch on data and takes the general path,
            # which gives the same values (w = 1 there)
            if not is_exporting() and bool(full.all()):
                return reconstruction_error(u, u_hat, smoothing, norm)
            w = torch.where(full, torch.ones_like(v), gaussian_blur(v, smoothing))
            r = torch.where(v > 0, gaussian_blur(r, smoothing) / w.clamp_min(1e-12), 0.0)
    return r.abs() if norm == "l1" else r * r
