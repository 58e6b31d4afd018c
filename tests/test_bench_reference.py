"""make bench's captum reference computes the default score (it had drifted).

When the default score gained the classifier weight and the feature bank, the reference in
benchmarks/bench_scoring.py kept the paper's score and `make bench` stopped at its 1e-4
check; this runs that check on tiny random models, in a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spadecam import SPADE
from spadecam.bench.configs import noisy_mnist_benchmark
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.vae import ConvVAE, VAEConfig

pytestmark = pytest.mark.usefixtures("single_thread")
BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")


@pytest.mark.parametrize("params", [{}, {"knn_power": 0.0, "classifier_weight": 0.0},
                                    {"knn_power": 2.0, "knn_layer": -2}])
def test_the_captum_reference_equals_the_fp32_default_path(params, monkeypatch):
    pytest.importorskip("captum")
    monkeypatch.syspath_prepend(BENCHMARKS)  # for this test only, not the whole session
    import bench_scoring

    torch.manual_seed(0)
    vae = ConvVAE(VAEConfig(in_channels=1, image_size=16, latent_dim=4, channels=(8, 8))).eval()
    cnn = ConvClassifier(CNNConfig(in_channels=1, channels=(8, 8, 8))).eval()
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    r = noisy_mnist_benchmark("spadecam")
    det = SPADE.from_models(vae, cnn, u8[:8, None], precision="32", cam_layer=r.cam_layer,
                            upsample=r.upsample, error_smoothing=r.error_smoothing,
                            error_norm=r.error_norm, **params, recipe="spadecam")
    ref = bench_scoring._captum_scores(det, u8, r)
    ours = det.decision_function(u8)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
