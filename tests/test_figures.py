"""Figures leave the caller's matplotlib alone: no backend switch, no figure left open."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from spadecam.bench.figures import plot_gallery, plot_roc_curves, plot_samples


@pytest.fixture
def svg_backend():
    """A backend other than Agg for the test (non-interactive), the caller's restored after."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(before)


def test_figures_keep_the_callers_backend_and_open_figures(tmp_path, svg_backend):
    import matplotlib.pyplot as plt

    mine = plt.figure()  # a figure of the caller's session
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8))
    plot_samples(images, ["a", "b", "c", "d"], tmp_path / "s.png", ncols=2)
    plot_gallery(images, images, rng.random(4), np.arange(4), tmp_path / "g.png", n=2)
    plot_roc_curves(np.array([0, 1, 0, 1]), {3: {"spade": rng.random(4)}}, tmp_path / "r.png")
    assert matplotlib.get_backend() == "svg"  # was switched to Agg
    assert plt.get_fignums() == [mine.number]
    plt.close(mine)
    for name in ("s", "g", "r"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
