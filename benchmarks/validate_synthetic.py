"""Issue 19, "few labels that still count": does the classifier learn from synthetic anomalies?

    python benchmarks/validate_synthetic.py [--seeds 0] [--ratios 0,0.25,1]

Runs the ELPV benchmark on its VALIDATION split (our protocols: unseen_type, few_labels_10 /
_50; never the test split, never the DRA test anomalies) with the ELPV recipe and
``synthetic_anomalies`` = each ratio (synthetic CutPaste anomalies per normal training image,
added to the classifier's known class), and prints the AUROC of each method per column.
Results are appended to benchmarks/results/elpv_validation_synthetic.csv.
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

OUT = Path(__file__).resolve().parent / "results" / "elpv_validation_synthetic.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ratios", default="0,0.25,1")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    base = get_elpv_recipe("spadecam")
    rows = []
    for ratio in (float(v) for v in a.ratios.split(",")):
        r = dataclasses.replace(base, synthetic_anomalies=ratio)
        t0 = time.perf_counter()
        got = run_elpv(seeds, r, eval_split="val", protocols="ours", progress=False,
                       ablations=True, log=lambda *x: None)
        wall = time.perf_counter() - t0
        for q in got:
            rows.append({"synthetic_anomalies": ratio, **{k: q[k] for k in (
                "method", "protocol", "subset", "seed", "auroc", "aupr")}})
        print(f"synthetic_anomalies {ratio:g} ({wall:.0f} s)")
        for m in ("vae", "cnn", "spade", "spade_paper_roi"):
            cells = []
            for p, s in ELPV_COLUMNS:
                v = [q["auroc"] for q in got if (q["method"], q["protocol"], q["subset"]) ==
                     (m, p, s)]
                cells.append(f"{sum(v) / len(v):.3f}" if v else "  -  ")
            print(f"  {m:16s} " + " ".join(cells))
    out = Path(a.out)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) and k != "synthetic_anomalies"
                        else v for k, v in row.items()})


if __name__ == "__main__":
    main()
