"""Real-sized images: scoring, training, memory and `spadecam score` end to end.

Run by `make bench` after bench_scoring.py (or alone: `python benchmarks/bench_sizes.py`).
The networks are the ones `spadecam train --recipe spadecam --image-size S` builds
(workflow.build_detector: the from-scratch recipe's VAE at S, the `small` classifier with
kernels that follow S, or `resnet18`; the default pretrained recipe is bench_pretrained.py's),
with random weights (speed does not depend on them), in the default precision ("auto")
unless said. Every ratio is measured in one run, on one machine.

Printed, one per line at the end (name: value):
    fraction_of_peak_256_grey_small    scoring FLOP/s / the default dtype's matmul peak  >= 0.30
    fraction_of_peak_256_rgb_small                                                      >= 0.30
    fraction_of_peak_256_rgb_resnet18                                                   >= 0.40
    score_folder_network_share         share of `spadecam score` (1,000 256-px PNGs, CSV
                                       and overlays) spent in the networks' forward  >= 0.70
    train_speedup_128                  VAE + CNN training img/s at 128 px, default
                                       precision / fp32 (1.00 where the default is fp32)
    rss_ratio_folder_10k_over_1k       peak RSS of `spadecam score` on 10,000 / 1,000
                                       256-px PNGs (fresh subprocesses)               <= 1.2
and before them the table of every size, channel count and backbone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spadecam import SPADE
from spadecam.defaults import default_cnn_config, default_vae_config
from spadecam.inputs import iter_model_batches
from spadecam.models.backbones import BACKBONES, backbone_name
from spadecam.models.vae import ConvVAE
from spadecam.precision import resolve_scoring_precision, resolve_training_precision
from spadecam.scoring import scoring_context
from spadecam.workflow import build_detector

SIZES = (128, 256, 512)
#: Images per scoring timing, by side (about the same pixels each).
N_SCORE = {128: 128, 256: 32, 512: 8}
REPEATS = 3


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB): VmHWM. Not ``ru_maxrss``, which Linux
    carries over an exec from the forking parent, so a child started by a large benchmark
    process reported the parent's peak, not its own."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _best_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: oneDNN primitives, allocator
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_flops(dtype: torch.dtype, n: int = 2048) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` (the machine's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 4 * 2 * n**3 / _best_seconds(lambda: [a @ b for _ in range(4)])


def flops_per_image(det: SPADE, x: np.ndarray) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        det.decision_function(x)
    return counter.get_total_flops() / len(x)


def _images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth textures with a little noise, uint8 (N, C, S, S): PNG-compressible like photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        f = rng.uniform(2, 8, 2)
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy + rng.uniform()))
        for c in range(channels):
            out[i, c] = np.clip(255 * (base + rng.normal(0, 0.02, base.shape)), 0, 255)
    return out


def detector(size: int, channels: int, backbone: str, precision: str = "auto") -> SPADE:
    """SPADE around the networks `spadecam train` builds for this input, random weights, the
    default score (its feature bank from 64 images: speed only)."""
    spec = build_detector(size, channels, backbone=backbone, progress=False,
                          recipe="spadecam")
    torch.manual_seed(0)
    # the recipe's networks when the detector leaves them to fit (None), sized as fit sizes them
    vae = ConvVAE((spec.vae_config or default_vae_config("spadecam")).sized(channels, size)).eval()
    cnn_cfg = (spec.cnn_config or default_cnn_config(size, "spadecam")).sized(channels)
    cnn = BACKBONES[backbone_name(cnn_cfg)][0](cnn_cfg).eval()
    bank = _images(64, channels, size, seed=1)
    return SPADE.from_models(vae, cnn, bank, precision=precision, batch_size=32, recipe="spadecam")


def scoring_table(peak: float, sizes: tuple[int, ...] = SIZES) -> dict[str, float]:
    """img/s and fraction of peak for every size, channel count and backbone; printed."""
    out = {}
    print("scoring, default precision: side, channels, backbone: img/s, fraction_of_peak")
    for size in sizes:
        for channels, colour in ((1, "grey"), (3, "rgb")):
            x = _images(N_SCORE[size], channels, size)
            for backbone in ("small", "resnet18"):
                det = detector(size, channels, backbone)
                rate = len(x) / _best_seconds(lambda d=det, x=x: d.decision_function(x))
                frac = rate * flops_per_image(det, x[: min(8, len(x))]) / peak
                out[f"{size}_{colour}_{backbone}"] = frac
                print(f"  {size} px {colour} {backbone}: {rate:.1f} img/s, fraction_of_peak "
                      f"{frac:.2f}")
    return out


def training_rates(size: int, n: int = 64) -> dict[str, float]:
    """VAE + CNN training img/s at ``size`` (grey, small backbone, 1 epoch of n images each)
    in the default training precision and in fp32."""
    from spadecam.training import TrainConfig, train_cnn, train_vae

    x = torch.from_numpy(_images(n, 1, size))
    y = torch.from_numpy((np.arange(n) % 4 == 0).astype(np.int64))
    spec = build_detector(size, 1, progress=False, recipe="spadecam")
    vae_cfg = (spec.vae_config or default_vae_config("spadecam")).sized(1, size)
    cnn_cfg = (spec.cnn_config or default_cnn_config(size, "spadecam")).sized(1)
    rates = {}
    for name, precision in (("default", "auto"), ("fp32", "32-true")):
        cfg = TrainConfig(epochs=1, batch_size=16, progress=False, val_fraction=0.0,
                          precision=precision)

        def fit(cfg: TrainConfig = cfg) -> None:
            train_vae(x[y == 0], vae_cfg, cfg)
            train_cnn(x, y, cnn_cfg, cfg)

        rates[name] = (int((y == 0).sum()) + n) / _best_seconds(fit, repeats=2)
    return rates


def _write_pngs(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    block = _images(64, 1, size, seed=2)
    for i in range(n):
        Image.fromarray(block[i % 64, 0]).save(folder / f"{i:05d}.png")


def _model_dir(tmp: Path, size: int) -> Path:
    """A model directory with random weights at ``size`` (grey, small), as `spadecam train`
    writes one (threshold, overlay scale, preprocessing)."""
    det = detector(size, 1, "small")
    det.threshold_ = 1.0
    pre = {"channels": 1, "normalisation": "dtype_max", "min_input_size": 8}
    return Path(det.save(tmp / "model", pre, {"overlay_scale": 1.0}))


def _score_child(model: str, folder: str, maps: str | None) -> dict:
    """`spadecam score` in this process; wall seconds and peak RSS (KiB)."""
    from spadecam import workflow

    t = time.perf_counter()
    rows = workflow.score(model, [folder], out=Path(folder).parent / "scores.csv", maps=maps,
                          progress=False)
    return {"seconds": time.perf_counter() - t, "n": len(rows),
            "rss_kib": peak_rss_kib()}


def _setup_child(model: str, folder: str) -> dict:
    """Seconds of a freshly loaded model's first batch beyond the same batch again (oneDNN
    primitive creation and the like), in this (fresh) process."""
    from spadecam.deploy import TorchInferencer

    inf = TorchInferencer.load(model)
    first = sorted(Path(folder).iterdir())[: inf.detector.batch_size]
    x = inf.read(first)
    t = time.perf_counter()
    inf.score(x, first)
    cold = time.perf_counter() - t
    return {"setup_s": cold - _best_seconds(lambda: inf.score(x, first), repeats=2)}


def _run_child(flag: str, *args: str) -> dict:
    """This script with ``flag`` (`--score-child MODEL FOLDER MAPS` or `--setup-child MODEL
    FOLDER`) in a fresh process; its JSON line."""
    res = subprocess.run([sys.executable, __file__, flag, *args], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _network_seconds(model: Path, folder: Path) -> float:
    """The networks' forward passes alone (VAE, then the CNN on u and u_hat as one batch) on
    the folder's images, already decoded and at the model's size, in scoring's batches."""
    from spadecam.deploy import TorchInferencer

    inf = TorchInferencer.load(model)
    det = inf.detector
    x = np.stack(inf.read(sorted(folder.iterdir())))
    size, channels = det._input_spec()

    def forward() -> None:
        with scoring_context(det.precision, det.cnn_, det.vae_):
            for mb in iter_model_batches(x, det.batch_size, size, det.resize, channels):
                det.cnn_(torch.cat([mb.u, det.vae_.reconstruct(mb.u)]))

    return _best_seconds(forward, repeats=1)


