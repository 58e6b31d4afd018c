"""Image- and pixel-level detection metrics (scikit-learn): AUROC, average precision, F1-max.

Conventions: label 1 = anomalous (the positive class), a higher score = more anomalous, and
decisions follow :data:`spadecam.decision.THRESHOLD_RULE` (anomalous when score > t).
Image AUROC is the paper's metric (Narita et al., arXiv 1810.02607, section III); average
precision (often reported as "AUPR"), F1-max and pixel AUROC are the usual companions on
MVTec-style data (Bergmann et al. 2019).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from spadecam.decision import flag_anomalous, threshold_flagging

__all__ = ["auroc", "auroc_by_kind", "average_precision", "f1_max", "image_metrics", "pixel_auroc"]


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn), anomalous = 1, higher score = more anomalous.

    Raises
    ------
    ValueError
        When ``labels`` hold a single class (AUROC is undefined) or lengths differ.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    if np.unique(labels).size < 2:
        raise ValueError("AUROC needs both normal and anomalous labels; got a single class")
    return float(roc_auc_score(labels, scores))


def _check(labels: Any, scores: Any, what: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{what} {y.shape} and scores {s.shape} differ in length")
    if np.unique(y).size < 2:
        raise ValueError(
            f"{what} hold a single class ({np.unique(y).tolist()}); the metric needs both "
            "normal (0) and anomalous (1) examples"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y.astype(np.int64), s


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision (AP), anomalous = positive: the summary of the precision-recall curve.

    AP = sum_n (R_n - R_{n-1}) P_n over the thresholds n (scikit-learn's
    ``average_precision_score``): the step-wise sum, not the trapezoidal area under the
    curve, which interpolates linearly and runs optimistic. Tools that report "AUPR" mean
    one or the other; spadecam reports this one, named ``image_average_precision``.

    Parameters
    ----------
    labels : array-like (N,), {0, 1}
    scores : array-like (N,), float, finite

    Raises
    ------
    ValueError
        Labels of a single class, lengths that differ, or non-finite scores.
    """
    y, s = _check(labels, scores)
    return float(average_precision_score(y, s))


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds, and a threshold t reaching it under the rule score > t.

    t lies halfway between the lowest flagged score and the highest score below it, so
    ``flag_anomalous(scores, t)`` gives exactly the F1-max decisions, as ``predict``, the
    score CSV and ``at_threshold`` of :func:`image_metrics` would with ``threshold_ = t``.
    Ties between thresholds go to the lowest (higher recall).

    Returns
    -------
    (f1, t) : floats, f1 in [0, 1]

    Raises
    ------
    ValueError
        As :func:`average_precision`.
    """
    y, s = _check(labels, scores)
    precision, recall, cuts = precision_recall_curve(y, s)  # cuts: flag scores >= cut
    p, r = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    i = int(np.argmax(f1))
    return float(f1[i]), threshold_flagging(s, float(cuts[i]))


def pixel_auroc(masks: Any, maps: Any, valid: Any = None) -> float:
    """AUROC over pixels: every pixel of every image is one example.

    Parameters
    ----------
    masks : array-like (N, H, W), {0, 1}, 1 = anomalous pixel
    maps : array-like (N, H, W), float, the per-pixel anomaly map (e.g. SPADE's e')
    valid : array-like (N, H, W) of bool, optional
        Pixels to count (e.g. excluding letterbox padding); default all.

    Raises
    ------
    ValueError
        Shapes that differ, or masks without any anomalous (or any normal) pixel.
    """
    m = np.asarray(masks)
    a = np.asarray(maps, dtype=np.float64)
    if m.shape != a.shape:
        raise ValueError(f"masks {m.shape} and maps {a.shape} differ in shape")
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        m, a = m[v], a[v]
    y, s = _check((m > 0).astype(np.int64), a, what="pixel labels of the masks")
    return float(roc_auc_score(y, s))


def image_metrics(labels: Any, scores: Any, threshold: float | None = None) -> dict[str, Any]:
    """Image-level AUROC, average precision, F1-max and, given a threshold, the decisions.

    Parameters
    ----------
    labels : array-like (N,), {0, 1}
    scores : array-like (N,), float
    threshold : float, optional
        The detector's ``threshold_`` (anomalous: score > threshold).

    Returns
    -------
    dict with image_auroc, image_average_precision (:func:`average_precision`),
    image_f1_max, image_f1_max_threshold (:func:`f1_max`; the same rule, so passing it back as
    ``threshold`` gives ``at_threshold.f1 == image_f1_max``), n_images, n_normal, n_anomalous
    and, with a threshold, ``at_threshold``: {threshold, precision, recall, f1,
    false_positive_rate, accuracy, n_flagged}.

    Raises
    ------
    ValueError
        As :func:`average_precision`.
    """
    y, s = _check(labels, scores)
    f1, t = f1_max(y, s)
    out: dict[str, Any] = {
        "n_images": int(y.size),
        "n_normal": int((y == 0).sum()),
        "n_anomalous": int((y == 1).sum()),
        "image_auroc": auroc(y, s),
        "image_average_precision": average_precision(y, s),
        "image_f1_max": f1,
        "image_f1_max_threshold": t,
    }
    if threshold is not None:
        pred = flag_anomalous(s, threshold).astype(bool)
        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        tn = int((~pred & (y == 0)).sum())
        out["at_threshold"] = {
            "threshold": float(threshold),
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "false_positive_rate": fp / (fp + tn),
            "accuracy": (tp + tn) / y.size,
            "n_flagged": int(pred.sum()),
        }
    return out


def auroc_by_kind(labels: Any, scores: Any, kinds: Any) -> dict[str, float]:
    """Image AUROC of each anomaly kind against every normal image.

    Parameters
    ----------
    labels : (N,) {0, 1}; scores : (N,) float
    kinds : (N,) the kind of each anomalous image (an anomaly folder, a digit), any value
        for normal ones (ignored)

    Returns
    -------
    dict kind (str) -> AUROC, in the order the kinds first appear among the anomalies.
    """
    y, s = _check(labels, scores)
    kinds = [str(k) for k in kinds]
    out: dict[str, float] = {}
    for kind in dict.fromkeys(k for k, lab in zip(kinds, y) if lab == 1):
        use = (y == 0) | np.array([lab == 1 and k == kind for k, lab in zip(kinds, y)])
        out[kind] = auroc(y[use], s[use])
    return out
