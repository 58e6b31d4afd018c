"""The ELPV benchmark (real solar-cell images) on the one runner: our protocols
(:func:`spadecam.bench.protocols.elpv_data`: an unseen defect type, few labels) and the
field's (DRA/AHL, :func:`spadecam.bench.protocols.elpv_dra_data`), their tables beside the
published figures, and the results files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam._fs import atomic_write_text
from spadecam.bench import configs as _configs
from spadecam.bench import protocols as _protocols
from spadecam.bench.pretrained import PRETRAINED_LABELS, PRETRAINED_METHODS, run_pretrained_benchmark
from spadecam.bench.runner import (
    COLUMNS,
    run_benchmark,
    start,
)
from spadecam.bench.tables import (
    METHOD_LABELS,
    format_columns_table,
    write_rows_csv,
)

__all__ = ["DRA_PUBLISHED", "ELPV_ABLATIONS", "dra_table", "run_elpv"]

ELPV_METHODS = ("vae", "cnn", "naive_spade", "spade", "cnn_all_labels")
#: SPADE variants scored on the same models as ablation rows of the ELPV table.
ELPV_ABLATIONS: dict[str, dict] = {
    "spade_paper_roi": {"classifier_weight": 0.0, "roi_power": 1.0, "knn_power": 0.0},
    "spade_no_knn": {"knn_power": 0.0},
}
ELPV_LABELS = {"cnn_all_labels": "CNN, all defective cells labelled (reference)",
               "spade_paper_roi": "SPADE without the classifier weight and the feature bank "
                                  "(paper's score)",
               "spade_no_knn": "SPADE without the feature bank", **PRETRAINED_LABELS}
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
    recipe: str | _configs.BenchmarkConfig = "pretrained",
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
    """Run the ELPV benchmark (:func:`spadecam.bench.protocols.elpv_data`, and the field's protocol,
    :func:`spadecam.bench.protocols.elpv_dra_data`); write its results.

    Parameters
    ----------
    seeds : model seeds (also the draw of the few_labels known cells)
    recipe : "pretrained" (default, as for ``SPADE()``), "spadecam", "paper" or a
        :class:`~spadecam.bench.configs.BenchmarkConfig` with ``image_size`` set
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
        As in :func:`spadecam.bench.reproduce.run_noisy_mnist`; None (default): the recipe's
        training precision (fp32) and fp32 scoring, as the committed ELPV tables were measured.
    distributed : dict, optional
        Fabric settings, as in :func:`spadecam.bench.reproduce.run_noisy_mnist` (only rank 0 writes).
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
    r = _configs.elpv_benchmark(recipe, quick)
    if ablations is None:
        ablations = not r.pretrained
    if r.pretrained:
        _configs.refuse_vae_options(r, ablations=bool(ablations), distributed=bool(distributed))
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
    from spadecam.bench.tables import summarise

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

