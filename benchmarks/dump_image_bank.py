"""The image-level bank's kNN distances on ELPV's VALIDATION split, beside a probe dump.

``benchmarks/probe_pretrained.py --dump`` kept, per seed, the patch maximum and the head's
logits of the validation cells and of the held-out normal cells. This script adds what the
image-level bank reads (:mod:`spadecam.knn`: the mean distance of an image's pooled last-block
features of the frozen ImageNet EfficientNet-Lite0 to its 5 nearest normal training cells'),
for the same cells in the same order (the same split, the same seeded hold-out), so that
``benchmarks/choose_fusion.py --bank`` can choose the fusion's weight and margin with the bank
in the one-class term. No label is used here.

Usage: python benchmarks/dump_image_bank.py --seed 0 OUT.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spadecam.bench.protocols import elpv_data
from spadecam.knn import FeatureBank
from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig
from spadecam.training import pooled_last_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    data = elpv_data(args.seed, args.size, eval_split="val")
    normal, test = data.x_normal, data.x_test
    # the probe's hold-out: a seeded permutation, its first tenth held out
    order = torch.randperm(len(normal), generator=torch.Generator().manual_seed(args.seed))
    held, normal = normal[order[: len(normal) // 10]], normal[order[len(normal) // 10 :]]
    net = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1)).load_imagenet()
    pooled = {k: pooled_last_features(net, v, 32)
              for k, v in (("normal", normal), ("held", held), ("test", test))}
    bank = FeatureBank(pooled["normal"], -1, 5)
    d_test = bank(net, torch.empty(0), features=pooled["test"]).double().numpy()
    d_held = bank(net, torch.empty(0), features=pooled["held"]).double().numpy()
    np.savez(args.out, y=data.y_test, knn=d_test, held_knn=d_held)
    print(f"seed {args.seed}: {len(normal)} normal cells in the bank, {len(held)} held out, "
          f"{len(test)} validation cells -> {args.out}")


if __name__ == "__main__":
    main()
