"""The pictures behind a report's galleries: input | reconstruction | ROI | weighted error.

:func:`detector_panels` computes them with the detector's own scoring modules
(:mod:`spadecam.scoring`), so the maps shown are the ones that made the score.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam.detectors import SPADE, VAEDetector
from spadecam.detectors._base import _BaseDetector
from spadecam.inputs import iter_model_batches
from spadecam.roi import roi_weights
from spadecam.scoring import scoring_context

__all__ = ["REPORT_GALLERY", "detector_panels", "write_detector_report"]


def detector_panels(det: _BaseDetector, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per image, the panels of a report card, cropped to the image's region of the input.

    Parameters
    ----------
    det : a fitted detector (SPADE, NaiveSPADE, VAEDetector or CNNDetector)
    images : list of (C, H, W) float [0, 1] or uint8 images of any size

    Returns
    -------
    list of dict name -> ndarray, at the model's input resolution: "input" and
    "reconstruction" (C, h, w) in [0, 1]; SPADE and NaiveSPADE add "ROI" (h, w), the weights
    of eq. 5 (L / |L| for SPADE), and "weighted error e'" (h, w), the map whose sum is the
    score (Algorithm 1); with ``score="margin"`` SPADE has no reconstruction (none with the
    feature error), its "ROI" is Grad-CAM's on the input alone (shown, not scored) and its map
    "error e" (the map whose maximum is the score's error term); VAEDetector adds
    "reconstruction error e"; CNNDetector has the input alone (it gives no map).
    """
    size, channels = det._input_spec()
    models = det.fitted_models()
    out: list[dict[str, np.ndarray]] = []
    for mb in iter_model_batches(list(images), det.batch_size, size, det.resize, channels):
        with scoring_context(det.precision, *models) as device:
            u = mb.u.to(device)
            v = None if mb.valid is None else mb.valid.to(device)
            panels: dict[str, torch.Tensor] = {"input": u}
            margin = isinstance(det, SPADE) and det._param("score") == "margin"
            vae = getattr(det, "vae_", None) if isinstance(det, (SPADE, VAEDetector)) else None
            if vae is not None:
                u_hat = vae.reconstruct(u).float()
                panels["reconstruction"] = u_hat
            if margin:
                scorer = det.scorer()
                m_u = scorer.cams(u, u, scorer.layers[0]).m_u
                panels["ROI"] = roi_weights(m_u, None, u.shape[-2:], input_branch="abs",
                                            recon_branch="none", valid=v)
                panels["error e"] = scorer(u, v)[1]
            elif isinstance(det, SPADE):
                scorer = det.scorer()
                panels["ROI"] = scorer.roi(u, u_hat, v)
                panels["weighted error e'"] = scorer.error_map(u, u_hat, v)
            elif isinstance(det, VAEDetector):
                panels["reconstruction error e"] = det.scorer()(u, v)[1]
        arrays = {k: t.detach().float().cpu().numpy() for k, t in panels.items()}
        for i in range(len(mb.u)):
            top, left, h, w = mb.boxes[i] if mb.boxes is not None else (0, 0, *mb.u.shape[-2:])
            out.append({k: np.ascontiguousarray(a[i, ..., top : top + h, left : left + w])
                        for k, a in arrays.items()})
    return out


#: Images each gallery of the HTML report shows.
REPORT_GALLERY = 8


def write_detector_report(
    path: str | os.PathLike,
    det: _BaseDetector,
    *,
    names: Sequence[str],
    labels: Any,
    scores: Any,
    threshold: float,
    threshold_note: str,
    read: Callable[[list[int]], Sequence[np.ndarray]],
    kinds: Sequence[Any] | None = None,
    metrics: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    title: str = "spadecam evaluation",
    subtitle: str = "",
    tables: dict[str, str] | None = None,
    by_kind: dict[str, float] | None = None,
) -> Path:
    """The HTML report of a detector's scores (:func:`spadecam.report.write_report`).

    Picks the :data:`REPORT_GALLERY` most anomalous images, the highest-scoring false
    positives and the lowest-scoring false negatives at ``threshold`` (anomalous when score >
    threshold), reads just those (``read(indices)`` -> images (C, H, W)) and computes their
    panels with ``det`` (:func:`detector_panels`). ``kinds``: each image's anomaly kind (a
    folder, a digit) for the AUROC by kind; ``metrics`` default
    :func:`spadecam.metrics.image_metrics` at ``threshold``; ``tables``: heading -> a
    Markdown table, shown as is (e.g. a benchmark's results); ``by_kind``: that AUROC by
    kind when already computed (then ``kinds`` is not needed). Returns the path.
    """
    from spadecam.decision import flag_anomalous
    from spadecam.metrics import auroc_by_kind, image_metrics
    from spadecam.report.html import ReportImage, write_report

    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    flagged = flag_anomalous(s, threshold)
    order = np.argsort(-s, kind="stable")
    top = [int(i) for i in order[:REPORT_GALLERY]]
    fp = [int(i) for i in order if y[i] == 0 and flagged[i]][:REPORT_GALLERY]
    fn = [int(i) for i in order[::-1] if y[i] == 1 and not flagged[i]][:REPORT_GALLERY]
    picks = list(dict.fromkeys(top + fp + fn))
    panels = dict(zip(picks, detector_panels(det, list(read(picks)))))

    def card(i: int) -> ReportImage:
        return ReportImage(str(names[i]), float(s[i]), int(y[i]), int(flagged[i]), panels[i])

    return write_report(
        path, title=title, subtitle=subtitle, labels=y, scores=s,
        metrics=metrics if metrics is not None else image_metrics(y, s, threshold),
        threshold=threshold, threshold_note=threshold_note,
        most_anomalous=[card(i) for i in top], false_positives=[card(i) for i in fp],
        false_negatives=[card(i) for i in fn],
        auroc_by_folder=by_kind if kinds is None else auroc_by_kind(y, s, kinds),
        settings=settings, tables=tables)
