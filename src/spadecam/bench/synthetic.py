"""Synthetic anomalies made from normal images, for the classifier (for the "few labels" protocols).

With 1-10 labelled anomalies a classifier trained from scratch learns almost nothing (the
field's few-shot detectors add synthetic defects beside the seen ones: CutPaste, Li et al.
CVPR 2021; DRA's CutMix-style pseudo anomalies, Ding et al. CVPR 2022). :func:`cutpaste` makes
them here: each synthetic image is a normal image with a patch of itself (or of another normal
image) pasted elsewhere, either a block (area 2-15 % of the image, aspect ratio 1/3-3) or a
"scar" (a thin stripe 1/32-1/16 of the side wide, 1/4-1/2 long, at one of four orientations),
its intensity shifted by up to +-20 % of the range. They train the classifier's known-anomaly
class beside the labelled ones (``synthetic_anomalies``); the VAE never sees them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cutpaste"]


def cutpaste(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` synthetic anomalies from normal images ``x``.

    Parameters
    ----------
    x : Tensor (N, C, H, W), uint8 in [0, 255], normal images (N >= 1)
    n : int >= 0, how many to make
    seed : int, seeds a local generator (the caller's RNG is not touched)

    Returns
    -------
    Tensor (n, C, H, W) uint8: half blocks, half scars (alternating), each on a random image.

    Raises
    ------
    ValueError
        ``x`` not (N, C, H, W) uint8 with N >= 1, or ``n < 0``.
    """
    if x.ndim != 4 or x.dtype != torch.uint8 or len(x) == 0:
        raise ValueError(f"x must be (N, C, H, W) uint8 with N >= 1, got {tuple(x.shape)} "
                         f"{x.dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    src = x.numpy()
    _, _, h, w = src.shape
    out = np.empty((n,) + src.shape[1:], dtype=np.uint8)
    for k in range(n):
        img = src[rng.integers(len(src))].astype(np.float32)
        donor = src[rng.integers(len(src))].astype(np.float32)
        if k % 2 == 0:  # a block
            area = rng.uniform(0.02, 0.15) * h * w
            ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3)))
            ph = int(np.clip(round(np.sqrt(area * ratio)), 1, h - 1))
            pw = int(np.clip(round(np.sqrt(area / ratio)), 1, w - 1))
        else:  # a scar: thin and long, horizontal or vertical
            thin = int(max(1, round(rng.uniform(1 / 32, 1 / 16) * min(h, w))))
            long_ = int(max(2, round(rng.uniform(1 / 4, 1 / 2) * max(h, w))))
            ph, pw = (thin, min(long_, w - 1)) if rng.random() < 0.5 else (min(long_, h - 1),
                                                                             thin)
        sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        patch = donor[:, sy : sy + ph, sx : sx + pw] + rng.uniform(-0.2, 0.2) * 255
        img[:, dy : dy + ph, dx : dx + pw] = patch
        out[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return torch.from_numpy(out)
