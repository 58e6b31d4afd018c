"""SPADE on the user's own images: train, score and evaluate from folders.

These are the functions behind ``spadecam train``, ``spadecam score`` and
``spadecam evaluate``; the CLI only parses arguments and prints. Each function checks all
of its inputs (folders, every image, the model directory) before it writes anything, so a
bad input leaves no file behind, and every file it writes goes to a temp file first.

Preprocessing (stored in the model directory, reused by score and evaluate)
--------------------------------------------------------------------------
Images are read by :mod:`spadecam.data.images`: scaled to [0, 1] by their storage type's
maximum (8- or 16-bit), converted to ``channels`` (1 or 3; by default the images' own count,
which must then be the same for all) and brought to ``image_size`` x ``image_size`` by the
``resize`` policy ("letterbox", the default, keeps the aspect ratio and pads with black;
"resize" stretches). `spadecam score` and `evaluate` read each image at its own size and
let the detector bring it to the model input (:mod:`spadecam.inputs`), so maps and overlays
come back at the image's own size.

Thresholds
----------
``spadecam train`` holds out ``threshold_holdout`` (default 10%) of the normal and of the
known-anomaly images; ``threshold_`` is the F1-max point on them, or the
``threshold_quantile`` (default 99th percentile) of held-out normal scores when no anomaly
could be held out (:func:`spadecam.detectors.fit_threshold`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from spadecam._fs import atomic_write, check_writable, json_float, json_text
from spadecam._progress import bar, warn
from spadecam.data.folders import (
    DatasetError,
    LabelledImages,
    collect_inputs,
    folder_layout,
    mvtec_layout,
)
from spadecam.data.images import (
    RESIZE_POLICIES,
    ImageError,
    content_box,
    image_hw,
    load_image,
    load_images,
    load_mask,
)
from spadecam.decision import THRESHOLD_RULE, flag_anomalous
from spadecam.detectors import (
    RECIPE_DEFAULTS,
    SPADE,
    NonFiniteScoreError,
    default_cnn_config,
)
from spadecam.distributed import fabric_settings, fail_together, gather_in_order, launch, shard
from spadecam.evaluation import atomic_write_text
from spadecam.inputs import PreparedImages, min_input_size
from spadecam.io import ModelFormatError, check_detector_params
from spadecam.metrics import image_metrics, pixel_auroc
from spadecam.models.backbones import BACKBONES as _BACKBONE_TABLE
from spadecam.models.cnn import CNNConfig
from spadecam.models.resnet import ResNetConfig
from spadecam.models.vae import VAEConfig
from spadecam.precision import resolve_scoring_precision
from spadecam.training import TrainConfig

__all__ = [
    "BACKBONES",
    "build_detector",
    "evaluate",
    "min_input_size",
    "overlay",
    "rows_to_csv",
    "score",
    "train",
]

#: Classifier backbones (:data:`spadecam.models.backbones.BACKBONES`): the 3-conv CNN
#: ("small") and a ResNet-18 ("resnet18", the paper's Table II).
BACKBONES = tuple(_BACKBONE_TABLE)
#: How many normal training images set the colour scale of the overlays.
_OVERLAY_SAMPLE = 64


# --------------------------------------------------------------------------- models


def build_detector(
    image_size: int,
    channels: int,
    backbone: str = "small",
    epochs: int | None = None,
    seed: int = 0,
    latent_dim: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    threshold_quantile: float = 0.99,
    threshold_holdout: float = 0.1,
    progress: bool = True,
    distributed: dict[str, Any] | None = None,
    error_smoothing: float | None = None,
    error_norm: str | None = None,
    precision: str = "auto",
    steps: int | None = None,
    recipe: str = "spadecam",
    roi_power: float | None = None,
    classifier_weight: float | None = None,
    cam_layer: int = -1,
) -> SPADE:
    """An unfitted :class:`SPADE` configured for own images (what ``spadecam train`` fits).

    Parameters
    ----------
    image_size : int, side of the square model input in pixels
    channels : {1, 3}
    backbone : {"small", "resnet18"}
        The 3-conv classifier (its kernels follow the image size under the "spadecam"
        recipe, :func:`~spadecam.recipes.default_cnn_config`) or the ResNet-18-style one
        (:mod:`spadecam.models.resnet`).
    epochs, seed, batch_size, lr : training settings shared by the VAE and the classifier;
        ``epochs`` None (default) trains for a budget of ``steps`` optimiser steps
        (default :class:`TrainConfig`'s) with early stopping on the validation loss
    steps : int, optional
    latent_dim : int, optional
        The VAE's latent dimension (eq. 1); None: the recipe's (spadecam 8, paper 128).
    threshold_quantile, threshold_holdout : see :class:`SPADE`
    error_smoothing, error_norm : the reconstruction error (see :class:`SPADE`); None: the
        recipe's (spadecam: 2 px blur, l2; paper: |u - u_hat|)
    precision : {"auto", "32", "bf16"}, the scoring precision (see :class:`SPADE`); training
        takes ``distributed["precision"]`` (default "auto", :class:`TrainConfig`)
    recipe : {"spadecam", "paper"}
        Defaults for everything left at None, and the classifier: spadecam's kernels from the
        image size (:func:`spadecam.detectors.default_cnn_config`), or the paper's 3x3.
    roi_power, classifier_weight, cam_layer : the ROI's power, the classifier's weight in
        the score and the classifier layer Grad-CAM reads (see :class:`SPADE`); None: the
        recipe's (1 and 0 in both recipes: the paper's score); cam_layer -1 = the last
    distributed : dict, optional
        Lightning Fabric settings for both training loops: any of ``accelerator``,
        ``devices``, ``strategy``, ``num_nodes``, ``precision`` (see :class:`TrainConfig`;
        None or missing = the launcher's, else one CPU process).

    Raises
    ------
    ValueError
        An unknown backbone, ``channels`` not 1 or 3, ``epochs < 1``, or an ``image_size``
        below the networks' minimum (:func:`min_input_size`); messages name the CLI option.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels!r}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if latent_dim is not None and latent_dim < 1:  # 0 is not "unset" (issue 17)
        raise ValueError(f"--latent-dim must be >= 1, got {latent_dim}")
    if recipe not in RECIPE_DEFAULTS:
        raise ValueError(f"--recipe must be one of {sorted(RECIPE_DEFAULTS)}, got {recipe!r}")
    defaults = RECIPE_DEFAULTS[recipe]
    vae_cfg = VAEConfig(in_channels=channels, image_size=image_size,
                        latent_dim=defaults["latent_dim"] if latent_dim is None else latent_dim)
    cnn_cfg = (
        ResNetConfig(in_channels=channels) if backbone == "resnet18"
        else default_cnn_config(image_size, recipe).sized(channels)
    )
    # the detector's own rules (those of config.json), each named as its option
    check_detector_params(
        "spadecam train",
        dict(error_smoothing=error_smoothing, error_norm=error_norm, roi_power=roi_power,
             classifier_weight=classifier_weight, cam_layer=cam_layer,
             threshold_quantile=threshold_quantile, threshold_holdout=threshold_holdout),
        len(cnn_cfg.channels) if isinstance(cnn_cfg, CNNConfig) else None, as_options=True,
    )
    need = min_input_size(vae_cfg, cnn_cfg)
    if image_size < need:
        raise ValueError(
            f"--image-size {image_size} is smaller than the minimum of {need} pixels for the "
            f"{backbone} backbone and the VAE"
        )
    train_cfg = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        **cast(dict[str, Any], {} if steps is None else {"steps": steps}),
        **cast(dict[str, Any], distributed or {}),
    )
    return SPADE(
        vae_config=vae_cfg,
        cnn_config=cnn_cfg,
        vae_train=train_cfg,
        cnn_train=train_cfg,
        threshold_quantile=threshold_quantile,
        threshold_holdout=threshold_holdout,
        error_smoothing=error_smoothing,
        error_norm=error_norm,
        precision=precision,
        recipe=recipe,
        roi_power=roi_power,
        classifier_weight=classifier_weight,
        cam_layer=cam_layer,
    )


