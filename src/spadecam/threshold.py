"""The decision threshold a detector learns in ``fit`` (:func:`choose_threshold`,
:func:`fit_threshold`).

The rule it feeds (anomalous when score > threshold) is in :mod:`spadecam.decision`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from spadecam._progress import warn
from spadecam.decision import format_threshold, threshold_between

#: Fewest normal scores a quantile threshold is set from without a warning.
MIN_QUANTILE_NORMALS = 20

#: The rules :func:`choose_threshold` may apply (its ``rule``).
THRESHOLD_RULES = ("quantile", "f1_max", "quantile_f1_rejected")


class ThresholdChoice(NamedTuple):
    """What :func:`choose_threshold` chose.

    Attributes
    ----------
    threshold : float
        The threshold t (anomalous when score > t).
    rule : {"quantile", "f1_max", "quantile_f1_rejected"}
        "quantile": only normal scores were given; "f1_max": the F1-max cut;
        "quantile_f1_rejected": anomaly scores were given but the F1-max cut would flag more
        of the normal scores than the quantile does (or F1 is 0 at every cut, or every score
        ties), so t is the quantile.
    warning : str or None
        With "quantile_f1_rejected", what happened, in words (the text that is warned).
    """

    threshold: float
    rule: str
    warning: str | None = None


def choose_threshold(
    normal_scores: Any, anomaly_scores: Any = None, quantile: float = 0.99
) -> ThresholdChoice:
    """Decision threshold t for ``predict`` and the rule that set it; warns nothing itself.

    An image is anomalous when its score > t (:data:`spadecam.decision.THRESHOLD_RULE`, the
    rule every decision uses). Let q be the ``quantile`` of the normal scores (numpy's
    linear interpolation), e.g. their 99th percentile, so about 1% of normal images are
    flagged.

    * Only normal scores (or no anomaly scores): t = q (rule "quantile").
    * With anomaly scores too: the F1-max cut c (anomalous = positive) over the midpoints
      between consecutive distinct scores that flag no more of the normal scores than q
      does, ties going to the lowest such cut (higher recall): t = c (rule "f1_max"). When
      no such cut has F1 > 0 (the anomalies score no higher than the normals that q lets
      pass: the scores do not separate that kind of anomaly), t = q (rule
      "quantile_f1_rejected", with a ``warning`` naming the unconstrained F1-max cut and how
      many normal scores each would flag). So t never flags more of the given normal scores
      than q would.
    * When every score ties, t is that score (= q; it flags none of them), rule
      "quantile_f1_rejected": no cut separates the classes.

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
    ThresholdChoice (threshold, rule, warning)

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
    q = float(np.quantile(n, quantile))
    if a.size == 0:
        return ThresholdChoice(q, "quantile")
    u = np.unique(np.concatenate([n, a]))  # sorted distinct scores
    if u.size == 1:  # all scores tie: no cut separates them; q is that score, flags nothing
        return ThresholdChoice(q, "quantile_f1_rejected", (
            f"the threshold is not an F1-max cut: every one of the {n.size} held-out normal "
            f"and {a.size} held-out known-anomaly scores is {format_threshold(q)}, so the "
            "detector does not separate that kind of anomaly from normal images; the "
            "threshold is that score, flagging none of them. Check the images and the "
            "detector, or set threshold_ yourself."))
    # the midpoint between u[i] and u[i + 1] flags exactly the scores >= u[i + 1]
    tp = a.size - np.searchsorted(np.sort(a), u[1:], side="left")
    fp = n.size - np.searchsorted(np.sort(n), u[1:], side="left")
    f1 = 2 * tp / (2 * tp + fp + (a.size - tp))
    # only cuts that flag no more normal scores than q does; the best F1 among them (the
    # lowest cut on ties: more recall)
    fp_q = int((n > q).sum())
    allowed = np.where(fp <= fp_q, f1, -1.0)
    j = int(np.argmax(allowed))
    if allowed[j] > 0:
        return ThresholdChoice(threshold_between(float(u[j]), float(u[j + 1])), "f1_max")
    i = int(np.argmax(f1))  # the unconstrained F1-max cut, named in the warning
    cut = threshold_between(float(u[i]), float(u[i + 1]))
    return ThresholdChoice(q, "quantile_f1_rejected",
                           _rejected_text(n, a, quantile, q, cut, int(fp[i]), bool(f1[i] > 0)))


