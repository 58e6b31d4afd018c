"""SPADE's image scores, one per recipe, side by side:

* :func:`algorithm1_score` — the paper's (Algorithm 1; ``recipe="paper"``): the sum over
  pixels of the weighted error e' = e * L / |L|.
* :func:`evidence_weighted_error` — ``recipe="spadecam"`` (ours): e' times (1 + w p) and
  times d ** k per pixel (p the classifier's known-anomaly probability, d the image-level
  memory bank's kNN distance); its sum is the score.
* :func:`margin_score` — the default (``recipe="pretrained"``, ``score="margin"``; ours): a
  one-class error score plus the classifier's evidence above a margin, below.

The margin fusion (not in the paper). With labelled anomalies of some kinds only, a classifier's
evidence helps on the kinds it was shown and can hurt on the others: its false alarms on
normal images push them above anomalies of unknown kinds, which only the error map sees.
The margin fusion lets the evidence count only where it is unlike any normal image's:

    z_e = (max_ij e_ij - mu_e) / sd_e
    z_c = (l - mu_l) / sd_l,   l = y_anomaly - y_normal, the classifier's logit difference
    score = z_e + weight * max(0, z_c - margin)

mu and sd are the mean and standard deviation of those two numbers over **held-out normal
training images** (the threshold's hold-out: neither network saw them), so both terms are in
units of a normal image's spread; ``margin`` is in those units too (3: the evidence counts
only beyond three standard deviations of a held-out normal's). A held-out normal image's
score is then its one-class score, and the known kinds' evidence adds where it is strong.
The weight and the margin were chosen on ELPV's validation split (docs/elpv.md).

With an image-level memory bank (:mod:`spadecam.knn`: the mean distance d of the image's
globally pooled classifier features to its k nearest normal training images'), the error
term becomes a second one-class score beside the patch maximum:

    z_d = (d - mu_d) / sd_d
    t = z_e + w * z_d,   error term = t / sd_t

with sd_t the spread of t over the same held-out normals (its mean there is 0), so the error
term stays in units of a held-out normal's spread and the margin means what it meant. w is
SPADE's ``knn_power`` under ``score="margin"`` (1: the two one-class scores count equally).
On ELPV's validation split this lifted every column, on each of three seeds
(benchmarks/validate_image_bank.py, docs/elpv.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["EvidenceCalibration", "algorithm1_score", "calibrate", "error_term",
           "evidence_weighted_error", "margin_score"]


def algorithm1_score(weighted_error: torch.Tensor) -> torch.Tensor:
    """The paper's anomaly score (Algorithm 1, ``recipe="paper"``): the sum over pixels of
    the weighted error e' = e * L / |L| (:func:`spadecam.roi.weighted_error`).

    weighted_error : (N, H, W) float, >= 0. Returns (N,) of its dtype.
    """
    return weighted_error.sum(dim=(1, 2))


def evidence_weighted_error(weighted_error: torch.Tensor, p_anomaly: torch.Tensor | None = None,
                            classifier_weight: float = 0.0,
                            knn_distance: torch.Tensor | None = None,
                            knn_power: float = 0.0) -> torch.Tensor:
    """``recipe="spadecam"``'s map (ours, not in the paper): e' * (1 + w p) * d ** k per pixel,
    whose :func:`algorithm1_score` is the score; w = 0 and k = 0 give e' itself.

    weighted_error : (N, H, W) float, >= 0, e'; p_anomaly : (N,) in [0, 1], the classifier's
    softmax probability of the known-anomaly class (needed when w > 0); knn_distance : (N,)
    >= 0, the image-level memory bank's mean kNN distance (:mod:`spadecam.knn`; needed when
    k > 0). Returns (N, H, W) float32.
    """
    m = weighted_error
    if classifier_weight:
        assert p_anomaly is not None
        m = m * (1 + classifier_weight * p_anomaly)[:, None, None]
    if knn_power:
        assert knn_distance is not None
        m = m * (knn_distance ** knn_power)[:, None, None]
    return m.float()


@dataclass(frozen=True)
class EvidenceCalibration:
    """The held-out normal images' statistics that put both terms of the fusion in one unit.

    Attributes
    ----------
    error_mean, error_std : float
        Mean and standard deviation (> 0) of the error score max_ij e_ij.
    logit_mean, logit_std : float
        Mean and standard deviation (> 0) of the logit difference y_anomaly - y_normal.
    n_images : int
        How many normal images they came from.
    source : str
        "held_out" (the threshold's hold-out) or "train" (the training normals, when nothing
        was held out; their logits are ones the classifier was fitted to, so the margin is
        then looser than it reads).
    knn_mean, knn_std : float or None
        Mean and standard deviation (> 0) of the image-level bank's kNN distance d; None
        without a bank.
    knn_weight : float >= 0
        w, the weight of z_d in the error term (0 without a bank).
    joint_std : float or None
        Standard deviation (> 0) of z_e + w z_d over the same images; None without a bank.

    Raises
    ------
    ValueError
        Non-finite values, a standard deviation that is not > 0, an unknown source, or the
        bank's fields given in part (all of knn_mean, knn_std, joint_std and a knn_weight > 0,
        or none of them).
    """

    error_mean: float
    error_std: float
    logit_mean: float
    logit_std: float
    n_images: int
    source: str = "held_out"
    knn_mean: float | None = None
    knn_std: float | None = None
    knn_weight: float = 0.0
    joint_std: float | None = None

    def __post_init__(self) -> None:
        values = (self.error_mean, self.error_std, self.logit_mean, self.logit_std)
        if not all(math.isfinite(v) for v in values) or not (
                self.error_std > 0 and self.logit_std > 0):
            raise ValueError(f"calibration needs finite means and positive standard deviations, "
                             f"got {values}")
        if self.source not in ("held_out", "train"):
            raise ValueError(f"calibration source must be 'held_out' or 'train', got "
                             f"{self.source!r}")
        bank = (self.knn_mean, self.knn_std, self.joint_std)
        if all(v is None for v in bank) and self.knn_weight == 0:
            return
        if any(v is None for v in bank) or not (
                all(math.isfinite(v) for v in bank)  # type: ignore[arg-type]
                and self.knn_std > 0 and self.joint_std > 0  # type: ignore[operator]
                and math.isfinite(self.knn_weight) and self.knn_weight > 0):
            raise ValueError(f"calibration's image-level bank needs a finite knn_mean, positive "
                             f"knn_std and joint_std and a knn_weight > 0, got "
                             f"{bank + (self.knn_weight,)}")

    @property
    def uses_bank(self) -> bool:
        """True when the error term joins the image-level bank's distance."""
        return self.joint_std is not None

    def check_knn_power(self, knn_power: float | None, who: str) -> None:
        """Raise ValueError, naming ``who`` (what scores with it), unless this calibration was
        made with the bank weight ``knn_power`` (None or 0: without the bank)."""
        if self.knn_weight != float(knn_power or 0.0):
            raise ValueError(f"the margin fusion's calibration was made with knn_power "
                             f"{self.knn_weight:g}, the {who} has {knn_power or 0:g}: pass the "
                             "same knn_power, or calibrate again on held-out normal images")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (config.json's ``calibration`` section)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvidenceCalibration:
        """The inverse of :meth:`to_dict`. Raises ValueError (naming the field) on bad data."""
        def opt(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        try:
            return cls(float(d["error_mean"]), float(d["error_std"]), float(d["logit_mean"]),
                       float(d["logit_std"]), int(d["n_images"]), str(d.get("source", "held_out")),
                       opt("knn_mean"), opt("knn_std"), float(d.get("knn_weight") or 0.0),
                       opt("joint_std"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"calibration: missing or malformed field ({exc})") from None


def calibrate(error_scores: Any, logits: Any, source: str = "held_out",
              knn_distances: Any = None, knn_weight: float = 1.0) -> EvidenceCalibration:
    """The :class:`EvidenceCalibration` of normal images' error scores and logit differences.

    error_scores, logits : array-like (M,) float, M >= 2, finite. knn_distances : array-like
    (M,) float, finite, optional: the same images' image-level bank distances (then the
    error term joins them with weight ``knn_weight`` > 0). A standard deviation of 0
    (identical scores) is replaced by 1e-6 of the mean's magnitude (or 1e-6), so the fusion
    stays defined. Raises ValueError for fewer than 2 images, unequal lengths, non-finite
    values or a ``knn_weight`` that is not > 0 with distances given.
    """
    e = np.asarray(error_scores, dtype=np.float64).ravel()
    lg = np.asarray(logits, dtype=np.float64).ravel()
    d = None if knn_distances is None else np.asarray(knn_distances, dtype=np.float64).ravel()
    if len(e) < 2 or len(e) != len(lg) or (d is not None and len(d) != len(e)):
        raise ValueError(f"calibration needs the same number (>= 2) of error scores, logits "
                         f"and kNN distances, got {len(e)}, {len(lg)} and "
                         f"{'none' if d is None else len(d)}")
    if not (np.isfinite(e).all() and np.isfinite(lg).all()
            and (d is None or np.isfinite(d).all())):
        raise ValueError("calibration: the normal images' error scores, logits or kNN distances "
                         "are not finite")

    def sd(v: np.ndarray) -> float:
        return float(v.std()) or 1e-6 * (abs(float(v.mean())) or 1.0)

    if d is None:
        return EvidenceCalibration(float(e.mean()), sd(e), float(lg.mean()), sd(lg), len(e),
                                   source)
    if not (math.isfinite(knn_weight) and knn_weight > 0):
        raise ValueError(f"calibration: knn_weight must be > 0 with kNN distances, got "
                         f"{knn_weight!r}")
    joint = (e - e.mean()) / sd(e) + knn_weight * (d - d.mean()) / sd(d)
    return EvidenceCalibration(float(e.mean()), sd(e), float(lg.mean()), sd(lg), len(e), source,
                               float(d.mean()), sd(d), float(knn_weight), sd(joint))


def error_term(error_score: torch.Tensor, calibration: EvidenceCalibration,
               knn_distance: torch.Tensor | None = None) -> torch.Tensor:
    """The fusion's one-class term (N,) float32: z_e, or with the image-level bank
    (z_e + w z_d) / sd_t (see the module docstring).

    error_score : (N,) the error map's maximum; knn_distance : (N,) the bank's distance,
    required exactly when ``calibration`` was made with one (ValueError otherwise).
    """
    c = calibration
    z_e = (error_score.float() - c.error_mean) / c.error_std
    if c.uses_bank != (knn_distance is not None):
        raise ValueError("the calibration was made " + ("with" if c.uses_bank else "without")
                         + " the image-level bank's kNN distance, the score "
                         + ("without" if c.uses_bank else "with")
                         + " it: calibrate again with the same knn_power")
    if knn_distance is None:
        return z_e
    z_d = (knn_distance.float() - c.knn_mean) / c.knn_std  # type: ignore[operator]
    return (z_e + c.knn_weight * z_d) / c.joint_std  # type: ignore[operator]


def margin_score(error_score: torch.Tensor, logit: torch.Tensor, calibration: EvidenceCalibration,
                 weight: float, margin: float,
                 knn_distance: torch.Tensor | None = None) -> torch.Tensor:
    """The default score (``recipe="pretrained"``, ``score="margin"``; ours):
    :func:`error_term` + weight * max(0, z_c - margin), (N,) float32 (the module notes).

    error_score : (N,) the error map's maximum; logit : (N,) y_anomaly - y_normal;
    knn_distance : (N,) the image-level bank's distance, exactly when ``calibration`` has
    the bank's statistics (ValueError otherwise).
    """
    c = calibration
    z_c = (logit.float() - c.logit_mean) / c.logit_std
    return error_term(error_score, c, knn_distance) + weight * torch.clamp(z_c - margin, min=0.0)
