"""Figures (matplotlib, PNG) for the reproduction: samples, ROIs, ROC curves, galleries.

Every function takes arrays already computed by the detectors and writes one PNG atomically
(temp file, then rename). Images are (N, H, W) floats in [0, 1] unless stated.

Figures are drawn with matplotlib's object API (``Figure``), not pyplot: nothing here selects
a backend or registers a figure, so a caller's interactive matplotlib session (a notebook's
backend, its open figures) is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spadecam._fs import atomic_write

__all__ = [
    "plot_samples",
    "plot_roi_rows",
    "plot_roc_curves",
    "plot_gallery",
]


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float]):
    """A new Figure and its (nrows, ncols) array of axes, outside pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight",
                                                    format="png"), suffix=".png")


def plot_samples(
    images: np.ndarray, titles: Sequence[str], path: str | os.PathLike, ncols: int = 8
) -> Path:
    """Grid of Noisy-MNIST samples (paper Fig. 5). images: (N, H, W) uint8 or float [0, 1]."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = _subplots(nrows, ncols, (1.6 * ncols, 1.75 * nrows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        ax.set_title(t, fontsize=8)
    return _save(fig, path)


def plot_roi_rows(
    columns: Mapping[str, np.ndarray],
    row_titles: Sequence[str],
    path: str | os.PathLike,
    image_keys: Sequence[str] = (),
) -> Path:
    """One row per image, one column per named map (e.g. input, ReLU ROI, Abs ROI).

    Used for the ReLU-vs-Abs figure (paper Fig. 3) and small-vs-large ROI (Fig. 4).
    columns: name -> (N, H, W) array; names in ``image_keys`` are drawn in grey [0, 1],
    the others as heat maps scaled per image.
    """
    names = list(columns)
    n = len(row_titles)
    fig, axes = _subplots(n, len(names), (1.9 * len(names), 1.9 * n))
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i, j]
            ax.axis("off")
            m = columns[name][i]
            if name in image_keys:
                ax.imshow(m, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(m, cmap="inferno", vmin=0, vmax=max(float(m.max()), 1e-12))
            if i == 0:
                ax.set_title(name, fontsize=8)
        axes[0, 0].set_ylabel(row_titles[0])
    for i, t in enumerate(row_titles):
        axes[i, 0].text(-0.08, 0.5, t, transform=axes[i, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    return _save(fig, path)


def plot_roc_curves(
    labels: np.ndarray,
    scores: Mapping[int, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    method_labels: Mapping[str, str] | None = None,
) -> Path:
    """ROC curves of each method, one panel per known class (scikit-learn's roc_curve).

    labels: (N,) 0 normal / 1 anomalous; scores: known class -> method -> (N,) scores.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    ks = sorted(scores)
    fig, axes = _subplots(1, len(ks), (3.2 * len(ks), 3.2))
    for ax, k in zip(axes[0], ks):
        for m, s in scores[k].items():
            fpr, tpr, _ = roc_curve(labels, s)
            name = (method_labels or {}).get(m, m)
            ax.plot(fpr, tpr, label=f"{name} {roc_auc_score(labels, s):.2f}", lw=1.2)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set_title(f"known anomaly = {k}", fontsize=9)
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_gallery(
    images: np.ndarray,
    maps: np.ndarray,
    scores: np.ndarray,
    digits: np.ndarray,
    path: str | os.PathLike,
    n: int = 6,
) -> Path:
    """Most and least anomalous images with their weighted-error maps e'.

    images: (N, H, W) float [0, 1]; maps: (N, H, W) e'; scores: (N,); digits: (N,) labels.
    """
    order = np.argsort(scores)
    picks = list(order[::-1][:n]) + list(order[:n])
    fig, axes = _subplots(4, n, (1.8 * n, 7.6))
    for idx, i in enumerate(picks):
        row = 0 if idx < n else 2
        col = idx % n
        axes[row, col].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[row, col].set_title(f"digit {digits[i]}  s={scores[i]:.3g}", fontsize=7)
        axes[row + 1, col].imshow(maps[i], cmap="inferno")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("most anomalous (rows 1-2) and least anomalous (rows 3-4) test images, "
                 "each above its weighted error e'", fontsize=9)
    return _save(fig, path)
