"""Shared plumbing of the four detectors: input sizes, fitting, threshold_, predict, batching,
save / load. The estimators themselves are in :mod:`.baselines` and :mod:`.spade`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from spadecam._fs import json_float
from spadecam._progress import tick, warn
from spadecam.data.images import RESIZE_POLICIES
from spadecam.decision import flag_anomalous
from spadecam.exceptions import NotFittedError, _check_finite
from spadecam.inputs import (
    PreparedImages,
    _as_tensor,
    _channels_last,
    as_image_tensor,
    image_list,
    iter_model_batches,
    maps_to_images,
    min_input_size,
    stack_maps,
    to_float_images,
    to_model_batch,
)
from spadecam.io import (
    ModelFormatError,
    check_detector_params,
    load_model_parts,
    load_tensors,
    read_config,
    save_models,
)
from spadecam.models.backbones import CLASSIFIER_CONFIGS
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.recipes import PRETRAINED_IMAGE_SIZE, RECIPE_DEFAULTS, _check_recipe
from spadecam.threshold import (
    MIN_QUANTILE_NORMALS,
    choose_threshold,
    few_normals_text,
    holdout_split,
)
from spadecam.training import TrainConfig

_M = TypeVar("_M", bound=nn.Module)


def _as_labels(y: Any, n: int) -> torch.Tensor:
    if y is None:
        return torch.zeros(n, dtype=torch.long)
    ya = np.asarray(y).reshape(-1)
    if ya.shape[0] != n:
        raise ValueError(f"y must have one label per image: {n} images, {ya.shape[0]} labels")
    bad = sorted(set(np.unique(ya).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"y must hold 0 (normal) or 1 (known anomaly), found {bad[:5]}")
    return torch.as_tensor(ya.astype(np.int64))


def _prepare(model: _M) -> _M:
    # layout only: the parameters stay the same objects (an optimizer holding them still
    # works) and the train/eval mode is left to the caller; scoring switches to eval mode
    # for its duration (scoring_context). Module.to returns the module itself.
    # torch's stubs omit Module.to's documented memory_format keyword
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _require(det: Any, *attrs: str) -> None:
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


# --------------------------------------------------------------------------- detectors

#: Detector parameters stored in a model directory (the models carry their own configs); each
#: class stores those its constructor takes (:meth:`_BaseDetector._saved_params`).
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


class _BaseDetector(BaseEstimator):
    """Shared PyOD-style plumbing: input sizes, threshold_, predict, batching.

    A scikit-learn estimator (``get_params`` / ``set_params``, so ``sklearn.base.clone``
    works): the constructor stores its arguments unchanged, and :meth:`_check_params` checks
    them all at the start of ``fit`` and ``from_models``, before any training.
    """

    #: Parameters holding configs, and the config classes each accepts (None = default).
    _CONFIG_TYPES: dict[str, tuple[type, ...]] = {
        "vae_config": (VAEConfig,), "cnn_config": CLASSIFIER_CONFIGS,
        "vae_train": (TrainConfig,), "cnn_train": (TrainConfig,),
    }

    def _check_params(self) -> None:
        """Every constructor argument checked, before any work (ValueError / TypeError naming
        the parameter). The scoring parameters follow the rules of config.json's
        ``detector.params`` (:func:`spadecam.io.check_detector_params`)."""
        name = type(self).__name__
        params = self.get_params(deep=False)
        for key, types in self._CONFIG_TYPES.items():
            value = params.pop(key, None)
            if value is not None and not isinstance(value, types):
                raise TypeError(f"{name}: {key} must be None or a "
                                f"{' / '.join(t.__name__ for t in types)}, got "
                                f"{type(value).__name__}")
        size = params.pop("image_size", None)
        if size is not None and not (isinstance(size, (int, np.integer))
                                     and not isinstance(size, bool) and size >= 1):
            raise ValueError(f"{name}: image_size must be None or an integer >= 1, got {size!r}")
        if isinstance(params.get("cam_layer"), nn.Module):
            params.pop("cam_layer")  # a layer of a user's classifier, found when scoring
        cnn = getattr(self, "cnn_config", None)
        layers = len(cnn.channels) if isinstance(cnn, CNNConfig) else None
        check_detector_params(name, params, layers)

    batch_size: int
    precision: str
    threshold_quantile: float
    threshold_holdout: float
    image_size: int | None
    resize: str
    # fitted attributes (set by fit / from_models / load); which ones: _model_attrs
    threshold_: float | None
    vae_: ConvVAE
    cnn_: FeatureClassifier
    # each detector's own signature: VAEDetector(vae), CNNDetector(cnn), SPADE(vae, cnn)
    from_models: Callable[..., Any]

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        """Scores (B,) and, if wanted, maps (B, S, S) of a batch at the model's input size."""
        raise NotImplementedError

    def _required_models(self) -> tuple[str, ...]:
        """The fitted networks this detector's score reads (of ``_model_attrs``)."""
        return self._model_attrs

    #: Fitted modules beside the networks: SPADE's image-level feature bank and patch bank.
    _bank_attrs = ("knn_", "patch_bank_")

    def to(self, device: Any) -> Any:
        """Move every fitted module the detector holds (its networks and its memory banks)
        to ``device`` (a ``torch.device`` or its name); returns self. The threshold and the
        calibration are numbers and stay as they are."""
        for attr in (*self._model_attrs, *self._bank_attrs):
            module = getattr(self, attr, None)
            if module is not None:
                setattr(self, attr, module.to(device))
        return self

    def fitted_models(self) -> list[nn.Module]:
        """The fitted networks the score reads, in ``_model_attrs`` order (NotFittedError
        before fit)."""
        attrs = self._required_models()
        _require(self, *attrs)
        return [getattr(self, a) for a in attrs]

    def _param(self, name: str) -> Any:
        """A scoring parameter: the constructor's value, or the recipe's when it is None."""
        value = getattr(self, name, None)
        if value is not None:
            return value
        recipe = getattr(self, "recipe", "spadecam")
        _check_recipe(recipe)
        return RECIPE_DEFAULTS[recipe][name]

    # ------------------------------------------------------------------ sizes

    def _input_spec(self) -> tuple[int | None, int | None]:
        """(model input side or None = any, channels or None = any) of the fitted models."""
        return getattr(self, "image_size_", None), getattr(self, "in_channels_", None)

    def _set_input_from_models(self) -> None:
        vae = getattr(self, "vae_", None)
        cnn = getattr(self, "cnn_", None)
        self.image_size_ = vae.config.image_size if vae is not None else self.image_size
        model = vae if vae is not None else cnn
        # a user's own classifier (any FeatureClassifier) may have no config: any channels
        self.in_channels_ = getattr(getattr(model, "config", None), "in_channels", None)

    def _fit_size(
        self, imgs: torch.Tensor | list[torch.Tensor], vae_config: Any, cnn_config: Any
    ) -> int:
        """The model input side S for fit: ``image_size``, else the VAE config's, else the
        data's longest side (the images' own size when they are square and alike).

        Raises ValueError naming where S came from when it is below the networks' minimum.
        """
        cfg_size = getattr(vae_config, "image_size", None)
        if self.image_size is not None and cfg_size is not None and self.image_size != cfg_size:
            raise ValueError(
                f"image_size={self.image_size} differs from vae_config.image_size={cfg_size}; "
                "give one of them"
            )
        sizes = [tuple(imgs.shape[-2:])] if isinstance(imgs, torch.Tensor) else [
            tuple(t.shape[-2:]) for t in imgs]
        if self.image_size is not None:
            size, source = int(self.image_size), f"image_size={self.image_size}"
        elif cfg_size is not None:
            size, source = int(cfg_size), f"vae_config.image_size={cfg_size}"
        elif getattr(self, "recipe", None) == "pretrained":
            size, source = PRETRAINED_IMAGE_SIZE, f"recipe 'pretrained' ({PRETRAINED_IMAGE_SIZE} px)"
        else:
            size = int(max(max(hw) for hw in sizes))
            source = (f"X (images of {sizes[0][0]}x{sizes[0][1]} pixels; the model input is "
                      "their longest side)")
        need = min_input_size(vae_config, cnn_config)
        if size < need:
            raise ValueError(
                f"{source} is below the minimum input side of {need} pixels the networks "
                f"accept; pass image_size >= {need} (images are resized to it)"
            )
        return size

    def _fit_inputs(
        self, X: Any, y: Any, vae_config: Any, cnn_config: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int, int, str]:
        """Validated fit images at the model's input: (x, valid, y, size S, channels C,
        what fit took: "files", "uint8" or "float" arrays, :meth:`default_preprocessing`).

        x is (N, C, S, S) (uint8 kept when no resizing is needed, else float32 in [0, 1]);
        valid is the letterbox mask (N, 1, S, S) or None (:mod:`spadecam.inputs`).
        """
        if isinstance(X, PreparedImages):  # spadecam train: read from files, as score reads them
            x = as_image_tensor(X.x)
            valid = None if X.valid is None else _as_tensor(X.valid).float()
            if x.shape[-1] != x.shape[-2] or (valid is not None and valid.shape[-2:] != x.shape[-2:]):
                raise ValueError("PreparedImages.x must be square (N, C, S, S) and valid (N, 1, S, S)")
            size = self._fit_size(x, vae_config, cnn_config)
            return x, valid, _as_labels(y, len(x)), size, x.shape[1], "files"
        imgs = image_list(X)
        parts = imgs if isinstance(imgs, list) else [imgs]
        # how the arrays were scaled, for files read later (default_preprocessing)
        fit_input = "uint8" if all(t.dtype == torch.uint8 for t in parts) else "float"
        yt = _as_labels(y, len(imgs))
        channels = imgs[0].shape[1] if isinstance(imgs, list) else imgs.shape[1]
        for name, cfg in (("vae_config", vae_config), ("cnn_config", cnn_config)):
            c = getattr(cfg, "in_channels", None)
            if c is not None and c != channels:
                raise ValueError(f"{name}.in_channels={c} but X has {channels} channel(s)")
        size = self._fit_size(imgs, vae_config, cnn_config)
        if isinstance(imgs, torch.Tensor) and tuple(imgs.shape[-2:]) == (size, size):
            return imgs, None, yt, size, channels, fit_input
        mb = to_model_batch(imgs, size, self.resize, name="X")
        return mb.u.contiguous(), mb.valid, yt, size, channels, fit_input

    # ------------------------------------------------------------------ scoring

    def _iter_scores(self, X: Any, want_maps: bool) -> Iterator[tuple[torch.Tensor, Any]]:
        size, channels = self._input_spec()
        for mb in iter_model_batches(X, self.batch_size, size, self.resize, channels):
            scores, maps = self._scores_and_maps(mb.u, mb.valid, want_maps)
            yield scores, (maps_to_images(maps, mb) if want_maps else None)

    def _score_prepared(self, x: torch.Tensor, valid: torch.Tensor | None) -> np.ndarray:
        """Scores of images already at the model's input (fit's threshold)."""
        out = []
        for i in range(0, len(x), self.batch_size):
            v = None if valid is None else valid[i : i + self.batch_size]
            u = _channels_last(to_float_images(x[i : i + self.batch_size]))
            out.append(self._scores_and_maps(u, v, False)[0])
            tick(f"threshold: scored {i + len(u)}/{len(x)} held-out images")
        scores = torch.cat(out).double().numpy()
        _check_finite(self, scores)
        return scores

    def _maps(self, X: Any) -> np.ndarray | list[np.ndarray]:
        maps = [m for _, ms in self._iter_scores(X, True) for m in ms]
        bad = [i for i, m in enumerate(maps) if not np.isfinite(m).all()]
        if bad:
            _check_finite(self, np.array([np.nan if i in bad else 0.0 for i in range(len(maps))]))
        return stack_maps(maps)

    def decision_function(self, X: Any) -> np.ndarray:
        """Anomaly score per image, higher = more anomalous.

        Parameters
        ----------
        X : array-like (N, H, W), (N, C, H, W) or (N, H, W, C), or one image (H, W, C) /
            (H, W) (:func:`spadecam.preprocess.batch_layout`), uint8 [0, 255] or float
            [0, 1], any H and W; a list of single images (H, W) / (C, H, W) / (H, W, C)
            whose sizes may differ; or an
            iterable of batches (e.g. a DataLoader), consumed with flat memory. Images are
            brought to the model's input (``image_size_``, ``resize``; :mod:`spadecam.inputs`).

        Returns
        -------
        ndarray (N,), float64, finite: the sum of the per-pixel map over the image's pixels
        on the model's input grid (letterbox padding excluded).

        Raises
        ------
        ValueError
            Bad shapes, dtypes, ranges, or a channel count the models do not take.
        NonFiniteScoreError
            A score is NaN or infinite (models with non-finite weights); names the images.
        """
        out = [s for s, _ in self._iter_scores(X, False)]
        scores = torch.cat(out).double().numpy()
        _check_finite(self, scores)
        return scores

    #: Whether the detector gives a per-pixel map (SPADE's e', the VAE's e); the CNN-based
    #: baseline scores a whole image.
    has_anomaly_map: bool = True

    def decision_function_and_map(self, X: Any) -> tuple[np.ndarray, Any]:
        """:meth:`decision_function` and the per-pixel maps from one scoring pass.

        Returns
        -------
        scores : ndarray (N,), float64, higher = more anomalous
        maps : ndarray (N, H, W) float32 >= 0 (or a list of (H_i, W_i) arrays for mixed
            sizes) at each image's size: SPADE's weighted error e' (Algorithm 1), the
            VAE-based detector's e; None when :attr:`has_anomaly_map` is False.
        """
        out = list(self._iter_scores(X, self.has_anomaly_map))
        scores = torch.cat([s for s, _ in out]).double().numpy()
        _check_finite(self, scores)
        if not self.has_anomaly_map:
            return scores, None
        return scores, stack_maps([m for _, ms in out for m in ms])

    def predict(self, X: Any) -> np.ndarray:
        """0 = normal, 1 = anomalous: ``decision_function(X) > threshold_``. (N,) int64.

        A score exactly equal to ``threshold_`` is normal (:mod:`spadecam.decision`).

        Raises
        ------
        NotFittedError
            No ``threshold_``.
        ValueError
            ``threshold_`` is NaN; NonFiniteScoreError for non-finite scores.
        """
        _require(self, "threshold_")
        assert self.threshold_ is not None  # _require raised NotFittedError otherwise
        return flag_anomalous(self.decision_function(X), self.threshold_)

    #: Fitted models of this detector, in the order ``from_models`` takes them.
    _model_attrs: tuple[str, ...] = ()

    @contextlib.contextmanager
    def _fitting(self) -> Iterator[None]:
        """All fitted attributes (``name_``) set in the block, or, on an error, none.

        A fit that fails half-way (e.g. the classifier diverges after the VAE trained) leaves
        the detector as it was before ``fit``: unfitted, or with its previous fit.
        """

        def fitted() -> dict[str, Any]:
            return {k: v for k, v in vars(self).items()
                    if k.endswith("_") and not k.startswith("_")}

        before = fitted()
        try:
            yield
        except BaseException:
            for k in fitted():
                delattr(self, k)
            self.__dict__.update(before)
            raise

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
        accepted = inspect.signature(cls.__init__).parameters
        return [k for k in _SAVED_PARAMS if k in accepted]

    @classmethod
    def load(cls, path: str | os.PathLike, config: dict[str, Any] | None = None):
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
        models = [found[a] for a in cls._model_attrs]
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
        pre = config.get("preprocessing") or {}
        inp = config.get("input") or {}
        # "input" records it; 0.1's directories in params or (older) only in preprocessing
        for source in (inp, saved.get("params") or {}, pre):
            if source.get("resize") in RESIZE_POLICIES:
                params["resize"] = source["resize"]
                break
        knn = config.get("knn")
        extra: dict[str, Any] = {}
        if knn is not None:
            from spadecam.knn import FeatureBank

            try:
                layer, k, scale = int(knn["layer"]), int(knn["k"]), float(knn["scale"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelFormatError(f"{path}/config.json: bad knn section ({exc})") from None
            features = _checked_bank(load_tensors(path, "knn", config), found["cnn_"], layer,
                                     path)
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
        try:
            det = cls.from_models(*models, **extra, **params)
        except ValueError as exc:  # knn_power > 0 saved without its bank
            raise ModelFormatError(f"{path}: {exc}") from None
        try:
            det.threshold_ = json_float(config.get("threshold_"), "threshold_")
        except ValueError as exc:
            raise ModelFormatError(f"{path}/config.json: {exc}") from None
        # what a model's images go through, with the input it records once (a view as 0.1 had)
        # how the threshold was set, as save wrote it (it was written and never read back)
        for attr, key in (("threshold_source_", "threshold_source"),
                          ("threshold_n_images_", "threshold_n_images")):
            if config.get(key) is not None:
                setattr(det, attr, config[key])
        det.preprocessing_ = None if not config.get("preprocessing") else {
            **{k: inp[k] for k in ("image_size", "resize") if k in inp},
            **config["preprocessing"]}
        size = (config.get("input") or {}).get("image_size") or pre.get("image_size")
        if size is not None:
            det.image_size_ = int(size)
        return det

    def _threshold_split(self, y: torch.Tensor) -> torch.Tensor | None:
        """:func:`spadecam.threshold.holdout_split` with this detector's hold-out share and
        training seed (the first of vae_train / cnn_train set, else TrainConfig's)."""
        seed = next(
            (t.seed for t in (getattr(self, "vae_train", None), getattr(self, "cnn_train", None))
             if t is not None),
            TrainConfig().seed,
        )
        return holdout_split(y, self.threshold_holdout, seed)

    def _fit_with_threshold(self, X: Any, y: Any, vae_config: Any, cnn_config: Any,
                            need_anomalies: bool, train: Any) -> None:
        """The fit shared by the detectors: inputs at the model's size, the threshold split,
        ``train(x, y, size, channels, valid)`` on the images kept for training (``valid``
        their letterbox mask or None), then ``threshold_``.
        """
        x, valid, yt, size, channels, fit_input = self._fit_inputs(X, y, vae_config, cnn_config)
        if need_anomalies and not ((yt == 0).any() and (yt == 1).any()):
            raise ValueError("fit needs both normal (y == 0) and known-anomaly (y == 1) images")
        if not need_anomalies and (yt == 0).sum() < 2:
            raise ValueError("fit needs at least 2 normal images (y == 0)")
        hold = self._threshold_split(yt)
        keep = torch.ones(len(yt), dtype=torch.bool) if hold is None else ~hold
        with self._fitting():  # every fitted attribute set, or on an error none
            train(x[keep], yt[keep], size, channels, None if valid is None else valid[keep])
            self.image_size_, self.in_channels_ = size, channels
            self.fit_input_ = fit_input
            self._calibrate(x, valid, yt, hold)
            self._set_threshold(x, valid, yt, hold)

    def _calibrate(self, x: torch.Tensor, valid: torch.Tensor | None, yt: torch.Tensor,
                   hold: torch.Tensor | None) -> None:
        """Set what the score needs from held-out normal images before the threshold is
        taken (SPADE's margin fusion); nothing for the other detectors."""

    def _set_threshold(self, x: torch.Tensor, valid: torch.Tensor | None, yt: torch.Tensor,
                       hold: torch.Tensor | None) -> None:
        """``threshold_`` from the held-out images' scores (the training normals' without a
        hold-out), padding masked by ``valid``; sets ``threshold_source_`` / ``_n_images_``.

        The rule is :func:`spadecam.threshold.choose_threshold`'s: the F1-max cut when
        known anomalies are held out, unless it would flag more held-out normals than the
        ``threshold_quantile`` of their scores does ("quantile_held_out_f1_rejected", with
        a SpadecamWarning saying what each would flag); else that quantile. A quantile of
        fewer than :data:`MIN_QUANTILE_NORMALS` normal scores gives a SpadecamWarning.
        """
        def scores(mask: torch.Tensor) -> np.ndarray:
            return self._score_prepared(x[mask], None if valid is None else valid[mask])

        anomaly = None
        if hold is None:
            normal, held_out = scores(yt == 0), False
        else:
            normal, held_out = scores(hold & (yt == 0)), True
            if (hold & (yt == 1)).any():
                anomaly = scores(hold & (yt == 1))
        choice = choose_threshold(normal, anomaly, self.threshold_quantile)
        self.threshold_ = choice.threshold
        self.threshold_n_images_ = {"normal": len(normal),
                                    "anomaly": 0 if anomaly is None else len(anomaly)}
        self.threshold_source_ = {
            "f1_max": "f1_max_held_out", "quantile_f1_rejected": "quantile_held_out_f1_rejected",
        }.get(choice.rule, "quantile_held_out" if held_out else "quantile_train")
        if choice.warning is not None:
            warn(choice.warning)
        if choice.rule != "f1_max" and len(normal) < MIN_QUANTILE_NORMALS:
            warn(few_normals_text(len(normal), self.threshold_quantile,
                                  "held-out" if held_out else "training",
                                  suggest_anomalies=choice.rule == "quantile"))
