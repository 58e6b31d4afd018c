"""Errors the detectors raise (re-exported by :mod:`spadecam.detectors`)."""

from __future__ import annotations

from typing import Any

import numpy as np


class ModelFormatError(ValueError):
    """A model directory is missing, malformed, of another format version, or holds pickle."""


class NotFittedError(RuntimeError):
    """A detector was used before ``fit`` (or ``from_models``)."""


class NonFiniteScoreError(ValueError):
    """The models gave NaN or infinite scores; ``indices`` lists the images (input order)."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


def _check_finite(det: Any, values: np.ndarray, offset: int = 0) -> None:
    """NonFiniteScoreError naming the images whose score (or map) is not finite."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        idx = [int(i) + offset for i in np.flatnonzero(bad)]
        raise NonFiniteScoreError(
            f"{type(det).__name__}: the models gave non-finite scores for {len(idx)} image(s) "
            f"(index {', '.join(map(str, idx[:5]))}{', ...' if len(idx) > 5 else ''}); their "
            "weights are probably not finite (a diverged training?). Re-train with a lower "
            "learning rate.",
            idx,
        )


def _require(det: Any, *attrs: str) -> None:
    """NotFittedError unless ``det`` has each fitted attribute (``threshold_`` named apart:
    ``from_models`` leaves it for the caller to set)."""
    for a in attrs:
        if getattr(det, a, None) is None:
            if a == "threshold_" and hasattr(det, "decision_function"):
                raise NotFittedError(
                    f"{type(det).__name__}.threshold_ is not set: fit(X, y) learns it; after "
                    "from_models(...) set it yourself (e.g. a quantile of normal scores)"
                )
            raise NotFittedError(
                f"{type(det).__name__} is not fitted: call fit(X, y) or from_models(...) first"
            )
