"""Scoring speed and memory of SPADE (issue: fast SPADE). Run with `make bench`.

All in one process, on the same trained models and the same 2,048 Noisy-MNIST test images,
fp32, 2 threads:

(a) spadecam SPADE scoring (closed-form Grad-CAM, u and u_hat in one CNN batch),
(b) a reference built from captum's LayerGradCam (signed, relu_attributions=False) on u and
    u_hat batch-wise plus the same VAE, computing the same score,
(c) the forward-only bound: VAE forward + CNN forward on u and u_hat, no CAM.

(a) and (b) use the paper's error e = |u - u_hat|; the recipe's blurred, squared error adds one
small separable convolution per image to both alike.

It checks that (a) and (b) agree to 1e-4 relative and prints, one per line:
    speedup_vs_captum: X            (a) img/s / (b) img/s          target >= 3
    fraction_of_forward_bound: Y    (a) img/s / (c) img/s          target >= 0.77
    rss_ratio_20k_over_2k: Z        peak RSS scoring 20,480 / 2,048 images, fresh subprocesses,
                                    streamed from a generator      target <= 1.2
It also times the VAE forward alone and prints the speed-up ceiling rate(VAE) / rate(b): what
X would be if the CNN and the CAM cost nothing, since every SPADE score needs the VAE forward.
Ratios are measured in one run on the same machine, so machine noise cancels to first order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from spadecam import SPADE
from spadecam._runtime import tune_malloc
from spadecam.cam import normalise_roi
from spadecam.data import load_mnist, make_noisy_mnist
from spadecam.io import load_models, save_models
from spadecam.reproduce import TEST_SEED, get_recipe
from spadecam.training import train_cnn, train_vae

N_IMAGES = 2048
BATCH = 256
REPEATS = 3


def _models(data_dir: str | None, recipe: str):
    """Train the recipe's VAE and CNN briefly (1 epoch): speed does not depend on weights."""
    r = get_recipe(recipe)
    x, y = load_mnist("train", data_dir)
    keep = np.flatnonzero((y == 0) | (y == 3))[:4096]
    u = torch.from_numpy(make_noisy_mnist(x[keep], 5)).unsqueeze(1)
    lab = torch.from_numpy((y[keep] == 3).astype(np.int64))
    tc = {"epochs": 1, "progress": False, "val_fraction": 0.0}
    import dataclasses

    vae = train_vae(u[lab == 0], r.vae, dataclasses.replace(r.vae_train, **tc))
    cnn = train_cnn(u, lab, r.cnn, dataclasses.replace(r.cnn_train, **tc), r.loss)
    return vae, cnn, r


def _test_images(data_dir: str | None, n: int, start: int = 0) -> np.ndarray:
    x, _ = load_mnist("test", data_dir)
    idx = np.arange(start, start + n) % len(x)
    return make_noisy_mnist(x[idx], TEST_SEED)


def _captum_scores(vae, cnn, u8: np.ndarray) -> np.ndarray:
    from captum.attr import LayerGradCam

    gc = LayerGradCam(cnn, cnn.features[-1])
    out = []
    for i in range(0, len(u8), BATCH):
        u = torch.from_numpy(u8[i : i + BATCH]).unsqueeze(1).float() / 255
        with torch.no_grad():
            u_hat = torch.sigmoid(vae(u, sample=False)[0])
        a_u = gc.attribute(u, target=0, relu_attributions=False)
        a_h = gc.attribute(u_hat, target=0, relu_attributions=False)
        roi = (a_u.abs() + a_h.clamp_min(0)).detach()
        roi = F.interpolate(roi, size=u.shape[-2:], mode="bilinear", align_corners=False)
        w = normalise_roi(roi.squeeze(1))
        out.append(((u - u_hat).abs().sum(1) * w).sum((1, 2)))
    return torch.cat(out).double().numpy()


