"""Probe, on ELPV's validation split only: what a pretrained backbone gives SPADE's parts.

Exploratory (it chooses nothing by itself): for seed 0 of our ELPV protocols at one input
side, it builds the feature-space error (frozen ImageNet EfficientNet-Lite0, stages 3 + 5,
3 x 3 averaged, a seeded bank of normal training patches; :mod:`spadecam.feature_error`),
trains the eq. 2 classifier on the same backbone from its ImageNet weights (fine-tuned), and
prints the validation AUROC of scores built from them:

* ``patch_max``: the largest patch distance (one-class, PatchCore-style: no label used);
* ``patch_max_x_cls``: that x (1 + w p), p the classifier's known-anomaly probability;
* ``roi_sum``: SPADE's weighted error with the feature error as e: sum of e * L / |L|, L the
  ROI of eq. 5 on u alone (Abs of the signed Grad-CAM map; no VAE here);
* ``roi_sum_x_cls``: that x (1 + w p);
* ``cls``: p alone (the CNN-based score);
* ``margin``: the one-class score plus the classifier's evidence only above a margin, both in
  units of their spread over held-out normal training cells (a tenth of them, never trained
  on or put in the bank): patch_max / sd + max(0, logit - t) / sd_logit, t the largest
  held-out normal logit, so the held-out normals' scores are the one-class ones.

* ``frozen``: the same classifier as a head on the frozen ImageNet features instead
  (class-balanced logistic regression on the globally pooled last stage, scikit-learn), its
  logit margin; ``frozen_margin`` fuses it as ``margin`` does.

``--dump FILE.npz`` keeps every score with the labels and columns, to try other fusions
without training again.

Usage: python benchmarks/probe_pretrained.py [--size 224] [--bank 40000] [--epochs 3]
Results: printed, one line per (protocol, column, score); the log is kept under
benchmarks/results/ with the machine's CPU and load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spadecam.bench.protocols import elpv_data
from spadecam.cam import grad_cam_logits_features
from spadecam.feature_error import PatchFeatures, build_patch_bank
from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig
from spadecam.models.resnet import IMAGENET_MEAN, IMAGENET_STD
from spadecam.roi import roi_weights
from spadecam.training import TrainConfig, train_cnn


def _batches(x: torch.Tensor, size: int = 32):
    for i in range(0, len(x), size):
        yield x[i : i + size].float() / 255.0, None


@torch.no_grad()
def _patch_maps(bank, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([bank.error_map(u)[:, 0] for u, _ in _batches(x)])


@torch.no_grad()
def _pooled(net, x: torch.Tensor) -> np.ndarray:
    """Globally pooled last-stage features of the frozen network, (N, C) float64."""
    return torch.cat([net.forward_features(u).mean((2, 3)) for u, _ in _batches(x)]).double().numpy()


def _cls_and_cams(cnn, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(p of the known-anomaly class, its logit margin l1 - l0, the signed Grad-CAM maps)."""
    ps, margins, cams = [], [], []
    for u, _ in _batches(x):
        m, logits, _ = grad_cam_logits_features(cnn.eval(), u, -1)
        logits = logits.float().detach()
        ps.append(logits.softmax(1)[:, 1])
        margins.append(logits[:, 1] - logits[:, 0])
        cams.append(m.detach())
    return torch.cat(ps).numpy(), torch.cat(margins).numpy(), torch.cat(cams)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bank", type=int, default=40000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", default=None, help="an .npz file for every score")
    ap.add_argument("--no-finetune", action="store_true", help="the frozen head only")
    ap.add_argument("--one-class", action="store_true",
                    help="the patch error alone (no classifier): its validation AUROC per column")
    ap.add_argument("--grid-stride", type=int, default=1, help="PatchFeatures' stride")
    ap.add_argument("--imagenet-norm", action="store_true",
                    help="ImageNet's mean and std instead of the weights' (v - 127) / 128")
    args = ap.parse_args()
    t0 = time.time()
    data = elpv_data(args.seed, args.size, eval_split="val")
    normal, test, y = data.x_normal, data.x_test, data.y_test
    # a tenth of the normal training cells held out (seeded): neither in the bank nor
    # trained on; their scores set the fusion's scales and margin
    order = torch.randperm(len(normal), generator=torch.Generator().manual_seed(args.seed))
    held, normal = normal[order[: len(normal) // 10]], normal[order[len(normal) // 10 :]]
    print(f"normal training cells {len(normal)} (+{len(held)} held out), validation cells "
          f"{len(test)} ({int(y.sum())} anomalous), side {args.size}; {time.time() - t0:.0f} s")

    norm = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if args.imagenet_norm else {}
    net = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1, **norm)).load_imagenet()
    extractor = PatchFeatures(net, stride=args.grid_stride)
    bank = build_patch_bank(extractor, _batches(normal), len(normal), args.bank, args.seed)
    patch = _patch_maps(bank, test)
    patch_max = patch.flatten(1).amax(1).numpy()
    held_max = _patch_maps(bank, held).flatten(1).amax(1).numpy()
    dump: dict[str, np.ndarray] = {"y": y, "patch_max": patch_max, "held_patch_max": held_max}
    if args.one_class:
        for protocol in data.protocols:
            for (name, column), idx in protocol.columns.items():
                print(f"{name} / {column}: patch_max {roc_auc_score(y[idx], patch_max[idx]):.3f}")
        print(f"({time.time() - t0:.0f} s)")
        return
    pooled = {k: _pooled(net.eval(), v) for k, v in (("normal", normal), ("held", held), ("test", test))}
    print(f"bank {tuple(bank.features.shape)}, patch maps of the validation cells: "
          f"{time.time() - t0:.0f} s")

    for protocol in data.protocols:
        if protocol.name == "cnn_all_labels":
            continue
        x = torch.cat([normal, protocol.x_known])
        labels = torch.cat([torch.zeros(len(normal)), torch.ones(len(protocol.x_known))]).long()
        head = make_pipeline(StandardScaler(), LogisticRegression(
            C=0.1, class_weight="balanced", max_iter=2000, random_state=args.seed))
        head.fit(np.concatenate([pooled["normal"], _pooled(net.eval(), protocol.x_known)]),
                 labels.numpy())
        f_logit = head.decision_function(pooled["test"])
        f_held = head.decision_function(pooled["held"])
        f_margin = (patch_max / held_max.std() + np.maximum(0, f_logit - f_held.max()) / f_held.std())
        dump.update({f"{protocol.name}/frozen_logit": f_logit,
                     f"{protocol.name}/frozen_held_logit": f_held})
        for (name, column), idx in protocol.columns.items():
            dump[f"{name}/{column}/idx"] = idx
        if args.no_finetune:
            for (name, column), idx in protocol.columns.items():
                print(f"{name} / {column}: patch_max {roc_auc_score(y[idx], patch_max[idx]):.3f}, "
                      f"frozen {roc_auc_score(y[idx], f_logit[idx]):.3f}, "
                      f"frozen_margin {roc_auc_score(y[idx], f_margin[idx]):.3f}")
            continue
        train = TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, seed=args.seed,
                            progress=False, precision="32")
        cnn = train_cnn(x, labels, EfficientNetLiteConfig(), train)
        p, logit, cams = _cls_and_cams(cnn, test)
        _, held_logit, _ = _cls_and_cams(cnn, held)
        roi = roi_weights(cams, None, (args.size, args.size), recon_branch="none")
        roi_sum = (patch * roi).sum(dim=(1, 2)).numpy()
        w = args.weight
        margin = (patch_max / held_max.std() + np.maximum(0, logit - held_logit.max())
                  / held_logit.std())
        scores = {"patch_max": patch_max, "patch_max_x_cls": patch_max * (1 + w * p),
                  "roi_sum": roi_sum, "roi_sum_x_cls": roi_sum * (1 + w * p), "cls": p,
                  "margin": margin, "frozen": f_logit, "frozen_margin": f_margin}
        dump.update({f"{protocol.name}/p": p, f"{protocol.name}/logit": logit,
                     f"{protocol.name}/held_logit": held_logit,
                     f"{protocol.name}/roi_sum": roi_sum})
        for (name, column), idx in protocol.columns.items():
            line = ", ".join(f"{k} {roc_auc_score(y[idx], s[idx]):.3f}" for k, s in scores.items())
            print(f"{name} / {column}: {line}")
        print(f"  ({protocol.name}: classifier trained, {time.time() - t0:.0f} s)")
    if args.dump:
        np.savez(args.dump, **dump)


if __name__ == "__main__":
    main()
