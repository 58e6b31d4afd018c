"""Writing files: atomically (temp file, then rename) and, for JSON, strictly (RFC 8259).

The one atomic writer of the package (model directories, CSV, JSON, PNG overlays and
figures, the MNIST download all go through :func:`atomic_write`) and the one JSON encoder
(:func:`json_text`: config.json, metrics.json, the JSON ``spadecam evaluate`` prints).
Standard library only.

Why not :func:`tempfile.mkstemp`: it creates the temp file with mode 0600 whatever the
umask, and ``os.replace`` keeps that mode, so every output would be private to its owner
(others could not read a shared model directory). The temp file here is created like a
plain ``open(path, "w")`` would create ``path``: mode 0666 minus the caller's umask.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "NON_FINITE_JSON",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "json_float",
    "json_text",
]

#: How :func:`json_text` writes the infinite floats, which RFC 8259 JSON cannot hold as
#: numbers (Python's ``json`` would write the bare tokens ``Infinity``, which strict parsers
#: reject). NaN has no encoding: it is refused.
NON_FINITE_JSON = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _create_temp(folder: Path, name: str, suffix: str) -> Path:
    """A new empty file beside the target, mode 0666 & ~umask (as ``open`` creates one)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{folder}: could not create a temp file for {name}")


def check_writable(path: str | os.PathLike, option: str, folder: bool = False) -> None:
    """ValueError naming ``option`` unless ``path`` (a file, or a folder with ``folder``) can be
    written: every part of it that exists is a folder (its last part too, for a folder; not a
    folder, for a file) and the deepest existing folder is writable. Creates nothing, so a
    command can check its outputs before any work and leave no trace when it then fails.
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"{option} {p} exists and is not a folder")
        if not folder and p.is_dir():
            raise ValueError(f"{option} {p} is a folder; give a file name")
    base = p if (folder and p.is_dir()) else p.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{option} {p} cannot be written: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {p} cannot be written: no write permission in {base}")


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp"
) -> Path:
    """Call ``write(temp_path)`` and rename the temp file to ``path`` once it succeeded.

    Parameters
    ----------
    path : target file; its folder is created if missing (mode 0777 & ~umask)
    write : callable taking the temp file's path (str) and writing the whole content there
    suffix : str
        Suffix of the temp file (some writers pick the format from it, e.g. ``".png"``).

    Returns
    -------
    pathlib.Path of the written file. Its mode is what a plain ``open(path, "w")`` would
    give: 0666 minus the current umask for a new file (0644 with umask 022), the old mode for
    a file that is replaced. An existing file is replaced whole, never partly written.

    Raises
    ------
    Whatever ``write`` raises (the temp file is removed first), or OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name, suffix)
    try:
        if path.is_file():  # as open() would: a replaced file keeps its mode
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda p: Path(p).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(p: str) -> None:
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


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
