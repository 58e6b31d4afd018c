"""Issue 19, items 3 and 4: which anomaly score the trained models support, on VALIDATION.

    python benchmarks/validate_scores.py --data elpv [--seeds 0,1,2]
    python benchmarks/validate_scores.py --data noisy_mnist [--seeds 0] [--known 3,9]

Trains the recipe's VAE and classifier per seed and protocol (the shared runner, validation
splits only: ELPV's ``val`` cells, Noisy-MNIST's MNIST training images [50000:52000]; never a
test split, never the DRA test anomalies) and scores the same models many ways:

* ``vae/<e>`` and ``spade_w<w>/<e>``: the VAE-based sum of e and SPADE's sum of e * L / |L|
  times (1 + w p), for reconstruction errors ``<e>``: ``b2_l2`` (the default: 2-px blurred
  residual, squared), ``b4_l2``, ``b0_l1`` (the paper's), ``ssim`` (1 - local SSIM),
  ``ms_l2`` (blurs 1, 2, 4 px, each divided by its mean, summed), ``z_b4`` (e standardised per
  pixel by the normal training images' mean and spread); ``/top0.01``: the mean of the
  largest 1 % of the map instead of the sum (pooling).
* ``featerr_b<i>_L``: a reconstruction error in the classifier's feature space,
  |A(u) - A(u_hat)|^2 of block i summed over channels, weighted by the ROI L (pooled to the
  block's grid, L / |L|), summed.
* ``knn_gap_b<i>``: the mean distance of the classifier's globally pooled block-i features of
  u to their 5 nearest neighbours among the normal training images' (a memory bank; no
  reconstruction); ``knn_random_b2``: the same with an untrained classifier of the same
  architecture (what the training adds).
* ``spade_w10*knn_b<i>^<g>``: SPADE's default score times that distance to the power g.
* ``latent_knn``: the same in the VAE's latent space (posterior means).

Prints the mean AUROC over seeds per column; writes every (score, column, seed) AUROC to
benchmarks/results/<data>_validation_scores.csv.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from spadecam.bench.runner import ProtocolResult, float_batch, reconstruct, run_benchmark
from spadecam.bench.tables import write_rows_csv
from spadecam.error import gaussian_blur, reconstruction_error
from spadecam.metrics import auroc
from spadecam.roi import roi_weights

RESULTS = Path(__file__).resolve().parent / "results"


def _topk_mean(m: torch.Tensor, q: float) -> torch.Tensor:
    f = m.flatten(1)
    return f.topk(max(1, int(q * f.shape[1])), dim=1).values.mean(1)


def _ssim_error(u: torch.Tensor, v: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    c1, c2 = 0.01**2, 0.03**2
    mu, mv = gaussian_blur(u, sigma), gaussian_blur(v, sigma)
    suu = gaussian_blur(u * u, sigma) - mu**2
    svv = gaussian_blur(v * v, sigma) - mv**2
    suv = gaussian_blur(u * v, sigma) - mu * mv
    ssim = ((2 * mu * mv + c1) * (2 * suv + c2)) / ((mu**2 + mv**2 + c1) * (suu + svv + c2))
    return (1 - ssim).clamp_min(0)


def _knn(test: torch.Tensor, bank: torch.Tensor, k: int = 5) -> torch.Tensor:
    return torch.cdist(test, bank).topk(k, largest=False).values.mean(1)


@torch.no_grad()
def variant_scores(res: ProtocolResult) -> dict[str, torch.Tensor]:
    """Every variant's test scores (T,) on one protocol's models."""
    x, uh = float_batch(res.data.x_test).float(), res.u_hat.float()
    xn = float_batch(res.data.x_normal).float()
    cams = res._cam_source.signed_cams(x, uh)  # type: ignore[union-attr]
    roi = roi_weights(cams[0], cams[1], x.shape[-2:])
    p = cams[2].float().softmax(1)[:, 1]
    uhn = reconstruct(res.vae, res.data.x_normal)
    en = reconstruction_error(xn, uhn, 4.0, "l2")
    mu, sd = en.mean(0, keepdim=True), en.std(0, keepdim=True)
    r = res.config
    errors = {
        "b2_l2": reconstruction_error(x, uh, r.error_smoothing, r.error_norm),
        "b4_l2": reconstruction_error(x, uh, 4.0, "l2"),
        "b0_l1": reconstruction_error(x, uh, 0.0, "l1"),
        "ssim": _ssim_error(x, uh),
        "ms_l2": sum(e / e.mean() for e in (reconstruction_error(x, uh, s, "l2")
                                             for s in (1.0, 2.0, 4.0))),
        "z_b4": ((reconstruction_error(x, uh, 4.0, "l2") - mu) / (sd + sd.mean())).clamp_min(0),
    }
    sc: dict[str, torch.Tensor] = {"cnn": p}
    for name, e in errors.items():
        e = e.sum(1)
        sc[f"vae/{name}"] = e.sum((1, 2))
        sc[f"vae/{name}/top0.01"] = _topk_mean(e, 0.01)
        for w in (0.0, 10.0):
            sc[f"spade_w{w:g}/{name}"] = (e * roi).sum((1, 2)) * (1 + w * p)
            sc[f"spade_w{w:g}/{name}/top0.01"] = _topk_mean(e * roi, 0.01) * (1 + w * p)
    cnn = res.cnn.eval()
    for i in range(len(cnn.features)):
        au, ah = cnn.forward_features(x, i), cnn.forward_features(uh, i)
        d = ((au - ah) ** 2).sum(1)
        li = torch.nn.functional.adaptive_avg_pool2d(roi[:, None], d.shape[-2:])[:, 0]
        li = li / li.sum((1, 2), keepdim=True).clamp_min(1e-12)
        sc[f"featerr_b{i}_L"] = (d * li).sum((1, 2))
        sc[f"knn_gap_b{i}"] = _knn(au.mean((2, 3)), cnn.forward_features(xn, i).mean((2, 3)))
    for i in range(len(cnn.features)):
        for g in (1.0, 2.0, 4.0):  # SPADE's score times the kNN distance ** g (knn_power)
            sc[f"spade_w10*knn_b{i}^{g:g}"] = sc["spade_w10/b2_l2"] * sc[f"knn_gap_b{i}"] ** g
    torch.manual_seed(0)  # an untrained copy: what the training adds to the features
    rnd = type(cnn)(cnn.config).eval()
    sc["knn_random_b2"] = _knn(rnd.forward_features(x).mean((2, 3)),
                               rnd.forward_features(xn).mean((2, 3)))
    vae = res.vae.eval()
    sc["latent_knn"] = _knn(vae.encode(x)[0].flatten(1), vae.encode(xn)[0].flatten(1))
    return sc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("elpv", "noisy_mnist"), required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--known", default="3,9", help="Noisy-MNIST known digits")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.data == "elpv":
        from spadecam.bench import protocols
        from spadecam.bench.configs import elpv_benchmark

        recipe = elpv_benchmark("spadecam")
        cache: dict = {}

        def load(seed: int):  # type: ignore[no-untyped-def]
            return protocols.elpv_data(seed, int(recipe.image_size or 0), "val", None, None,
                                       cache)
    else:
        from spadecam.bench.configs import noisy_mnist_benchmark
        from spadecam.bench.protocols import noisy_mnist_data, noisy_mnist_source
        from spadecam.data import load_mnist

        recipe = noisy_mnist_benchmark("spadecam")
        known = [int(k) for k in a.known.split(",")]
        source = noisy_mnist_source(recipe, "val", mnist=load_mnist("train"))

        def load(seed: int):  # type: ignore[no-untyped-def]
            return noisy_mnist_data(seed, recipe, known, source)

    rows: list[dict] = []

    def hook(res: ProtocolResult) -> None:
        if res.protocol.name == "cnn_all_labels":
            return
        y = res.data.y_test
        for name, s in variant_scores(res).items():
            for (prot, subset), idx in res.protocol.columns.items():
                if subset != "uncertain":
                    rows.append({"score": name, "column": f"{prot}/{subset}", "seed": res.seed,
                                 "auroc": auroc(y[idx], s.double().numpy()[idx])})

    t0 = time.perf_counter()
    run_benchmark(load, recipe, seeds, False, lambda *x: None, on_protocol=hook)
    cols = sorted({q["column"] for q in rows})
    print(f"# {a.data} validation, seeds {seeds}, {time.perf_counter() - t0:.0f} s")
    print(f"{'score':28s} " + " ".join(cols))
    for name in dict.fromkeys(q["score"] for q in rows):
        cells = [np.mean([q["auroc"] for q in rows if (q["score"], q["column"]) == (name, c)])
                 for c in cols]
        print(f"{name:28s} " + " ".join(f"{v:.3f}" for v in cells), flush=True)
    out = RESULTS / f"{a.data}_validation_scores.csv"
    write_rows_csv(out, rows, list(rows[0]), digits=4, fixed=("auroc",))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
