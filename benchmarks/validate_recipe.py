"""Measure one setting of the ELPV recipe on the ELPV VALIDATION split (issue 19).

    python benchmarks/validate_recipe.py synthetic_anomalies=0,0.25,1 [--seeds 0]
    python benchmarks/validate_recipe.py image_size=48,64,96
    python benchmarks/validate_recipe.py vae_train.steps=300,1500 --base vae_train.patience=1000

FIELD may name a field of the recipe's TrainConfig (``vae_train.steps``) or a SPADE parameter
(``spade_params.classifier_weight``); ``--base FIELD=V`` (repeatable) fixes a setting for
every value.

For each value of one :class:`spadecam.recipes.Recipe` field, runs the ELPV benchmark on its
validation split (our protocols: unseen_type, few_labels_10 / _50; never the test split, never
the DRA test anomalies) and prints the AUROC of each method per column
(:data:`spadecam.protocols.ELPV_COLUMNS`: unseen_type mono, poly, all, uncertain, few_labels_10
all, few_labels_50 all). Rows are appended to
benchmarks/results/elpv_validation_<field>.csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from spadecam.evaluation import write_rows_csv
from spadecam.protocols import ELPV_COLUMNS
from spadecam.recipes import Recipe, get_elpv_recipe
from spadecam.reproduce import run_elpv

RESULTS = Path(__file__).resolve().parent / "results"


def _get(recipe: Recipe, field: str) -> Any:
    head, _, tail = field.partition(".")
    obj = getattr(recipe, head)
    return (obj.get(tail) if isinstance(obj, dict) else getattr(obj, tail)) if tail else obj


def _with(recipe: Recipe, field: str, text: str) -> Recipe:
    """``recipe`` with ``field`` (``name``, ``train.name`` or ``spade_params.name``) = text."""
    head, _, tail = field.partition(".")
    old = getattr(recipe, head)
    if isinstance(old, dict):
        value: Any = dict(old, **{tail: float(text)})
    elif tail:
        cur = getattr(old, tail)
        kind = type(cur) if cur is not None else int
        value = dataclasses.replace(old, **{tail: kind(text)})
    else:
        value = type(old)(text)
    return dataclasses.replace(recipe, **{head: value})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setting", help="FIELD=V1,V2,... (a Recipe field and its values)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--base", action="append", default=[], metavar="FIELD=V")
    a = ap.parse_args()
    field, _, values = a.setting.partition("=")
    base = get_elpv_recipe("spadecam")
    for fixed in a.base:
        f, _, v = fixed.partition("=")
        base = _with(base, f, v)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for text in values.split(","):
        t0 = time.perf_counter()
        recipe = _with(base, field, text)
        value = _get(recipe, field)
        got = run_elpv(seeds, recipe, eval_split="val",
                       protocols="ours", progress=False, ablations=True, log=lambda *x: None)
        print(f"{field} {value} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for m in ("vae", "cnn", "spade", "spade_paper_roi"):
            cells = []
            for p, s in ELPV_COLUMNS:
                v = [q["auroc"] for q in got if (q["method"], q["protocol"], q["subset"]) ==
                     (m, p, s)]
                cells.append(f"{sum(v) / len(v):.3f}")
            print(f"  {m:16s} " + " ".join(cells), flush=True)
        keep = ("method", "protocol", "subset", "seed", "auroc", "aupr")
        rows += [{field: value, "base": " ".join(a.base), **{k: q[k] for k in keep}}
                 for q in got]
    out = RESULTS / f"elpv_validation_{field.replace('.', '_')}.csv"
    write_rows_csv(out, rows, list(rows[0]), digits=4, append=True, fixed=("auroc", "aupr"))


if __name__ == "__main__":
    main()
