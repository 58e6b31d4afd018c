"""The shipped defaults on an image set nobody tuned them on: synthetic textures.

Grey 64 x 64 textures (4-px blocks, sd 25 grey levels, pixel noise sd 6, as the own-images
walk-through draws them), seeded. Anomalies, with contrasts fixed before any run: the KNOWN
kind is a faint scratch (a 2-px diagonal line, 12-20 px long, +40 grey levels over the
texture); two UNKNOWN kinds never shown in training: a faint dark spot (radius 4-6 px, -40)
and a patch of finer texture (a 16 x 16 square whose blocks are 2 px instead of 4 px, same
mean and spread). Training: 400 normal and 60 scratched images; test: 300 normal, 100 of each
anomaly kind. Per seed (data and models), AUROC of each detector on the known kind, on each
unknown kind and on all anomalies, every detector with its defaults:

* ``SPADE()`` (the default, "pretrained" recipe) and its error term alone (``evidence_weight=0``:
  the one-class pretrained score, no label used), ``CNNDetector(recipe="pretrained")``;
* ``SPADE(recipe="spadecam")`` (from scratch), ``VAEDetector(recipe="spadecam")``,
  ``CNNDetector()`` (from scratch).

Usage: python benchmarks/untuned_textures.py [--seeds 0,1,2] [--csv PATH]
Prints one line per detector and seed, then the means; the committed log and CSV are in
benchmarks/results/untuned_textures.*.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time

import numpy as np

SIZE = 64
N_TRAIN, N_KNOWN, N_TEST = 400, 60, 300
N_EACH = 100
CONTRAST = 40.0


def texture(rng: np.random.Generator, cell: int = 4) -> np.ndarray:
    x = np.kron(rng.normal(0, 1, (SIZE // cell, SIZE // cell)), np.ones((cell, cell)))
    return 110 + 25 * x + rng.normal(0, 6, (SIZE, SIZE))


def scratch(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    r, c, n = rng.integers(8, SIZE - 24), rng.integers(8, SIZE - 24), rng.integers(12, 20)
    x = x.copy()
    for i in range(n):
        x[r + i, c + i : c + i + 2] += CONTRAST
    return x


def spot(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r, c, rad = rng.integers(12, SIZE - 12), rng.integers(12, SIZE - 12), rng.integers(4, 7)
    x = x.copy()
    x[(yy - r) ** 2 + (xx - c) ** 2 <= rad ** 2] -= CONTRAST
    return x


def fine_patch(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    r, c = rng.integers(0, SIZE - 16, 2)
    fine = texture(rng, cell=2)
    x = x.copy()
    x[r : r + 16, c : c + 16] = fine[r : r + 16, c : c + 16]
    return x


def u8(xs: list[np.ndarray]) -> np.ndarray:
    return np.clip(np.stack(xs), 0, 255).round().astype(np.uint8)


def make_data(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "normal": u8([texture(rng) for _ in range(N_TRAIN)]),
        "known": u8([scratch(rng, texture(rng)) for _ in range(N_KNOWN)]),
        "test_normal": u8([texture(rng) for _ in range(N_TEST)]),
        "scratch": u8([scratch(rng, texture(rng)) for _ in range(N_EACH)]),
        "spot": u8([spot(rng, texture(rng)) for _ in range(N_EACH)]),
        "fine_patch": u8([fine_patch(rng, texture(rng)) for _ in range(N_EACH)]),
    }


def detectors(seed: int) -> dict:
    from spadecam import SPADE, CNNDetector, VAEDetector
    from spadecam.defaults import default_cnn_train
    from spadecam.training import TrainConfig

    def train(recipe: str) -> TrainConfig:
        t = default_cnn_train(recipe)
        return TrainConfig(steps=t.steps, lr=t.lr, head_only=t.head_only, seed=seed,
                           progress=False)

    quiet = TrainConfig(seed=seed, progress=False)
    return {
        "spade (default: pretrained)": SPADE(cnn_train=train("pretrained")),
        "cnn, pretrained": CNNDetector(recipe="pretrained", cnn_train=train("pretrained")),
        "spade, spadecam (from scratch)": SPADE(recipe="spadecam", vae_train=quiet,
                                                cnn_train=train("spadecam")),
        "vae, spadecam": VAEDetector(recipe="spadecam", vae_train=quiet),
        "cnn, spadecam": CNNDetector(recipe="spadecam", cnn_train=train("spadecam")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    import torch
    from sklearn.metrics import roc_auc_score

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
    kinds = ("scratch", "spot", "fine_patch")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        d = make_data(seed)
        x = np.concatenate([d["normal"], d["known"]])
        y = np.r_[np.zeros(len(d["normal"])), np.ones(len(d["known"]))].astype(int)
        test = np.concatenate([d["test_normal"], *(d[k] for k in kinds)])
        label = np.r_[np.zeros(N_TEST), np.ones(N_EACH * len(kinds))]
        kind = np.r_[np.full(N_TEST, "normal"), np.repeat(kinds, N_EACH)]
        for name, det in detectors(seed).items():
            t0 = time.perf_counter()
            det.fit(x, y)
            scores = {name: det.decision_function(test)}
            if name.startswith("spade (default"):  # its error term alone: no label used
                det.set_params(evidence_weight=0.0)
                scores["one-class pretrained (the default's error term)"] = (
                    det.decision_function(test))
            wall = time.perf_counter() - t0
            for n, s in scores.items():
                row = {"detector": n, "seed": seed, "wall_s": round(wall, 1)}
                for k in kinds:
                    keep = (kind == "normal") | (kind == k)
                    row[k] = roc_auc_score(label[keep], s[keep])
                row["all"] = roc_auc_score(label, s)
                rows.append(row)
                print(f"seed {seed} {n}: known scratch {row['scratch']:.3f}, unknown spot "
                      f"{row['spot']:.3f}, unknown fine patch {row['fine_patch']:.3f}, all "
                      f"{row['all']:.3f} ({wall:.0f} s)", flush=True)
    print("\nmean over seeds | known scratch | unknown spot | unknown fine patch | all")
    for n in dict.fromkeys(r["detector"] for r in rows):
        rs = [r for r in rows if r["detector"] == n]
        cells = " | ".join(f"{np.mean([r[k] for r in rs]):.3f}" for k in (*kinds, "all"))
        print(f"{n} | {cells}")
    if args.csv:
        with open(args.csv + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        os.replace(args.csv + ".tmp", args.csv)


if __name__ == "__main__":
    main()
