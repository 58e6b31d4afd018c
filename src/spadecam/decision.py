"""The decision rule: one comparison of a score with a threshold, used everywhere.

An image is **anomalous when its score is strictly greater than the threshold**:
``score > threshold`` (PyOD's convention; a score exactly equal to the threshold is
normal). :meth:`~spadecam.detectors.SPADE.predict`, the ``label`` column of
``spadecam score``, the ``at_threshold`` block of ``spadecam evaluate``, the F1-max
threshold (:func:`spadecam.metrics.f1_max`) and the thresholds that ``fit`` learns
(:func:`spadecam.detectors.fit_threshold`) all follow it, so a threshold read off one of
them gives the same decisions in every other. A threshold is printed in full
(:func:`format_threshold`), and a score shown beside it with the digits the comparison needs
(:func:`format_score`), so a printed "score > threshold" reads as the decision made. numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["THRESHOLD_RULE", "flag_anomalous", "format_score", "format_threshold",
           "threshold_between", "threshold_flagging"]

#: The rule in words, as printed by ``spadecam train`` and written in the docs.
THRESHOLD_RULE = "anomalous when score > threshold"


def flag_anomalous(scores: Any, threshold: float) -> np.ndarray:
    """Decisions of the rule: 1 (anomalous) where ``score > threshold``, else 0.

    Parameters
    ----------
    scores : array-like (N,), float
    threshold : float, not NaN (+-inf allowed: flag nothing / everything)

    Returns
    -------
    ndarray (N,), int64 in {0, 1}

    Raises
    ------
    ValueError
        A NaN threshold (it would silently flag nothing).
    """
    t = float(threshold)
    if np.isnan(t):
        raise ValueError("the threshold is NaN; set a number (score > threshold is anomalous)")
    return (np.asarray(scores, dtype=np.float64) > t).astype(np.int64)


def threshold_between(lower: float, upper: float) -> float:
    """A threshold t with ``lower <= t < upper``: flags ``upper`` but not ``lower``.

    The midpoint, unless the two floats are adjacent (then ``lower`` itself).
    """
    t = (lower + upper) / 2
    return float(t) if lower <= t < upper else float(lower)


def threshold_flagging(scores: Any, cut: float) -> float:
    """The threshold that flags exactly the scores ``>= cut`` under the rule ``> t``.

    Halfway between ``cut`` and the largest score below it; just below ``cut`` when no
    score is below it (then every score is flagged).
    """
    s = np.asarray(scores, dtype=np.float64)
    below = s[s < cut]
    if below.size == 0:
        return float(np.nextafter(cut, -np.inf))
    return threshold_between(float(below.max()), float(cut))


def format_threshold(threshold: float) -> str:
    """``threshold`` as text that reads back as the same float: the shortest such decimal
    (Python's ``repr``: ``0.17133375``, ``1e-05``, ``inf``), so a printed threshold gives the
    same decisions as the one used."""
    return repr(float(threshold))


def format_score(score: float, threshold: float | None, digits: int = 5) -> str:
    """``score`` with ``digits`` significant digits, or as many more as it takes for the
    printed score, read back, to compare with the printed threshold
    (:func:`format_threshold`, which reads back as ``threshold``) as the score does: a score
    just above the threshold never prints equal to or below it. Without a threshold, just
    ``digits`` significant digits.
    """
    s = float(score)
    text = f"{s:.{digits}g}"
    if threshold is None or np.isnan(threshold) or not np.isfinite(s):
        return text
    t = float(threshold)
    for d in range(digits, 18):
        text = f"{s:.{d}g}"
        if (float(text) > t) == (s > t):
            return text
    return repr(s)
