"""Issue 19, deliverable 2: which classifier weight makes the known kind count, on VALIDATION.

    python benchmarks/validate_classifier_weight.py [--weights 0,3,10,30] [--seeds 0]

Noisy-MNIST's validation split (MNIST training images [50000:52000], made noisy with VAL_SEED;
models trained on images [:50000]; the MNIST test set is not read) with the full `spadecam`
recipe (30 VAE epochs: the fully trained VAE that an earlier short-budget check lacked), known
digits 3 and 9; SPADE scored with each ``classifier_weight`` on the same models (the runner's
variants). Prints AUROC per (weight, known class) beside the VAE- and CNN-based baselines and
appends the rows to benchmarks/results/noisy_mnist_validation_classifier_weight.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from spadecam.bench.configs import noisy_mnist_benchmark
from spadecam.bench.protocols import noisy_mnist_data, noisy_mnist_source
from spadecam.bench.runner import run_benchmark
from spadecam.bench.tables import write_rows_csv
from spadecam.data import load_mnist

OUT = Path(__file__).resolve().parent / "results" / "noisy_mnist_validation_classifier_weight.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="0,3,10,30")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--known", default="3,9")
    a = ap.parse_args()
    weights = [float(w) for w in a.weights.split(",")]
    known = [int(k) for k in a.known.split(",")]
    r = noisy_mnist_benchmark("spadecam")
    source = noisy_mnist_source(r, "val", mnist=load_mnist("train"))
    t0 = time.perf_counter()
    rows = run_benchmark(lambda seed: noisy_mnist_data(seed, r, known, source), r,
                         [int(s) for s in a.seeds.split(",")], progress=False,
                         ablations={f"spade_w{w:g}": {"classifier_weight": w} for w in weights})
    print(f"wall {time.perf_counter() - t0:.0f} s")
    for q in rows:
        print(f"{q['method']:14s} known {q['known_class']} seed {q['seed']}: {q['auroc']:.4f}")
    write_rows_csv(OUT, rows, ["method", "known_class", "seed", "auroc", "aupr"], digits=4,
                   append=True, fixed=("auroc", "aupr"))


if __name__ == "__main__":
    main()
