"""Strict JSON (RFC 8259): the one encoder of the package (:func:`json_text`: config.json,
metrics.json, the JSON ``spadecam evaluate`` prints) and the reader of the infinite floats it
writes (:func:`json_float`). Standard library only.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["NON_FINITE_JSON", "json_float", "json_text"]

#: How :func:`json_text` writes the infinite floats, which RFC 8259 JSON cannot hold as
#: numbers (Python's ``json`` would write the bare tokens ``Infinity``, which strict parsers
#: reject). NaN has no encoding: it is refused.
NON_FINITE_JSON = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _encodable(obj: Any, where: str) -> Any:
    """``obj`` with +-inf floats replaced by :data:`NON_FINITE_JSON` strings; NaN refused."""
    if isinstance(obj, float):
        if math.isnan(obj):
            raise ValueError(
                f"{where} is NaN, which JSON (RFC 8259) cannot hold; refusing to write it"
            )
        return NON_FINITE_JSON.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _encodable(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encodable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def json_text(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON (RFC 8259) text of ``obj``, ending with a newline.

    Parameters
    ----------
    obj : JSON-serialisable data (dict, list, str, int, float, bool, None)
    indent, sort_keys : as for :func:`json.dumps`

    Returns
    -------
    str. Floats +inf / -inf are written as the strings ``"Infinity"`` / ``"-Infinity"``
    (:data:`NON_FINITE_JSON`; :func:`json_float` reads them back); every other value is plain
    JSON, so any RFC 8259 parser reads the text.

    Raises
    ------
    ValueError
        A NaN anywhere in ``obj`` (the message names its key path, e.g. ``threshold_``).
    """
    return json.dumps(_encodable(obj, ""), indent=indent, sort_keys=sort_keys,
                      allow_nan=False) + "\n"


def json_float(value: Any, name: str = "value") -> float | None:
    """A float written by :func:`json_text` (a number, ``"Infinity"`` or ``"-Infinity"``).

    Returns None for None. Raises ValueError (naming ``name``) for anything else.
    """
    if value is None:
        return None
    for number, text in NON_FINITE_JSON.items():
        if value == text:
            return number
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a number, 'Infinity' or '-Infinity', got {value!r}")