def share_breakdown(model: Path, folder: Path) -> dict[str, float]:
    """Where `spadecam score`'s time outside the networks goes: each stage of its path timed
    alone, in this process, in ms per image (the same functions: the checking pass, reading
    (decode + channels), SPADE whole against its networks alone, the overlay colours and PNG
    encoding on one core, and write_overlays as run, on every core), plus the one-off set-up
    of a freshly loaded model's first batch (oneDNN primitives) in seconds. Printed."""
    from spadecam.deploy import TorchInferencer
    from spadecam.deploy.outputs import overlay, png_bytes, write_overlays

    paths = sorted(folder.iterdir())
    n = len(paths)
    out = {"first_batch_setup_s": _run_child("--setup-child", str(model), str(folder))["setup_s"]}
    inf = TorchInferencer.load(model)
    out["check"] = _best_seconds(lambda: inf.check(paths), repeats=1)
    out["read"] = _best_seconds(lambda: inf.read(paths), repeats=1)
    x = inf.read(paths)
    out["spade"] = _best_seconds(lambda: inf.score(x, paths), repeats=1)
    out["networks"] = _network_seconds(model, folder)
    _, maps = inf.score(x, paths)
    scale = float(inf.overlay_scale or 1.0)
    out["overlay_colour_1core"] = _best_seconds(
        lambda: [overlay(a, m, scale) for a, m in zip(x, maps)], repeats=1)
    rgb = [overlay(a, m, scale) for a, m in zip(x, maps)]
    out["png_encode_1core"] = _best_seconds(lambda: [png_bytes(c) for c in rgb], repeats=1)
    with tempfile.TemporaryDirectory() as d:
        names = [Path(p.name) for p in paths]
        out["write_overlays"] = _best_seconds(
            lambda: write_overlays(Path(d), names, x, maps, scale, False,
                                   check_replaced=False), repeats=1)
    print(f"where spadecam score's time goes ({n} PNGs, ms per image; stages timed alone):")
    for k, v in out.items():
        if k == "first_batch_setup_s":
            print(f"  first batch of a freshly loaded model, set-up: {v:.2f} s")
        else:
            print(f"  {k}: {1e3 * v / n:.2f} ms")
    print(f"  SPADE outside its networks (Grad-CAM, ROI, blur, error, bank): "
          f"{1e3 * (out['spade'] - out['networks']) / n:.2f} ms")
    return out


