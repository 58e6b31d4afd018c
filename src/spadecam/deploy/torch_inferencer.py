"""The torch inferencer: a model directory loaded once, images read and scored as
``spadecam score`` and ``spadecam evaluate`` do, overlays drawn (:class:`TorchInferencer`).

The ONNX exporter (issue 20) is to sit beside it, running the same scoring graph
(:mod:`spadecam.scoring`) without torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spadecam._fs import atomic_write, json_float
from spadecam._progress import bar
from spadecam.data.images import ImageError, load_image
from spadecam.detectors import SPADE, NonFiniteScoreError
from spadecam.io import ModelFormatError, read_config
from spadecam.precision import resolve_scoring_precision

__all__ = ["TorchInferencer", "map_names", "overlay", "write_png"]


@dataclass
class TorchInferencer:
    """A SPADE model directory, loaded once (config.json parsed once), ready to score files.

    Attributes
    ----------
    detector : SPADE, fitted, with ``threshold_`` set
    preprocessing : dict, how files become images: ``channels`` (1 or 3), ``min_input_size``
        and (model directories of 0.1) ``image_size`` / ``resize``; the model's input is
        the detector's (``image_size_``, ``resize``)
    config : dict, config.json as read and validated (:func:`spadecam.io.read_config`)
    model_dir : Path
    """

    detector: SPADE
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    model_dir: Path

    @classmethod
    def load(cls, model_dir: str | os.PathLike, precision: str | None = None) -> TorchInferencer:
        """Load a model directory written by ``spadecam train`` (or ``SPADE.save`` with
        preprocessing); ``precision`` ("auto", "32", "bf16") overrides the stored one.

        Raises
        ------
        ModelFormatError
            A bad directory, or one without preprocessing, threshold_ or
            ``preprocessing.channels``. ValueError for a bad ``precision``.
        """
        d = Path(model_dir)
        config = read_config(d)
        det = SPADE.load(d, config=config)
        if precision is not None:
            resolve_scoring_precision(precision)  # a clear error for a bad value
            det.precision = precision
        pre = det.preprocessing_
        if not pre or det.threshold_ is None:
            raise ModelFormatError(
                f"{d} has no preprocessing or threshold_ in config.json; it was not written "
                "by `spadecam train` (or SPADE.save with preprocessing)"
            )
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
        det = self.detector
        det.vae_, det.cnn_ = det.vae_.to(device), det.cnn_.to(device)
        return self

    def read(self, paths: Sequence[Path], progress: bool = False) -> list[np.ndarray]:
        """Each image at its own size in the model's channels, (C, H_i, W_i) float32 in [0, 1].

        Every file is tried before an error: one ImageError lists all unusable files
        (unreadable, or a side below the networks' minimum, ``preprocessing["min_input_size"]``).
        """
        out: list[np.ndarray] = []
        errors: list[ImageError] = []
        for p in bar(paths, enabled=progress, desc="reading images"):
            try:
                out.append(load_image(p, self.preprocessing["channels"], None,
                                      min_size=self.preprocessing.get("min_input_size", 1)))
            except ImageError as exc:
                errors.append(exc)
        if errors:
            raise ImageError.combine(errors, len(paths))
        return out

    def score(
        self, x: list[np.ndarray], paths: Sequence[Path], progress: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps (each at its image's size) of ``x``, the images of ``paths``.

        The detector brings each image to the model's input with the recorded policy
        (:mod:`spadecam.inputs`), so the CLI and the Python API score alike. Non-finite scores
        name the files.
        """
        scores, maps = [], []
        step = self.detector.batch_size
        with bar(total=len(x), desc="scoring", enabled=progress) as shown:
            for i in range(0, len(x), step):
                try:
                    s, m = self.detector.decision_function_and_map(x[i : i + step])
                except NonFiniteScoreError as exc:
                    files = [str(paths[i + j]) for j in exc.indices]
                    raise NonFiniteScoreError(
                        f"the model gives non-finite scores for {', '.join(files[:5])}"
                        + (f" and {len(files) - 5} more" if len(files) > 5 else "")
                        + "; its weights are probably not finite (a diverged training?): "
                        "re-train it with a lower --lr",
                        [i + j for j in exc.indices],
                    ) from None
                scores.append(s)
                maps += list(m)
                shown.update(len(s))
        return np.concatenate(scores), maps


def overlay(image: np.ndarray, error_map: np.ndarray, scale: float) -> np.ndarray:
    """Blend a weighted-error map over its image as an RGB picture.

    Parameters
    ----------
    image : ndarray (C, H, W), float in [0, 1], C = 1 or 3
    error_map : ndarray (H, W), float >= 0 (SPADE's e')
    scale : float > 0
        Map value shown at full colour; values are ``clip(map / scale, 0, 1)``. The
        ``spadecam train`` scale is the 99th percentile of the per-image maximum over normal
        training images, so colour means "above what normal images show" and is comparable
        across images.

    Returns
    -------
    ndarray (H, W, 3), uint8; the "inferno" colormap with opacity 0.6 x value.
    """
    from matplotlib import colormaps

    v = np.clip(error_map / max(scale, 1e-12), 0.0, 1.0)
    base = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    base = np.moveaxis(base, 0, -1)
    colour = colormaps["inferno"](v)[..., :3]
    alpha = 0.6 * v[..., None]
    return np.round(255 * ((1 - alpha) * base + alpha * colour)).astype(np.uint8)


def _mirrored(path: Path) -> Path:
    """``path`` as a relative path that stays inside a folder: no root, ``..`` spelled out."""
    parts = path.parts[1:] if path.anchor else path.parts
    return Path(*["_up_" if part == ".." else part for part in parts])


def map_names(paths: Sequence[Path]) -> list[Path]:
    """Overlay file of each input, relative to ``--maps``: the input path mirrored.

    ``test/good/a.jpg`` -> ``test/good/a.png``; an absolute ``/data/x/a.png`` ->
    ``data/x/a.png``; ``..`` becomes ``_up_``. So inputs with the same name in different
    folders (``a/000.png``, ``b/000.png``) never share an overlay, within a run or across
    runs. Two inputs of one folder that differ only by suffix (``a.jpg``, ``a.png``) keep
    their suffix (``a.jpg.png``); any remaining clash gets ``~2``, ``~3``, ... appended.
    """
    mirrored = [_mirrored(p) for p in paths]
    names = [m.with_suffix(".png") for m in mirrored]
    counts: dict[Path, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [m.with_name(m.name + ".png") if counts[n] > 1 else n
             for m, n in zip(mirrored, names)]
    seen: dict[Path, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0) + 1
        seen[n] = k
        out.append(n if k == 1 else n.with_name(f"{n.stem}~{k}.png"))
    return out


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 picture as a PNG (temp file, then renamed)."""
    atomic_write(path, lambda p: Image.fromarray(rgb).save(p, format="PNG"), suffix=".png")
