"""``spadecam evaluate``: image AUROC, average precision, F1-max (and pixel AUROC with masks)
of a model directory on labelled folders (through :class:`~spadecam.deploy.TorchInferencer`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from spadecam._fs import atomic_write_text, check_writable
from spadecam._json import json_text
from spadecam._progress import bar, warn
from spadecam.data.folders import DatasetError, LabelledImages, folder_layout, mvtec_layout
from spadecam.data.images import ImageError, image_hw, load_mask
from spadecam.deploy.torch_inferencer import TorchInferencer
from spadecam.distributed import fail_together, gather_in_order, launch_scoring, shard
from spadecam.metrics import auroc_by_kind, image_metrics, pixel_auroc
from spadecam.precision import resolve_scoring_precision
from spadecam.threshold import describe_threshold

__all__ = ["evaluate"]


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
    log: Callable[[str], Any] | None = None,
    report: str | os.PathLike | None = None,
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
    log : callable, optional
        Receives one line: the scoring precision as resolved and where it came from.
    report : path, optional
        Also write a self-contained HTML report there (:mod:`spadecam.report`): the
        metrics, curves, score histograms, the most anomalous images and the false positives
        and negatives at the threshold with their panels, and the model's settings.
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
    ``n_pixel_images`` (None / 0 without masks), ``model_dir``, ``precision`` (the
    scoring precision used), ``threshold_source`` (how ``fit`` set the threshold, as the model
    directory records it: "f1_max_held_out", "quantile_held_out_f1_rejected",
    "quantile_held_out", "quantile_train", or None), and with several anomaly folders
    ``image_auroc_by_folder`` (the anomalies of each folder, an --anomaly folder or an MVTec
    defect type, against every normal image); the same on every rank.

    Raises
    ------
    ModelFormatError, DatasetError, ImageError, ValueError
        A bad model directory or folder, an unreadable image or mask, a mask with no image
        or of another size than its image, or labels of a single class; nothing is written.
        With several processes, a file that one process cannot read makes every process
        raise.
    """
    inf = TorchInferencer.load(model_dir, precision)
    det = inf.detector
    if log is not None:  # the scoring precision as resolved, once the model is loaded
        log(inf.describe_precision(precision is not None))
    if out is not None:
        check_writable(out, "--out")
    if report is not None:
        check_writable(report, "--report")
    data = _test_images(normal, anomaly, masks, mvtec)
    has_masks = any(m is not None for m in data.masks)
    if has_masks and not det.has_anomaly_map:
        raise ValueError("--masks: this model gives no per-pixel map (the CNN-based baseline "
                         "scores whole images), so it has no pixel AUROC; leave out --masks")
    fabric = launch_scoring(**(distributed or {}))  # Lightning only for several processes
    if fabric.device.type != "cpu":  # score on this process's GPU (accelerator "cuda")
        inf.to(fabric.device)
    rank0 = fabric.global_rank == 0
    mine = shard(len(data), fabric.global_rank, fabric.world_size)
    local, maps, mask_arr = _score_shard(fabric, inf, data, mine, has_masks, progress and rank0)
    scores = gather_in_order(fabric, local, len(data))
    metrics: dict[str, Any] = {
        "model_dir": str(model_dir),
        "precision": resolve_scoring_precision(det.precision, fabric.device.type),
    }
    metrics.update(image_metrics(data.labels, scores, det.threshold_))
    metrics["threshold_source"] = inf.config.get("threshold_source")  # how fit set it
    by_folder = auroc_by_kind(data.labels, scores, _kinds(data))
    if len(by_folder) > 1:
        metrics["image_auroc_by_folder"] = by_folder
    metrics["pixel_auroc"], metrics["n_pixel_images"] = None, 0
    if mask_arr is not None:
        assert maps is not None  # masks are refused above for a model without maps
        metrics.update(_pixel_metrics(fabric, data, mine, mask_arr, maps))
    if report is not None and rank0:
        write_evaluation_report(report, inf, data, scores, metrics)
    if out is not None and rank0:
        if Path(out).exists():
            warn(f"--out {out}: replacing the existing file")
        atomic_write_text(out, json_text(metrics))
    return metrics


