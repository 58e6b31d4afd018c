"""Model directories of the detectors: :meth:`~_ModelFiles.save` and
:meth:`~_ModelFiles.load` (safetensors weights and config.json through :mod:`spadecam.io`),
with the feature bank, the patch bank and the margin fusion's calibration checked as they are
read back. A mixin of :class:`spadecam.detectors._base._BaseDetector`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from spadecam._json import json_float
from spadecam.exceptions import _require
from spadecam.inputs import min_input_size
from spadecam.io import ModelFormatError, load_model_parts, load_tensors, read_config, save_models
from spadecam.preprocess import RESIZE_POLICIES

__all__: list[str] = []

#: Detector parameters stored in a model directory (the models carry their own configs); each
#: class stores those its constructor takes (:meth:`_ModelFiles._saved_params`).
_SAVED_PARAMS = (
    "loss", "cam_layer", "input_branch", "recon_branch", "normalise", "upsample", "cam_method",
    "error_smoothing", "error_norm", "batch_size", "precision", "threshold_quantile",
    "threshold_holdout", "image_size", "resize", "roi_power", "classifier_weight", "recipe",
    "knn_power", "knn_layer", "knn_k", "error", "patch_bank_size", "score", "evidence_weight",
    "evidence_margin", "patch_stride",
)
#: Scoring parameters that default (None) to the recipe's value.
_RECIPE_PARAMS = ("error_smoothing", "error_norm", "roi_power", "classifier_weight",
                  "knn_power", "error", "score", "evidence_weight", "evidence_margin",
                  "patch_stride")


def _checked_bank(tensors: dict[str, torch.Tensor], cnn: Any, layer: int,
                  path: str | os.PathLike) -> torch.Tensor:
    """The feature bank's ``features`` (M, K) from ``knn.safetensors``, checked against the
    classifier it is read with: a float matrix of at least 2 finite rows whose width K is the
    classifier's channel count at block ``layer`` (found by one forward pass of a blank image
    at the smallest side the classifier takes).

    Raises
    ------
    ModelFormatError
        Naming ``knn.safetensors``, what it holds and what the classifier expects.
    """
    file = Path(path) / "knn.safetensors"
    if cnn is None:
        raise ModelFormatError(f"{file}: a feature bank without a classifier (cnn_config) to "
                               "read its features with")
    if set(tensors) != {"features"}:
        raise ModelFormatError(f"{file} holds tensors {sorted(tensors)}; expected one, "
                               "'features' (M, K)")
    bank = tensors["features"]
    if bank.ndim != 2 or len(bank) < 2 or not bank.is_floating_point():
        raise ModelFormatError(f"{file}: 'features' must be a float (M, K) matrix with M >= 2 "
                               f"rows, got {bank.dtype} of shape {tuple(bank.shape)}")
    if not bool(torch.isfinite(bank).all()):
        raise ModelFormatError(f"{file}: 'features' holds NaN or infinite values")
    blocks = len(cnn.features)
    if not -blocks <= layer < blocks:
        raise ModelFormatError(f"{file}: knn.layer {layer} in config.json names no block of "
                               f"the classifier, which has {blocks} (-{blocks} to {blocks - 1})")
    # the width does not depend on the side: the smallest one the classifier takes is enough
    size = min_input_size(None, cnn.config)
    try:
        with torch.no_grad():
            width = int(cnn.forward_features(
                torch.zeros(1, cnn.config.in_channels, size, size), layer).shape[1])
    except RuntimeError as exc:
        raise ModelFormatError(f"{file}: the classifier cannot read the bank's features at "
                               f"block {layer} ({exc})") from None
    if bank.shape[1] != width:
        raise ModelFormatError(
            f"{file}: the feature bank is {bank.shape[1]} features wide, but the classifier's "
            f"{'last block' if layer == -1 else f'block {layer}'} gives {width} (knn.layer "
            f"{layer} in config.json); the bank and "
            "cnn.safetensors are not from one model: re-save or re-train it")
    return bank


def _load_patch_bank(path: str | os.PathLike, config: dict[str, Any]) -> Any:
    """The feature-space error's bank and frozen backbone from ``patch.safetensors`` (the
    section ``patch`` of config.json), every tensor checked.

    Raises
    ------
    ModelFormatError
        Naming the file: a bad section, tensors that do not fit the backbone, or a bank whose
        width is not the backbone's.
    """
    from spadecam.feature_error import PatchBank, PatchFeatures
    from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig

    file = Path(path) / "patch.safetensors"
    section = config["patch"]
    try:
        with torch.random.fork_rng(devices=[]):  # replaced by the saved weights: no RNG used
            net = EfficientNetLiteClassifier(EfficientNetLiteConfig(
                in_channels=int(section["in_channels"]), pretrained=False))
        extractor = PatchFeatures(net, tuple(int(v) for v in section["layers"]),
                                  int(section["pool"]), int(section.get("stride", 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{Path(path) / 'config.json'}: bad patch section ({exc})") from None
    tensors = load_tensors(path, "patch", config)
    state = {k.removeprefix("extractor."): v for k, v in tensors.items() if k != "bank"}
    try:
        extractor.load_state_dict(state)
        bank = tensors["bank"]
        with torch.no_grad():
            width = extractor(torch.zeros(1, int(section["in_channels"]), 32, 32)).shape[1]
        if bank.ndim != 2 or bank.shape[1] != width or not bool(torch.isfinite(bank).all()):
            raise ValueError(f"the bank must be a finite (M, {width}) matrix, got "
                             f"{tuple(bank.shape)}")
        return PatchBank(bank, extractor)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFormatError(f"{file} does not fit the feature-space error's backbone "
                               f"({str(exc).splitlines()[0]})") from None


class _ModelFiles:
    """save / load / default_preprocessing of every detector (see the module notes)."""

    if TYPE_CHECKING:  # provided by _BaseDetector
        resize: str
        _model_attrs: ClassVar[tuple[str, ...]]
        from_models: ClassVar[Any]

        def _required_models(self) -> tuple[str, ...]: ...
        def _param(self, name: str) -> Any: ...
        def _input_spec(self) -> tuple[int | None, int | None]: ...

    def default_preprocessing(self) -> dict[str, Any] | None:
        """How image files become this detector's inputs, as ``fit`` took arrays: read at
        their own size in the models' channel count (``channels``), divided by their storage
        type's maximum (``normalisation`` "dtype_max": 255 for 8-bit, as a uint8 array is;
        65535 for 16-bit), refused below ``min_input_size`` (the networks' smallest side); the
        detector then brings them to ``image_size_`` with its ``resize`` policy. None before
        the models' channel count is known.

        ``fit_input`` records what ``fit`` took ("uint8", "float" or "files"): uint8 arrays
        are scaled as 8-bit files are, while float arrays in [0, 1] may have been scaled
        otherwise (a 12-bit camera divided by 4095), so the CLI warns when it reads files
        for a model fitted on floats."""
        channels = self._input_spec()[1]
        if channels is None:
            return None
        cfg = {a: getattr(getattr(self, a, None), "config", None) for a in ("vae_", "cnn_")}
        pre: dict[str, Any] = {"channels": int(channels), "normalisation": "dtype_max",
                               "min_input_size": int(min_input_size(cfg["vae_"], cfg["cnn_"]))}
        fitted_on = getattr(self, "fit_input_", None)
        if fitted_on is not None:
            pre["fit_input"] = fitted_on
        return pre

    def save(
        self,
        path: str | os.PathLike,
        preprocessing: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> os.PathLike:
        """Write a model directory: safetensors weights + config.json (:mod:`spadecam.io`).

        config.json holds the format version, the model configs (the VAE's, the classifier's
        and its backbone, whichever the detector has), the detector's class and scoring
        parameters, ``threshold_`` and ``preprocessing``. Every file is written to a temp file
        and renamed, config.json last.

        Parameters
        ----------
        path : str or PathLike, the model directory (created if missing)
        preprocessing : dict, optional
            How images become inputs, e.g. ``{"image_size": 128, "channels": 1, "resize":
            "resize", "normalisation": "dtype_max"}``; default ``self.preprocessing_`` if set,
            else :meth:`default_preprocessing` (what ``fit`` did), so that ``spadecam score``,
            ``evaluate`` and ``export`` take every directory ``save`` writes.
        extra : dict, optional
            More JSON-serialisable fields for config.json.

        Returns
        -------
        pathlib.Path of the directory.

        Raises
        ------
        NotFittedError
            Before ``fit`` / ``from_models``.
        """
        _require(self, *self._required_models())
        # resolved values, so a saved model scores the same whatever later recipes default to
        # resize is recorded once, in "input" (it was in params and preprocessing too)
        params = {k: (self._param(k) if k in _RECIPE_PARAMS else getattr(self, k))
                  for k in self._saved_params() if k != "resize"}
        pre = preprocessing or getattr(self, "preprocessing_", None) or self.default_preprocessing()
        if pre and pre.get("resize", self.resize) != self.resize:
            raise ValueError(f"preprocessing['resize'] is {pre['resize']!r} but the detector's "
                             f"resize is {self.resize!r}; a model directory records one policy")
        config = {
            "detector": {"class": type(self).__name__, "params": params},
            "threshold_": getattr(self, "threshold_", None),
            "threshold_source": getattr(self, "threshold_source_", None),
            "threshold_n_images": getattr(self, "threshold_n_images_", None),
            "preprocessing": pre,
            # the model's input, read back by load: images of any size are brought to it
            "input": {"image_size": self._input_spec()[0], "channels": self._input_spec()[1],
                      "resize": self.resize},
            **(extra or {}),
        }
        bank = getattr(self, "knn_", None)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        if bank is not None:  # SPADE's feature bank (spadecam.knn)
            config["knn"] = {"layer": bank.layer, "k": bank.k, "scale": bank.scale}
            tensors["knn"] = {"features": bank.features}
        patch = getattr(self, "patch_bank_", None)
        if patch is not None:  # the feature-space error's bank and its frozen backbone
            config["patch"] = {"layers": list(patch.extractor.layers),
                               "pool": patch.extractor.pool,
                               "stride": patch.extractor.stride,
                               "in_channels": self._input_spec()[1]}
            tensors["patch"] = {"bank": patch.features, **{
                f"extractor.{k}": v for k, v in patch.extractor.state_dict().items()}}
        calibration = getattr(self, "calibration_", None)
        if calibration is not None:  # SPADE's margin fusion (spadecam.fusion)
            config["calibration"] = calibration.to_dict()
        return save_models(path, getattr(self, "vae_", None), getattr(self, "cnn_", None),
                           extra=config, tensors=tensors or None)

    @classmethod
    def _saved_params(cls) -> list[str]:
        """The parameters of :data:`_SAVED_PARAMS` this class's constructor takes."""
        accepted = inspect.signature(cls.__init__).parameters
        return [k for k in _SAVED_PARAMS if k in accepted]

    @classmethod
    def load(cls, path: str | os.PathLike, config: dict[str, Any] | None = None) -> Any:
        """A fitted detector from a model directory written by :meth:`save` or the CLI.

        Sets ``threshold_`` (None if the directory has none) and ``preprocessing_`` (dict or
        None) from config.json. ``config``: config.json as :func:`spadecam.io.read_config`
        already read it (then it is not read again).

        Raises
        ------
        ModelFormatError
            Missing or malformed directory, another format version, pickle files, weights
            that do not fit the config, a directory saved by another detector class, or one
            without a model this detector needs.
        """
        config = read_config(path) if config is None else config
        saved = config.get("detector") or {}
        other = saved.get("class", cls.__name__)
        if other != cls.__name__:
            raise ModelFormatError(f"{path} holds a {other} model; load it with {other}.load")
        vae, cnn = load_model_parts(path, config)
        found = {"vae_": vae, "cnn_": cnn}
        params = cls._load_params(path, config, found)
        extra = _load_parts(path, config, found["cnn_"], params, cls._saved_params())
        try:
            det = cls.from_models(*(found[a] for a in cls._model_attrs), **extra, **params)
        except ValueError as exc:  # knn_power > 0 saved without its bank
            raise ModelFormatError(f"{path}: {exc}") from None
        _restore_fitted(det, path, config)
        return det

    @classmethod
    def _load_params(cls, path: str | os.PathLike, config: dict[str, Any],
                     found: dict[str, Any]) -> dict[str, Any]:
        """The detector parameters config.json records (those this class takes), its resize
        policy wherever an older version put it; ModelFormatError when a model the
        parameters need is missing."""
        saved = config.get("detector") or {}
        allowed = cls._saved_params()
        params = {k: v for k, v in (saved.get("params") or {}).items() if k in allowed}
        try:
            needed = cls(**params)._required_models()
        except TypeError as exc:
            raise ModelFormatError(f"{path}/config.json: bad detector params ({exc})") from None
        if any(found[a] is None for a in needed):
            raise ModelFormatError(
                f"{path}/config.json lacks a model {cls.__name__} needs "
                f"({', '.join(a.rstrip('_') for a in needed)})"
            )
        if isinstance(params.get("cam_layer"), list):  # a multi-layer ROI, stored as a list
            params["cam_layer"] = tuple(params["cam_layer"])
        # "input" records it; 0.1's directories in params or (older) only in preprocessing
        for source in (config.get("input") or {}, saved.get("params") or {},
                       config.get("preprocessing") or {}):
            if source.get("resize") in RESIZE_POLICIES:
                params["resize"] = source["resize"]
                break
        return params


def _load_parts(path: str | os.PathLike, config: dict[str, Any], cnn: Any,
                params: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """The fitted parts beside the networks, as ``from_models`` takes them: the feature bank
    (``knn_bank``), the patch bank and the calibration, each checked (ModelFormatError naming
    the section). A directory saved before the feature bank existed scores without it."""
    extra: dict[str, Any] = {}
    knn = config.get("knn")
    if knn is not None:
        from spadecam.knn import FeatureBank

        try:
            layer, k, scale = int(knn["layer"]), int(knn["k"]), float(knn["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}/config.json: bad knn section ({exc})") from None
        features = _checked_bank(load_tensors(path, "knn", config), cnn, layer, path)
        try:
            extra["knn_bank"] = FeatureBank(features, layer, k, scale)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}/config.json: bad knn section ({exc})") from None
    elif "knn_power" in allowed and "knn_power" not in params:
        params["knn_power"] = 0.0  # saved before the feature bank existed: scored without
    if config.get("patch") is not None:
        extra["patch_bank"] = _load_patch_bank(path, config)
    if config.get("calibration") is not None:
        from spadecam.fusion import EvidenceCalibration

        try:
            extra["calibration"] = EvidenceCalibration.from_dict(config["calibration"])
        except ValueError as exc:
            raise ModelFormatError(f"{path}/config.json: bad calibration section "
                                   f"({exc})") from None
    return extra


def _restore_fitted(det: Any, path: str | os.PathLike, config: dict[str, Any]) -> None:
    """The fitted attributes config.json records: ``threshold_`` and how it was set,
    ``preprocessing_`` (with the input it records once) and ``image_size_``."""
    try:
        det.threshold_ = json_float(config.get("threshold_"), "threshold_")
    except ValueError as exc:
        raise ModelFormatError(f"{path}/config.json: {exc}") from None
    for attr, key in (("threshold_source_", "threshold_source"),
                      ("threshold_n_images_", "threshold_n_images")):
        if config.get(key) is not None:
            setattr(det, attr, config[key])
    pre, inp = config.get("preprocessing") or {}, config.get("input") or {}
    det.preprocessing_ = None if not pre else {
        **{k: inp[k] for k in ("image_size", "resize") if k in inp}, **pre}
    size = inp.get("image_size") or pre.get("image_size")
    if size is not None:
        det.image_size_ = int(size)