def _letterbox_valid(paths: Sequence[Path], size: int, policy: str) -> np.ndarray | None:
    """(N, 1, size, size) float32 mask of image pixels under letterbox padding, else None."""
    if policy != "letterbox":
        return None
    valid = np.zeros((len(paths), 1, size, size), dtype=np.float32)
    for i, p in enumerate(paths):
        top, left, h, w = content_box(*image_hw(p), size, policy)
        valid[i, 0, top : top + h, left : left + w] = 1.0
    return valid


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
    image_size: int = 128,
    channels: int | None = None,
    backbone: str = "small",
    epochs: int | None = None,
    seed: int = 0,
    resize: str = "letterbox",
    latent_dim: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    threshold_quantile: float = 0.99,
    threshold_holdout: float = 0.1,
    progress: bool = True,
    distributed: dict[str, Any] | None = None,
    error_smoothing: float | None = None,
    error_norm: str | None = None,
    precision: str = "auto",
    log: Callable[[str], None] | None = None,
    steps: int | None = None,
    recipe: str = "spadecam",
    roi_power: float | None = None,
    classifier_weight: float | None = None,
    cam_layer: int = -1,
) -> Path:
    """Train SPADE on folders of normal and known-anomaly images; write a model directory.

    Parameters
    ----------
    normal, anomaly : folder or list of folders
        Normal images (the VAE learns these, eq. 1) and known anomalies (the classifier
        separates them from the normal ones, eq. 2).
    out : path of the model directory (new, empty, or an older spadecam model)
    image_size, channels, resize : preprocessing (see the module notes); ``channels=None``
        uses the images' own channel count, which must be the same for all.
    backbone, epochs, seed, latent_dim, batch_size, lr, threshold_quantile,
    threshold_holdout, error_smoothing, error_norm, precision, steps, recipe, roi_power,
    classifier_weight, cam_layer : see :func:`build_detector`.
    progress : bool
        Report progress: bars on a terminal, one line per validation elsewhere.
    distributed : dict, optional
        Fabric settings (see :func:`build_detector`). With several processes each one reads
        the images and trains its share of every batch (DDP; ``batch_size`` is per process),
        and only rank 0 writes ``out``. See docs/distributed.md.
    log : callable, optional
        Receives a summary, one line at a time (rank 0 only): what was read (counts per
        class, image sizes, channels), how many images were held out, the threshold, the
        rule it is used with and how many images set it, and where the model went. The CLI
        passes ``print``.

    Returns
    -------
    Path of the model directory: vae.safetensors, cnn.safetensors, config.json.

    Raises
    ------
    DatasetError, ImageError, ValueError
        A missing or empty folder, unreadable or too small images (all named), mixed channel
        counts without ``channels``, a bad option value or an unusable ``out``; nothing is
        written. :class:`~spadecam.training.TrainingDivergedError` (a ValueError) when a loss
        becomes non-finite.

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
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"--resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    _check_out_dir(out)
    # check the options before reading any image; the minimum size does not depend on the
    # channel count, which may only be known once the images are read
    det = build_detector(image_size, 1 if channels is None else channels, backbone, epochs, seed, latent_dim,
                         error_smoothing=error_smoothing, error_norm=error_norm, steps=steps,
                         recipe=recipe)
    need = min_input_size(det.vae_config, det.cnn_config)
    data = folder_layout(normal, anomaly)
    if not (data.labels == 1).any():
        raise DatasetError("--anomaly: give at least one folder of known-anomaly images")
    # start the other processes (if any) once the options and folders are known to be good
    fabric = launch(**(distributed or {}))
    progress = progress and fabric.global_rank == 0
    say = log if (log is not None and fabric.global_rank == 0) else (lambda _line: None)
    sizes: list[tuple[int, int]] = []
    x, c = load_images(data.paths, channels, image_size, resize, need, progress, sizes=sizes)
    n_normal, n_anomaly = int((data.labels == 0).sum()), int((data.labels == 1).sum())
    say(f"read {n_normal} normal and {n_anomaly} known-anomaly images; sizes "
        f"{_size_range(sizes)}; {c} channel(s) {'(grey)' if c == 1 else '(colour)'}"
        + (" after conversion" if channels else "")
        + f"; model input {image_size}x{image_size} ({resize})")
    det = build_detector(
        image_size, c, backbone, epochs, seed, latent_dim, batch_size, lr,
        threshold_quantile, threshold_holdout, progress, distributed, error_smoothing,
        error_norm, precision, steps, recipe, roi_power, classifier_weight, cam_layer,
    )
    det.resize = resize
    assert det.vae_train is not None  # set by build_detector, recorded in config.json
    det.fit(PreparedImages(x, _letterbox_valid(data.paths, image_size, resize)), data.labels)
    held = det.threshold_n_images_ if threshold_holdout > 0 else {"normal": 0, "anomaly": 0}
    say(f"trained on {n_normal - held['normal']} normal and {n_anomaly - held['anomaly']} "
        f"known-anomaly images; held out {held['normal']} normal and {held['anomaly']} "
        "known-anomaly images for the threshold")
    say(f"threshold {det.threshold_:.6g} ({THRESHOLD_RULE}): "
        + _threshold_story(det.threshold_source_, det.threshold_n_images_, threshold_quantile))
    # the overlay scale from maps as `spadecam score` makes them: images at their own size
    pre = {"channels": c, "min_input_size": need}
    normal_paths = [p for p, lab in zip(data.paths, data.labels) if lab == 0][:_OVERLAY_SAMPLE]
    normal_maps = _score(det, _read(normal_paths, pre, False), False, normal_paths)[1]
    overlay_scale = float(np.quantile([m.max() for m in normal_maps], 0.99))
    preprocessing = {
        "image_size": image_size,
        "channels": c,
        "resize": resize,
        "normalisation": "dtype_max",  # 8-bit / 255, 16-bit / 65535, into [0, 1]
        "min_input_size": need,
    }
    extra = {
        "backbone": backbone,
        "overlay_scale": overlay_scale,
        "threshold_rule": THRESHOLD_RULE,
        "training": {
            "train": det.vae_train.to_dict(),
            "normal": [str(p) for p in _as_list(normal)],
            "anomaly": [str(p) for p in _as_list(anomaly)],
            "n_normal": n_normal,
            "n_anomaly": n_anomaly,
            "world_size": fabric.world_size,
            "global_batch_size": batch_size * fabric.world_size,
            "precision": fabric_settings(**(distributed or {}))["precision"],
        },
        "scoring_precision": resolve_scoring_precision(precision, "cpu"),
    }
    if fabric.global_rank == 0:  # every rank holds rank 0's models; one writes them
        if (out / "config.json").is_file():
            warn(f"--out {out}: replacing the spadecam model that was there")
        det.save(out, preprocessing, extra)
        say(f"model written to {out}")
    fabric.barrier()
    return out


def _size_range(sizes: Sequence[tuple[int, int]]) -> str:
    """'32x32' when all images share a size, else the smallest and largest (width x height)."""
    distinct = sorted(set(sizes), key=lambda hw: (hw[0] * hw[1], hw))
    if len(distinct) == 1:
        return f"{distinct[0][1]}x{distinct[0][0]} (all)"
    lo, hi = distinct[0], distinct[-1]
    return f"{lo[1]}x{lo[0]} to {hi[1]}x{hi[0]} ({len(distinct)} different)"


def _threshold_story(source: str, n: dict[str, int], quantile: float) -> str:
    if source == "f1_max_held_out":
        return (f"the F1-max point on {n['normal']} held-out normal and {n['anomaly']} "
                "held-out known-anomaly images")
    which = "held-out" if source == "quantile_held_out" else "training"
    return f"the {quantile:g} quantile of {n['normal']} {which} normal images' scores"


def _as_list(x: Any) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


# --------------------------------------------------------------------------- scoring


def _load_model(
    model_dir: str | os.PathLike, precision: str | None = None
) -> tuple[SPADE, dict[str, Any], dict[str, Any]]:
    from spadecam.io import read_config

    det = SPADE.load(model_dir)
    if precision is not None:
        resolve_scoring_precision(precision)  # a clear error for a bad value
        det.precision = precision
    config = read_config(model_dir)
    pre = det.preprocessing_
    if not pre or det.threshold_ is None:
        raise ModelFormatError(
            f"{model_dir} has no preprocessing or threshold_ in config.json; it was not "
            "written by `spadecam train` (or SPADE.save with preprocessing)"
        )
    if "channels" not in pre:  # read_config checked its value where present
        raise ModelFormatError(
            f"{Path(model_dir) / 'config.json'}: preprocessing.channels is missing; expected "
            "1 or 3, the channel count the images are converted to"
        )
    return det, pre, config


def _read(paths: Sequence[Path], pre: dict[str, Any], progress: bool) -> list[np.ndarray]:
    """Each image at its own size in the model's channels, (C, H_i, W_i) float32 in [0, 1].

    Every file is tried before an error: one ImageError lists all unusable files (unreadable,
    or a side below the networks' minimum, ``pre["min_input_size"]``).
    """
    out: list[np.ndarray] = []
    errors: list[ImageError] = []
    for p in bar(paths, enabled=progress, desc="reading images"):
        try:
            out.append(load_image(p, pre["channels"], None, min_size=pre.get("min_input_size", 1)))
        except ImageError as exc:
            errors.append(exc)
    if errors:
        raise ImageError.combine(errors, len(paths))
    return out


def _score(
    det: SPADE, x: list[np.ndarray], progress: bool, paths: Sequence[Path]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and maps (each at its image's size) of ``x``, the images of ``paths``.

    The detector brings each image to the model's input with the recorded policy
    (:mod:`spadecam.inputs`), so the CLI and the Python API score alike. Non-finite scores
    name the files.
    """
    scores, maps = [], []
    step = det.batch_size
    with bar(total=len(x), desc="scoring", enabled=progress) as shown:
        for i in range(0, len(x), step):
            try:
                s, m = det.decision_function_and_map(x[i : i + step])
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


def _write_png(path: Path, rgb: np.ndarray) -> None:
    atomic_write(path, lambda p: Image.fromarray(rgb).save(p, format="PNG"), suffix=".png")


def score(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    maps: str | os.PathLike | None = None,
    progress: bool = True,
    distributed: dict[str, Any] | None = None,
    precision: str | None = None,
) -> list[dict[str, Any]]:
    """Score images with a trained model directory; optionally write a CSV and overlays.

    Parameters
    ----------
    model_dir : path written by :func:`train` (or ``SPADE.save`` with preprocessing)
    inputs : image files and/or folders; folders are read recursively (links followed, no
        folder twice), each path being the folder as given joined with the file's path in it
    out : path, optional
        CSV with columns ``path,score,label,map`` (:func:`rows_to_csv`); ``label`` is the
        decision, 1 when score > ``threshold_`` (anomalous), else 0.
    maps : folder, optional
        One PNG per image: the weighted reconstruction error e' (Algorithm 1) over the image
        at the image's own size (see :func:`overlay`; the model scores it at its input size
        and the map is brought back, :mod:`spadecam.inputs`), at ``maps / map_names(path)``:
        the input paths mirrored, so names never collide.
    progress : bool
    distributed : dict, optional
        Fabric settings: ``accelerator``, ``devices``, ``strategy``, ``num_nodes`` (None or
        missing = the launcher's, else one process). With W processes each reads and scores
        a contiguous 1/W of the inputs (on its GPU with accelerator "cuda", else on the
        CPU); the scores are gathered in input order, rank 0 writes the CSV and each rank
        writes the overlays of its own images (so ``maps`` must be on a file system every
        node sees).
    precision : {"auto", "32", "bf16"}, optional
        Scoring precision (see :class:`SPADE`); None keeps the model directory's.

    Returns
    -------
    list of dict(path=str, score=float, label=int, map=str), in input order, on every rank;
    ``map`` is the overlay written for the image, "" without ``maps``.

    Raises
    ------
    ModelFormatError, DatasetError, ImageError, ValueError
        A bad model directory, missing inputs, an empty folder, unreadable or too small
        images (all named in one error), or non-finite scores (NonFiniteScoreError, naming
        the files); nothing is written. With several processes, an image that one process
        cannot read makes every process raise.

    Warns
    -----
    SpadecamWarning
        Skipped files, link cycles not followed, and existing files that are replaced (the
        CSV, overlays).
    """
    det, pre, config = _load_model(model_dir, precision)
    # every output checked before any work (issue 17: a read-only --maps used to fail after
    # scoring, leaving a CSV that named overlays never written)
    if maps is not None:
        check_writable(maps, "--maps", folder=True)
    if out is not None:
        check_writable(out, "--out")
    paths = collect_inputs(inputs)
    names = map_names(paths) if maps is not None else None  # from the full list: all ranks
    fabric = launch(**(distributed or {}))
    if fabric.device.type != "cpu":  # score on this process's GPU (accelerator "cuda")
        det.vae_, det.cnn_ = det.vae_.to(fabric.device), det.cnn_.to(fabric.device)
    mine = shard(len(paths), fabric.global_rank, fabric.world_size)
    progress = progress and fabric.global_rank == 0
    x: list[np.ndarray] = []
    local, error_maps = np.zeros(0), cast(list[np.ndarray], [])
    with fail_together(fabric):  # every image of every shard is read before any write
        if len(mine):
            mine_paths = paths[mine.start : mine.stop]
            x = _read(mine_paths, pre, progress)
            local, error_maps = _score(det, x, progress, mine_paths)
    scores = gather_in_order(fabric, local, len(paths))
    assert det.threshold_ is not None  # _load_model refuses a model without one
    labels = flag_anomalous(scores, det.threshold_)
    map_column = [""] * len(paths)
    if maps is not None and names is not None:
        map_column = [str(Path(maps) / n) for n in names]
    rows = [
        {"path": str(p), "score": float(s), "label": int(lab), "map": m}
        for p, s, lab, m in zip(paths, scores, labels, map_column)
    ]
    if maps is not None:
        assert names is not None
        d = Path(maps)
        scale = json_float(config.get("overlay_scale"), "overlay_scale")
        if not scale:  # a model without one: the largest value over all images
            top = torch.tensor(max((float(m.max()) for m in error_maps), default=0.0))
            scale = float(fabric.all_reduce(top, reduce_op="max")) or 1.0
        replaced = [d / names[i] for i in mine if (d / names[i]).exists()]
        if replaced:
            warn(f"--maps {d}: replacing {len(replaced)} existing overlay(s), e.g. "
                 f"{replaced[0]}")
        for i in bar(range(len(mine)), desc="writing overlays", enabled=progress):
            _write_png(d / names[mine[i]], overlay(x[i], error_maps[i], float(scale)))
    fabric.barrier()  # every rank's overlays are there before the CSV that names them
    # the CSV last: an interrupted or failed run never leaves one describing missing overlays
    if out is not None and fabric.global_rank == 0:
        if Path(out).exists():
            warn(f"--out {out}: replacing the existing file")
        atomic_write_text(out, rows_to_csv(rows))
    return rows


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with the columns path,score,label,map (score with 9 significant digits).

    ``map`` is the overlay PNG of the row's image, empty when no overlays were written.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "score", "label", "map"])
    for r in rows:
        w.writerow([r["path"], f"{r['score']:.9g}", r["label"], r.get("map", "")])
    return buf.getvalue()


# --------------------------------------------------------------------------- evaluation


def _mask_arrays(
    data: LabelledImages, progress: bool, indices: Sequence[int] | None = None
) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Masks at each image's own size ({0, 1}; all-zero for normal images) of the images
    ``indices`` (default: all), and which of them enter pixel AUROC (normal ones and
    anomalies with a mask); both in the order of ``indices``.

    Every mask is tried; the ImageError raised at the end lists all unusable ones.
    """
    idx = range(len(data)) if indices is None else indices
    masks: list[np.ndarray | None] = [None] * len(idx)
    use = np.zeros(len(idx), dtype=bool)
    errors: list[ImageError] = []
    for k in bar(range(len(idx)), desc="reading masks", enabled=progress):
        i = idx[k]
        img, mask = data.paths[i], data.masks[i]
        if data.labels[i] == 1 and mask is None:
            continue  # an anomaly without a mask cannot be scored per pixel
        use[k] = True
        try:
            hw = image_hw(img)
            if mask is None:
                masks[k] = np.zeros(hw, dtype=np.uint8)
                continue
            m = load_mask(mask)
            if m.shape != hw:
                raise ImageError(
                    f"{mask}: mask is {m.shape[1]}x{m.shape[0]} pixels but its image {img} "
                    f"is {hw[1]}x{hw[0]} (both as displayed)", [mask],
                )
            masks[k] = m
        except ImageError as exc:
            errors.append(exc)
    if errors:
        raise ImageError.combine(errors, what="masks (or their images)")
    return masks, use


def _gather_pixels(fabric, labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's flattened pixel labels and map values, concatenated on rank 0 (in rank
    order, which is input order); other ranks get empty arrays. Pixel AUROC needs them all
    in one place: rank 0 holds as many map pixels as a one-process run would."""
    if fabric.world_size == 1:
        return labels, values
    parts: list[Any] | None = [None] * fabric.world_size if fabric.global_rank == 0 else None
    torch.distributed.gather_object((labels, values), parts, dst=0)
    if parts is None:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def evaluate(
    model_dir: str | os.PathLike,
    normal: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    anomaly: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    masks: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    mvtec: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    precision: str | None = None,
    distributed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Image AUROC, average precision, F1-max (and pixel AUROC with masks) on labelled folders.

    Parameters
    ----------
    model_dir : path written by :func:`train`
    normal, anomaly : folder or list of folders of normal / anomalous test images
    masks : folder or list of folders, optional
        Ground-truth masks matched to anomalous images by stem (see
        :func:`spadecam.data.folders.folder_layout`). Pixel AUROC counts every normal image
        (all pixels normal) and every anomalous image that has a mask, at each image's own
        size (the maps come back at it; :mod:`spadecam.inputs`). An anomalous image without
        a mask is left out of pixel AUROC, named in a warning and listed in
        ``pixel_auroc_missing_masks``.
    mvtec : path, optional
        An MVTec AD category folder; its ``test`` split and ``ground_truth`` masks replace
        ``normal``, ``anomaly`` and ``masks``.
    out : path, optional
        Where to write the metrics as JSON (temp file, then renamed).
    precision : {"auto", "32", "bf16"}, optional
        Scoring precision (see :class:`SPADE`); None keeps the model directory's.
    distributed : dict, optional
        Fabric settings, as in :func:`score`. With W processes each reads and scores a
        contiguous 1/W of the test images (and their masks); the scores are gathered in
        input order and the image metrics computed from all of them on every rank. For
        pixel AUROC every rank's map pixels are gathered to rank 0, which computes it
        exactly (so rank 0 holds all map pixels, as one process would) and sends the value
        to the others. Only rank 0 warns and writes ``out``; every rank returns the same
        metrics.

    Returns
    -------
    dict: see :func:`spadecam.metrics.image_metrics`, plus ``pixel_auroc`` and
    ``n_pixel_images`` (None / 0 without masks), ``model_dir`` and ``precision`` (the
    scoring precision used); the same on every rank.

    Raises
    ------
    ModelFormatError, DatasetError, ImageError, ValueError
        A bad model directory or folder, an unreadable image or mask, a mask with no image
        or of another size than its image, or labels of a single class; nothing is written.
        With several processes, a file that one process cannot read makes every process
        raise.
    """
    det, pre, _ = _load_model(model_dir, precision)
    if out is not None:
        check_writable(out, "--out")
    if mvtec is not None:
        if normal or anomaly or masks:
            raise ValueError("give either --mvtec or --normal/--anomaly/--masks, not both")
        data = mvtec_layout(mvtec)[1]
    else:
        if not normal:
            raise DatasetError("evaluation needs normal images: give --normal")
        if not anomaly:
            raise DatasetError(
                "evaluation needs anomalous images too (AUROC of a single class is undefined): "
                "give --anomaly"
            )
        data = folder_layout(normal, anomaly, masks)
    if np.unique(data.labels).size < 2:
        raise DatasetError("evaluation labels hold a single class; need normal and anomalous")
    has_masks = any(m is not None for m in data.masks)
    fabric = launch(**(distributed or {}))
    if fabric.device.type != "cpu":  # score on this process's GPU (accelerator "cuda")
        det.vae_, det.cnn_ = det.vae_.to(fabric.device), det.cnn_.to(fabric.device)
    rank0 = fabric.global_rank == 0
    mine = shard(len(data), fabric.global_rank, fabric.world_size)
    progress = progress and rank0
    local, maps = np.zeros(0), cast(list[np.ndarray], [])
    mask_arr: tuple[list[np.ndarray | None], np.ndarray] | None = None
    with fail_together(fabric):  # every rank's masks and images are read before any write
        errors: list[ImageError] = []
        x: list[np.ndarray] = []
        try:  # read every mask and every image before failing: one error names all bad files
            mask_arr = _mask_arrays(data, progress, mine) if has_masks else None
        except ImageError as exc:
            errors.append(exc)
        try:
            x = _read(data.paths[mine.start : mine.stop], pre, progress)
        except ImageError as exc:
            errors.append(exc)
        if errors:
            raise ImageError.combine(errors, what="files")
        if len(mine):
            local, maps = _score(det, x, progress, data.paths[mine.start : mine.stop])
        del x
    scores = gather_in_order(fabric, local, len(data))
    metrics: dict[str, Any] = {
        "model_dir": str(model_dir),
        "precision": resolve_scoring_precision(det.precision, fabric.device.type),
    }
    metrics.update(image_metrics(data.labels, scores, det.threshold_))
    metrics["pixel_auroc"], metrics["n_pixel_images"] = None, 0
    if mask_arr is not None:
        m, use = mask_arr
        missing = [str(data.paths[i]) for i in range(len(data))
                   if data.labels[i] == 1 and data.masks[i] is None]
        if missing and rank0:  # the rule: left out of pixel AUROC, and said so (issue 17)
            warn(f"--masks: {len(missing)} anomalous image(s) have no mask and are left out of "
                 f"pixel AUROC: {', '.join(missing[:5])}"
                 + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        metrics["pixel_auroc_missing_masks"] = missing
        idx = np.flatnonzero(use)  # positions in this rank's shard
        # _mask_arrays gives a mask to every image it marks as used
        labels = np.concatenate([np.zeros(0, np.uint8)]
                                + [cast(np.ndarray, m[k]).ravel() for k in idx])
        values = np.concatenate([np.zeros(0, np.float32)] + [maps[k].ravel() for k in idx])
        labels, values = _gather_pixels(fabric, labels, values)
        value: float | None = None
        with fail_together(fabric):  # rank 0 computes it; an error there stops every rank
            if rank0:
                value = pixel_auroc(labels, values)
        metrics["pixel_auroc"] = fabric.broadcast(value, src=0)
        n_used = torch.tensor(int(use.sum()))
        metrics["n_pixel_images"] = int(fabric.all_reduce(n_used, reduce_op="sum"))
    if out is not None and rank0:
        if Path(out).exists():
            warn(f"--out {out}: replacing the existing file")
        atomic_write_text(out, json_text(metrics))
    return metrics
