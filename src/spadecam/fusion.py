"""The margin fusion: a one-class error score plus the classifier's evidence above a margin.

Our score for SPADE's ``score="margin"`` (not in the paper; the paper's is Algorithm 1's
sum of the weighted error e'). With labelled anomalies of some kinds only, a classifier's
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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["EvidenceCalibration", "calibrate", "margin_score"]


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
    """

    error_mean: float
    error_std: float
    logit_mean: float
    logit_std: float
    n_images: int
    source: str = "held_out"

    def __post_init__(self) -> None:
        values = (self.error_mean, self.error_std, self.logit_mean, self.logit_std)
        if not all(math.isfinite(v) for v in values) or not (
                self.error_std > 0 and self.logit_std > 0):
            raise ValueError(f"calibration needs finite means and positive standard deviations, "
                             f"got {values}")
        if self.source not in ("held_out", "train"):
            raise ValueError(f"calibration source must be 'held_out' or 'train', got "
                             f"{self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (config.json's ``calibration`` section)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvidenceCalibration:
        """The inverse of :meth:`to_dict`. Raises ValueError (naming the field) on bad data."""
        try:
            return cls(float(d["error_mean"]), float(d["error_std"]), float(d["logit_mean"]),
                       float(d["logit_std"]), int(d["n_images"]), str(d.get("source", "held_out")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"calibration: missing or malformed field ({exc})") from None


def calibrate(error_scores: Any, logits: Any, source: str = "held_out") -> EvidenceCalibration:
    """The :class:`EvidenceCalibration` of normal images' error scores and logit differences.

    error_scores, logits : array-like (M,) float, M >= 2, finite. A standard deviation of 0
    (identical scores) is replaced by 1e-6 of the mean's magnitude (or 1e-6), so the fusion
    stays defined. Raises ValueError for fewer than 2 images, unequal lengths or non-finite
    values.
    """
    e = np.asarray(error_scores, dtype=np.float64).ravel()
    lg = np.asarray(logits, dtype=np.float64).ravel()
    if len(e) < 2 or len(e) != len(lg):
        raise ValueError(f"calibration needs the same number (>= 2) of error scores and logits, "
                         f"got {len(e)} and {len(lg)}")
    if not (np.isfinite(e).all() and np.isfinite(lg).all()):
        raise ValueError("calibration: the normal images' error scores or logits are not finite")

    def sd(v: np.ndarray) -> float:
        return float(v.std()) or 1e-6 * (abs(float(v.mean())) or 1.0)

    return EvidenceCalibration(float(e.mean()), sd(e), float(lg.mean()), sd(lg), len(e), source)


def margin_score(error_score: torch.Tensor, logit: torch.Tensor, calibration: EvidenceCalibration,
                 weight: float, margin: float) -> torch.Tensor:
    """z_e + weight * max(0, z_c - margin) (N,) float32 (see the module docstring).

    error_score : (N,) the error map's maximum; logit : (N,) y_anomaly - y_normal.
    """
    c = calibration
    z_e = (error_score.float() - c.error_mean) / c.error_std
    z_c = (logit.float() - c.logit_mean) / c.logit_std
    return z_e + weight * torch.clamp(z_c - margin, min=0.0)
