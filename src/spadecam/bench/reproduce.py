"""The paper's Noisy-MNIST Table I, run on the one runner (ELPV: :mod:`spadecam.bench.elpv`).

Noisy-MNIST (Narita et al., arXiv 1810.02607, III-B): digit 0 is normal; one of 1/3/5/7/9
is the known anomaly; every other digit is an unknown anomaly. The VAE is trained once per
seed on training-set 0s; a classifier is trained per known class on training 0s + that
class. The MNIST test set is made noisy with a fixed seed
(:data:`spadecam.bench.protocols.TEST_SEED`, the same for every model seed) and every test
image is scored; AUROC treats every non-zero digit as
anomalous. ELPV: :func:`spadecam.bench.protocols.elpv_data`.

Both are a data description (:mod:`spadecam.bench.protocols`) and a recipe
(:mod:`spadecam.bench.configs`) given to :func:`spadecam.bench.runner.run_benchmark`; this module
adds their tables, ablation rows and figures and writes them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam._fs import atomic_write_text
from spadecam._progress import warn
from spadecam.bench import configs as _configs
from spadecam.bench import protocols as _protocols
from spadecam.bench.figures import plot_gallery, plot_roc_curves, plot_roi_rows, plot_samples
from spadecam.bench.pretrained import PRETRAINED_LABELS, PRETRAINED_METHODS, run_pretrained_benchmark
from spadecam.bench.runner import (
    ProtocolResult,
    detector_params,
    run_benchmark,
    start,
)
from spadecam.bench.tables import (
    METHOD_LABELS,
    METHODS,
    format_table,
    write_results_csv,
)
from spadecam.cam import grad_cam
from spadecam.error import reconstruction_error
from spadecam.inputs import to_float_images
from spadecam.roi import apply_branch, normalise_roi, roi_weights, upsample_roi

__all__ = ["ABLATIONS", "run_noisy_mnist"]

#: SPADE variants scored on the same models for the ablation table (issue: which of the
#: paper's modifications matter). Keys are the method names in ablations.csv.
ABLATIONS: dict[str, dict] = {
    "spade_no_recon_roi": {"recon_branch": "none"},
    "spade_relu_input": {"input_branch": "relu"},
    "spade_no_normalise": {"normalise": False},
    "spade_abs_both": {"recon_branch": "abs"},
    "spade_cam_layer_-2": {"cam_layer": -2},
    "spade_paper_error": {"error_smoothing": 0.0, "error_norm": "l1"},
    # our ROI option, the recipe's default since it won on the ELPV and Noisy-MNIST
    # validation splits: this row is SPADE's own now; the next one is the paper's
    "spade_classifier_weight_10": {"classifier_weight": 10.0},
    "spade_no_classifier_weight": {"classifier_weight": 0.0, "knn_power": 0.0},
    # the feature bank (the default's e' x d); without it
    "spade_no_knn": {"knn_power": 0.0},
}
ABLATION_LABELS = {
    "spade": "SPADE (eq. 5)",
    "spade_no_recon_roi": "without the reconstruction ROI",
    "spade_relu_input": "ReLU instead of Abs on the input",
    "spade_no_normalise": "without normalisation (raw L)",
    "spade_abs_both": "Abs on both",
    "spade_cam_layer_-2": "CAM at the penultimate conv layer",
    "spade_paper_error": "the paper's error abs(u - u_hat), unsmoothed",
    "spade_classifier_weight_10": "e' x (1 + 10 p(known anomaly)) (the default)",
    "spade_no_classifier_weight": "without the classifier weight and the feature bank (the "
                                  "paper's score)",
    "spade_no_knn": "without the feature bank (e' x d, the default)",
    "spade_bf16": "SPADE scored in bf16 autocast",
    "spade_fp32": "SPADE scored in fp32",
}



def _figures_for_model(out: Path, res: ProtocolResult, digits: np.ndarray) -> None:
    """Samples (Fig. 5), ReLU vs Abs ROI (Fig. 3), small vs large ROI (Fig. 4), gallery.

    ``res``: the run's result for one known class (its models, test images, reconstructions,
    and its SPADE and Grad-CAM maps, which the gallery reuses: no second feature bank, no
    second Grad-CAM pass); ``digits``: the test images' digits.
    """
    r, cnn, u8, u_hat = res.config, res.cnn, res.data.x_test, res.u_hat
    k = res.protocol.meta["known_class"]
    # one normal, the known class and unknown digits, in a fixed order
    picks = [int(np.flatnonzero(digits == d)[0]) for d in (0, k, 2, 4, 6, 8) if d in digits]
    u = to_float_images(u8[picks])
    uh = u_hat[picks]
    size = u.shape[-2:]
    plot_samples(u8[:24, 0].numpy(), [f"digit {d}" for d in digits[:24]], out / "samples.png")
    with torch.inference_mode():
        m_u = grad_cam(cnn, u, layer=r.cam_layer)
        m_h = grad_cam(cnn, uh, layer=r.cam_layer)
        m_u_small = grad_cam(cnn, u, layer=-2)
        m_h_small = grad_cam(cnn, uh, layer=-2)

    def up(m):
        return upsample_roi(m.float(), size, r.upsample).numpy()

    e = reconstruction_error(u, uh, r.error_smoothing, r.error_norm).sum(1)
    roi = roi_weights(m_u, m_h, size, upsample=r.upsample, normalise=False)  # L, eq. 5
    titles = [f"digit {digits[i]}" for i in picks]
    plot_roi_rows(
        {
            "input u": u[:, 0].numpy(),
            "reconstruction": uh[:, 0].numpy(),
            "ReLU(M(u))": up(apply_branch(m_u, "relu")),
            "Abs(M(u))": up(apply_branch(m_u, "abs")),
            "L (eq. 5)": roi.numpy(),
            "weighted error e'": (e * normalise_roi(roi)).numpy(),
        },
        titles, out / "roi_relu_vs_abs.png", image_keys=("input u", "reconstruction"),
    )
    roi_small = roi_weights(m_u_small, m_h_small, size, upsample=r.upsample, normalise=False)
    plot_roi_rows(
        {
            "input u": u[:, 0].numpy(),
            "small ROI (conv -2)": roi_small.numpy(),
            "e' small": (e * normalise_roi(roi_small)).numpy(),
            "large ROI (conv -1)": roi.numpy(),
            "e' large": (e * normalise_roi(roi)).numpy(),
        },
        titles, out / "roi_small_vs_large.png", image_keys=("input u",),
    )
    n = min(len(u8), 2000)
    maps = res.spade_maps(n)
    plot_gallery(
        u8[:n, 0].float().div(255).numpy(), maps.numpy(), maps.sum((1, 2)).numpy(),
        digits[:n], out / "gallery.png",
    )


#: Method name of the SPADE rows scored in the other precision, by that precision.
_PRECISION_ABLATION = {"bf16": "spade_bf16", "32": "spade_fp32"}
#: The columns of a Noisy-MNIST results row (results.csv, ablations.csv).
_NOISY_MNIST_KEYS = ("method", "known_class", "seed", "auroc", "recipe", "train_precision",
                     "score_precision")


def run_noisy_mnist(
    known: Sequence[int] = (1, 3, 5, 7, 9),
    seeds: Sequence[int] = (0,),
    recipe: str | _configs.BenchmarkConfig = "spadecam",
    quick: bool = False,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    ablations: bool = False,
    figures: bool = True,
    log=print,
    distributed: dict | None = None,
    precision: str = "auto",
    report: str | Path | None = None,
) -> list[dict]:
    """Run the Noisy-MNIST benchmark and return one row per (method, known class, seed).

    Parameters
    ----------
    known : sequence of int
        Known anomaly digits (each 1-9); each gets its own classifier.
    seeds : sequence of int
        Model seeds (training noise, weights, batch order). The test set is the same for all.
    recipe : str or BenchmarkConfig
        "spadecam" (default: Noisy-MNIST keeps the from-scratch recipe, which won on its
        validation split), "paper", "pretrained" (the one-class pretrained baseline, the
        pretrained CNN-based score and SPADE's margin fusion; no figures, ablations, report
        or distributed training) or a :class:`~spadecam.bench.configs.BenchmarkConfig`.
    quick : bool
        Smaller slices and epochs (see :func:`spadecam.bench.configs.noisy_mnist_benchmark`).
    data_dir : path, optional
        MNIST IDX folder (else ``SPADECAM_DATA`` or ``../shared/data/mnist``).
    out_dir : path, optional
        If given, ``results.csv`` and ``table.md`` are written there (atomically), and the
        figures (samples, ROIs, ROC curves, gallery) when ``figures``.
    ablations : bool
        Also score the SPADE variants of :data:`ABLATIONS` and SPADE in the other scoring
        precision on the same models and write ``ablations.csv``.
    distributed : dict, optional
        Lightning Fabric settings for the training loops (``accelerator``, ``devices``,
        ``strategy``, ``num_nodes``, ``precision``; see :class:`TrainConfig`). With several
        processes the models train under DDP, every process scores the whole test set, and
        only rank 0 logs and writes ``out_dir``. A recipe's ``batch_size`` is the global
        batch: each of W processes takes ``batch_size / W`` images per step, so the steps
        are those of one process (docs/distributed.md).
    precision : {"auto", "32", "bf16", "32-true", "bf16-mixed", "16-mixed"}
        Training and scoring precision (:func:`spadecam.precision.from_option`): "auto"
        (default) trains in bf16-mixed where the CPU has AMX (or on a bf16 GPU) and scores in
        bf16 autocast where the hardware has native bf16, else fp32; "32" is exact fp32 (the
        committed fp32 tables). A ``distributed["precision"]`` overrides the training part.
    report : path, optional
        Also write a self-contained HTML report (:mod:`spadecam.report`) of SPADE for the
        first known class and seed: the results table, its AUROC by digit, curves, score
        histograms and galleries with input | reconstruction | ROI | weighted error.

    Returns
    -------
    list of dict with keys method, known_class, seed, auroc, recipe, train_precision,
    score_precision (the resolved precisions).

    Raises
    ------
    ValueError
        A known class outside 1-9 or repeated.
    """
    known = [int(k) for k in known]
    if not known or any(k < 1 or k > 9 for k in known) or len(set(known)) != len(known):
        raise ValueError(f"--known must be distinct digits in 1-9, got {known}")
    r = (recipe if isinstance(recipe, _configs.BenchmarkConfig)
         else _configs.noisy_mnist_benchmark(recipe, quick))
    if r.pretrained:
        return _run_noisy_mnist_pretrained(r, known, seeds, data_dir, out_dir, progress,
                                           ablations, report, distributed, log)
    ex = start(precision, distributed)  # start the other processes (if any) first
    if ex.rank != 0:
        log, progress, out_dir = (lambda *a, **k: None), False, None  # rank 0 reports
    t_start = time.perf_counter()
    source = _protocols.noisy_mnist_source(r, "test", data_dir)
    labels = (source.digits != _protocols.NORMAL_DIGIT).astype(np.int64)
    log(f"recipe {r.name}: {len(labels)} test images ({labels.sum()} anomalous), known "
        f"classes {known}, seeds {list(seeds)}; training precision {ex.train_precision} on "
        f"{ex.device}, scoring precision {ex.score_precision}")
    other = "32" if ex.score_precision == "bf16" else "bf16"
    variants = {**ABLATIONS, _PRECISION_ABLATION[other]: {"precision": other}}
    roc_scores: dict[int, dict[str, np.ndarray]] = {}
    reported: list[ProtocolResult] = []

    def on_protocol(res: ProtocolResult) -> None:
        k = res.protocol.meta["known_class"]
        if res.seed == seeds[0]:
            roc_scores[k] = res.scores
            if report is not None and ex.rank == 0 and k == known[0]:
                reported.append(res)
            if out_dir is not None and figures and k == known[0]:
                _figures_for_model(Path(out_dir), res, source.digits)

    out = run_benchmark(lambda seed: _protocols.noisy_mnist_data(seed, r, known, source), r,
                        seeds, progress, log, on_protocol, ex, variants if ablations else None)
    rows, table = _tables_and_files(out, variants, ablations, r, seeds, t_start, out_dir,
                                    labels if figures else None, roc_scores, log)
    if reported and report is not None:
        _noisy_mnist_report(report, reported[0], r, source.digits, table, ex.score_precision)
        log(f"wrote {report}")
    return rows


def _tables_and_files(out: list[dict], variants: dict[str, dict], ablations: bool,
                      r: _configs.BenchmarkConfig, seeds: Sequence[int], t_start: float,
                      out_dir: str | Path | None, labels: np.ndarray | None,
                      roc_scores: dict[int, dict[str, np.ndarray]], log: Any
                      ) -> tuple[list[dict], str]:
    """The runner's rows as Table I (and the ablations' table), logged and, with
    ``out_dir``, written with the figures' ROC curves (``labels`` None: no figures).
    Returns (Table I's rows, its markdown)."""
    rows = [{k: q[k] for k in _NOISY_MNIST_KEYS} for q in out if q["method"] in METHODS]
    ablation_rows = [{k: q[k] for k in _NOISY_MNIST_KEYS} for q in out
                     if q["method"] == "spade" or q["method"] in variants] if ablations else []
    wall = time.perf_counter() - t_start
    table = format_table(rows)
    log("\n" + table)
    if ablations:
        log(format_table(ablation_rows, methods=("spade", *variants), paper=None,
                         labels=ABLATION_LABELS))
    log(f"wall time {wall:.0f} s")
    if out_dir is not None:
        _write_noisy_mnist(Path(out_dir), rows, ablation_rows, table, r, seeds, wall,
                           labels, roc_scores)
        log(f"wrote {Path(out_dir) / 'results.csv'}, {Path(out_dir) / 'table.md'}"
            + (", ablations.csv" if ablations else "")
            + (" and figures" if labels is not None else ""))
    return rows, table


def _run_noisy_mnist_pretrained(
    r: _configs.BenchmarkConfig, known: Sequence[int], seeds: Sequence[int], data_dir: Any,
    out_dir: Any, progress: bool, ablations: bool, report: Any, distributed: Any, log: Any,
) -> list[dict]:
    """:func:`run_noisy_mnist` for a "pretrained" recipe: the one-class pretrained baseline,
    the pretrained CNN-based score and SPADE's margin fusion
    (:func:`~spadecam.bench.pretrained.run_pretrained_benchmark`), fp32 on the CPU in one process;
    no VAE, so no figures, ablations or report."""
    _configs.refuse_vae_options(r, ablations=ablations, report=report is not None,
                        distributed=bool(distributed))
    t_start = time.perf_counter()
    source = _protocols.noisy_mnist_source(r, "test", data_dir)
    labels = (source.digits != _protocols.NORMAL_DIGIT).astype(np.int64)
    log(f"recipe {r.name}: {len(labels)} test images ({labels.sum()} anomalous), known "
        f"classes {list(known)}, seeds {list(seeds)}; fp32 on the CPU")
    out = run_pretrained_benchmark(
        lambda seed: _protocols.noisy_mnist_data(seed, r, known, source), r, seeds, progress,
        log)
    rows = [{**{k: q.get(k) for k in _NOISY_MNIST_KEYS}, "train_precision": "32-true",
             "score_precision": "32"} for q in out]
    wall = time.perf_counter() - t_start
    table = format_table(rows, methods=PRETRAINED_METHODS, labels=PRETRAINED_LABELS)
    log("\n" + table + f"\nwall time {wall:.0f} s")
    if out_dir is not None:
        _write_noisy_mnist(Path(out_dir), rows, [], table, r, seeds, wall, None, {})
        log(f"wrote {Path(out_dir) / 'results.csv'}, {Path(out_dir) / 'table.md'}")
    return rows


def _noisy_mnist_report(path: str | Path, res: ProtocolResult, r: _configs.BenchmarkConfig,
                        digits: np.ndarray, table: str, precision: str) -> None:
    """The HTML report of SPADE for one known class (:func:`spadecam.report.write_detector_report`).

    The reproduction fits no threshold, so the report's is the F1-max point of the test set
    itself, said so in the report: it shows which images a threshold would get wrong.
    """
    from spadecam.metrics import f1_max
    from spadecam.report import write_detector_report

    k = res.protocol.meta["known_class"]
    det = res.detector
    if det is None:
        raise ValueError(f"protocol {res.protocol.name} scores no SPADE: nothing to report")
    y, s = res.data.y_test, res.scores["spade"]
    threshold = f1_max(y, s)[1]
    kinds = [f"digit {d} ({'known' if d == k else 'unknown'})" for d in digits]
    settings = {"recipe": r.name, "known anomaly": f"digit {k}", "seed": res.seed,
                "scoring precision": precision, **detector_params(r),
                "image size": int(res.data.x_test.shape[-1])}
    write_detector_report(
        path, det, names=[f"test image {i}: digit {d}" for i, d in enumerate(digits)],
        labels=y, scores=s, threshold=threshold,
        threshold_note="the F1-max point of this test set (a reproduction fits no threshold; "
        "this one shows which images a threshold would get wrong)",
        read=lambda idx: [res.data.x_test[i].numpy() for i in idx], kinds=kinds,
        settings=settings, tables={"Results of this run (AUROC)": table},
        title=f"spadecam reproduction: Noisy-MNIST, known digit {k}",
        subtitle=f"SPADE, recipe {r.name}, seed {res.seed}; digit 0 is normal, every other "
        "digit anomalous")


def _write_noisy_mnist(out: Path, rows: list[dict], ablation_rows: list[dict], table: str,
                       r: _configs.BenchmarkConfig, seeds: Sequence[int], wall: float,
                       labels: np.ndarray | None, roc_scores: dict) -> None:
    if (out / "results.csv").exists():
        warn(f"--out {out}: replacing the results and figures of an earlier run")
    write_results_csv(out / "results.csv", rows)
    atomic_write_text(out / "table.md", (
        f"# Noisy-MNIST AUROC, recipe `{r.name}`, seeds {list(seeds)}\n\n{table}\n"
        f"Wall time: {wall:.0f} s on {torch.get_num_threads()} threads.\n"))
    if ablation_rows:
        write_results_csv(out / "ablations.csv", ablation_rows)
    if labels is not None:
        plot_roc_curves(labels, roc_scores, out / "roc_curves.png", METHOD_LABELS)
