"""A fitted detector as one ONNX graph (``spadecam export``): run it without torch.

With the closed-form Grad-CAM (:func:`spadecam.cam.closed_form_applies`: a classifier with a
GAP + linear head, read at its last block) SPADE has no autograd at scoring time, so the
whole detector is one forward graph: the VAE's deterministic reconstruction (posterior
mean), the classifier on u and u_hat as one batch, the signed maps M(u), M(u_hat) (eq. 3-4),
the ROI (eq. 5) with its upsampling, letterbox mask, power and L / |L|, the reconstruction
error with its blur, the weighted error e' (Algorithm 1), the classifier weight, the feature
bank's kNN distance, and the score. :func:`export_onnx` writes that graph for SPADE and for
the paper's three baselines, from the same scoring modules the torch detectors run
(:mod:`spadecam.scoring`).

The graph
---------
* inputs ``images`` (N, C, S, S) float32 in [0, 1] at the model's input side S, and
  ``valid`` (N, 1, S, S) float32 in {0, 1}, the letterbox mask (1 on image pixels, 0 on
  padding; all ones for images that were not letterboxed); N is a dynamic axis;
* outputs ``score`` (N,) float32 (higher = more anomalous) and, for every detector but the
  CNN-based one, ``anomaly_map`` (N, S, S) float32 >= 0 (SPADE's e', the VAE's e).

The preprocessing (files to [0, 1], channels, the letterbox resize to S) stays outside the
graph, as Pillow / numpy code without torch (:mod:`spadecam.preprocess`), and so do the maps'
resizing back to each image's size and the decision; the graph's metadata holds what they
need (:data:`METADATA_KEYS`).

Exporter and opset: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then the ONNX
translation), opset :data:`ONNX_OPSET`, in fp32. The TorchScript exporter
(``dynamo=False``) is not used: it failed on the blur's matrices built at trace time.
Two code paths differ when exporting (:func:`spadecam._runtime.is_exporting`), each giving the
same values: the reconstruction error takes its general letterbox branch (no branch on
data), and the feature bank's distances are computed from differences (ONNX has no cdist),
which holds (N, M, K) floats at once; :class:`~spadecam.deploy.onnx_inferencer.OnnxSPADE`
sizes its batches for that.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spadecam._fs import atomic_write_bytes
from spadecam._json import json_text
from spadecam.cam import closed_form_applies
from spadecam.deploy.onnx_inferencer import checksum_entry
from spadecam.detectors import SPADE, load_detector
from spadecam.detectors._base import _BaseDetector
from spadecam.inputs import min_input_size
from spadecam.io import read_config

__all__ = ["METADATA_KEYS", "ONNX_OPSET", "ExportError", "ScoringGraph", "export_onnx"]

#: The ONNX opset the graph is written in (the dynamo exporter's default in torch 2.13).
ONNX_OPSET = 20

#: Keys of the graph's metadata (``metadata_props``; every value JSON text):
#: ``spadecam_version``, ``detector`` (class name), ``threshold`` (anomalous when score >
#: threshold), ``threshold_source``, ``image_size`` (S), ``channels`` (C), ``resize``
#: ("letterbox" or "resize"), ``normalisation`` (how files become [0, 1]: "dtype_max" =
#: divided by their storage type's maximum), ``min_input_size`` (smallest image side the
#: networks accept), ``overlay_scale`` (map value shown at full colour, or null),
#: ``outputs`` (JSON list), ``knn_bank_shape`` ((M, K) of the feature bank, or null),
#: ``patch_bank_shape`` ((M, D) of the feature-space error's patch bank, or null),
#: ``exporter`` and ``opset``. The file ends with one more entry, ``spadecam_sha256``: the
#: sha256 of every byte before it (:func:`~spadecam.deploy.onnx_inferencer.checksum_entry`),
#: which the ONNX runner checks.
METADATA_KEYS = ("spadecam_version", "detector", "threshold", "threshold_source", "image_size",
                 "channels", "resize", "normalisation", "min_input_size", "overlay_scale",
                 "outputs", "knn_bank_shape", "patch_bank_shape", "exporter", "opset")


class ExportError(ValueError):
    """A detector that cannot be written as one ONNX graph; the message says why."""


class ScoringGraph(nn.Module):
    """A detector's scoring module (``forward(u, valid) -> (score, map)``) as the exported
    graph: ``forward(images, valid) -> (score, anomaly_map)``, or ``score`` alone for a
    detector without a map (the CNN-based baseline)."""

    def __init__(self, scorer: nn.Module, has_map: bool) -> None:
        super().__init__()
        self.scorer, self.has_map = scorer, has_map

    def forward(self, images: torch.Tensor, valid: torch.Tensor) -> Any:
        score, m = self.scorer(images, valid)
        return (score, m) if self.has_map else score


def _check_exportable(det: _BaseDetector) -> None:
    """ExportError unless every Grad-CAM the detector reads has the closed form."""
    if not isinstance(det, SPADE):  # NaiveSPADE too; the VAE and CNN baselines need no CAM
        return
    layers = det.cam_layer if isinstance(det.cam_layer, tuple) else (det.cam_layer,)
    for layer in layers:
        if det.cam_method == "autograd" or not (isinstance(layer, int)
                                                and closed_form_applies(det.cnn_, layer)):
            raise ExportError(
                f"the classifier's Grad-CAM at cam_layer={layer!r} (cam_method="
                f"{det.cam_method!r}) has no closed form: the ONNX graph has no autograd, and "
                "alpha_k (eq. 3) needs no backward pass only for a classifier with a GAP + "
                "linear head read at its last block (cam_layer -1, cam_method 'auto'); "
                "retrain with those, or score this model with torch"
            )


def _metadata(det: _BaseDetector, config: dict[str, Any]) -> dict[str, str]:
    """The graph's metadata (:data:`METADATA_KEYS`), every value a string."""
    from spadecam._version import __version__

    pre = getattr(det, "preprocessing_", None) or {}
    size, channels = det._input_spec()
    bank = getattr(det, "knn_", None)
    patch = getattr(det, "patch_bank_", None) if (
        isinstance(det, SPADE) and det._param("error") == "feature") else None
    uses_bank = bank is not None and bool(det._param("knn_power")) if isinstance(det, SPADE) \
        else False
    values: dict[str, Any] = {
        "spadecam_version": __version__,
        "detector": type(det).__name__,
        "threshold": det.threshold_,
        "threshold_source": getattr(det, "threshold_source_", None),
        "image_size": size,
        "channels": channels,
        "resize": det.resize,
        "normalisation": pre.get("normalisation", "dtype_max"),
        "min_input_size": pre.get("min_input_size") or min_input_size(
            getattr(getattr(det, "vae_", None), "config", None),
            getattr(getattr(det, "cnn_", None), "config", None)),
        "overlay_scale": config.get("overlay_scale"),
        "outputs": ["score", "anomaly_map"] if det.has_anomaly_map else ["score"],
        "knn_bank_shape": list(bank.features.shape) if uses_bank and bank is not None else None,
        "patch_bank_shape": (list(patch.features.shape) if patch is not None else None),
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "opset": ONNX_OPSET,
    }
    return {k: json_text(v, indent=None).strip() for k, v in values.items()}


