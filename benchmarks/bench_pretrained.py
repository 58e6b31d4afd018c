"""The pretrained recipe's speed and memory: backbone, patch scoring, memory bank.

Run by `make bench` after bench_sizes.py (or alone: `python benchmarks/bench_pretrained.py`).
EfficientNet-Lite0 as the pretrained recipe builds it (random weights: speed does not depend
on them), fp32, eval mode, channels-last, 224 x 224 grey images in batches of 32 (the
backbone's chunk in scoring, :data:`spadecam.feature_error.IMAGE_CHUNK`), one process. Every
ratio is measured in one run, on one machine.

How the backbone's bound is computed. Every convolution of the network (stem, 1 x 1 expand,
k x k depthwise, 1 x 1 project, head) is timed ALONE on an input of the shape it sees in the
forward (best of several runs), and its FLOPs counted (2 x N x C_out x H_out x W_out x
C_in / groups x k x k). The machine's convolution rate is the best FLOP/s reached by any
dense convolution of the network, and separately by any depthwise one (depthwise layers do
few FLOPs per byte and run far below the dense rate on every CPU: a single rate would put the
bound out of reach or hide them). The bound is the time the network's FLOPs take at those
two rates: sum over layers of FLOPs / rate of its kind. Batch norm, ReLU6, the residual adds
and the input normalisation count as zero.

Printed, one per line at the end (name: value):
    backbone_fraction_of_conv_bound   bound time / measured forward time      target >= 0.5
    patch_scoring_fraction_of_forward the classifier's forward time / the time of SPADE's
                                      default score (patch error + classifier + fusion)
                                      on the same images                      target >= 0.8
    rss_mb_per_1k_bank_rows           peak RSS growth of scoring per 1,000 bank rows (MB;
                                      the bank's two float32 copies take 1.2 MB per 1,000)
and before them the per-layer table, the two rates, the scoring parts, the fraction with
``patch_stride=2`` and the RSS of each bank size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch
from torch import nn

SIZE, BATCH, REPEATS = 224, 32, 3
#: Bank rows of the RSS lines (the default is 16,384), scored on RSS_IMAGES images: few, so
#: the backbone's activations stay below the bank's memory and the bank's share shows.
BANKS = (16384, 131072, 524288)
RSS_IMAGES = 4


def _best(fn, repeats: int = REPEATS) -> float:
    from bench_sizes import _best_seconds  # the same measure as the other benches

    return _best_seconds(fn, repeats)  # best of ``repeats`` after a warm-up


def _net() -> nn.Module:
    from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig

    return EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=1)).eval().to(
        memory_format=torch.channels_last)


def _images(n: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, SIZE, SIZE, generator=g).contiguous(
        memory_format=torch.channels_last)


def conv_bound(net: nn.Module, u: torch.Tensor) -> dict[str, float]:
    """The forward's time, the bound from the two measured convolution rates, and the sum of
    the convolutions' isolated times (seconds per batch); the per-layer table is printed."""
    seen: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append((mod, a[0].shape)))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        net(u)
    for h in hooks:
        h.remove()
    rows = []
    with torch.inference_mode():
        for conv, shape in seen:
            x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
            out = conv(x)
            k = conv.kernel_size[0] * conv.kernel_size[1]
            flops = 2 * out.numel() * (conv.in_channels // conv.groups) * k
            depthwise = conv.groups > 1
            t = _best(lambda c=conv, x=x: c(x), repeats=5)
            rows.append((depthwise, flops, t, tuple(shape), conv.out_channels, conv.kernel_size[0],
                         conv.stride[0]))
        forward = _best(lambda: net(u))
    rate = {kind: max(f / t for d, f, t, *_ in rows if d == kind) for kind in (False, True)}
    bound = sum(f / rate[d] for d, f, *_ in rows)
    alone = sum(t for _, _, t, *_ in rows)
    flops = sum(f for _, f, *_ in rows)
    print("per convolution (input shape, C_out, k, stride): GFLOP/s alone")
    for d, f, t, shape, c_out, k, s in rows:
        print(f"  {'depthwise' if d else 'dense    '} {shape} -> {c_out}, {k}x{k}/{s}: "
              f"{f / t / 1e9:.1f}")
    print(f"forward of {len(u)} images at {SIZE} px: {forward * 1e3:.0f} ms "
          f"({len(u) / forward:.1f} img/s), {flops / len(u) / 1e9:.2f} GFLOP per image in "
          f"{len(rows)} convolutions ({sum(f for d, f, *_ in rows if d) / flops:.0%} depthwise)")
    print(f"rates: dense {rate[False] / 1e9:.1f} GFLOP/s, depthwise {rate[True] / 1e9:.1f} "
          f"GFLOP/s; bound {bound * 1e3:.0f} ms; the convolutions alone, summed "
          f"{alone * 1e3:.0f} ms ({alone / forward:.2f} of the forward)")
    return {"forward": forward, "bound": bound, "alone": alone}


def _fitted_default(bank_rows: int = 16384, stride: int | None = None):
    """SPADE() fitted on random grey images (its default recipe: patch bank, head, fusion)."""
    from spadecam import SPADE
    from spadecam.training import TrainConfig

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, SIZE, SIZE), dtype=np.uint8)
    y = (np.arange(48) % 4 == 0).astype(np.int64)
    det = SPADE(patch_bank_size=bank_rows, precision="32", threshold_holdout=0.25,
                patch_stride=stride,
                cnn_train=TrainConfig(head_only=True, progress=False))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few held-out normals: speed only
        return det.fit(x, y)


