"""The tiny real-MNIST slice, models and settings shared by tests/test_distributed.py and
the 2-process worker it starts (tests/_ddp_worker.py), so both sides train the same thing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from spadecam.data import load_mnist
from spadecam.models import CNNConfig, VAEConfig
from spadecam.training import TrainConfig

#: Per-process batch under DDP; one process gets 2 * BATCH (the same global batch).
BATCH = 8
#: The VAE's learning rate: high enough to move its ELBO well away from the untrained one
#: in the 5 steps of one epoch on 85 images.
VAE_LR = 1e-2
#: Normal (digit 0) and known-anomaly (digit 1) images of the training slice.
N_NORMAL, N_ANOMALY = 96, 48


def mnist_dir() -> Path | None:
    env = os.environ.get("SPADECAM_DATA")
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/mnist"
    return folder if folder.is_dir() else None


def mnist_slice(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """First N_NORMAL 0s and N_ANOMALY 1s of the MNIST test split: (N, 1, 28, 28) uint8, (N,)."""
    x, y = load_mnist("test", data)
    idx = np.concatenate([np.flatnonzero(y == 0)[:N_NORMAL], np.flatnonzero(y == 1)[:N_ANOMALY]])
    return (torch.from_numpy(x[idx]).unsqueeze(1),
            torch.from_numpy((y[idx] == 1).astype(np.int64)))


def cnn_config(batch_norm: bool) -> CNNConfig:
    return CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2), batch_norm=batch_norm)


def vae_config() -> VAEConfig:
    return VAEConfig(image_size=28, latent_dim=4, channels=(8, 8))


def train_config(batch_size: int, lr: float = 1e-3, **fabric) -> TrainConfig:
    # val_fraction 1/9: 16 of the 144 CNN images, so 128 train = 8 steps of 16 per epoch;
    # exact fp32, as DDP is compared with one process to 1e-5
    fabric = {"precision": "32-true", **fabric}
    return TrainConfig(epochs=1, batch_size=batch_size, lr=lr, seed=0, val_fraction=1 / 9,
                       progress=False, **fabric)
