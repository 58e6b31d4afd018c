"""A self-contained HTML report of an evaluation: one file, every image and plot embedded.

:func:`write_report` writes what ``spadecam evaluate --report`` shows: the metrics table with
the threshold and how it was set, ROC and precision-recall curves, score histograms of normal
and anomalous images with the threshold line, the most anomalous images, the false positives
and false negatives at the threshold with their panels (input | reconstruction | ROI |
weighted error), the AUROC of each anomaly folder when there are several, and the model's
settings. Plots are matplotlib PNGs, pictures Pillow PNGs, both as ``data:`` URIs: the file
needs no network and no other file. No torch here.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spadecam._fs import atomic_write_text
from spadecam.decision import format_score, format_threshold

__all__ = ["ReportImage", "render_report", "write_report"]

#: Side (pixels) each panel is shown at; small images are enlarged without smoothing.
PANEL_SIDE = 144


@dataclass
class ReportImage:
    """One image of the report's galleries.

    Attributes
    ----------
    path : str, the file (shown as its caption)
    score : float
    label : int, 0 normal / 1 anomalous (ground truth)
    flagged : int, the decision, 1 when score > threshold
    panels : dict name -> ndarray, shown left to right: (C, H, W) float [0, 1] pictures
        (C = 1 or 3; keys "input", "reconstruction") or (H, W) float >= 0 maps (coloured
        with "inferno", one scale per panel name over the whole report)
    """

    path: str
    score: float
    label: int
    flagged: int
    panels: dict[str, np.ndarray] = field(default_factory=dict)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _panel_png(a: np.ndarray, top: float = 0.0) -> str:
    """A picture (C, H, W) in [0, 1] or a map (H, W) >= 0 (coloured, ``top`` at full
    colour) as a PNG data URI, enlarged."""
    if a.ndim == 3:
        rgb = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
        rgb = np.moveaxis(np.clip(rgb, 0, 1), 0, -1)
    else:
        from matplotlib import colormaps

        rgb = colormaps["inferno"](np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a))[..., :3]
    img = Image.fromarray(np.round(255 * rgb).astype(np.uint8))
    scale = PANEL_SIDE / max(img.size)
    if scale != 1:
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return _png_uri(buf.getvalue())


def _curves(labels: np.ndarray, scores: np.ndarray) -> str:
    """ROC and precision-recall curves side by side (scikit-learn's curves)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = Figure(figsize=(9, 3.6))
    roc, pr = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc.plot(fpr, tpr, color="#c0392b")
    roc.plot([0, 1], [0, 1], color="0.7", ls="--", lw=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC",
            xlim=(0, 1), ylim=(0, 1.01))
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr.step(recall, precision, where="post", color="#2c3e50")
    pr.axhline(labels.mean(), color="0.7", ls="--", lw=1)
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1),
           ylim=(0, 1.01))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
    return _figure_uri(fig)


