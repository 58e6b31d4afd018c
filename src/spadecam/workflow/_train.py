"""``spadecam train``: the CLI's options as one :class:`~spadecam.detectors.SPADE`
(:func:`build_detector`, every default the API's: :data:`spadecam.recipes.FIT_DEFAULTS`) and
its fit on folders of images (:func:`train`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from spadecam._fs import Staging, check_writable, outputs
from spadecam._progress import warn
from spadecam.data.folders import DatasetError, folder_layout
from spadecam.data.images import image_sizes, read_images
from spadecam.decision import THRESHOLD_RULE, format_threshold
from spadecam.defaults import default_cnn_config
from spadecam.detectors import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.detectors._base import _BaseDetector
from spadecam.distributed import fabric_settings, launch
from spadecam.inputs import ModelBatch
from spadecam.io import check_detector_params
from spadecam.models.backbones import BACKBONES as _BACKBONE_TABLE
from spadecam.models.cnn import CNNConfig
from spadecam.models.efficientnet import EfficientNetLiteConfig
from spadecam.models.resnet import ResNetConfig, check_weights
from spadecam.models.vae import VAEConfig
from spadecam.precision import resolve_scoring_precision
from spadecam.preprocess import RESIZE_POLICIES, model_batch
from spadecam.recipes import FIT_DEFAULTS as FIT
from spadecam.recipes import RECIPE_DEFAULTS, fit_default
from spadecam.threshold import describe_threshold
from spadecam.training import TrainConfig, trained_precision

__all__ = ["BACKBONES", "DETECTOR_KINDS", "build_detector", "train"]

#: ``spadecam train --detector``: SPADE, or one of the paper's baselines (section III).
DETECTOR_KINDS = {"spade": SPADE, "naive-spade": NaiveSPADE, "vae": VAEDetector,
                  "cnn": CNNDetector}
#: Options only some detectors take (the others refuse them when given).
_SPADE_ONLY = ("roi_power", "classifier_weight", "knn_power", "error")

#: Classifier backbones (:data:`spadecam.models.backbones.BACKBONES`): the 3-conv CNN
#: ("small"), a ResNet-18 ("resnet18", the paper's Table II) and EfficientNet-Lite0 from its
#: ImageNet weights ("efficientnet_lite0").
BACKBONES = tuple(_BACKBONE_TABLE)
#: How many normal training images set the colour scale of the overlays.
_OVERLAY_SAMPLE = 64


def build_detector(
    image_size: int | None = None,
    channels: int | None = None,
    *,
    backbone: str | None = None,
    backbone_weights: str | os.PathLike | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    seed: int = FIT["seed"],
    latent_dim: int | None = None,
    batch_size: int = FIT["batch_size"],
    lr: float = FIT["lr"],
    head_only: bool | None = None,
    threshold_quantile: float = FIT["threshold_quantile"],
    threshold_holdout: float = FIT["threshold_holdout"],
    resize: str = FIT["resize"],
    progress: bool = True,
    distributed: dict[str, Any] | None = None,
    error_smoothing: float | None = None,
    error_norm: str | None = None,
    precision: str = "auto",
    recipe: str | None = None,
    roi_power: float | None = None,
    classifier_weight: float | None = None,
    cam_layer: int = FIT["cam_layer"],
    knn_power: float | None = None,
    error: str | None = None,
    detector: str = "spade",
) -> _BaseDetector:
    """An unfitted detector configured for own images (what ``spadecam train`` fits): SPADE,
    or a baseline with ``detector``.

    ``detector`` (:data:`DETECTOR_KINDS`): "spade" (default), or a baseline of the paper
    ("naive-spade", "vae": the VAE-based score, "cnn": the CNN-based score) built from the
    same options, for comparing against SPADE on one's own images; an option the baseline
    does not take (the ROI's and the score's, or the VAE's for "cnn") is refused when given.

    Every default is the API's (:data:`spadecam.recipes.FIT_DEFAULTS`, the recipe table), so
    ``build_detector(S)`` fits the same models as ``SPADE(image_size=S)`` on the same images.
    Every option is checked here, before any image is read; messages name the CLI option.

    Parameters
    ----------
    image_size : int, optional
        Side of the square model input in pixels; None (default): fit's rule, as for
        ``SPADE()`` (:func:`spadecam.inputs.model_input_side`: 224 for "pretrained", else the
        images' longest side, at most 128).
    channels : {1, 3} or None
        The images' channel count; None (default): the data's, sized by ``fit``.
    backbone : {"small", "resnet18", "efficientnet_lite0", "wide_resnet50_2"}, optional
        None: the recipe's ("efficientnet_lite0" for "pretrained", else "small").
        The 3-conv classifier (its kernels follow the image size under the "spadecam"
        recipe, :func:`~spadecam.defaults.default_cnn_config`), the ResNet-18-style one
        (:mod:`spadecam.models.resnet`), or EfficientNet-Lite0 trained from its ImageNet
        weights (:mod:`spadecam.models.efficientnet`), or Wide-ResNet-50-2 ("wide_resnet50_2",
        PatchCore's backbone).
    backbone_weights : path, optional
        A torchvision-format state dict file (e.g. ``resnet18-f37072fd.pth``) the ResNet
        backbones start training from, checked key by key before any image is read
        (:func:`spadecam.models.resnet.load_torchvision_weights`); ImageNet's normalisation
        is then applied to the [0, 1] images.
    epochs, steps, seed, batch_size, lr : training settings shared by the VAE and the
        classifier (:class:`~spadecam.training.TrainConfig`); ``epochs`` None (default)
        trains for a budget of ``steps`` optimiser steps (default 2000) with early stopping
    head_only : bool, optional
        The classifier's linear head alone on its frozen pretrained backbone
        (:class:`~spadecam.training.TrainConfig`'s ``head_only``); None: the recipe's (True
        for "pretrained" on a backbone that starts from ImageNet weights:
        efficientnet_lite0, or a ResNet with ``backbone_weights``; else False).
    latent_dim : int, optional
        The VAE's latent dimension (eq. 1); None: the recipe's (spadecam 8, paper 128).
    threshold_quantile, threshold_holdout, resize : see :class:`SPADE`
    error_smoothing, error_norm : the reconstruction error (see :class:`SPADE`); None: the
        recipe's (spadecam: 2 px blur, l2; paper: |u - u_hat|)
    precision : {"auto", "32", "bf16"}, the scoring precision (see :class:`SPADE`); training
        takes ``distributed["precision"]`` (default "auto", :class:`TrainConfig`)
    recipe : {"pretrained", "spadecam", "paper"}, optional
        Defaults for everything left at None, and the classifier: "pretrained"
        EfficientNet-Lite0 from ImageNet (its head alone), the feature-space error and the
        margin fusion, no VAE (see :class:`SPADE`); spadecam's kernels from the image size
        (:func:`spadecam.defaults.default_cnn_config`) or the paper's 3x3. None (default):
        :func:`default_recipe` of ``detector`` ("pretrained" for SPADE and the CNN-based
        baseline, "spadecam" for the two that need a VAE).
    roi_power, classifier_weight, cam_layer : the ROI's power, the classifier's weight in
        the score and the classifier layer Grad-CAM reads (see :class:`SPADE`); None: the
        recipe's (:data:`~spadecam.recipes.RECIPE_DEFAULTS`: roi_power 1 in both, the
        classifier weight 10 in spadecam and 0, the paper's score, in paper); cam_layer -1 =
        the last
    error : "reconstruction" or "feature": SPADE's error map e (see :class:`SPADE`); None:
        the recipe's.
    knn_power : the power of the feature-bank distance in the score (see :class:`SPADE`);
        None: the recipe's (spadecam 1, paper 0: no bank)
    distributed : dict, optional
        Lightning Fabric settings for both training loops: any of ``accelerator``,
        ``devices``, ``strategy``, ``num_nodes``, ``precision`` (see :class:`TrainConfig`;
        None or missing = the launcher's, else one CPU process).

    Raises
    ------
    ValueError
        An unknown backbone, resize or recipe, ``channels`` not 1 or 3, ``epochs`` /
        ``steps`` / ``latent_dim`` below 1, a bad scoring or threshold option, or an
        ``image_size`` below the networks' minimum (:func:`min_input_size`).
    """
    scoring = dict(error_smoothing=error_smoothing, error_norm=error_norm, roi_power=roi_power,
                   classifier_weight=classifier_weight, cam_layer=cam_layer,
                   knn_power=knn_power, error=error, threshold_quantile=threshold_quantile,
                   threshold_holdout=threshold_holdout)
    _refuse_options(detector, recipe, latent_dim=latent_dim, **scoring)
    recipe = default_recipe(detector) if recipe is None else recipe
    backbone = fit_default("backbone", recipe) if backbone is None else backbone
    if head_only is None:  # the recipe's, on a backbone that starts from ImageNet weights
        head_only = fit_default("head_only", recipe) and (
            backbone == "efficientnet_lite0" or backbone_weights is not None)
    _check_values(backbone, resize, channels, epochs=epochs, steps=steps, latent_dim=latent_dim)
    vae_cfg = None if latent_dim is None else VAEConfig(latent_dim=latent_dim)
    cnn_cfg = _classifier_config(backbone, backbone_weights, recipe, channels)
    layers = cnn_cfg or default_cnn_config(image_size, recipe)
    # the detector's own rules (those of config.json), each named as its option
    check_detector_params("spadecam train", scoring, len(layers.channels)
                          if isinstance(layers, CNNConfig) else None, as_options=True)
    train_cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        **cast(dict[str, Any], {} if steps is None else {"steps": steps}),
        **cast(dict[str, Any], distributed or {}),
    )
    params = dict(
        vae_config=vae_cfg, cnn_config=cnn_cfg, vae_train=train_cfg,
        cnn_train=dataclasses.replace(train_cfg, head_only=head_only), **scoring,
        precision=precision, image_size=image_size, resize=resize, recipe=recipe)
    # each detector takes its own fields (those another detector alone takes were refused
    # above when given)
    cls = DETECTOR_KINDS[detector]
    taken = {f.name for f in dataclasses.fields(cls) if f.init}
    det = cls(**{k: v for k, v in params.items() if k in taken})
    if image_size is not None:
        _check_side(image_size, det, backbone)
    return det


def _refuse_options(detector: str, recipe: str | None, **given: Any) -> None:
    """Refuse an unknown detector or recipe, and an option the chosen detector or recipe does
    not take (ValueError naming the CLI option)."""
    if detector not in DETECTOR_KINDS:
        raise ValueError(f"--detector must be one of {sorted(DETECTOR_KINDS)}, got {detector!r}")
    refused = {"naive-spade": _SPADE_ONLY, "vae": _SPADE_ONLY,
               "cnn": (*_SPADE_ONLY, "latent_dim", "error_smoothing", "error_norm")}
    bad = [k for k in refused.get(detector, ()) if given[k] is not None]
    if bad:
        raise ValueError(f"--detector {detector} does not take "
                         f"{', '.join('--' + k.replace('_', '-') for k in bad)} (SPADE's options)")
    recipe = default_recipe(detector) if recipe is None else recipe
    if recipe not in RECIPE_DEFAULTS:
        raise ValueError(f"--recipe must be one of {sorted(RECIPE_DEFAULTS)}, got {recipe!r}")
    if recipe == "pretrained" and detector in ("vae", "naive-spade"):
        raise ValueError(f"--detector {detector} scores a VAE's reconstruction, which the "
                         "pretrained recipe does not train; use --recipe spadecam or paper")


def _check_values(backbone: str, resize: str, channels: int | None, **counts: int | None) -> None:
    """ValueError naming the CLI option for a backbone, resize policy, channel count or
    count (epochs, steps, latent dimension) outside what it takes."""
    if backbone not in BACKBONES:
        raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"--resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels!r}")
    for name, value in counts.items():
        if value is not None and value < 1:  # 0 is not "unset": it is refused, not replaced
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _classifier_config(backbone: str, backbone_weights: str | os.PathLike | None,
                       recipe: str, channels: int | None) -> Any:
    """The classifier config of ``--backbone``: None for the recipe's own (the detector
    builds it for the input side, as ``SPADE()`` does), else the backbone's, any side; a
    weights file is checked key by key now, before any image is read."""
    if backbone_weights is not None and backbone not in ("resnet18", "wide_resnet50_2"):
        raise ValueError(f"--backbone-weights is for --backbone resnet18 or wide_resnet50_2 "
                         f"(a torchvision-format state dict), not {backbone}")
    weights = None if backbone_weights is None else str(backbone_weights)
    if weights is None and backbone == fit_default("backbone", recipe):
        return None
    cfg: Any = (ResNetConfig(weights=weights) if backbone == "resnet18"
                else ResNetConfig.wide_resnet50_2(weights=weights)
                if backbone == "wide_resnet50_2"
                else EfficientNetLiteConfig() if backbone == "efficientnet_lite0"
                else default_cnn_config(None, "spadecam"))
    if weights is not None:
        check_weights(cfg.sized(channels or 3))
    elif backbone == "wide_resnet50_2":
        warn("--backbone wide_resnet50_2 without --backbone-weights trains its 69 million "
             "weights from random ones; give a torchvision-format state dict file to start "
             "from ImageNet's")
    return cfg


def _check_side(side: int, det: _BaseDetector, backbone: str) -> None:
    """ValueError naming ``--image-size`` when it is below the minimum side of the networks
    this detector trains (:meth:`~spadecam.detectors.SPADE.min_input_side`)."""
    need = det.min_input_side()
    if side < need:
        vae_config, cnn_config = det._fit_configs()
        networks = f"the {backbone} backbone" if cnn_config is not None else ""
        if vae_config is not None:
            networks += " and the VAE" if networks else "the VAE"
        raise ValueError(f"--image-size {side} is smaller than the minimum of {need} pixels "
                         f"for {networks}")


def default_recipe(detector: str = "spade") -> str:
    """The recipe ``build_detector`` and ``spadecam train`` use when none is given:
    "pretrained" (chosen on ELPV's validation split; docs/elpv.md) for SPADE and the
    CNN-based baseline, "spadecam" for the VAE-based baseline and Naive SPADE, which score a
    VAE's reconstruction that the pretrained recipe does not train."""
    return "spadecam" if detector in ("vae", "naive-spade") else "pretrained"


def _read_for_fit(det: _BaseDetector, paths: Sequence[Path], channels: int | None,
                  progress: bool) -> tuple[ModelBatch, int]:
    """The training files as ``fit`` takes them, sized as ``SPADE().fit`` sizes arrays: the
    detector's rule gives the input side (:meth:`~spadecam.detectors.SPADE.input_side`; from
    the files' headers when it depends on their sizes), then each file is read and brought to
    it (memory stays that of the model-size batch), with its letterbox mask and box
    (:func:`spadecam.preprocess.model_batch`). Returns (the batch, its channel count).

    Raises ImageError naming every unreadable file; ValueError when the side is below the
    networks' minimum (``--image-size`` is checked in :func:`build_detector`).
    """
    # as fit takes arrays: any image size, each resized to the side (checked against the
    # networks' minimum there); the files' headers only when the side depends on them
    side = det.input_side(None if det.fixed_input_side() else image_sizes(paths))
    sizes: list[tuple[int, int]] = []
    x = read_images(paths, channels, side, det.resize, progress=progress, sizes=sizes)
    return model_batch(np.stack(x), sizes, side, det.resize), x[0].shape[0]


def _check_out_dir(out: Path) -> None:
    """Refuse an --out that would mix a model into an unrelated folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ValueError(
            f"--out {out} is a non-empty folder that is not a spadecam model directory; "
            "choose a new or empty folder"
        )
    check_writable(out, "--out", folder=True)  # before the training, not after it


def train(
    normal: str | os.PathLike | Sequence[str | os.PathLike],
    anomaly: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    image_size: int | None = None,
    channels: int | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Path:
    """Train SPADE on folders of normal and known-anomaly images; write a model directory.

    Parameters
    ----------
    normal, anomaly : folder or list of folders
        Normal images (the VAE learns these, eq. 1) and known anomalies (the classifier
        separates them from the normal ones, eq. 2).
    out : path of the model directory (new, empty, or an older spadecam model)
    image_size, channels : the model input side (None: fit's rule, as for ``SPADE()``: 224
        for "pretrained", the default, else the images' longest side, at most 128) and the
        channel count images are converted to (None: the images' own, which must be the same
        for all); see the module notes
    log : callable, optional
        Receives a summary, one line at a time (rank 0 only): what was read (counts per
        class, image sizes, channels), how many images were held out, the threshold, the
        rule it is used with and how many images set it, and where the model went. The CLI
        passes ``print``.
    **options :
        The keyword options of :func:`build_detector` (``backbone``, ``epochs``, ``steps``,
        ``seed``, ``resize``, ``latent_dim``, ``batch_size``, ``lr``, the threshold, error
        and ROI options, ``precision``, ``recipe``, ``progress``, ``distributed``), with its
        defaults. With several processes (``distributed``) each one reads the images and
        trains its share of every batch (DDP; ``batch_size`` is per process), and only rank
        0 writes ``out``. See docs/distributed.md.

    Returns
    -------
    Path of the model directory: vae.safetensors, cnn.safetensors, config.json.

    Raises
    ------
    DatasetError, ImageError, ValueError
        A missing or empty folder, unreadable or too small images (all named), mixed channel
        counts without ``channels``, a bad option value or an unusable ``out``; nothing is
        written. :class:`~spadecam.training.TrainingDivergedError` (a ValueError) when a loss
        becomes non-finite. TypeError for an unknown option.
    WriteError (an OSError)
        The model cannot be written (e.g. a full disk): the message names ``--out`` and the
        file; an older model in ``out`` stays as it was, and a new ``out`` is removed again.

    Warns
    -----
    SpadecamWarning
        Skipped files or sub-folders, a quantile threshold set by fewer than 20 normal
        images, an existing model in ``out`` that is replaced.

    References
    ----------
    Narita et al., arXiv 1810.02607, Algorithm 1 (training of the VAE and the classifier).
    """
    out = Path(out)
    # every option is checked before any image is read or any process started
    det = build_detector(image_size, channels, **options)
    _check_out_dir(out)
    data = folder_layout(normal, anomaly)
    if not (data.labels == 1).any():
        raise DatasetError("--anomaly: give at least one folder of known-anomaly images")
    distributed = options.get("distributed") or {}
    fabric = launch(**distributed)  # once the options and folders are known to be good
    rank0 = fabric.global_rank == 0
    say = log if (log is not None and rank0) else (lambda _line: None)
    progress = bool(options.get("progress", True)) and rank0
    batch, c = _read_for_fit(det, data.paths, channels, progress)
    n_normal, n_anomaly = int((data.labels == 0).sum()), int((data.labels == 1).sum())
    side = batch.u.shape[-1]
    say(f"read {n_normal} normal and {n_anomaly} known-anomaly images; sizes "
        f"{_size_range(batch.sizes)}; {c} channel(s) {'(grey)' if c == 1 else '(colour)'}"
        + (" after conversion" if channels else "")
        + f"; model input {side}x{side} ({det.resize})")
    det.fit(batch, data.labels)
    del batch
    _report_fit(det, n_normal, n_anomaly, say)
    preprocessing = {"channels": c, "normalisation": "dtype_max",  # 8-bit / 255, 16-bit / 65535
                     "min_input_size": det.min_input_side()}
    normal_paths = [p for p, lab in zip(data.paths, data.labels) if lab == 0][:_OVERLAY_SAMPLE]
    train_cfg = getattr(det, "vae_train", None) or getattr(det, "cnn_train", None)
    extra = {
        "overlay_scale": _overlay_scale(det, preprocessing, normal_paths),
        "threshold_rule": THRESHOLD_RULE,
        "training": {
            "train": train_cfg.to_dict() if train_cfg is not None else None,
            "normal": [str(p) for p in _as_list(normal)],
            "anomaly": [str(p) for p in _as_list(anomaly)],
            "n_normal": n_normal,
            "n_anomaly": n_anomaly,
            "world_size": fabric.world_size,
            "global_batch_size": train_cfg.batch_size * fabric.world_size
            if train_cfg is not None else None,
            "precision": trained_precision(*(m for m in (getattr(det, "vae_", None),
                                                           getattr(det, "cnn_", None)) if m))
            or fabric_settings(**distributed)["precision"],
        },
        "scoring_precision": resolve_scoring_precision(det.precision, "cpu"),
    }
    if rank0:  # every rank holds rank 0's models; one writes them
        if (out / "config.json").is_file():
            warn(f"--out {out}: replacing the spadecam model that was there")
        _save(det, out, preprocessing, extra)
    fabric.barrier()
    say(f"model written to {out}")  # the last step: every rank is done with it
    return out


def _save(det: _BaseDetector, out: Path, preprocessing: dict[str, Any],
          extra: dict[str, Any]) -> None:
    """``det.save`` into a hidden folder of ``out``, then its files moved in together, the
    weights first and config.json last, and an older model's weight files the new one lacks
    taken away: a full disk or Ctrl-C at any moment leaves the new model whole, or the old
    one (or nothing, ``out`` removed again if it was new). Raises WriteError naming --out."""
    with outputs(("--out", out)):
        staging = Staging(out)
        try:
            with staging.named():
                det.save(staging.stage, preprocessing, extra)
            files = sorted(p.name for p in staging.stage.iterdir())
            order = sorted(files, key=lambda n: n == "config.json")  # config.json last
            stale = [p for p in out.glob("*.safetensors") if p.name not in files]
            staging.commit(order, remove=stale)
        finally:
            staging.discard()


def _report_fit(det: _BaseDetector, n_normal: int, n_anomaly: int, say: Callable[[str], Any]) -> None:
    held = det.threshold_n_images_ if det.threshold_holdout > 0 else {"normal": 0, "anomaly": 0}
    say(f"trained on {n_normal - held['normal']} normal and {n_anomaly - held['anomaly']} "
        f"known-anomaly images; held out {held['normal']} normal and {held['anomaly']} "
        "known-anomaly images for the threshold")
    assert det.threshold_ is not None  # fit sets it
    say(f"threshold {format_threshold(det.threshold_)} ({THRESHOLD_RULE}): "
        + describe_threshold(det.threshold_source_, det.threshold_n_images_,
                           det.threshold_quantile))


def _overlay_scale(det: _BaseDetector, preprocessing: dict[str, Any],
                   paths: Sequence[Path]) -> float | None:
    """The 0.99 quantile of the per-image maximum of the map (SPADE's e') over normal
    training images, from maps as `spadecam score` makes them (images at their own size);
    None for a detector without a map (the CNN-based one)."""
    if not det.has_anomaly_map:
        return None
    # each file read as score reads it, in batches of one (no layout to guess)
    maps = det.anomaly_map([a[None] for a in read_images(paths, preprocessing["channels"])])
    return float(np.quantile([float(m.max()) for m in maps], 0.99))


def _size_range(sizes: Sequence[tuple[int, int]]) -> str:
    """'32x32' when all images share a size, else the smallest and largest (width x height)."""
    distinct = sorted(set(sizes), key=lambda hw: (hw[0] * hw[1], hw))
    if len(distinct) == 1:
        return f"{distinct[0][1]}x{distinct[0][0]} (all)"
    lo, hi = distinct[0], distinct[-1]
    return f"{lo[1]}x{lo[0]} to {hi[1]}x{hi[0]} ({len(distinct)} different)"


def _as_list(x: Any) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)
