"""Choose settings on VALIDATION splits (never a test split), ELPV or Noisy-MNIST: one
training per configuration, many scoring variants on the same models (ROI options,
reconstruction error), through the shared benchmark runner.

    .venv/bin/python benchmarks/validate.py elpv --image-size 64 --latent 16 --vae-steps 600 \
        --cnn-steps 250
    .venv/bin/python benchmarks/validate.py noisy-mnist --latent 8 --vae-steps 600 --cnn-steps 250

ELPV: the validation split of src/spadecam/data/elpv_split.csv. Noisy-MNIST: models trained on MNIST
training images [:50000], scored on 2,000 noisy images from [50000:] (known 3 and 9).
Appends one row per (configuration, variant, protocol, subset, seed) to ``--out``
(default benchmarks/results/<benchmark>_validation.csv) and prints the table per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from spadecam.bench.configs import elpv_benchmark, noisy_mnist_benchmark
from spadecam.bench.protocols import ELPV_COLUMNS, elpv_data, noisy_mnist_val_data
from spadecam.bench.runner import ProtocolResult, run_benchmark, vae_scores
from spadecam.bench.tables import write_rows_csv
from spadecam.data import load_mnist
from spadecam.metrics import auroc, average_precision
from spadecam.models import CNNConfig, VAEConfig

#: Scoring variants: (name, error options or None for the recipe's, SPADE parameters).
VARIANTS = [
    ("spade", None, {}),
    ("spade_paper_error", (0.0, "l1"), {}),
    ("spade_sigma1_l2", (1.0, "l2"), {}),
    ("spade_roi_power_2", None, {"roi_power": 2.0}),
    ("spade_roi_power_4", None, {"roi_power": 4.0}),
    ("spade_cam_layers_-2_-1", None, {"cam_layer": (-2, -1)}),
    ("spade_cam_layer_-2", None, {"cam_layer": -2}),
    ("spade_classifier_weight_1", None, {"classifier_weight": 1.0}),
    ("spade_classifier_weight_3", None, {"classifier_weight": 3.0}),
    ("spade_classifier_weight_10", None, {"classifier_weight": 10.0}),
    ("spade_classifier_weight_30", None, {"classifier_weight": 30.0}),
    ("spade_power_2_weight_3", None, {"roi_power": 2.0, "classifier_weight": 3.0}),
]
ERRORS = {"vae_paper_error": (0.0, "l1"), "vae_sigma1_l2": (1.0, "l2")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("benchmark", choices=["elpv", "noisy-mnist"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--cnn-steps", type=int, default=250)
    ap.add_argument("--cnn-kernel", type=int, default=5)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n-train", type=int, default=2000, help="noisy-mnist: images per class")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    mnist = a.benchmark == "noisy-mnist"
    r = noisy_mnist_benchmark("spadecam") if mnist else elpv_benchmark("spadecam")
    k = a.cnn_kernel
    r = dataclasses.replace(
        r, image_size=None if mnist else a.image_size, vae=VAEConfig(latent_dim=a.latent),
        n_train_normal=a.n_train, n_train_known=a.n_train,
        cnn=CNNConfig(channels=(32, 32, 64), kernel_sizes=(k, k, k), strides=(2, 2, 2)),
        vae_train=dataclasses.replace(r.vae_train, steps=a.vae_steps, epochs=None),
        cnn_train=dataclasses.replace(r.cnn_train, steps=a.cnn_steps, epochs=None),
    )
    size = 84 if mnist else a.image_size
    config = f"{size}px_latent{a.latent}_vae{a.vae_steps}_cnn{a.cnn_steps}_k{k}"
    extra: list[dict] = []

    def variants(res: ProtocolResult) -> None:
        seed, prot, data, u_hat, scores = res.seed, res.protocol, res.data, res.u_hat, res.scores
        if prot.name == "cnn_all_labels":
            return
        out = {}
        for name, err, params in VARIANTS:
            sm, nm = err or (r.error_smoothing, r.error_norm)
            # the recipe's SPADE parameters (classifier_weight on ELPV) are not cleared here:
            # a variant lists what it changes, as the runner's ablations do
            out[name] = res.spade(**{"classifier_weight": 0.0, "error_smoothing": sm,
                                     "error_norm": nm, **params})
        for name, (sm, nm) in ERRORS.items():
            out[name] = vae_scores(data.x_test, u_hat, sm, nm)
        for (pname, subset), idx in prot.columns.items():
            for name, s in {**scores, **out}.items():
                lab = data.y_test[idx]
                extra.append({"config": config, "variant": name, "protocol": pname,
                              "subset": subset, "seed": seed, "auroc": auroc(lab, s[idx]),
                              "aupr": average_precision(lab, s[idx])})

    t0 = time.perf_counter()
    cache: dict = {}
    seeds = [int(s) for s in a.seeds.split(",")]
    if mnist:
        data = load_mnist("train")
        load = lambda seed: noisy_mnist_val_data(seed, r, mnist=data)  # noqa: E731
    else:
        load = lambda seed: elpv_data(seed, a.image_size, "val", images=cache)  # noqa: E731
    run_benchmark(load, r, seeds, progress=False, on_protocol=variants)
    wall = time.perf_counter() - t0
    out = Path(a.out or f"benchmarks/results/{a.benchmark.replace('-', '_')}_validation.csv")
    write_rows_csv(out, extra, list(extra[0]), digits=4, append=True)
    cols = [("known_3", "all"), ("known_9", "all")] if mnist else list(ELPV_COLUMNS)
    print(f"\n{config}: validation AUROC, seeds {seeds}, {wall:.0f} s")
    print("variant".ljust(30) + " ".join(f"{p[:6]}/{s[:5]}".rjust(13) for p, s in cols))
    for name in dict.fromkeys(r_["variant"] for r_ in extra):
        vals = []
        for p, s in cols:
            v = [x["auroc"] for x in extra if (x["variant"], x["protocol"], x["subset"]) ==
                 (name, p, s)]
            vals.append(f"{np.mean(v):.3f}".rjust(13) if v else "-".rjust(13))
        print(name.ljust(30) + " ".join(vals))


if __name__ == "__main__":
    main()
