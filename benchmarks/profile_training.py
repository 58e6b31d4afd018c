"""Where training time goes, by operator: one epoch of VAE + CNN training under torch.profiler.

Why is bf16-mixed training slower than fp32 on CPUs with AVX512-BF16 but no AMX (0.48x-0.62x
measured), and is it 2x faster on AMX? This prints, for each precision
asked, img/s and the operators with the most self CPU time (the same networks as
`spadecam train --image-size S`: bench_sizes.training_rates), so the two precisions can be
read side by side on the machine at hand. It names the CPU kind first.

    python benchmarks/profile_training.py --size 128 --precision 32-true bf16-mixed
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_sizes import _images
from torch.profiler import ProfilerActivity, profile

from spadecam.defaults import default_cnn_config, default_vae_config
from spadecam.precision import _cpu_name
from spadecam.training import TrainConfig, train_cnn, train_vae
from spadecam.workflow import build_detector


def cpu_kind() -> str:
    """AMX / AVX512-BF16 as torch sees them, and the CPU's model name."""
    name = _cpu_name()
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return f"{name}; AMX tiles {amx}, AVX512-BF16 {bf16}; torch {torch.__version__}"


def profile_epoch(size: int, precision: str, n: int = 64, top: int = 15) -> float:
    """One epoch (n images, batch 16) of VAE then CNN training, profiled; returns img/s of an
    unprofiled run after a warm-up."""
    x = torch.from_numpy(_images(n, 1, size))
    y = torch.from_numpy((np.arange(n) % 4 == 0).astype(np.int64))
    spec = build_detector(size, 1, progress=False, recipe="spadecam")
    vae_cfg = (spec.vae_config or default_vae_config("spadecam")).sized(1, size)
    cnn_cfg = (spec.cnn_config or default_cnn_config(size, "spadecam")).sized(1)
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, val_fraction=0.0,
                      precision=precision)

    def fit() -> None:
        train_vae(x[y == 0], vae_cfg, cfg)
        train_cnn(x, y, cnn_cfg, cfg)

    fit()  # warm-up (oneDNN primitives)
    t = time.perf_counter()
    fit()
    rate = (int((y == 0).sum()) + n) / (time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fit()
    print(f"\n== {size} px, {precision}: {rate:.1f} img/s (VAE + CNN, one epoch, unprofiled)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                    max_name_column_width=40))
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                   help="Fabric precisions to profile (default: 32-true bf16-mixed)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_kind(), f"; {args.threads} threads")
    rates = {pr: profile_epoch(args.size, pr) for pr in args.precision}
    base = rates.get("32-true")
    for pr, r in rates.items():
        ratio = f", {r / base:.2f}x fp32" if base else ""
        print(f"training img/s at {args.size} px, {pr}: {r:.1f}{ratio}")


if __name__ == "__main__":
    main()
