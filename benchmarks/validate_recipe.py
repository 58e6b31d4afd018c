"""Measure one setting of a recipe on a VALIDATION split.

    python benchmarks/validate_recipe.py synthetic_anomalies=0,0.25,1 [--seeds 0]
    python benchmarks/validate_recipe.py image_size=48,64,96
    python benchmarks/validate_recipe.py vae_train.steps=300,1500 --base vae_train.patience=1000
    python benchmarks/validate_recipe.py vae_train.epochs=8,10,15 --benchmark demo \
        --base vae_train.lr=0.002
    python benchmarks/validate_recipe.py vae.channels=16/32/32/64 --benchmark demo

``--benchmark elpv`` (default): the ELPV recipe on the ELPV validation split.
``--benchmark demo``: the demo's recipe (``noisy_mnist_benchmark("spadecam", quick=True)``, what
``make demo`` trains) on the Noisy-MNIST validation split (trained on MNIST training images
[:50000], scored on 2,000 noisy images from [50000:]; the MNIST test set is not read), known
classes ``--known`` (default 3,9), with each value's wall time (training dominates it: the
demo's time budget is what this benchmark weighs against the AUROC).

FIELD may name a field of the recipe's TrainConfig (``vae_train.steps``) or a SPADE parameter
(``spade_params.classifier_weight``); ``--base FIELD=V`` (repeatable) fixes a setting for
every value.

For each value of one :class:`spadecam.bench.configs.BenchmarkConfig` field, runs the ELPV benchmark on its
validation split (our protocols: unseen_type, few_labels_10 / _50; never the test split, never
the DRA test anomalies) and prints the AUROC of each method per column
(:data:`spadecam.bench.protocols.ELPV_COLUMNS`: unseen_type mono, poly, all, uncertain, few_labels_10
all, few_labels_50 all). Rows are appended to
benchmarks/results/elpv_validation_<field>.csv (demo: demo_validation_<field>.csv, with
wall_s and the CPU's name).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from profile_training import cpu_kind

from spadecam.bench.configs import BenchmarkConfig, elpv_benchmark, noisy_mnist_benchmark
from spadecam.bench.elpv import run_elpv
from spadecam.bench.protocols import ELPV_COLUMNS, noisy_mnist_val_data
from spadecam.bench.runner import run_benchmark, start
from spadecam.bench.tables import write_rows_csv
from spadecam.data import load_mnist

RESULTS = Path(__file__).resolve().parent / "results"


def _get(recipe: BenchmarkConfig, field: str) -> Any:
    head, _, tail = field.partition(".")
    obj = getattr(recipe, head)
    return (obj.get(tail) if isinstance(obj, dict) else getattr(obj, tail)) if tail else obj


def _with(recipe: BenchmarkConfig, field: str, text: str) -> BenchmarkConfig:
    """``recipe`` with ``field`` (``name``, ``train.name`` or ``spade_params.name``) = text."""
    head, _, tail = field.partition(".")
    old = getattr(recipe, head)
    if isinstance(old, dict):
        value: Any = dict(old, **{tail: float(text)})
    elif tail:
        cur = getattr(old, tail)
        if isinstance(cur, tuple):  # "16/32/32/64": commas separate the values to try
            value = dataclasses.replace(old, **{tail: tuple(int(c) for c in text.split("/"))})
        else:
            kind = type(cur) if cur is not None else int
            value = dataclasses.replace(old, **{tail: kind(text)})
    else:
        value = (type(old) if old is not None else int)(text)
    return dataclasses.replace(recipe, **{head: value})


def _training(recipe: BenchmarkConfig) -> str:
    """Both models' training lengths as run, e.g. "vae 4 epochs x 32 lr 0.002; cnn ..."."""
    parts = []
    for name, t in (("vae", recipe.vae_train), ("cnn", recipe.cnn_train)):
        length = f"{t.epochs} epochs" if t.epochs is not None else f"{t.steps} steps"
        parts.append(f"{name} {length} x {t.batch_size} lr {t.lr:g}")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setting", help="FIELD=V1,V2,... (a BenchmarkConfig field and its values)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--base", action="append", default=[], metavar="FIELD=V")
    ap.add_argument("--benchmark", choices=["elpv", "demo"], default="elpv")
    ap.add_argument("--known", default="3,9", help="demo: known anomaly digits")
    a = ap.parse_args()
    field, _, values = a.setting.partition("=")
    demo = a.benchmark == "demo"
    base = noisy_mnist_benchmark("spadecam", quick=True) if demo else elpv_benchmark("spadecam")
    for fixed in a.base:
        f, _, v = fixed.partition("=")
        base = _with(base, f, v)
    seeds = [int(s) for s in a.seeds.split(",")]
    known = [int(k) for k in a.known.split(",")]
    columns = [(f"known_{k}", "all") for k in known] if demo else list(ELPV_COLUMNS)
    methods = ("vae", "cnn", "naive_spade", "spade") if demo else (
        "vae", "cnn", "spade", "spade_paper_roi")
    mnist = load_mnist("train") if demo else None
    rows = []
    for text in values.split(","):
        t0 = time.perf_counter()
        recipe = _with(base, field, text)
        value = _get(recipe, field)
        if demo:  # as make demo runs it: precision "auto", one process
            got = run_benchmark(
                lambda seed: noisy_mnist_val_data(seed, recipe, known, mnist=mnist),  # noqa: B023
                recipe, seeds, progress=False, log=lambda *x: None, execution=start("auto"))
        else:
            got = run_elpv(seeds, recipe, eval_split="val",
                           protocols="ours", progress=False, ablations=True, log=lambda *x: None)
        wall = time.perf_counter() - t0
        print(f"{field} {value} ({wall:.0f} s)", flush=True)
        for m in methods:
            cells = []
            for p, s in columns:
                v = [q["auroc"] for q in got if (q["method"], q["protocol"], q["subset"]) ==
                     (m, p, s)]
                cells.append(f"{sum(v) / len(v):.3f}")
            print(f"  {m:16s} " + " ".join(cells), flush=True)
        keep = ("method", "protocol", "subset", "seed", "auroc", "aupr")
        timing = {"wall_s": round(wall), "cpu": cpu_kind(), "training": _training(recipe),
                  "train_precision": got[0].get("train_precision")} if demo else {}
        rows += [{field: value, "base": " ".join(a.base), **{k: q[k] for k in keep}, **timing}
                 for q in got]
    name = "demo" if demo else "elpv"
    out = RESULTS / f"{name}_validation_{field.replace('.', '_')}.csv"
    write_rows_csv(out, rows, list(rows[0]), digits=4, append=True, fixed=("auroc", "aupr"))


if __name__ == "__main__":
    main()