def _histogram(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> str:
    """Score histograms of normal and anomalous images, the threshold as a line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    n = min(60, max(10, len(scores) // 4))
    lo, hi = float(scores.min()), float(scores.max())
    # scores that span decades (SPADE's are products of factors) on a log axis, else linear
    log = lo > 0 and hi / lo > 100
    bins = list(np.geomspace(lo, hi, n + 1) if log else np.histogram_bin_edges(scores, bins=n))
    if log:
        ax.set_xscale("log")
    # each class as a share of its own images: a small normal class stays visible
    for cls, colour, name in ((0, "#2980b9", "normal"), (1, "#c0392b", "anomalous")):
        s = scores[labels == cls]
        ax.hist(s, bins=bins, weights=np.full(len(s), 1 / max(len(s), 1)), alpha=0.6,
                color=colour, label=f"{name} ({len(s)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1.5, ls="--",
                   label=f"threshold {format_threshold(threshold)}")
    ax.set(xlabel="anomaly score" + (" (log scale)" if log else ""),
           ylabel="share of the class's images")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _figure_uri(fig)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0 auto;max-width:1100px;padding:24px;color:#222;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;
 padding-bottom:4px;font-size:1.25em}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 10px;
 text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
 font-variant-numeric:tabular-nums}img.plot{max-width:100%}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;margin:10px 0;background:#fafafa}
.card .cap{font-size:0.9em;margin-bottom:6px;word-break:break-all}
.panels{display:flex;gap:8px;flex-wrap:wrap}.panel{text-align:center;font-size:0.8em;color:#555}
.panel img{display:block;border:1px solid #ccc;image-rendering:pixelated}
.tag{display:inline-block;padding:0 6px;border-radius:4px;font-size:0.85em;color:#fff}
.tag.a{background:#c0392b}.tag.n{background:#2980b9}.none{color:#777;font-style:italic}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return _esc(v)


def _table(rows: Sequence[tuple[str, Any]], head: tuple[str, str] | None = None,
           exact: bool = False) -> str:
    """Rows of (name, value); floats to 4 decimals, or as given (``exact``: settings)."""
    out = ["<table>"]
    if head:
        out.append(f"<tr><th>{_esc(head[0])}</th><th>{_esc(head[1])}</th></tr>")
    for k, v in rows:
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        text = _esc(v) if exact else _fmt(v)
        out.append(f"<tr><th>{_esc(k)}</th><td{' class=num' if num else ''}>{text}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _markdown_table(md: str) -> str:
    """A Markdown pipe table (header, ``|---|`` rule, rows) as an HTML table."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in md.strip().splitlines() if line.strip().startswith("|")]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]
    if not rows:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(
        f"<td class=num>{_esc(c)}</td>" if _numeric(c) else f"<th>{_esc(c)}</th>" for c in r)
        + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _numeric(text: str) -> bool:
    try:
        float(text.split()[0])
    except (ValueError, IndexError):
        return False
    return True


def _map_scales(*galleries: Sequence[ReportImage]) -> dict[str, float]:
    """One colour scale per map panel (its largest value over every gallery), so that maps
    compare across images: a normal image's e' is not drawn as hot as an anomaly's."""
    top: dict[str, float] = {}
    for im in (im for g in galleries for im in g):
        for name, a in im.panels.items():
            if a.ndim == 2 and a.size:
                top[name] = max(top.get(name, 0.0), float(np.nanmax(a)))
    return top


def _gallery(images: Sequence[ReportImage], empty: str, scales: Mapping[str, float],
             threshold: float | None = None) -> str:
    """The cards; each score with the digits its comparison with ``threshold`` needs."""
    if not images:
        return f"<p class=none>{_esc(empty)}</p>"
    out = []
    for im in images:
        truth = ("<span class='tag a'>anomalous</span>" if im.label
                 else "<span class='tag n'>normal</span>")
        decision = "flagged" if im.flagged else "passed"
        panels = "".join(
            f"<div class=panel><img src='{_panel_png(a, scales.get(name, 0.0))}' "
            f"alt='{_esc(name)} of {_esc(im.path)}'>"
            f"{_esc(name)}</div>" for name, a in im.panels.items())
        out.append(f"<div class=card><div class=cap>{truth} score <b>{format_score(im.score, threshold)}</b> "
                   f"({decision}) &nbsp; <code>{_esc(im.path)}</code></div>"
                   f"<div class=panels>{panels}</div></div>")
    return "\n".join(out)


def _metric_rows(metrics: Mapping[str, Any], threshold: float | None,
                 threshold_note: str) -> list[tuple[str, Any]]:
    """The metrics table's rows: image metrics, pixel AUROC, and those at the threshold."""
    at = metrics.get("at_threshold") or {}
    rows: list[tuple[str, Any]] = [
        ("images (normal / anomalous)",
         f"{metrics.get('n_images')} ({metrics.get('n_normal')} / {metrics.get('n_anomalous')})"),
        ("image AUROC", metrics.get("image_auroc")),
        ("average precision", metrics.get("image_average_precision")),
        ("F1-max (at its own threshold)",
         f"{metrics.get('image_f1_max', float('nan')):.4f} (score > "
         f"{format_threshold(metrics.get('image_f1_max_threshold', float('nan')))})"),
    ]
    if metrics.get("pixel_auroc") is not None:
        rows.append(("pixel AUROC", metrics["pixel_auroc"]))
    if threshold is not None:
        rows += [
            ("threshold", f"{format_threshold(threshold)} — {threshold_note}"),
            ("at the threshold: precision / recall / F1",
             f"{at.get('precision', float('nan')):.4f} / {at.get('recall', float('nan')):.4f} / "
             f"{at.get('f1', float('nan')):.4f}"),
            ("at the threshold: false positive rate", at.get("false_positive_rate")),
            ("at the threshold: flagged", at.get("n_flagged")),
        ]
    return rows


def render_report(
    *,
    title: str,
    labels: Any,
    scores: Any,
    metrics: Mapping[str, Any],
    threshold: float | None,
    threshold_note: str,
    most_anomalous: Sequence[ReportImage] = (),
    false_positives: Sequence[ReportImage] = (),
    false_negatives: Sequence[ReportImage] = (),
    auroc_by_folder: Mapping[str, float] | None = None,
    settings: Mapping[str, Any] | None = None,
    subtitle: str = "",
    tables: Mapping[str, str] | None = None,
) -> str:
    """The report as one HTML document (str); see the module notes.

    Parameters
    ----------
    title, subtitle : headings
    labels, scores : (N,) ground truth (0/1) and anomaly scores of every evaluated image
    metrics : what :func:`spadecam.metrics.image_metrics` returns (plus pixel_auroc, ...)
    threshold : the decision threshold (anomalous when score > threshold), or None. Printed
        so that it reads back as the same float (as is the F1-max threshold), and each card's
        score with the digits it takes to compare with it as the score does.
    threshold_note : how the threshold was set, one sentence
    most_anomalous, false_positives, false_negatives : the galleries' images
    auroc_by_folder : image AUROC of each anomaly kind (folder, digit) against all normal
        images, shown when there are several
    settings : the model's settings (name -> value), shown as a table
    tables : heading -> a Markdown table (``| a | b |`` rows), shown as HTML tables

    Raises
    ------
    ValueError
        labels and scores of different lengths, or labels of one class.
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape or len(np.unique(y)) < 2:
        raise ValueError("the report needs one score per label and both normal and anomalous "
                         f"images; got {y.size} labels, {s.size} scores, classes {np.unique(y)}")
    rows = _metric_rows(metrics, threshold, threshold_note)
    scales = _map_scales(most_anomalous, false_positives, false_negatives)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class=sub>{_esc(subtitle)}</p>" if subtitle else "",
        "<h2>Metrics</h2>", _table(rows),
    ]
    for heading, md in (tables or {}).items():
        parts += [f"<h2>{_esc(heading)}</h2>", _markdown_table(md)]
    if auroc_by_folder and len(auroc_by_folder) > 1:
        parts += ["<h2>Image AUROC by anomaly kind (each against every normal image)</h2>",
                  _table(sorted(auroc_by_folder.items()), ("anomaly kind", "image AUROC"))]
    parts += [
        "<h2>ROC and precision-recall curves</h2>",
        f"<img class=plot src='{_curves(y, s)}' alt='ROC and precision-recall curves'>",
        "<h2>Scores of normal and anomalous images</h2>",
        f"<img class=plot src='{_histogram(y, s, threshold)}' alt='score histograms'>",
        "<h2>Most anomalous images</h2>",
        "<p class=sub>Maps share one colour scale per column across the report (black 0, "
        "yellow the largest value shown), so they compare between images.</p>",
        _gallery(most_anomalous, "no images", scales, threshold),
        "<h2>False positives at the threshold (normal images flagged)</h2>",
        _gallery(false_positives, "none: no normal image is above the threshold", scales,
                 threshold),
        "<h2>False negatives at the threshold (anomalous images passed)</h2>",
        _gallery(false_negatives, "none: every anomalous image is above the threshold", scales,
                 threshold),
    ]
    if settings:
        parts += ["<h2>Model settings</h2>", _table(list(settings.items()), exact=True)]
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def write_report(path: str | os.PathLike, **kwargs: Any) -> Path:
    """:func:`render_report` written to ``path`` (temp file, then renamed); returns the path."""
    return atomic_write_text(path, render_report(**kwargs))
