"""The reconstruction error e and its options (blurred residual, l1 / l2).

Hand computations: a Gaussian kernel that sums to one leaves a constant unchanged and keeps
the mass of a point away from the borders; on white noise of variance v it leaves variance
v * (sum_t k_t ** 2) ** 2 (separable kernel), about v / (4 pi sigma ** 2) for sigma >= 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spadecam import SPADE, NaiveSPADE, VAEDetector
from spadecam.bench.configs import noisy_mnist_benchmark
from spadecam.bench.reproduce import ABLATIONS
from spadecam.detectors import gaussian_blur, reconstruction_error, spade_error_map
from spadecam.models import CNNConfig, ConvClassifier, ConvVAE, VAEConfig


def test_blur_zero_sigma_is_identity():
    x = torch.rand(2, 1, 9, 9)
    assert gaussian_blur(x, 0.0) is x


@pytest.mark.parametrize("sigma", [-1.0, float("inf")])
def test_blur_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(torch.zeros(1, 1, 5, 5), sigma)


def test_blur_keeps_constants_and_point_mass():
    c = torch.full((1, 1, 20, 20), 0.37)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)
    d = torch.zeros(1, 1, 41, 41)
    d[0, 0, 20, 20] = 1.0
    b = gaussian_blur(d, 2.0)
    assert b.shape == d.shape
    assert b.sum().item() == pytest.approx(1.0, abs=1e-6)
    # the point spreads as the outer product of the 1-d kernel: centre weight k_0 ** 2
    k0 = 1 / sum(math.exp(-(t**2) / 8) for t in range(-6, 7))
    assert b[0, 0, 20, 20].item() == pytest.approx(k0**2, rel=1e-5)
    assert b[0, 0, 20, 22].item() == pytest.approx(k0**2 * math.exp(-4 / 8), rel=1e-5)


def test_blur_replicates_the_edge_pixel_by_hand():
    # sigma 0.5: radius ceil(1.5) = 2, kernel exp(-2 t^2) / Z over t = -2..2. At the left end
    # of [1, 0, 0, 0, 0] the taps t = -2, -1 fall outside and take the edge value 1, so the
    # output is (e^-8 + e^-2 + 1) / Z; a single row is unchanged by the vertical pass.
    z = 1 + 2 * math.exp(-2) + 2 * math.exp(-8)
    x = torch.tensor([[[[1.0, 0, 0, 0, 0]]]], dtype=torch.float64)
    b = gaussian_blur(x, 0.5)[0, 0, 0]
    assert b[0].item() == pytest.approx((math.exp(-8) + math.exp(-2) + 1) / z, rel=1e-12)
    # one pixel in: tap t = -1 reads the 1, t = -2 reads the edge copy of it
    assert b[1].item() == pytest.approx((math.exp(-8) + math.exp(-2)) / z, rel=1e-12)
    assert b[3].item() == 0.0  # the 1 is three pixels away, beyond the radius


@pytest.mark.parametrize("path", ["matrix", "convolution"])
def test_both_blur_paths_match_padding_then_convolving(path, monkeypatch):
    """The matrix form (sides <= BLUR_MATRIX_MAX_SIDE) and the 1-D convolutions (longer
    sides) both equal edge padding followed by a 2-D separable convolution, computed here
    in float64 numpy, on non-square two-channel images."""
    import spadecam.error as d

    if path == "convolution":
        monkeypatch.setattr(d, "BLUR_MATRIX_MAX_SIDE", 0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 2, 11, 17, generator=g)
    sigma = 1.3
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(x.double().numpy(), ((0, 0), (0, 0), (r, r), (r, r)), mode="edge")
    want = np.zeros(x.shape)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            want += k[i] * k[j] * pad[:, :, i : i + 11, j : j + 17]
    got = gaussian_blur(x, sigma)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_blur_is_per_channel():
    x = torch.zeros(1, 2, 15, 15)
    x[0, 0, 7, 7] = 1.0
    b = gaussian_blur(x, 1.0)
    assert b[0, 1].abs().max().item() == 0.0
    assert b[0, 0].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_blur_divides_white_noise_variance_by_4_pi_sigma_squared():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 400, 400, generator=g, dtype=torch.float64)
    sigma = 2.0
    inner = gaussian_blur(noise, sigma)[0, 0, 10:-10, 10:-10]  # away from the padding
    expected = 1 / (4 * math.pi * sigma**2)  # 0.0199
    assert inner.var().item() == pytest.approx(expected, rel=0.1)


def test_default_error_is_the_papers_absolute_difference():
    u, u_hat = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(reconstruction_error(u, u_hat), (u - u_hat).abs())


def test_l2_squares_the_blurred_residual():
    u, u_hat = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    r = gaussian_blur(u - u_hat, 1.5)
    torch.testing.assert_close(reconstruction_error(u, u_hat, 1.5, "l2"), r * r)
    torch.testing.assert_close(reconstruction_error(u, u_hat, 1.5, "l1"), r.abs())
    # hand value: residual 0.5 everywhere -> blurred 0.5 -> squared 0.25
    e = reconstruction_error(torch.full((1, 1, 6, 6), 0.75), torch.full((1, 1, 6, 6), 0.25),
                             2.0, "l2")
    torch.testing.assert_close(e, torch.full((1, 1, 6, 6), 0.25))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"smoothing": -1.0}, "error_smoothing"),
        ({"smoothing": float("nan")}, "error_smoothing"),
        ({"smoothing": "2"}, "error_smoothing"),
        ({"norm": "l3"}, "error_norm"),
    ],
)
def test_bad_error_options_name_the_argument(kwargs, match):
    u = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=match):
        reconstruction_error(u, u, **kwargs)


def _models(seed: int = 0) -> tuple[ConvVAE, ConvClassifier]:
    torch.manual_seed(seed)
    vae = ConvVAE(VAEConfig(image_size=28, latent_dim=4, channels=(8, 8))).eval()
    cnn = ConvClassifier(CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2))).eval()
    return vae, cnn


def test_spade_score_uses_the_configured_error():
    vae, cnn = _models()
    x = torch.rand(5, 1, 28, 28)
    # the paper's score (classifier weight 0), so e' / e recovers L / |L| alone
    det = SPADE.from_models(vae, cnn, error_smoothing=2.0, error_norm="l2", precision="32",
                            classifier_weight=0.0, knn_power=0.0, recipe="spadecam")
    with torch.no_grad():
        u_hat = vae.reconstruct(x)
        plain = spade_error_map(cnn, x, u_hat)
        weights = plain / (x - u_hat).abs()[:, 0]  # L / |L| of eq. 5, recovered
        expected = (reconstruction_error(x, u_hat, 2.0, "l2")[:, 0] * weights).sum((1, 2))
    got = det.decision_function(x.numpy())
    np.testing.assert_allclose(got, expected.double().numpy(), rtol=1e-4)
    paper = SPADE.from_models(vae, cnn, recipe="paper").decision_function(x.numpy())
    assert not np.allclose(got, paper)


def test_vae_detector_score_uses_the_configured_error():
    vae, _ = _models()
    x = torch.rand(4, 1, 28, 28)
    det = VAEDetector.from_models(vae, error_smoothing=1.0, error_norm="l2", precision="32")
    with torch.no_grad():
        expected = reconstruction_error(x, vae.reconstruct(x), 1.0, "l2").sum((1, 2, 3))
    np.testing.assert_allclose(det.decision_function(x.numpy()), expected.double().numpy(),
                               rtol=1e-5)


def test_bad_error_option_fails_before_any_work_with_its_name():
    # it used to fail only when scoring (and after training, in fit)
    vae, cnn = _models()
    with pytest.raises(ValueError, match='NaiveSPADE: error_norm must be one of .*"squared"'):
        NaiveSPADE.from_models(vae, cnn, error_norm="squared")


def test_save_load_keeps_error_options(tmp_path):
    vae, cnn = _models()
    det = SPADE.from_models(vae, cnn, error_smoothing=2.0, error_norm="l2", precision="32", knn_power=0.0,
        recipe="spadecam")
    det.threshold_ = 0.5
    loaded = SPADE.load(det.save(tmp_path / "m"))
    assert (loaded.error_smoothing, loaded.error_norm) == (2.0, "l2")
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(loaded.decision_function(x), det.decision_function(x), rtol=1e-6)


def test_recipes_error_settings():
    paper = noisy_mnist_benchmark("paper")
    assert (paper.error_smoothing, paper.error_norm) == (0.0, "l1")
    r = noisy_mnist_benchmark("spadecam")
    assert (r.error_smoothing, r.error_norm) == (2.0, "l2")
    assert ABLATIONS["spade_paper_error"] == {"error_smoothing": 0.0, "error_norm": "l1"}


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_roi_variants_on_cached_maps_equal_a_fresh_pass(precision):
    # the reproduction scores SPADE and its ablations on one set of signed maps
    vae, cnn = _models()
    x = torch.rand(6, 1, 28, 28)
    u_hat = vae.reconstruct(x)
    base = SPADE.from_models(vae, cnn, error_smoothing=2.0, error_norm="l2", precision=precision,
                             knn_power=0.0, recipe="spadecam")
    cams = base.signed_cams(x, u_hat)
    for variant in ({}, {"recon_branch": "abs"}, {"input_branch": "relu"}, {"normalise": False},
                    {"recon_branch": "none"}):
        det = SPADE.from_models(vae, cnn, error_smoothing=2.0, error_norm="l2",
                                precision=precision, **variant, knn_power=0.0, recipe="spadecam")
        fresh = det.error_map_from_reconstruction(x, u_hat)
        cached = det.error_map_from_reconstruction(x, u_hat, cams)
        if variant.get("recon_branch") == "none":  # M(u) from a batch of N vs 2N images
            torch.testing.assert_close(cached, fresh, rtol=1e-2 if precision == "bf16" else 1e-5,
                                       atol=1e-7)
        else:
            assert torch.equal(cached, fresh), variant


# ------------------------------------------------------------------- letterbox padding


class _ExactOnImage(ConvVAE):
    """A VAE that reconstructs every image pixel exactly and gets the padding wrong.

    Image pixels are in [0.2, 0.8] here and the letterbox padding is 0, so the padding is
    where u == 0; there u_hat = 0.9, a residual of 0.9 the score must never see.
    """

    def reconstruct(self, u: torch.Tensor) -> torch.Tensor:
        return torch.where(u == 0, torch.full_like(u, 0.9), u)


def test_blur_of_the_padding_never_reaches_the_image():
    u = torch.zeros(1, 1, 20, 20)
    u[..., 5:15, :] = 0.5  # a 10 x 20 image letterboxed into 20 x 20
    valid = (u > 0).float()
    u_hat = torch.where(valid > 0, u, torch.full_like(u, 0.9))
    for norm in ("l1", "l2"):
        e = reconstruction_error(u, u_hat, 2.0, norm, valid)
        assert e.abs().max().item() == 0.0, norm
        # without the mask the padding's residual is blurred into the image's border
        leak = (reconstruction_error(u, u_hat, 2.0, norm) * valid).sum().item()
        assert leak > 0.1, norm
    # on the image the masked blur is the blur renormalised over image pixels: a residual
    # constant on the image stays that constant up to the border (hand computation)
    r = torch.where(valid > 0, torch.full_like(u, 0.25), torch.zeros_like(u))
    e = reconstruction_error(u, u - r, 2.0, "l1", valid)
    torch.testing.assert_close(e[valid > 0], torch.full((200,), 0.25))
    assert (e[valid == 0] == 0).all()
    # and an image without padding gets exactly the unmasked blur
    x, y = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    assert torch.equal(reconstruction_error(x, y, 2.0, "l2", torch.ones(2, 1, 12, 12)),
                       reconstruction_error(x, y, 2.0, "l2"))


@pytest.mark.parametrize("smoothing", [0.0, 2.0])
@pytest.mark.parametrize("shape", [(3, 14, 28), (3, 28, 11), (3, 28, 28)])
def test_exact_reconstruction_scores_zero_at_any_aspect_ratio(smoothing, shape):
    torch.manual_seed(0)
    vae = _ExactOnImage(VAEConfig(image_size=28, latent_dim=4, channels=(8, 8))).eval()
    cnn = ConvClassifier(CNNConfig(channels=(8, 8), kernel_sizes=(3, 3), strides=(2, 2))).eval()
    x = np.random.default_rng(1).uniform(0.2, 0.8, shape).astype(np.float32)
    kw = dict(error_smoothing=smoothing, error_norm="l2", precision="32")
    for det in (VAEDetector.from_models(vae, **kw), SPADE.from_models(vae, cnn, **kw, knn_power=0.0,
        recipe="spadecam"),
                NaiveSPADE.from_models(vae, cnn, **kw)):
        np.testing.assert_array_equal(det.decision_function(x), 0.0, err_msg=type(det).__name__)
        assert max(float(m.max()) for m in det.anomaly_map(x)) == 0.0


def test_a_blur_first_asked_for_under_inference_mode_still_serves_autograd():
    """The blur matrix is cached: one built under torch.inference_mode (scoring) must not
    make a later blur with autograd (training) fail with 'Inference tensors cannot be saved
    for backward'."""
    from spadecam import error

    error._cached_blur_matrix.cache_clear()
    with torch.inference_mode():
        gaussian_blur(torch.rand(1, 1, 9, 7), 1.5)
    x = torch.rand(2, 1, 9, 7, dtype=torch.float32, requires_grad=True)
    gaussian_blur(x, 1.5).sum().backward()
    # a blur keeps constants: every column of B sums to what the row-normalised taps give,
    # and the gradient of the sum is B's column sums (B_H^T 1)(B_W^T 1)^T
    bh = error.blur_matrix(9, 1.5, torch.float32, torch.device("cpu"))
    bw = error.blur_matrix(7, 1.5, torch.float32, torch.device("cpu"))
    expected = bh.sum(0)[:, None] * bw.sum(0)[None, :]
    torch.testing.assert_close(x.grad[0, 0], expected)
