"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _precision_cache(tmp_path_factory, monkeypatch):
    """Training precisions measured by ``precision="auto"`` (CPUs with native bf16) are kept
    in a fresh cache folder per test, never the user's, and forgotten in memory."""
    monkeypatch.setenv("SPADECAM_CACHE_DIR", str(tmp_path_factory.mktemp("spadecam-cache")))
    from spadecam import precision

    precision._MEASURED.clear()


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
                             progress=False, recipe="spadecam")
    finally:
        torch.set_num_threads(n)
    return out, folders


#: What torch may report about a CPU's bf16 support, as (AMX tiles, AVX512-BF16): the machines
#: this project runs on have either kind, older ones neither. ``precision="auto"`` chooses by
#: these reports, so a test of what "auto" does runs under each of them (``cpu_kind``) and
#: passes whichever CPU the suite happens to run on.
CPU_REPORTS = {"amx": (True, True), "avx512_bf16": (False, True), "no_bf16": (False, False)}


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what torch reports about the CPU's bf16 support: cpu_bf16(amx, avx512_bf16).

    Only the report changes: on a CPU without native bf16 the bf16 kernels still run
    (emulated, slower), so every code path can be tested on any machine.
    """

    def set_flags(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return set_flags


@pytest.fixture(params=list(CPU_REPORTS))
def cpu_kind(request, cpu_bf16):
    """Run the test once per CPU report of :data:`CPU_REPORTS`; yields the kind's name."""
    cpu_bf16(*CPU_REPORTS[request.param])
    return request.param
