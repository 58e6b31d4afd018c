"""Reading another project's state dict into a spadecam network: one place for both
pretrained backbones (EfficientNet-Lite0's ImageNet weights, a torchvision-format ResNet file).

:func:`read_state_dict` reads the file safely (``torch.load(weights_only=True)``) and
:func:`mapped_state_dict` renames its keys to the network's, checking every key and shape;
each fault is a :class:`PretrainedWeightsError` naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection
from pathlib import Path

import torch

__all__ = ["PretrainedWeightsError", "mapped_state_dict", "read_state_dict"]


class PretrainedWeightsError(ValueError):
    """Pretrained weights that are missing or do not fit; the message names the file and
    what was expected."""


def read_state_dict(file: Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """The state dict (name -> tensor) in ``file`` (or its bytes ``data``), also when it is
    held under "state_dict" / "model" of a checkpoint dict or has DataParallel's "module."
    prefixes.

    Raises
    ------
    PretrainedWeightsError
        No such file, a file ``torch.load(weights_only=True)`` cannot read, or one that holds
        no state dict.
    """
    if data is None:
        if not file.is_file():
            raise PretrainedWeightsError(f"{file}: no such weights file")
        data = file.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors of many kinds
        raise PretrainedWeightsError(f"{file}: not a state dict torch.load(weights_only=True) "
                                     f"reads ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{file} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def mapped_state_dict(
    state: dict[str, torch.Tensor],
    file: Path,
    rename: Callable[[str], str | None],
    target: dict[str, torch.Tensor],
    kind: str,
    skip: str,
    own: Collection[str] = (),
) -> dict[str, torch.Tensor]:
    """``state`` with its keys renamed for a network whose state dict is ``target``.

    Parameters
    ----------
    rename : a key's prefix (all but its last part) -> the network's, or None when unknown
    kind : the network, in words, for the messages ("EfficientNet-Lite0", ...)
    skip : a key prefix left out (the file's ImageNet classifier, e.g. "fc.")
    own : the network's keys the file need not hold (taken from ``target``)

    Returns
    -------
    dict with every key of ``target``, in its dtype.

    Raises
    ------
    PretrainedWeightsError
        A shape that differs (the key, both shapes), keys the network does not have, or keys
        it needs that the file lacks (the first few named).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(skip):
            continue
        prefix, _, leaf = key.rpartition(".")
        ours = rename(prefix)
        if ours is None or f"{ours}.{leaf}" not in target:
            unknown.append(key)
            continue
        want = target[f"{ours}.{leaf}"]
        if tuple(value.shape) != tuple(want.shape):
            raise PretrainedWeightsError(
                f"{file}: {key} has shape {tuple(value.shape)}, but {kind} expects "
                f"{tuple(want.shape)}; is it the weights of another network?")
        out[f"{ours}.{leaf}"] = value.to(want.dtype)
    given = set(own) - set(out)
    missing = sorted(set(target) - set(out) - given)
    if unknown or missing:
        raise PretrainedWeightsError(
            f"{file} is not a state dict of {kind}: "
            + (f"unexpected keys {unknown[:5]}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"missing {len(missing)} keys, e.g. {missing[:5]}" if missing else ""))
    for k in given:
        out[k] = target[k]
    return out