def _score_shard(fabric: Any, inf: TorchInferencer, data: LabelledImages, mine: range,
                 has_masks: bool, progress: bool) -> tuple[np.ndarray, Any, Any]:
    """This process's share of the test images scored: (scores, maps or None, the masks'
    arrays or None). Every rank's masks and images are read before any write, and every
    unusable file is named in one ImageError (on every rank when one rank fails)."""
    local, maps = np.zeros(0), cast(list[np.ndarray] | None, [])
    mask_arr: tuple[list[np.ndarray | None], np.ndarray] | None = None
    with fail_together(fabric):
        errors: list[ImageError] = []
        x: list[np.ndarray] = []
        try:  # read every mask and every image before failing: one error names all bad files
            mask_arr = _mask_arrays(data, progress, mine) if has_masks else None
        except ImageError as exc:
            errors.append(exc)
        try:
            x = inf.read(data.paths[mine.start : mine.stop], progress)
        except ImageError as exc:
            errors.append(exc)
        if errors:
            raise ImageError.combine(errors, what="files")
        if len(mine):
            local, maps = inf.score(x, data.paths[mine.start : mine.stop], progress)
    return local, maps, mask_arr


def write_evaluation_report(path: str | os.PathLike, inf: TorchInferencer, data: LabelledImages,
                            scores: np.ndarray, metrics: dict[str, Any]) -> None:
    """The HTML report of an evaluation (:func:`spadecam.report.write_detector_report`): the
    galleries' images are read again from their files and their panels computed."""
    from spadecam.report import write_detector_report

    det, config = inf.detector, inf.config
    source, counts = config.get("threshold_source"), config.get("threshold_n_images")
    note = (describe_threshold(source, counts if isinstance(counts, dict) else {},
                             det.threshold_quantile) if source else "as stored in the model")
    settings = {"model directory": str(inf.model_dir), "detector": type(det).__name__,
                "scoring precision": metrics.get("precision")}
    settings.update({f"input {k}": v for k, v in (config.get("input") or {}).items()})
    settings.update((config.get("detector") or {}).get("params") or {})
    training = config.get("training") or {}
    settings.update({f"trained on {k}": training[k] for k in ("n_normal", "n_anomaly")
                     if k in training})
    write_detector_report(
        path, det, names=[str(p) for p in data.paths], labels=data.labels, scores=scores,
        threshold=inf.threshold, threshold_note=note, metrics=metrics,
        read=lambda idx: inf.read([data.paths[i] for i in idx]),
        by_kind=metrics.get("image_auroc_by_folder"),
        settings=settings, title=f"spadecam evaluation: {Path(inf.model_dir).name}",
        subtitle=f"{type(det).__name__} on {len(data)} images; anomalous when score > threshold")


def _kinds(data: LabelledImages) -> list[str]:
    """Each image's anomaly kind for the AUROC by kind: the folder holding it (an --anomaly
    folder, read without recursion, or an MVTec AD defect type)."""
    return [str(p.parent) for p in data.paths]


def _test_images(normal: Any, anomaly: Any, masks: Any, mvtec: Any) -> LabelledImages:
    """The labelled test images (and masks) of the folders or of an MVTec AD category."""
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
    return data


def _pixel_metrics(fabric: Any, data: LabelledImages, mine: range,
                   mask_arr: tuple[list[np.ndarray | None], np.ndarray],
                   maps: list[np.ndarray]) -> dict[str, Any]:
    """pixel_auroc over every rank's map pixels (computed on rank 0), n_pixel_images and
    pixel_auroc_missing_masks (anomalous images without a mask, left out and named)."""
    rank0 = fabric.global_rank == 0
    metrics: dict[str, Any] = {}
    m, use = mask_arr
    missing = [str(data.paths[i]) for i in range(len(data))
               if data.labels[i] == 1 and data.masks[i] is None]
    if missing and rank0:  # the rule: left out of pixel AUROC, and said so
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
    return metrics
