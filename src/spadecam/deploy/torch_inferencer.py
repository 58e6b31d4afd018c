"""The torch inferencer: a model directory loaded once, images read and scored as
``spadecam score`` and ``spadecam evaluate`` do (:class:`TorchInferencer`).

Beside it, :mod:`.onnx_export` writes the same scoring graph (:mod:`spadecam.scoring`) as
ONNX and :mod:`.onnx_inferencer` runs that without torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spadecam._json import json_float
from spadecam._progress import bar, warn
from spadecam.data.images import read_images
from spadecam.deploy.outputs import map_names, non_finite_error, overlay, write_png  # noqa: F401
from spadecam.detectors import NonFiniteScoreError, load_detector
from spadecam.detectors._base import _BaseDetector
from spadecam.io import ModelFormatError, read_config
from spadecam.precision import resolve_scoring_precision

__all__ = ["TorchInferencer", "map_names", "overlay", "write_png"]  # the last three: re-exported


@dataclass
class TorchInferencer:
    """A model directory, loaded once (config.json parsed once), ready to score files.

    Attributes
    ----------
    detector : SPADE, or one of the baselines (NaiveSPADE, VAEDetector, CNNDetector; the
        class config.json names, :func:`spadecam.detectors.load_detector`), fitted, with
        ``threshold_`` set
    preprocessing : dict, how files become images: ``channels`` (1 or 3), ``min_input_size``
        and (model directories of 0.1) ``image_size`` / ``resize``; the model's input is
        the detector's (``image_size_``, ``resize``)
    config : dict, config.json as read and validated (:func:`spadecam.io.read_config`)
    model_dir : Path
    """

    detector: _BaseDetector
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    model_dir: Path

    @classmethod
    def load(cls, model_dir: str | os.PathLike, precision: str | None = None) -> TorchInferencer:
        """Load a model directory written by ``spadecam train`` or by ``save`` of any detector
        (a directory without ``preprocessing`` gets the detector's
        :meth:`~spadecam.detectors._base._BaseDetector.default_preprocessing`, what ``fit``
        did with arrays); ``precision`` ("auto", "32", "bf16") overrides the stored one.

        Raises
        ------
        ModelFormatError
            A bad directory, one without threshold_ (from_models and save without setting
            it), or ``preprocessing`` without ``channels``. ValueError for a bad
            ``precision``.
        """
        d = Path(model_dir)
        config = read_config(d)
        det = load_detector(d, config=config)
        if precision is not None:
            resolve_scoring_precision(precision)  # a clear error for a bad value
            det.precision = precision
        if det.threshold_ is None:
            raise ModelFormatError(
                f"{d / 'config.json'} has no threshold_ (fit sets it; a detector built with "
                "from_models has none): set det.threshold_ before save, or re-train with "
                "`spadecam train`")
        # a directory saved from the API before save recorded its preprocessing: what fit did
        pre = det.preprocessing_ or det.default_preprocessing()
        if not pre:
            raise ModelFormatError(f"{d / 'config.json'}: no preprocessing and no input "
                                   "channel count to derive it from")
        if not det.preprocessing_ or pre.get("fit_input") == "float":
            warn(f"{d} was fitted through the Python API on "
                 + ("float arrays" if det.preprocessing_ else "arrays of unrecorded scale")
                 + ": image files are read divided by their type's maximum (8-bit / 255, "
                 "16-bit / 65535); if fit's images were scaled otherwise, score them with the "
                 "API, scaled the same way")
        if "channels" not in pre:  # read_config checked its value where present
            raise ModelFormatError(
                f"{d / 'config.json'}: preprocessing.channels is missing; expected 1 or 3, "
                "the channel count the images are converted to"
            )
        return cls(det, pre, config, d)

    @property
    def threshold(self) -> float:
        """The decision threshold: anomalous when score > threshold."""
        assert self.detector.threshold_ is not None  # load refuses a model without one
        return float(self.detector.threshold_)

    @property
    def overlay_scale(self) -> float | None:
        """Map value shown at full colour in overlays (None: the model records none)."""
        return json_float(self.config.get("overlay_scale"), "overlay_scale") or None

    def describe_precision(self, given: bool) -> str:
        """One line: "precision: scoring bf16 (stored in the model directory) (auto: ...)".

        ``given``: the precision came from ``--precision`` rather than the model directory.
        """
        from spadecam.precision import describe

        option = self.detector.precision
        text = f"precision: scoring {resolve_scoring_precision(option)}"
        text += "" if given else " (stored in the model directory)"
        if option == "auto":
            text += f" (auto: {describe()}; --precision 32 for exact fp32)"
        return text

    def to(self, device: Any) -> TorchInferencer:
        """Move the models to ``device`` (a GPU under ``--accelerator cuda``); returns self."""
        self.detector.to(device)  # the networks and the memory banks
        return self

    def read(self, paths: Sequence[Path], progress: bool = False) -> list[np.ndarray]:
        """Each image at its own size in the model's channels, (C, H_i, W_i) float32 in [0, 1].

        Every file is tried before an error: one ImageError lists all unusable files
        (unreadable, or, for a model without a fixed input side, a side below the networks'
        minimum, ``preprocessing["min_input_size"]``).
        """
        return read_images(paths, self.preprocessing["channels"], min_size=self._min_side(),
                           progress=progress)

    def check(self, paths: Sequence[Path], progress: bool = False) -> None:
        """:meth:`read` without keeping the images: every file decoded once, one ImageError
        naming all unusable ones (for scoring in chunks with flat memory)."""
        read_images(paths, self.preprocessing["channels"], min_size=self._min_side(),
                    progress=progress, keep=False)

    def _min_side(self) -> int:
        """The smallest side a file may have: any, when the model resizes every image to its
        input side (as ``fit`` does); else the networks' minimum
        (``preprocessing["min_input_size"]``), the images being scored at their own size."""
        if self.detector._input_spec()[0] is not None:
            return 1
        return int(self.preprocessing.get("min_input_size", 1))

    def score(
        self, x: list[np.ndarray], paths: Sequence[Path], progress: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Scores and maps (each at its image's size; None for a detector without maps, the
        CNN-based one) of ``x``, the images of ``paths``.

        The detector brings each image to the model's input with the recorded policy
        (:mod:`spadecam.inputs`), so the CLI and the Python API score alike. Non-finite scores
        name the files.
        """
        scores, maps = [], []
        step = self.detector.batch_size
        with bar(total=len(x), desc="scoring", enabled=progress) as shown:
            for i in range(0, len(x), step):
                try:
                    # batches of one (1, C, H, W): no layout to guess, whatever the size
                    s, m = self.detector.decision_function_and_map(
                        [a[None] for a in x[i : i + step]])
                except NonFiniteScoreError as exc:
                    raise non_finite_error(exc, paths, i) from None
                scores.append(s)
                maps += [] if m is None else list(m)
                shown.update(len(s))
        return np.concatenate(scores), (maps if self.detector.has_anomaly_map else None)
