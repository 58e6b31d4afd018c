"""Running a trained detector outside training.

* :class:`TorchInferencer` (:mod:`.torch_inferencer`): a model directory loaded once, behind
  ``spadecam score`` and ``spadecam evaluate``.
* :func:`export_onnx` (:mod:`.onnx_export`): the whole scoring graph as one ONNX file
  (``spadecam export``).
* :class:`OnnxSPADE` (:mod:`.onnx_inferencer`): that file run with onnxruntime, without
  torch (``spadecam score --onnx``).
* :mod:`.outputs`: the CSV and overlay PNGs both paths write.

Names are imported on first use, so that ``spadecam.deploy.onnx_inferencer`` never imports
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TorchInferencer": "torch_inferencer",
    "export_onnx": "onnx_export",
    "ExportError": "onnx_export",
    "OnnxSPADE": "onnx_inferencer",
    "score_onnx": "onnx_inferencer",
    "map_names": "outputs",
    "overlay": "outputs",
    "rows_to_csv": "outputs",
    "write_png": "outputs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'spadecam.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"spadecam.deploy.{_WHERE[name]}"), name)
