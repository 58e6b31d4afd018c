"""Checks shared by the model configs."""

from __future__ import annotations

import numbers


def check_optional_size(cls: str, name: str, value: object) -> None:
    """ValueError unless ``value`` is None (filled in from the data) or an integer >= 1.

    A 0 is refused rather than taken for "unset" (the ``value or default`` fault).
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{cls}.{name} must be None or an integer >= 1, got {value!r}")
