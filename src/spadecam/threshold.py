"""The decision threshold a detector learns in ``fit`` (:func:`fit_threshold`).

The rule it feeds (anomalous when score > threshold) is in :mod:`spadecam.decision`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spadecam.decision import threshold_between

#: Fewest normal scores a quantile threshold is set from without a warning.
MIN_QUANTILE_NORMALS = 20


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


def holdout_split(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor | None:
    """Which images to hold out for the threshold: ``fraction`` of the normals (y == 0) and of
    the known anomalies (y == 1), drawn with a generator seeded by ``seed`` (offset).

    Returns a bool mask (N,), or None when ``fraction == 0``. At least 2 normals and 1 known
    anomaly stay for training; a class too small to spare an image holds none out.

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1), or fewer than 3 normal images with ``fraction > 0``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"threshold_holdout must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return None
    g = torch.Generator().manual_seed(seed + 104729)  # the training seed, offset
    hold = torch.zeros(len(y), dtype=torch.bool)
    for label, keep in ((0, 2), (1, 1)):
        idx = torch.nonzero(y == label).flatten()
        k = min(max(1, round(fraction * len(idx))), len(idx) - keep) if len(idx) else 0
        if label == 0 and k < 1:
            raise ValueError(
                f"threshold_holdout={fraction} needs at least 3 normal images (y == 0) to hold "
                f"one out and train on 2, got {len(idx)}; add images or set it to 0"
            )
        if k > 0:
            hold[idx[torch.randperm(len(idx), generator=g)[:k]]] = True
    return hold
