"""Measure one setting of the ELPV recipe on the ELPV VALIDATION split (issue 19).

    python benchmarks/validate_recipe.py synthetic_anomalies=0,0.25,1 [--seeds 0]
    python benchmarks/validate_recipe.py image_size=48,64,96

For each value of one :class:`spadecam.recipes.Recipe` field, runs the ELPV benchmark on its
validation split (our protocols: unseen_type, few_labels_10 / _50; never the test split, never
the DRA test anomalies) and prints the AUROC of each method per column
(:data:`spadecam.protocols.ELPV_COLUMNS`: unseen_type mono, poly, all, uncertain, few_labels_10
all, few_labels_50 all). Rows are appended to
benchmarks/results/elpv_validation_<field>.csv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

from spadecam.protocols import ELPV_COLUMNS
from spadecam.recipes import get_elpv_recipe
from spadecam.reproduce import run_elpv

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("setting", help="FIELD=V1,V2,... (a Recipe field and its values)")
    ap.add_argument("--seeds", default="0")
    a = ap.parse_args()
    field, _, values = a.setting.partition("=")
    base = get_elpv_recipe("spadecam")
    kind = type(getattr(base, field))
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for value in (kind(v) for v in values.split(",")):
        t0 = time.perf_counter()
        got = run_elpv(seeds, dataclasses.replace(base, **{field: value}), eval_split="val",
                       protocols="ours", progress=False, ablations=True, log=lambda *x: None)
        print(f"{field} {value} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for m in ("vae", "cnn", "spade", "spade_paper_roi"):
            cells = []
            for p, s in ELPV_COLUMNS:
                v = [q["auroc"] for q in got if (q["method"], q["protocol"], q["subset"]) ==
                     (m, p, s)]
                cells.append(f"{sum(v) / len(v):.3f}")
            print(f"  {m:16s} " + " ".join(cells), flush=True)
        rows += [{field: value, **{k: q[k] for k in ("method", "protocol", "subset", "seed",
                                                     "auroc", "aupr")}} for q in got]
    out = RESULTS / f"elpv_validation_{field}.csv"
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: f"{v:.4f}" if k in ("auroc", "aupr") else v for k, v in row.items()})


if __name__ == "__main__":
    main()