def folder_lines(size: int = 256, rss: bool = True) -> dict[str, float]:
    """`spadecam score` on 1,000 PNGs end to end (with overlays) and the network share; with
    ``rss``, peak RSS on 1,000 and 10,000 PNGs."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = _model_dir(tmp, size)
        small, large = tmp / "png1k" / "in", tmp / "png10k" / "in"
        _write_pngs(small, 1000, size)
        one = _run_child("--score-child", str(model), str(small), str(tmp / "overlays"))
        net = _network_seconds(model, small)
        share_breakdown(model, small)
        if rss:
            _write_pngs(large, 10000, size)
            ten = _run_child("--score-child", str(model), str(large), "")
    share = net / one["seconds"]
    print(f"spadecam score, 1,000 {size}-px PNGs with overlays: {1000 / one['seconds']:.1f} img/s "
          f"end to end, networks alone {1000 / net:.1f} img/s (share {share:.2f})")
    if not rss:
        return {"share": share}
    print(f"peak RSS of spadecam score: {one['rss_kib'] / 1024:.0f} MiB (1,000 PNGs), "
          f"{ten['rss_kib'] / 1024:.0f} MiB (10,000 PNGs, no overlays)")
    return {"share": share, "rss_ratio": ten["rss_kib"] / one["rss_kib"]}


#: The parts of this benchmark, in the order they run (``--parts`` picks some); "share" is
#: "folder" without the 10,000-PNG peak-RSS run.
PARTS = ("training", "scoring", "folder", "share")


def run(parts: tuple[str, ...] = PARTS[:3], sizes: tuple[int, ...] = SIZES) -> dict[str, float]:
    """The benchmark's ``parts`` (all by default: every line); returns the summary values of
    those that ran. ``sizes``: the scoring table's sides (256 gives the summary lines)."""
    default = resolve_scoring_precision("auto")
    dtype = torch.bfloat16 if default == "bf16" else torch.float32
    peak = peak_flops(dtype)
    print(f"real sizes: scoring {default}, training {resolve_training_precision('auto')}; "
          f"peak matmul {dtype} {peak / 1e9:.0f} GFLOP/s")
    out = {}
    if "training" in parts:
        train = {s: training_rates(s) for s in (128, 256)}
        for s, r in train.items():
            print(f"training img/s (VAE + CNN) at {s} px: default {r['default']:.1f}, "
                  f"fp32 {r['fp32']:.1f}")
        out["train_speedup_128"] = train[128]["default"] / train[128]["fp32"]
    if "scoring" in parts:
        table = scoring_table(peak, sizes)
        for key in ("256_grey_small", "256_rgb_small", "256_rgb_resnet18"):
            if key in table:
                out[f"fraction_of_peak_{key}"] = table[key]
    if "folder" in parts or "share" in parts:
        folder = folder_lines(rss="folder" in parts)
        out["score_folder_network_share"] = folder["share"]
        if "rss_ratio" in folder:
            out["rss_ratio_folder_10k_over_1k"] = folder["rss_ratio"]
    order = ("fraction_of_peak_256_grey_small", "fraction_of_peak_256_rgb_small",
             "fraction_of_peak_256_rgb_resnet18", "score_folder_network_share",
             "train_speedup_128", "rss_ratio_folder_10k_over_1k")
    return {k: out[k] for k in order if k in out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--score-child", nargs=3, metavar=("MODEL", "FOLDER", "MAPS"),
                   help=argparse.SUPPRESS)
    p.add_argument("--setup-child", nargs=2, metavar=("MODEL", "FOLDER"),
                   help=argparse.SUPPRESS)
    p.add_argument("--parts", default=",".join(PARTS[:3]),
                   help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)),
                   help="comma-separated sides of the scoring table (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (default 2: the machines this project runs on)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.setup_child:
        print(json.dumps(_setup_child(*args.setup_child)))
        return
    if args.score_child:
        model, folder, maps = args.score_child
        print(json.dumps(_score_child(model, folder, maps or None)))
        return
    parts = tuple(x for x in args.parts.split(",") if x)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    sizes = tuple(int(x) for x in args.sizes.split(",") if x)
    for name, value in run(parts, sizes).items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
