"""The pretrained recipe's input side on ELPV's VALIDATION split: 224 px (the default) or 448.

The field's open-set detectors read 448-px cells (ImageNet ResNet-18); the pretrained recipe
reads 224. Runs :func:`spadecam.bench.elpv.run_elpv` on the validation split (our protocols,
never the test split or the DRA anomalies) with the pretrained recipe at each side, and
prints the mean AUROC over the seeds of the one-class pretrained row, the pretrained
CNN-based row and SPADE's margin fusion in each column, with the wall time. The rule, fixed
before running: 448 replaces 224 only if SPADE's mean over the five columns (unseen_type
mono / poly / all, few_labels 10 / 50) is higher by more than 0.005 and no column is lower
by more than 0.01.

Usage: python benchmarks/validate_pretrained_size.py [--sizes 224,448] [--seeds 0]
The log is kept in benchmarks/results/elpv_validation_pretrained_size.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np

from spadecam.bench.configs import elpv_benchmark
from spadecam.bench.elpv import run_elpv
from spadecam.bench.pretrained import PRETRAINED_METHODS

COLUMNS = (("unseen_type", "mono"), ("unseen_type", "poly"), ("unseen_type", "all"),
           ("few_labels_10", "all"), ("few_labels_50", "all"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}; seeds {seeds}", flush=True)
    head = " | ".join(f"{p} / {s}" for p, s in COLUMNS)
    for size in (int(s) for s in args.sizes.split(",")):
        r = dataclasses.replace(elpv_benchmark("pretrained"), image_size=size)
        t0 = time.perf_counter()
        rows = run_elpv(seeds, r, eval_split="val", protocols="ours", progress=False,
                        log=lambda *a: None)
        wall = time.perf_counter() - t0
        print(f"\n{size} px ({wall:.0f} s)\nmethod | {head} | mean", flush=True)
        for m in PRETRAINED_METHODS:
            cells = [np.mean([q["auroc"] for q in rows if q["method"] == m
                              and (q["protocol"], q["subset"]) == c]) for c in COLUMNS]
            print(f"{m} | " + " | ".join(f"{v:.3f}" for v in cells)
                  + f" | {np.mean(cells):.3f}", flush=True)


if __name__ == "__main__":
    main()
