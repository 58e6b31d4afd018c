"""How scores.npz was made: fp32 scores of spadecam 0.1 (commit fe5f1b3, before precision="auto").

Run once, from the repository root, on that commit; test_precision.py checks that
``precision="32"`` still gives exactly these numbers. Kept to document the fixture, not run
by the tests (re-running it on newer code would only copy that code's numbers).
"""

import numpy as np
import torch

from spadecam import SPADE, CNNDetector, NaiveSPADE, VAEDetector
from spadecam.io import save_models
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.vae import ConvVAE, VAEConfig

torch.manual_seed(20261129)
vae = ConvVAE(VAEConfig(latent_dim=8, image_size=32, channels=(8, 16))).eval()
cnn = ConvClassifier(CNNConfig(channels=(8, 8, 16), kernel_sizes=(5, 5, 5))).eval()
for m in cnn.modules():  # random batch-norm statistics, so batch norm is not the identity
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.5, 1.5)
x = np.random.default_rng(7).integers(0, 256, size=(40, 1, 32, 32), dtype=np.uint8)
save_models("tests/data/golden_fp32", vae, cnn)
out = {"images": x}
kw = dict(error_smoothing=2.0, error_norm="l2", batch_size=16)
out["spade"] = SPADE.from_models(vae, cnn, precision="32", **kw, knn_power=0.0,
    recipe="spadecam").decision_function(x)
out["spade_paper"] = SPADE.from_models(vae, cnn, precision="32", batch_size=16,
                                      knn_power=0.0, recipe="spadecam").decision_function(x)
out["naive_spade"] = NaiveSPADE.from_models(vae, cnn, precision="32", **kw).decision_function(x)
out["vae"] = VAEDetector.from_models(vae, precision="32", **kw).decision_function(x)
out["cnn"] = CNNDetector.from_models(cnn, precision="32", batch_size=16).decision_function(x)
out["spade_map"] = SPADE.from_models(vae, cnn, precision="32", **kw, knn_power=0.0,
    recipe="spadecam").anomaly_map(x[:4])
np.savez_compressed("tests/data/golden_fp32/scores.npz", **out)
