"""Why the ROI changes little on ELPV: how spread the ROI is, and how close SPADE is to the
VAE-based score. VALIDATION split, seed 0, protocol unseen_type, the ELPV
spadecam recipe.

    .venv/bin/python benchmarks/roi_spread.py

Prints, over the validation cells: the ROI's effective area exp(H(L/|L|)) / (number of pixels)
(1 = flat, small = peaked), its maximum weight relative to a flat ROI, the Spearman rank
correlation between SPADE (paper score) and the VAE-based score, the Grad-CAM grid against the
image, and the classifier's p(known anomaly) by subset.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from spadecam.bench.configs import elpv_benchmark
from spadecam.bench.protocols import elpv_data
from spadecam.bench.runner import ProtocolResult, run_benchmark
from spadecam.cam import grad_cam
from spadecam.inputs import to_float_images
from spadecam.roi import roi_weights


def main() -> None:
    r = elpv_benchmark("spadecam")
    size = int(r.image_size or 48)

    def load(seed):
        d = elpv_data(seed, size, "val")
        d.protocols = [p for p in d.protocols if p.name == "unseen_type"]
        return d

    def measure(res: ProtocolResult) -> None:
        prot, cnn, data, u_hat, scores = res.protocol, res.cnn, res.data, res.u_hat, res.scores
        u = to_float_images(data.x_test)
        with torch.inference_mode():
            m_u, m_h = grad_cam(cnn, u), grad_cam(cnn, u_hat)
            w = roi_weights(m_u, m_h, u.shape[-2:], upsample="bilinear").flatten(1)
            p = cnn(u).float().softmax(1)[:, 1].numpy()
        n_pix = w.shape[1]
        ent = -(w * torch.log(w.clamp_min(1e-12))).sum(1)
        area = (ent.exp() / n_pix).numpy()
        peak = (w.max(1).values * n_pix).numpy()
        paper = res.spade(classifier_weight=0.0)
        print(f"image {u.shape[-1]} px, Grad-CAM grid {m_u.shape[-1]} x {m_u.shape[-2]} "
              f"({u.shape[-1] // m_u.shape[-1]} px per cell)")
        print(f"ROI effective area / image: median {np.median(area):.3f} "
              f"(IQR {np.quantile(area, .25):.3f}-{np.quantile(area, .75):.3f}); max weight "
              f"x flat: median {np.median(peak):.2f}")
        rho = spearmanr(paper, scores["vae"]).statistic
        print(f"Spearman(SPADE paper score, VAE-based score) = {rho:.3f}")
        y = data.y_test
        for name, (pname, subset) in [("mono defective", ("unseen_type", "mono")),
                                      ("poly defective", ("unseen_type", "poly"))]:
            idx = prot.columns[(pname, subset)]
            sel = idx[y[idx] == 1]
            print(f"{name}: median p(known anomaly) {np.median(p[sel]):.3f}, ROI area "
                  f"{np.median(area[sel]):.3f}")
        print(f"normal: median p(known anomaly) {np.median(p[y == 0]):.3f}, ROI area "
              f"{np.median(area[y == 0]):.3f}")

    run_benchmark(load, r, [0], progress=False, on_protocol=measure)


if __name__ == "__main__":
    main()