def _rejected_text(n: np.ndarray, a: np.ndarray, quantile: float, q: float, cut: float,
                   fp_cut: int, some_f1: bool) -> str:
    """The warning of a rejected F1-max cut, with what each threshold would flag."""
    fp_q, qname = int((n > q).sum()), f"{format_threshold(quantile)} quantile"
    if a.max() > n.min():
        why = (f"it would flag {fp_cut} of the {n.size} held-out normal images, more than the "
               f"{qname} of their scores flags ({fp_q})")
    else:
        why = ("no held-out known anomaly scores above the lowest held-out normal score"
               + ("" if some_f1 else " (F1 is 0 at every cut)")
               + ", so the detector does not separate that kind of anomaly from normal "
               f"images; the F1-max cut would flag {fp_cut} of the {n.size} held-out normal "
               f"images, the {qname} of their scores {fp_q}")
    return (
        f"the threshold is not the F1-max cut on {n.size} held-out normal and {a.size} "
        f"held-out known-anomaly scores ({format_threshold(cut)}, catching "
        f"{int((a > cut).sum())} of those anomalies): {why}. It is that quantile instead "
        f"({format_threshold(q)}, catching {int((a > q).sum())} of the {a.size}), so it "
        "flags no more normal images than a threshold set without known anomalies would. "
        "If such anomalies matter, this detector does not score them high enough: try "
        "another detector, or set threshold_ yourself."
    )


def fit_threshold(
    normal_scores: Any, anomaly_scores: Any = None, quantile: float = 0.99
) -> float:
    """Decision threshold t for ``predict``: an image is anomalous when its score > t.

    The threshold of :func:`choose_threshold`, which gives the rule (the quantile of the
    normal scores, or the F1-max cut among cuts that flag no more of them), the parameters
    and the errors; here its warning, when it has one, is issued.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        No normal scores, non-finite scores, or ``quantile`` outside (0, 1].

    Warns
    -----
    SpadecamWarning
        The F1-max cut was rejected for the quantile (what each would flag, in words).
    """
    choice = choose_threshold(normal_scores, anomaly_scores, quantile)
    if choice.warning is not None:
        warn(choice.warning)
    return choice.threshold


def few_normals_text(n: int, quantile: float, which: str = "held-out",
                     suggest_anomalies: bool = True) -> str:
    """The warning for a quantile threshold set from ``n`` (< :data:`MIN_QUANTILE_NORMALS`)
    ``which`` ("held-out" / "training") normal scores: which of them the quantile rests on,
    said for this ``quantile`` and ``n`` (numpy's linear interpolation between the sorted
    scores at positions floor / ceil of ``quantile * (n - 1)``)."""
    pos = quantile * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))

    def rank(i: int) -> str:  # the i-th smallest (0-based) of n, said from the top
        k = n - i
        if k == 1:
            return "largest"
        if k == n:
            return "smallest"
        return f"{k}{'nd' if k == 2 else 'rd' if k == 3 else 'th'} largest"

    if n == 1:
        where = "here their only score"
    elif lo == hi:
        where = f"here exactly their {rank(lo)}"
    else:
        where = f"here between their {rank(hi)} and {rank(lo)}"
        if hi == n - 1 and pos - lo >= 0.75:
            where += ": about their maximum"
    more = (", add known anomalies to hold out (their F1-max cut is used when it flags no more "
            "held-out normals than the quantile)" if suggest_anomalies else "")
    return (
        f"threshold_ is the {format_threshold(quantile)} quantile of only {n} {which} normal "
        f"score(s); with fewer than {MIN_QUANTILE_NORMALS} such a quantile rests on one or two "
        f"of them ({where}), so the share of normal images it flags is unpredictable. Hold "
        f"out more normal images (threshold_holdout){more}, or set threshold_ yourself."
    )


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


def describe_threshold(source: Any, n: dict[str, int], quantile: float) -> str:
    """How the threshold was set, in words, from a detector's ``threshold_source_``, its
    ``threshold_n_images_`` ({"normal": n, "anomaly": m}) and ``threshold_quantile``: what
    ``spadecam train`` prints and the evaluation report shows. An unknown source is named,
    not refused (a model from a newer version)."""
    normal, anomaly = n.get("normal", "?"), n.get("anomaly", "?")
    q = f"the {format_threshold(quantile)} quantile of {normal}"
    if source == "f1_max_held_out":
        return (f"the F1-max point on {normal} held-out normal and {anomaly} held-out "
                f"known-anomaly images (among thresholds flagging no more of those normal "
                f"images than the {format_threshold(quantile)} quantile of their scores)")
    if source == "quantile_held_out_f1_rejected":
        return (f"{q} held-out normal images' scores, not the F1-max point on them and "
                f"{anomaly} held-out known-anomaly images: no threshold flagging no more of "
                "those normal images catches a known anomaly (they do not score above them)")
    if source == "quantile_held_out":
        return f"{q} held-out normal images' scores"
    if source == "quantile_train":
        return f"{q} training normal images' scores"
    return f"set by a rule this version does not know ({source!r})"
