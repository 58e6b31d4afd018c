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
