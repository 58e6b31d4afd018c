"""The pretrained recipe on Noisy-MNIST's VALIDATION split: does it beat the from-scratch one?

Trained on MNIST training images [:50000] (the demo's data: every training 0, 2,000 images of
the known digit), scored on 2,000 noisy images from [50000:]; the MNIST test set is not read.
The pretrained recipe as ELPV runs it (:func:`spadecam.bench.pretrained.run_pretrained_benchmark`:
the one-class patch error, the linear head on frozen ImageNet EfficientNet-Lite0 features, the
margin fusion), at the canvas's own 84 px. Compare with the from-scratch demo recipe on the
same split (``benchmarks/results/demo_validation_*.csv``: SPADE 0.917 / 0.967 for known 3 / 9).

Usage: python benchmarks/validate_pretrained_mnist.py [--known 3,9] [--seeds 0]
Prints one line per method and known digit; the log is kept in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from spadecam.bench.configs import elpv_benchmark, noisy_mnist_benchmark
from spadecam.bench.pretrained import run_pretrained_benchmark
from spadecam.bench.protocols import noisy_mnist_val_data
from spadecam.data.mnist import load_mnist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--known", default="3,9")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    known = [int(k) for k in args.known.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    demo = noisy_mnist_benchmark("spadecam", quick=True)  # the data slices make demo trains on
    pretrained = dataclasses.replace(elpv_benchmark("pretrained"), image_size=None)
    mnist = load_mnist("train")
    t0 = time.perf_counter()
    rows = run_pretrained_benchmark(
        lambda seed: noisy_mnist_val_data(seed, demo, known, mnist=mnist), pretrained, seeds,
        progress=False, log=print)
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    for m in ("patchcore", "cnn_pretrained", "spade_pretrained"):
        cells = []
        for k in known:
            v = [q["auroc"] for q in rows if q["method"] == m and q["protocol"] == f"known_{k}"]
            cells.append(f"known {k} {sum(v) / len(v):.3f}")
        print(f"{m:18s} " + ", ".join(cells))


if __name__ == "__main__":
    main()