def _forward_bound(vae, cnn, u8: np.ndarray) -> None:
    """VAE forward, then (unless ``cnn`` is None) CNN forward on u and u_hat; no CAM."""
    with torch.inference_mode():
        for i in range(0, len(u8), BATCH):
            u = torch.from_numpy(u8[i : i + BATCH]).unsqueeze(1).float() / 255
            u = u.contiguous(memory_format=torch.channels_last)
            u_hat = vae.reconstruct(u)
            if cnn is not None:
                cnn(torch.cat([u, u_hat]))


def _best_rate(fn, n: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _rss_child(model_dir: str, data_dir: str | None, n: int) -> int:
    """Score n images streamed in batches from a generator; return peak RSS in KiB."""
    import resource

    vae, cnn = load_models(model_dir)
    det = SPADE.from_models(vae, cnn)
    x, _ = load_mnist("test", data_dir)

    def batches():
        for i in range(0, n, BATCH):
            idx = np.arange(i, min(i + BATCH, n)) % len(x)
            yield make_noisy_mnist(x[idx], TEST_SEED, start_index=i)

    scores = det.decision_function(batches())
    assert scores.shape == (n,)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("SPADECAM_DATA"))
    p.add_argument("--recipe", default="spadecam")
    p.add_argument("--n", type=int, default=N_IMAGES, help="images per timing (default 2048)")
    p.add_argument("--rss-child", nargs=2, metavar=("MODEL_DIR", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(2)
    tune_malloc()  # the same process set-up for (a), (b) and (c)
    if args.rss_child:
        print(json.dumps({"rss_kib": _rss_child(args.rss_child[0], args.data_dir,
                                                int(args.rss_child[1]))}))
        return

    n_img = args.n
    vae, cnn, r = _models(args.data_dir, args.recipe)
    u8 = _test_images(args.data_dir, n_img)
    det = SPADE.from_models(vae, cnn, cam_layer=r.cam_layer, upsample=r.upsample)
    ours = det.decision_function(u8)
    ref = _captum_scores(vae, cnn, u8)
    rel = np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12))
    print(f"max relative difference spadecam vs captum: {rel:.2e}")
    if rel > 1e-4:
        sys.exit(f"scores differ from the captum reference by {rel:.2e} > 1e-4")

    rate_a = _best_rate(lambda: det.decision_function(u8), n_img)
    rate_b = _best_rate(lambda: _captum_scores(vae, cnn, u8), n_img)
    rate_c = _best_rate(lambda: _forward_bound(vae, cnn, u8), n_img)
    rate_v = _best_rate(lambda: _forward_bound(vae, None, u8), n_img)  # VAE alone
    print(f"img/s: spadecam {rate_a:.0f}, captum reference {rate_b:.0f}, forward bound {rate_c:.0f}, "
          f"VAE forward alone {rate_v:.0f}")
    # Every SPADE score needs the VAE forward, so even a CAM *and* a CNN that cost nothing could
    # not be faster than the captum reference by more than (b)'s time over the VAE's time.
    print(f"speedup ceiling (CNN and CAM free, VAE as is): {rate_v / rate_b:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        save_models(tmp, vae, cnn)
        rss = {}
        for n in (n_img, 10 * n_img):
            cmd = [sys.executable, __file__, "--rss-child", tmp, str(n)]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rss[n] = json.loads(res.stdout.strip().splitlines()[-1])["rss_kib"]
        print(f"peak RSS: {rss[n_img] / 1024:.0f} MiB ({n_img:,} images), "
              f"{rss[10 * n_img] / 1024:.0f} MiB ({10 * n_img:,})")

    print(f"speedup_vs_captum: {rate_a / rate_b:.2f}")
    print(f"fraction_of_forward_bound: {rate_a / rate_c:.2f}")
    print(f"rss_ratio_20k_over_2k: {rss[10 * n_img] / rss[n_img]:.2f}")


if __name__ == "__main__":
    main()
