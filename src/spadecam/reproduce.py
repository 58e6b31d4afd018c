"""The paper's Noisy-MNIST Table I and the ELPV benchmark, run on the one runner.

Noisy-MNIST (Narita et al., arXiv 1810.02607, III-B): digit 0 is normal; one of 1/3/5/7/9
is the known anomaly; every other digit is an unknown anomaly. The VAE is trained once per
seed on training-set 0s; a classifier is trained per known class on training 0s + that
class. The MNIST test set is made noisy with a fixed seed (:data:`TEST_SEED`, the same for
every model seed) and every test image is scored; AUROC treats every non-zero digit as
anomalous. ELPV: :func:`spadecam.protocols.elpv_data`.

Both are a data description (:mod:`spadecam.protocols`) and a recipe
(:mod:`spadecam.recipes`) given to :func:`spadecam.benchmark.run_benchmark`; this module
adds their tables, ablation rows and figures and writes them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam import protocols as _protocols
from spadecam import recipes as _recipes
from spadecam._progress import warn
from spadecam.benchmark import (
    COLUMNS,
    ProtocolResult,
    detector_params,
    format_columns_table,
    run_benchmark,
    run_pretrained_benchmark,
    start,
)
from spadecam.cam import grad_cam
from spadecam.error import reconstruction_error
from spadecam.evaluation import (
    METHOD_LABELS,
    METHODS,
    atomic_write_text,
    format_table,
    write_results_csv,
    write_rows_csv,
)
from spadecam.figures import plot_gallery, plot_roc_curves, plot_roi_rows, plot_samples
from spadecam.inputs import to_float_images
from spadecam.roi import apply_branch, normalise_roi, roi_weights, upsample_roi

__all__ = ["ABLATIONS", "ELPV_ABLATIONS", "run_elpv", "run_noisy_mnist"]

#: Names that moved in 0.2 (one release with a DeprecationWarning): recipes to
#: spadecam.recipes, the data descriptions to spadecam.protocols.
_MOVED = {
    **{n: _recipes for n in ("Recipe", "RECIPES", "ELPV_RECIPES", "get_recipe")},
    **{n: _protocols for n in ("NORMAL_DIGIT", "TEST_SEED", "ELPV_SPLIT", "ELPV_COLUMNS",
                               "MNIST_VAL_START", "VAL_SEED", "elpv_data", "elpv_dir",
                               "noisy_mnist_val_data")},
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        mod = _MOVED[name]
        warnings.warn(f"spadecam.reproduce.{name} moved to {mod.__name__}.{name}; the old "
                      "name goes in the next release", DeprecationWarning, stacklevel=2)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    r, cnn, u8, u_hat = res.recipe, res.cnn, res.data.x_test, res.u_hat
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
    recipe: str | _recipes.Recipe = "spadecam",
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
    recipe : str or Recipe
        "spadecam" (default: Noisy-MNIST keeps the from-scratch recipe, which won on its
        validation split), "paper", "pretrained" (the one-class pretrained baseline, the
        pretrained CNN-based score and SPADE's margin fusion; no figures, ablations, report
        or distributed training) or a :class:`~spadecam.recipes.Recipe`.
    quick : bool
        Smaller slices and epochs (see :func:`spadecam.recipes.get_recipe`).
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
    r = recipe if isinstance(recipe, _recipes.Recipe) else _recipes.get_recipe(recipe, quick)
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
                           labels if figures else None, roc_scores)
        log(f"wrote {Path(out_dir) / 'results.csv'}, {Path(out_dir) / 'table.md'}"
            + (", ablations.csv" if ablations else "") + (" and figures" if figures else ""))
    if reported and report is not None:
        _noisy_mnist_report(report, reported[0], r, source.digits, table, ex.score_precision)
        log(f"wrote {report}")
    return rows


def _refuse_vae_options(r: _recipes.Recipe, **given: bool) -> None:
    """ValueError naming the options given (True) that only the recipes with a VAE take."""
    bad = [k for k, v in given.items() if v]
    if bad:
        raise ValueError(f"recipe {r.name}: {', '.join(bad)} are for the recipes with a VAE "
                         "(spadecam, paper)")


def _run_noisy_mnist_pretrained(
    r: _recipes.Recipe, known: Sequence[int], seeds: Sequence[int], data_dir: Any,
    out_dir: Any, progress: bool, ablations: bool, report: Any, distributed: Any, log: Any,
) -> list[dict]:
    """:func:`run_noisy_mnist` for a "pretrained" recipe: the one-class pretrained baseline,
    the pretrained CNN-based score and SPADE's margin fusion
    (:func:`~spadecam.benchmark.run_pretrained_benchmark`), fp32 on the CPU in one process;
    no VAE, so no figures, ablations or report."""
    _refuse_vae_options(r, ablations=ablations, report=report is not None,
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


def _noisy_mnist_report(path: str | Path, res: ProtocolResult, r: _recipes.Recipe,
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
                       r: _recipes.Recipe, seeds: Sequence[int], wall: float,
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


# --------------------------------------------------------------------------- ELPV

ELPV_METHODS = ("vae", "cnn", "naive_spade", "spade", "cnn_all_labels")
#: The rows of a "pretrained" recipe's run (:func:`spadecam.benchmark.run_pretrained_benchmark`).
PRETRAINED_METHODS = ("patchcore", "one_class_pretrained", "cnn_pretrained", "spade_pretrained")
#: SPADE variants scored on the same models as ablation rows of the ELPV table.
ELPV_ABLATIONS: dict[str, dict] = {
    "spade_paper_roi": {"classifier_weight": 0.0, "roi_power": 1.0, "knn_power": 0.0},
    "spade_no_knn": {"knn_power": 0.0},
}
ELPV_LABELS = {"cnn_all_labels": "CNN, all defective cells labelled (reference)",
               "spade_paper_roi": "SPADE without the classifier weight and the feature bank "
                                  "(paper's score)",
               "spade_no_knn": "SPADE without the feature bank",
               "patchcore": "Patch kNN, pretrained, no labels (PatchCore-style)",
               "one_class_pretrained": "SPADE's one-class term, pretrained, no labels (patch "
                                       "kNN + image kNN)",
               "cnn_pretrained": "CNN-based, pretrained (linear head on ImageNet features)",
               "spade_pretrained": "SPADE, pretrained (margin fusion)"}
#: Table labels of the "pretrained" recipe's rows (ELPV and Noisy-MNIST).
PRETRAINED_LABELS = {m: ELPV_LABELS[m] for m in PRETRAINED_METHODS}
#: Which ELPV protocol sets ``run_elpv`` runs: ours (unseen_type, few_labels) and the field's.
ELPV_PROTOCOL_SETS = ("all", "ours", "dra")
#: Published image AUROC on ELPV under the DRA protocol (mean of 3 runs; ImageNet-pretrained
#: ResNet-18 at 448 px): KDAD, DevNet, DRA (Ding et al., CVPR 2022, Tables 1-2), AHL (CVPR
#: 2024). Keys: column -> figure; "hard_10_mean" / "hard_1_mean" where only the mean over the
#: two seen classes is published.
DRA_PUBLISHED: dict[str, dict[str, float]] = {
    "KDAD (one-class)": {"dra_general_10": 0.744, "dra_general_1": 0.744, "hard_1_mean": 0.737},
    "DevNet": {"dra_general_10": 0.846, "dra_general_1": 0.514, "hard_10_mean": 0.702,
               "hard_1_mean": 0.648},
    "DRA": {"dra_general_10": 0.845, "dra_general_1": 0.675, "dra_hard_mono_10": 0.731,
            "dra_hard_poly_10": 0.800, "hard_1_mean": 0.703},
    "AHL": {"dra_general_10": 0.850, "dra_general_1": 0.828, "hard_10_mean": 0.788,
            "hard_1_mean": 0.740},
}


def run_elpv(
    seeds: Sequence[int] = (0,),
    recipe: str | _recipes.Recipe = "pretrained",
    quick: bool = False,
    eval_split: str = "test",
    out_dir: str | Path | None = None,
    progress: bool = True,
    log=print,
    root: str | Path | None = None,
    split_file: str | Path | None = None,
    ablations: bool | None = None,
    precision: str | None = None,
    distributed: dict | None = None,
    protocols: str = "all",
) -> list[dict]:
    """Run the ELPV benchmark (:func:`spadecam.protocols.elpv_data`, and the field's protocol,
    :func:`spadecam.protocols.elpv_dra_data`); write its results.

    Parameters
    ----------
    seeds : model seeds (also the draw of the few_labels known cells)
    recipe : "pretrained" (default, as for ``SPADE()``), "spadecam", "paper" or a
        :class:`~spadecam.recipes.Recipe` with ``image_size`` set
    quick : bool, shorter training at 32 px (a smoke run, not the table; "pretrained" keeps
        224 px and has no training steps to shorten)
    eval_split : "test" (the table) or "val" (choosing settings)
    out_dir : path, optional
        ``results.csv`` (method,protocol,subset,seed,auroc,aupr,recipe) and ``table.md``,
        written atomically.
    root, split_file : the data folder and split file (defaults: the elpv-dataset package
        and src/spadecam/data/elpv_split.csv); tests pass small generated images.
    ablations : bool, optional
        Also score SPADE without each of our modifications (:data:`ELPV_ABLATIONS`). None
        (default): True for the recipes with a VAE, False for "pretrained" (which has no
        VAE to ablate and refuses True); ``spadecam reproduce elpv`` runs them with
        ``--ablations``.
    precision : str, optional
        As in :func:`run_noisy_mnist`; None (default): the recipe's training precision (fp32)
        and fp32 scoring, as the committed ELPV tables were measured.
    distributed : dict, optional
        Fabric settings, as in :func:`run_noisy_mnist` (only rank 0 writes).
    protocols : {"all", "ours", "dra"}
        Our protocols (unseen_type, few_labels, the supervised reference), the field's (DRA:
        general and hard settings, 1 and 10 labelled anomalies; their own normal split, so
        their own VAE per seed), or both (default). ``eval_split="val"`` runs ours only (the
        DRA protocol has no validation split).

    Returns
    -------
    list of dict, one per (method, protocol, subset, seed).

    Raises
    ------
    ModuleNotFoundError
        elpv-dataset is not installed (and no ``root``): install the benchmarks extra.
    ValueError
        An unknown recipe or one without ``image_size``.
    """
    r = _recipes.get_elpv_recipe(recipe, quick)
    if ablations is None:
        ablations = not r.pretrained
    if r.pretrained:
        _refuse_vae_options(r, ablations=bool(ablations), distributed=bool(distributed))
    if protocols not in ELPV_PROTOCOL_SETS:
        raise ValueError(f"protocols must be one of {ELPV_PROTOCOL_SETS}, got {protocols!r}")
    if root is None:
        _protocols.elpv_dir()  # fail early, naming the extra, before any work
    ex = start(precision, distributed)
    if ex.rank != 0:
        log, progress, out_dir = (lambda *a, **k: None), False, None
    t0 = time.perf_counter()
    cache: dict = {}
    size = int(r.image_size or 0)
    variants = ELPV_ABLATIONS if ablations else None
    rows: list[dict] = []
    def run(load: Any) -> list[dict]:
        if r.pretrained:
            return run_pretrained_benchmark(load, r, seeds, progress, log)
        return run_benchmark(load, r, seeds, progress, log, execution=ex, ablations=variants)

    if protocols in ("all", "ours"):
        rows += run(lambda seed: _protocols.elpv_data(seed, size, eval_split, split_file, root,
                                                      cache))
    dra = protocols in ("all", "dra") and eval_split == "test"
    if dra:
        rows += run(lambda seed: _protocols.elpv_dra_data(seed, size, root, cache))
    wall = time.perf_counter() - t0
    methods = (PRETRAINED_METHODS if r.pretrained
               else ELPV_METHODS + (tuple(ELPV_ABLATIONS) if ablations else ()))
    table = ""
    if protocols in ("all", "ours"):
        table = format_columns_table(rows, methods, _protocols.ELPV_COLUMNS, labels=ELPV_LABELS)
    if dra:
        table += ("\n" if table else "") + dra_table(rows, methods)
    log("\n" + table + f"\nwall time {wall:.0f} s")
    if out_dir is not None:
        out = Path(out_dir)
        write_rows_csv(out / "results.csv", rows, COLUMNS)
        atomic_write_text(out / "table.md", (
            f"# ELPV AUROC ({eval_split} split), recipe `{r.name}`, {r.image_size} px, seeds "
            f"{list(seeds)}\n\n{table}\nWall time: {wall:.0f} s on "
            f"{torch.get_num_threads()} threads.\n"))
        log(f"wrote {out / 'results.csv'} and {out / 'table.md'}")
    return rows


def dra_table(rows: Sequence[dict], methods: Sequence[str] = ELPV_METHODS) -> str:
    """Markdown table of the DRA protocol: ours (mean ± sd over seeds) beside the published.

    Columns: general (10, 1 labelled anomalies), hard (seen mono, seen poly, their mean) for 10
    and 1; published rows from :data:`DRA_PUBLISHED` ("–" where a paper gives no figure).
    """
    from spadecam.evaluation import summarise

    cols = [("dra_general_10", "general, 10"), ("dra_general_1", "general, 1"),
            ("dra_hard_mono_10", "hard 10, seen mono"), ("dra_hard_poly_10", "hard 10, seen poly"),
            ("hard_10_mean", "hard 10, mean"), ("dra_hard_mono_1", "hard 1, seen mono"),
            ("dra_hard_poly_1", "hard 1, seen poly"), ("hard_1_mean", "hard 1, mean")]
    per_seed = summarise([q for q in rows if q["protocol"].startswith("dra_")],
                         by=("method", "protocol", "seed"))
    lines = ["| method | " + " | ".join(h for _, h in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    labels = {**METHOD_LABELS, **ELPV_LABELS}
    for m in methods:
        cells = []
        for key, _ in cols:
            if key.endswith("_mean"):
                n = key.split("_")[1]
                pair = (f"dra_hard_mono_{n}", f"dra_hard_poly_{n}")
                seeds = sorted({s for (mm, p, s) in per_seed if mm == m and p in pair})
                vals: list[float] = [float(np.mean([per_seed[(m, p, s)][0] for p in pair]))
                                     for s in seeds if all((m, p, s) in per_seed for p in pair)]
            else:
                vals = [v[0] for (mm, p, _s), v in per_seed.items() if mm == m and p == key]
            cells.append("–" if not vals else f"{np.mean(vals):.3f}" if len(vals) == 1
                         else f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}")
        if any(c != "–" for c in cells):
            lines.append(f"| {labels.get(m, m)} (ours) | " + " | ".join(cells) + " |")
    for name, figures in DRA_PUBLISHED.items():
        lines.append(f"| {name} (published) | " + " | ".join(
            f"{figures[k]:.3f}" if k in figures else "–" for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"

