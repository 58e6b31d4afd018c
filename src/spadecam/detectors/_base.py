"""Shared plumbing of the four detectors: input sizes, fitting, threshold_, predict, batching,
save / load. The estimators themselves are in :mod:`.baselines` and :mod:`.spade`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from spadecam._progress import tick, warn
from spadecam.decision import flag_anomalous
from spadecam.detectors._files import _ModelFiles
from spadecam.exceptions import _check_finite, _require
from spadecam.feature_error import PatchBank
from spadecam.inputs import (
    ModelBatch,
    _as_tensor,
    _channels_last,
    as_image_tensor,
    as_labels,
    fixed_input_side,
    image_list,
    iter_model_batches,
    maps_to_images,
    min_input_size,
    model_input_side,
    stack_maps,
    to_float_images,
    to_model_batch,
)
from spadecam.io import (
    check_detector_params,
)
from spadecam.knn import FeatureBank
from spadecam.models.backbones import CLASSIFIER_CONFIGS
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS, check_recipe
from spadecam.scoring import scoring_context
from spadecam.threshold import (
    MIN_QUANTILE_NORMALS,
    choose_threshold,
    few_normals_text,
    holdout_split,
)
from spadecam.training import TrainConfig

_M = TypeVar("_M", bound=nn.Module)


def _prepare(model: _M) -> _M:
    # layout only: the parameters stay the same objects (an optimizer holding them still
    # works) and the train/eval mode is left to the caller; scoring switches to eval mode
    # for its duration (scoring_context). Module.to returns the module itself.
    # torch's stubs omit Module.to's documented memory_format keyword
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- detectors

class _Fitted:
    """The fitted attributes (set by fit / from_models / load; which ones: ``_model_attrs``),
    declared on a plain class: they are not parameters, so not dataclass fields (an unfitted
    detector has none of them; ``dataclasses.asdict`` and a dataclass subclass's repr read the
    parameters alone)."""

    threshold_: float | None
    vae_: ConvVAE | None  # None: SPADE's pretrained recipe trains no VAE
    cnn_: FeatureClassifier
    knn_: FeatureBank | None  # SPADE's image-level memory bank
    patch_bank_: PatchBank | None  # SPADE's feature-space error


@dataclass(eq=False, repr=False, kw_only=True)
class _BaseDetector(_Fitted, _ModelFiles, BaseEstimator):
    """Shared PyOD-style plumbing: input sizes, threshold_, predict, batching.

    A scikit-learn estimator (``get_params`` / ``set_params``, so ``sklearn.base.clone``
    works): the constructor stores its arguments unchanged, and :meth:`_check_params` checks
    them all at the start of ``fit`` and ``from_models``, before any training.
    """

    #: Parameters holding configs, and the config classes each accepts (None = default).
    _CONFIG_TYPES: ClassVar[dict[str, tuple[type, ...]]] = {
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

    # the parameters every detector shares (documented once: _docs.COMMON_PARAMETERS_DOC);
    # each detector adds its own fields, and the dataclass writes one keyword-only __init__
    # that stores them unchanged (scikit-learn's contract)
    batch_size: int = 256
    precision: str = "auto"
    threshold_quantile: float = FIT_DEFAULTS["threshold_quantile"]
    threshold_holdout: float = FIT_DEFAULTS["threshold_holdout"]
    image_size: int | None = None
    resize: str = FIT_DEFAULTS["resize"]
    recipe: str = "spadecam"
    # each detector's own signature: VAEDetector(vae), CNNDetector(cnn), SPADE(vae, cnn)
    from_models: ClassVar[Callable[..., Any]]

    def _scores_and_maps(
        self, u: torch.Tensor, valid: torch.Tensor | None, want_maps: bool
    ) -> tuple[torch.Tensor, Any]:
        """Scores (B,) and, if wanted, maps (B, S, S) of a batch at the model's input size:
        the detector's :meth:`scorer` in its precision (eval mode, the models' device), the
        letterbox mask passed on (the CNN-based score ignores it: the classifier sees the
        letterboxed image whole, as in training)."""
        scorer = self.scorer()  # each detector's own graph
        with scoring_context(self.precision, *self.fitted_models()) as device:
            s, m = scorer(u.to(device), None if valid is None else valid.to(device))
        return s.cpu(), (m.cpu() if want_maps and m is not None else None)

    @classmethod
    def _around(cls, params: dict[str, Any], **models: nn.Module | None) -> Any:
        """A fitted detector of ``params`` around trained networks (``vae_``, ``cnn_``; used,
        not copied, their train/eval modes left as they are), ``threshold_`` unset: what
        every ``from_models`` shares. Raises as :meth:`_check_params`."""
        det = cls(**params)
        det._check_params()
        for name, model in models.items():
            setattr(det, name, None if model is None else _prepare(model))
        det.threshold_ = None
        det._set_input_from_models()
        return det

    def _required_models(self) -> tuple[str, ...]:
        """The fitted networks this detector's score reads (of ``_model_attrs``)."""
        return self._model_attrs

    #: Fitted modules beside the networks: SPADE's image-level feature bank and patch bank.
    _bank_attrs: ClassVar[tuple[str, ...]] = ("knn_", "patch_bank_")

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
        check_recipe(recipe)
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

    def _fit_configs(self, size: int | None = None) -> tuple[Any, Any]:
        """(VAE config or None, classifier config or None) that fit trains: the given ones,
        else the recipe's, built for the input side ``size`` (the default classifier's
        kernels follow it; None: any side, for the checks that do not depend on it)."""
        raise NotImplementedError

    def input_side(self, sizes: Sequence[tuple[int, int]] | None = None) -> int:
        """The side S of the square model input ``fit`` would train at, given the training
        images' own (H, W) sizes in pixels (:func:`spadecam.inputs.model_input_side`; None
        when :meth:`fixed_input_side` gives it); ``spadecam train`` reads its files straight
        to it.

        Raises
        ------
        ValueError
            S below the networks' minimum (:meth:`min_input_side`); ``sizes`` None when S
            depends on them.
        """
        return self._fit_size(sizes)[0]

    def fixed_input_side(self) -> int | None:
        """The input side ``fit`` uses whatever the images (``image_size``, the VAE config's,
        or the recipe's), else None (:func:`spadecam.inputs.fixed_input_side`)."""
        fixed = fixed_input_side(self.image_size, self._config_size(), self.recipe)
        return None if fixed is None else fixed[0]

    def _config_size(self) -> int | None:
        return getattr(getattr(self, "vae_config", None), "image_size", None)

    def min_input_side(self) -> int:
        """The smallest model input side, in pixels, the networks ``fit`` builds accept
        (:func:`spadecam.inputs.min_input_size`)."""
        return min_input_size(*self._fit_configs())

    def _fit_size(self, sizes: Sequence[tuple[int, int]] | None
                  ) -> tuple[int, tuple[Any, Any]]:
        """The model input side S for fit from the training images' own (H, W)
        (:func:`spadecam.inputs.model_input_side`, the rule ``spadecam train`` applies too)
        and the configs fit trains at that side (:meth:`_fit_configs`, built once).

        Raises ValueError naming where S came from when it is below the networks' minimum.
        """
        size, source = model_input_side(sizes, self.image_size, self._config_size(),
                                         self.recipe)
        configs = self._fit_configs(size)
        need = min_input_size(*configs)
        if size < need:
            raise ValueError(
                f"{source} is below the minimum input side of {need} pixels the networks "
                f"accept; pass image_size (--image-size) >= {need} (images are resized to it)"
            )
        return size, configs

    def _check_channels(self, channels: int) -> None:
        """ValueError when a given config's ``in_channels`` is not the images' count."""
        for name in ("vae_config", "cnn_config"):
            c = getattr(getattr(self, name, None), "in_channels", None)
            if c is not None and c != channels:
                raise ValueError(f"{name}.in_channels={c} but X has {channels} channel(s)")

    def _fit_inputs(self, X: Any, y: Any) -> tuple[
            torch.Tensor, torch.Tensor | None, torch.Tensor, int, str, tuple[Any, Any]]:
        """Validated fit images at the model's input: (x, valid, y, size S, what fit took:
        "files", "uint8" or "float" arrays (:meth:`default_preprocessing`), the configs fit
        trains at S).

        x is (N, C, S, S) (uint8 kept when no resizing is needed, else float32 in [0, 1]);
        valid is the letterbox mask (N, 1, S, S) or None (:mod:`spadecam.inputs`).
        """
        if isinstance(X, ModelBatch):  # spadecam train: files read at the model's size
            x = as_image_tensor(X.u)
            valid = None if X.valid is None else _as_tensor(X.valid).float()
            if x.shape[-1] != x.shape[-2] or (valid is not None and valid.shape[-2:] != x.shape[-2:]):
                raise ValueError("ModelBatch.u must be square (N, C, S, S) and valid (N, 1, S, S)")
            if len(X.sizes) != len(x):
                raise ValueError(f"ModelBatch.sizes has {len(X.sizes)} entries for {len(x)} images")
            self._check_channels(int(x.shape[1]))
            size, configs = self._fit_size(X.sizes)
            if size != x.shape[-1]:
                raise ValueError(f"the ModelBatch is {x.shape[-1]} px square but fit's input "
                                 f"side is {size} px (spadecam.inputs.model_input_side)")
            return x, valid, as_labels(y, len(x)), size, "files", configs
        imgs = image_list(X)
        parts = [imgs] if isinstance(imgs, torch.Tensor) else imgs
        # how the arrays were scaled, for files read later (default_preprocessing)
        fit_input = "uint8" if all(t.dtype == torch.uint8 for t in parts) else "float"
        yt = as_labels(y, len(imgs))
        self._check_channels(int(parts[0].shape[1]))
        size, configs = self._fit_size([(int(t.shape[-2]), int(t.shape[-1])) for t in parts])
        if isinstance(imgs, torch.Tensor) and tuple(imgs.shape[-2:]) == (size, size):
            return imgs, None, yt, size, fit_input, configs
        mb = to_model_batch(imgs, size, self.resize, name="X")
        return mb.u.contiguous(), mb.valid, yt, size, fit_input, configs

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
    has_anomaly_map: ClassVar[bool] = True

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
    _model_attrs: ClassVar[tuple[str, ...]] = ()

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

    def _threshold_split(self, y: torch.Tensor) -> torch.Tensor | None:
        """:func:`spadecam.threshold.holdout_split` with this detector's hold-out share and
        training seed (the first of vae_train / cnn_train set, else TrainConfig's)."""
        seed = next(
            (t.seed for t in (getattr(self, "vae_train", None), getattr(self, "cnn_train", None))
             if t is not None),
            TrainConfig().seed,
        )
        return holdout_split(y, self.threshold_holdout, seed)

    def _train(self, x: torch.Tensor, y: torch.Tensor, size: int, valid: torch.Tensor | None,
               configs: tuple[Any, Any]) -> None:
        """Train this detector's networks (and build what its score holds beside them) on the
        images kept for training, at the model's input side ``size``, from ``configs``
        (:meth:`_fit_configs` at that side, to be sized to x's channels): each detector's own."""
        raise NotImplementedError

    def _fit_with_threshold(self, X: Any, y: Any, need_anomalies: bool) -> None:
        """The fit every detector shares: the parameters checked, the inputs at the model's
        size, the threshold split, :meth:`_train` on the images kept for training (``valid``
        their letterbox mask or None), then the calibration and ``threshold_``.
        """
        self._check_params()  # every parameter, before any training
        x, valid, yt, size, fit_input, configs = self._fit_inputs(X, y)
        channels = int(x.shape[1])
        if need_anomalies and not ((yt == 0).any() and (yt == 1).any()):
            raise ValueError("fit needs both normal (y == 0) and known-anomaly (y == 1) images")
        if not need_anomalies and (yt == 0).sum() < 2:
            raise ValueError("fit needs at least 2 normal images (y == 0)")
        hold = self._threshold_split(yt)
        keep = torch.ones(len(yt), dtype=torch.bool) if hold is None else ~hold
        with self._fitting():  # every fitted attribute set, or on an error none
            self._train(x[keep], yt[keep], size, None if valid is None else valid[keep],
                        configs)
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
