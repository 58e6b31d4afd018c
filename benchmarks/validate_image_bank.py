"""The image-level feature bank on the pretrained backbone, on ELPV's VALIDATION split.

SPADE's from-scratch recipe multiplies its score by the kNN distance of an image's pooled
classifier features to the normal training images' (:mod:`spadecam.knn`). Does the same bank
on the frozen ImageNet EfficientNet-Lite0 (the pooled last block, what the pretrained head
reads) add to the pretrained recipe's score? Seed 0 of our ELPV protocols, validation split
(never the test split or the DRA anomalies), 224 px; per column:

* ``patch``: the one-class patch score (the recipe's error term, max of e);
* ``image_knn``: the image-level bank alone: mean distance to the 5 nearest normal training
  images' pooled features (one-class);
* ``margin``: the recipe's score, z(max e) + 2 max(0, z(l) - 2);
* ``margin_plus_knn``: the same with the error term z(max e) + z(image kNN) over 2 (both in
  units of the held-out normals, the tenth the recipe holds out).

The rule, fixed before running: the image bank joins the default only if ``margin_plus_knn``
beats ``margin`` on the mean of the five columns by more than 0.005 with no column lower by
more than 0.01.

Usage: python benchmarks/validate_image_bank.py [--seed 0]
The log is kept in benchmarks/results/elpv_validation_image_bank.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np
import torch

from spadecam.bench.configs import elpv_benchmark
from spadecam.bench.pretrained import max_feature_errors
from spadecam.bench.protocols import elpv_data
from spadecam.detectors import SPADE
from spadecam.fusion import calibrate, margin_score
from spadecam.metrics import auroc
from spadecam.recipes import RECIPE_DEFAULTS
from spadecam.scoring import cnn_score
from spadecam.threshold import holdout_split
from spadecam.training import build_classifier, fit_linear_head, pooled_last_features

COLUMNS = (("unseen_type", "mono"), ("unseen_type", "poly"), ("unseen_type", "all"),
           ("few_labels_10", "all"), ("few_labels_50", "all"))


def knn_distance(query: torch.Tensor, bank: torch.Tensor, k: int = 5) -> np.ndarray:
    d = torch.cdist(query.double(), bank.double())
    return d.topk(k, dim=1, largest=False).values.mean(dim=1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    seed = args.seed
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}; seed {seed}", flush=True)
    t0 = time.perf_counter()
    r = elpv_benchmark("pretrained")
    p = RECIPE_DEFAULTS["pretrained"]
    data = elpv_data(seed, r.image_size, "val")
    hold = holdout_split(torch.zeros(len(data.x_normal), dtype=torch.long), 0.1, seed)
    normal, held = data.x_normal[~hold], data.x_normal[hold]
    train = dataclasses.replace(r.cnn_train, seed=seed, progress=False)
    det = SPADE(cnn_train=train, batch_size=64)
    bank = det.build_patch_bank(normal)
    e_test, e_held = max_feature_errors(bank, data.x_test), max_feature_errors(bank, held)
    net = build_classifier(r.cnn, normal.shape[1], seed)
    pooled = {k: pooled_last_features(net, v, 64)
              for k, v in (("normal", normal), ("held", held), ("test", data.x_test))}
    k_test = knn_distance(pooled["test"], pooled["normal"])
    k_held = knn_distance(pooled["held"], pooled["normal"])

    def z(v: np.ndarray, ref: np.ndarray) -> np.ndarray:  # in units of the held-out normals
        return (v - ref.mean()) / ref.std()

    both_test = (z(e_test, e_held) + z(k_test, k_held)) / 2
    both_held = (z(e_held, e_held) + z(k_held, k_held)) / 2
    scores: dict[str, dict] = {m: {} for m in ("patch", "image_knn", "margin",
                                               "margin_plus_knn")}
    for prot in data.protocols:
        if "spade" not in prot.methods:
            continue
        x = torch.cat([normal, prot.x_known])
        y = torch.cat([torch.zeros(len(normal)), torch.ones(len(prot.x_known))]).long()
        cnn = fit_linear_head(net, x, y, train, torch.cat(
            [pooled["normal"], pooled_last_features(net, prot.x_known, 64)]))
        with torch.inference_mode():
            l_test = cnn_score(cnn.fc(pooled["test"])).double().numpy()
            l_held = cnn_score(cnn.fc(pooled["held"])).double().numpy()
        fused = {}
        for name, et, eh in (("margin", e_test, e_held),
                             ("margin_plus_knn", both_test, both_held)):
            cal = calibrate(eh, l_held)
            fused[name] = margin_score(torch.as_tensor(et), torch.as_tensor(l_test), cal,
                                       p["evidence_weight"], p["evidence_margin"]).numpy()
        for (pname, subset), idx in prot.columns.items():
            lab = data.y_test[idx]
            scores["patch"][(pname, subset)] = auroc(lab, e_test[idx])
            scores["image_knn"][(pname, subset)] = auroc(lab, k_test[idx])
            for name, f in fused.items():
                scores[name][(pname, subset)] = auroc(lab, f[idx])
    print(f"{time.perf_counter() - t0:.0f} s\nscore | "
          + " | ".join(f"{a} / {b}" for a, b in COLUMNS) + " | mean")
    for name, cells in scores.items():
        vals = [cells[c] for c in COLUMNS]
        print(f"{name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f}")


if __name__ == "__main__":
    main()
