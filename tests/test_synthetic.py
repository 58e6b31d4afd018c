"""Synthetic anomalies for the classifier (spadecam.bench.synthetic.cutpaste)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spadecam.bench.synthetic import cutpaste


def _ramp(n: int = 3, size: int = 32) -> torch.Tensor:
    # every pixel of every image different, so a pasted patch always changes its pixels
    base = np.arange(size * size, dtype=np.int64).reshape(size, size) % 251
    return torch.from_numpy(np.stack([(base + 3 * i) % 251 for i in range(n)])[:, None]
                            .astype(np.uint8))


def test_each_synthetic_image_is_a_normal_one_with_one_rectangle_changed():
    x = _ramp()
    out = cutpaste(x, 8, seed=0)
    assert out.shape == (8, 1, 32, 32) and out.dtype == torch.uint8
    for k, img in enumerate(out.numpy()):
        # the untouched part equals one of the normal images
        diffs = [np.argwhere(img[0] != xi[0]) for xi in x.numpy()]
        d = min(diffs, key=len)
        assert len(d) > 0
        (r0, c0), (r1, c1) = d.min(0), d.max(0)
        h, w = r1 - r0 + 1, c1 - c0 + 1
        assert len(d) <= h * w  # inside one rectangle
        if k % 2 == 0:  # a block: 2-15 % of the image (rounding of the sides aside)
            assert 0.01 * 32 * 32 <= h * w <= 0.2 * 32 * 32
        else:  # a scar: 1 or 2 px thin (1/32-1/16 of 32), 8-16 px long
            assert min(h, w) <= 2 and 7 <= max(h, w) <= 16


def test_seeded_and_the_callers_rng_untouched():
    x = _ramp()
    torch.manual_seed(123)
    np.random.seed(123)
    state_t, state_n = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    a, b = cutpaste(x, 6, seed=1), cutpaste(x, 6, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, cutpaste(x, 6, seed=2))
    assert torch.equal(torch.random.get_rng_state(), state_t)
    assert (np.random.get_state()[1] == state_n).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        cutpaste(torch.zeros(2, 1, 8, 8), 1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        cutpaste(_ramp(), -1)
    assert cutpaste(_ramp(), 0).shape == (0, 1, 32, 32)
