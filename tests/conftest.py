"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module, restored afterwards.

    Tiny models train faster on one thread, and on a shared 2-core machine under load
    multi-threaded kernels spin (measured 20-70x slower fits).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny SPADE model directory from `spadecam train`, fitted once per session.

    Returns (model_dir, folders) with the folders of :func:`_own_images.make_folders`
    (32x32 grey PNGs, read at 16x16, the networks' minimum).
    """
    from _own_images import make_folders
    from spadecam import workflow

    root = tmp_path_factory.mktemp("tiny_model")
    folders = make_folders(root / "data", n_normal=16, n_anomaly=6, n_test=3)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = workflow.train(folders["train/good"], folders["train/defect"], root / "model",
                             image_size=16, latent_dim=4, batch_size=8, epochs=2,
                             progress=False)
    finally:
        torch.set_num_threads(n)
    return out, folders