def export_onnx(
    model: str | os.PathLike | _BaseDetector,
    out: str | os.PathLike,
    *,
    overlay_scale: float | None = None,
) -> Path:
    """Write a fitted detector's whole scoring graph as one ONNX file.

    Parameters
    ----------
    model : a model directory (``spadecam train`` or ``save``) or a fitted detector
        (SPADE, NaiveSPADE, VAEDetector or CNNDetector with ``threshold_`` set)
    out : path of the .onnx file (written to a temp file, then renamed)
    overlay_scale : float, optional
        Stored in the metadata for overlays (default: the model directory's).

    Returns
    -------
    pathlib.Path of ``out``. The graph: module notes; the scores it gives equal the torch
    detector's in ``precision="32"`` to fp32 rounding (tests: 1e-4 relative).

    Raises
    ------
    ExportError
        A SPADE / NaiveSPADE whose Grad-CAM has no closed form (named, with the reason), or
        a detector without ``threshold_``.
    ModelFormatError
        A bad model directory. NotFittedError for an unfitted detector.
    """
    config: dict[str, Any] = {}
    if isinstance(model, _BaseDetector):
        det = model
    else:
        config = read_config(model)
        det = load_detector(model, config=config)
    models = det.fitted_models()
    if getattr(det, "threshold_", None) is None:
        raise ExportError("the detector has no threshold_ (fit sets it; from_models does not): "
                          "set det.threshold_ before exporting")
    if overlay_scale is not None:
        config = {**config, "overlay_scale": float(overlay_scale)}
    _check_exportable(det)
    graph = ScoringGraph(det.scorer(), det.has_anomaly_map).eval()
    size, channels = det._input_spec()
    if size is None or channels is None:
        raise ExportError("the detector has no fixed input size and channel count (image_size_, "
                          "in_channels_); fit or load it first")
    # an example batch of 2 (a batch of 1 would be specialised); the batch axis is dynamic
    example = (torch.rand(2, channels, size, size), torch.ones(2, 1, size, size))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    modes = [m.training for m in models]
    # the exporters' notes ("torchvision is not installed", an empty attribute's type)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    try:
        for m in models:
            m.eval()
        for q in quiet:
            q.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and axis-name notes
            program = torch.onnx.export(
                graph, example, dynamo=True, opset_version=ONNX_OPSET,
                input_names=["images", "valid"],
                output_names=["score", "anomaly_map"] if det.has_anomaly_map else ["score"],
                dynamic_shapes={"images": {0: batch}, "valid": {0: batch}}, verbose=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        for m, mode in zip(models, modes):
            m.train(mode)
    assert program is not None
    proto = program.model_proto
    for key, value in _metadata(det, config).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    # the sha256 of the graph, appended as one more metadata entry (checksum_entry): the ONNX
    # runner refuses a damaged or edited file as the model directory's loader does
    body = proto.SerializeToString()
    return atomic_write_bytes(out, body + checksum_entry(hashlib.sha256(body).hexdigest()))
