"""Noisy-MNIST: MNIST digits resized, placed at random on a larger canvas, plus Gaussian noise.

Reference: M. Narita et al., "Spatially-weighted anomaly detection" (SPADE),
arXiv:1810.02607, section III-B (Noisy-MNIST). The paper resizes each 28x28 digit to a
random size, puts it at a random position on an 84x84 canvas and adds Gaussian noise
whose standard deviation is itself random, drawn from N(40, 30^2) on the 0-255 scale.

numpy + Pillow only (no torch).

Choices the paper leaves open, and what this module does
-------------------------------------------------------
* **Size distribution**: the side length is an integer drawn uniformly from
  ``[min_digit_size, max_digit_size]`` inclusive (default 28..84); the digit stays square.
* **Resampling**: Pillow ``Image.resize`` in 32-bit float mode ("F"), filter
  ``config.resample`` (default bilinear). Float mode avoids an intermediate rounding to
  uint8; Pillow's filters are antialiased when shrinking (only if ``min_digit_size < 28``).
* **Placement**: the top-left corner (row, column) is a uniform integer such that the
  whole resized digit lies inside the canvas, i.e. each in ``[0, canvas - size]``; the
  background is 0 (black) and the digit replaces it (no blending).
* **Noise sigma**: ``s ~ N(noise_mean, noise_std^2)`` per image and ``|s|`` is used (a
  negative draw would be meaningless as a standard deviation), so the sigma actually
  used follows a folded normal distribution.
* **Noise**: i.i.d. ``N(0, |s|^2)`` added to every canvas pixel, digit and background,
  on the 0-255 pixel scale.
* **Clipping / rounding**: the sum is clipped to ``[0, 255]`` and rounded to the nearest
  integer (``numpy.rint``, ties to even) before conversion to uint8. Clipping at 0 makes
  the background mean positive, ``E[max(0, N(0, s^2))] = s / sqrt(2*pi)``.
* **Randomness**: image ``i`` uses its own generator
  ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(start_index + i,)))``,
  identical to child ``i`` of ``SeedSequence(seed).spawn(N)``. An image therefore depends
  only on ``(seed, index, digit, config)``: slicing or chunking the input does not change
  it. Within one image the draws are made in a fixed order -- size, row, column, one
  standard normal for sigma, then the noise field -- so placement does not depend on the
  noise parameters (a run with ``noise_mean=noise_std=0`` gives the clean image of the
  same sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from PIL import Image

__all__ = ["RESAMPLE_FILTERS", "NoisyMNISTConfig", "make_noisy_mnist"]

#: Names accepted for :attr:`NoisyMNISTConfig.resample` -> Pillow filters.
RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class NoisyMNISTConfig:
    """Parameters of the Noisy-MNIST generator (paper arXiv:1810.02607, section III-B).

    Parameters
    ----------
    canvas_size : int
        Side of the square output image in pixels (paper: 84).
    min_digit_size, max_digit_size : int
        Inclusive bounds of the uniformly drawn integer side length of the resized digit
        in pixels (paper: 28 to 84). ``1 <= min <= max <= canvas_size``.
    noise_mean, noise_std : float
        Per image ``s ~ N(noise_mean, noise_std^2)``; the noise standard deviation used
        is ``|s|``, in 0-255 pixel units (paper: 40 and 30). ``noise_std >= 0``.
    resample : {"bilinear", "bicubic", "nearest", "lanczos"}
        Pillow filter used to resize the digit.

    Raises
    ------
    ValueError
        On construction, if a field is invalid; the message names the field.
    TypeError
        ``noise_mean`` or ``noise_std`` is not a real number.
    """

    canvas_size: int = 84
    min_digit_size: int = 28
    max_digit_size: int = 84
    noise_mean: float = 40.0
    noise_std: float = 30.0
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("canvas_size", "min_digit_size", "max_digit_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.min_digit_size > self.max_digit_size:
            raise ValueError(
                f"min_digit_size ({self.min_digit_size}) must be <= max_digit_size "
                f"({self.max_digit_size})"
            )
        if self.max_digit_size > self.canvas_size:
            raise ValueError(
                f"max_digit_size ({self.max_digit_size}) must be <= canvas_size "
                f"({self.canvas_size}) so the digit fits on the canvas"
            )
        for name in ("noise_mean", "noise_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a real number, got {v!r}")
            if not math.isfinite(float(v)):
                raise ValueError(f"{name} must be finite, got {v!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(
                f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}"
            )


@overload
def make_noisy_mnist(
    digits: np.ndarray, seed: int, config: NoisyMNISTConfig = ...,
    return_sigma: Literal[False] = ..., *, start_index: int = ...,
) -> np.ndarray: ...


@overload
def make_noisy_mnist(
    digits: np.ndarray, seed: int, config: NoisyMNISTConfig, return_sigma: Literal[True],
    *, start_index: int = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def make_noisy_mnist(
    digits: np.ndarray, seed: int, config: NoisyMNISTConfig = ..., *,
    return_sigma: Literal[True], start_index: int = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


def make_noisy_mnist(
    digits: np.ndarray,
    seed: int,
    config: NoisyMNISTConfig = NoisyMNISTConfig(),
    return_sigma: bool = False,
    *,
    start_index: int = 0,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Make Noisy-MNIST images from MNIST digits (arXiv:1810.02607, section III-B).

    For each digit: draw an integer side ``size`` uniformly in
    ``[config.min_digit_size, config.max_digit_size]``, resize the digit to
    ``size x size`` with Pillow (float mode, ``config.resample``), place it on a zero
    canvas of ``config.canvas_size`` pixels at a uniform integer top-left position with
    the digit fully inside, draw ``s ~ N(noise_mean, noise_std^2)``, add i.i.d.
    ``N(0, s^2)`` noise to every pixel (0-255 scale), clip to ``[0, 255]``, round to
    nearest (ties to even) and convert to uint8. See the module docstring for every
    choice the paper leaves open.

    Parameters
    ----------
    digits : numpy.ndarray
        uint8 array of shape ``(N, H, W)``, pixel values 0-255 (MNIST: ``(N, 28, 28)``).
        ``N`` may be 0.
    seed : int
        Non-negative integer seed. Image ``i`` uses the generator
        ``default_rng(SeedSequence(seed, spawn_key=(start_index + i,)))``, so it depends
        only on ``(seed, start_index + i)``, its digit and ``config``.
    config : NoisyMNISTConfig, optional
        Generator parameters; default matches the paper (84 px canvas, sizes 28-84,
        sigma from N(40, 30^2)).
    return_sigma : bool, optional
        Also return the noise standard deviation actually used per image.
    start_index : int, keyword-only, optional
        Global index of ``digits[0]``; ``make_noisy_mnist(d[a:b], seed, start_index=a)``
        equals ``make_noisy_mnist(d, seed)[a:b]`` (for building a large set in chunks).

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, canvas_size, canvas_size)``, values 0-255.
    sigma : numpy.ndarray
        Only if ``return_sigma``: float64, shape ``(N,)``, ``|s|`` in 0-255 pixel units.

    Raises
    ------
    TypeError
        ``digits`` is not a numpy.ndarray, or ``config`` is not a :class:`NoisyMNISTConfig`.
    ValueError
        ``digits`` is not uint8 or not 3-D with non-empty images, or ``seed`` or
        ``start_index`` is not a non-negative integer.

    References
    ----------
    M. Narita et al., "Spatially-weighted anomaly detection", arXiv:1810.02607,
    section III-B.
    """
    if not isinstance(digits, np.ndarray):
        raise TypeError(f"digits must be a numpy.ndarray, got {type(digits).__name__}")
    if digits.dtype != np.uint8:
        raise ValueError(f"digits must have dtype uint8 (0-255), got {digits.dtype}")
    if digits.ndim != 3:
        raise ValueError(
            f"digits must have 3 dimensions (N, H, W), got {digits.ndim} (shape {digits.shape})"
        )
    if digits.shape[1] < 1 or digits.shape[2] < 1:
        raise ValueError(f"digits must have non-empty images, got shape {digits.shape}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_int(start_index) or start_index < 0:
        raise ValueError(f"start_index must be a non-negative integer, got {start_index!r}")
    if not isinstance(config, NoisyMNISTConfig):
        raise TypeError(f"config must be a NoisyMNISTConfig, got {type(config).__name__}")

    n = digits.shape[0]
    c = config.canvas_size
    lo, hi = config.min_digit_size, config.max_digit_size
    mean, std = float(config.noise_mean), float(config.noise_std)
    resample = RESAMPLE_FILTERS[config.resample]
    seed, start_index = int(seed), int(start_index)

    out = np.empty((n, c, c), dtype=np.uint8)
    sigmas = np.empty(n, dtype=np.float64)
    canvas = np.empty((c, c), dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(start_index + i,)))
        size = int(rng.integers(lo, hi + 1))
        top = int(rng.integers(0, c - size + 1))
        left = int(rng.integers(0, c - size + 1))
        s = abs(mean + std * float(rng.standard_normal()))
        sigmas[i] = s

        img = Image.fromarray(digits[i].astype(np.float32))
        if img.size != (size, size):
            img = img.resize((size, size), resample=resample)
        patch = np.asarray(img, dtype=np.float64)

        rng.standard_normal(out=canvas)  # noise field, drawn even when s == 0
        canvas *= s
        canvas[top:top + size, left:left + size] += patch
        np.clip(canvas, 0.0, 255.0, out=canvas)
        np.rint(canvas, out=canvas)
        out[i] = canvas
    if return_sigma:
        return out, sigmas
    return out