def scoring_fraction(net: nn.Module, u: torch.Tensor) -> dict[str, float]:
    """The classifier's forward and SPADE()'s whole score on the same batch (seconds)."""
    from spadecam.scoring import scoring_context

    det = _fitted_default()
    scorer = det.scorer()
    cnn = det.cnn_
    with scoring_context("32", scorer):
        score = _best(lambda: scorer(u, None))
    with torch.inference_mode():
        forward = _best(lambda: cnn(u))
        patches = _best(lambda: det.patch_bank_.extractor(u))
        feats = det.patch_bank_.extractor(u)
        nearest = _best(lambda: det.patch_bank_.distances(feats))
    print(f"SPADE() score of {len(u)} images: {score * 1e3:.0f} ms ({len(u) / score:.1f} img/s); "
          f"its parts: the classifier's forward {forward * 1e3:.0f} ms, the patch features "
          f"{patches * 1e3:.0f} ms, the nearest bank rows ({len(det.patch_bank_.features)}) "
          f"{nearest * 1e3:.0f} ms")
    return {"score": score, "forward": forward}


def stride2_fraction(u: torch.Tensor) -> float:
    """patch_scoring_fraction_of_forward with ``patch_stride=2`` (a 14 x 14 patch grid at
    224 px, validated equal on ELPV on average: docs/elpv.md), for comparison (no target)."""
    from spadecam.scoring import scoring_context

    det = _fitted_default(stride=2)
    scorer = det.scorer()
    with scoring_context("32", scorer):
        score = _best(lambda: scorer(u, None))
    with torch.inference_mode():
        forward = _best(lambda: det.cnn_(u))
    return forward / score


def _rss_child(rows: int) -> dict[str, float]:
    """Peak RSS (MB) of scoring RSS_IMAGES images with a bank of ``rows`` random rows."""
    from spadecam.feature_error import PatchBank, PatchFeatures

    torch.manual_seed(0)
    ext = PatchFeatures(_net())
    bank = PatchBank(torch.randn(rows, 152), ext)
    with torch.inference_mode():
        bank.error_map(torch.rand(RSS_IMAGES, 1, SIZE, SIZE))
    # imported here, after the scoring: the child's peak is its scoring's, not bench_sizes'
    # imports (spadecam's workflow, Pillow); VmHWM, the child's own (ru_maxrss survives exec)
    from bench_sizes import peak_rss_kib

    return {"rows": rows, "rss_mb": peak_rss_kib() / 1024}


def rss_by_bank() -> float:
    got = []
    for rows in BANKS:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(rows)],
                             capture_output=True, text=True, check=True)
        got.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"peak RSS, scoring {RSS_IMAGES} images with a bank of {rows:,} rows: "
              f"{got[-1]['rss_mb']:.0f} MB (the bank's two float32 copies: "
              f"{2 * rows * 152 * 4 / 2**20:.0f} MB)")
    slope = (got[-1]["rss_mb"] - got[0]["rss_mb"]) / ((BANKS[-1] - BANKS[0]) / 1000)
    return slope


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2: the machines this project runs on)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        print(json.dumps(_rss_child(args.rss_child)))
        return
    import platform

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"load {' '.join(open('/proc/loadavg').read().split()[:3])}")
    net, u = _net(), _images()
    b = conv_bound(net, u)
    s = scoring_fraction(net, u)
    half = stride2_fraction(u)
    print(f"with patch_stride=2: patch_scoring_fraction_of_forward {half:.2f}")
    slope = rss_by_bank()
    print(f"backbone_fraction_of_conv_bound: {b['bound'] / b['forward']:.2f}")
    print(f"patch_scoring_fraction_of_forward: {s['forward'] / s['score']:.2f}")
    print(f"rss_mb_per_1k_bank_rows: {slope:.2f}")


if __name__ == "__main__":
    main()
