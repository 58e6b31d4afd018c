"""Tests for spadecam.cam: Grad-CAM (eq. 3-4), the SPADE ROI (eq. 5) and its normalisation.

Expected values come from a hand computation on a tiny network, from finite differences on
the feature map, or from an independent autograd computation written here in the test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spadecam.cam import closed_form_applies, grad_cam, spade_roi
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.roi import (
    apply_branch,
    eq5,
    normalise_roi,
    roi_weights,
    upsample_roi,
    weighted_error,
)

# --------------------------------------------------------------------------- helpers


def random_classifier(seed: int, batch_norm: bool | None = None) -> tuple[ConvClassifier, int]:
    """A random ConvClassifier (random config, weights and BN running stats), in eval mode."""
    g = torch.Generator().manual_seed(seed)

    def rint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    n = rint(1, 3)
    bn = bool(rint(0, 1)) if batch_norm is None else batch_norm
    cfg = CNNConfig(
        in_channels=rint(1, 2),
        channels=tuple(rint(2, 5) for _ in range(n)),
        kernel_sizes=tuple((1, 3, 5)[rint(0, 2)] for _ in range(n)),
        strides=tuple(rint(1, 2) for _ in range(n)),
        batch_norm=bn,
    )
    torch.manual_seed(seed)
    model = ConvClassifier(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval(), cfg.in_channels


def reference_cam(model: ConvClassifier, x: torch.Tensor, upto: int, class_idx: int = 0):
    """Eq. 3-4 computed here with torch.autograd on a detached feature map."""
    with torch.enable_grad():
        a = model.forward_features(x, upto).detach().requires_grad_(True)
        h = a
        for block in list(model.features)[upto % len(model.features) + 1 :]:
            h = block(h)
        y = model.head(h)[:, class_idx].sum()
        (g,) = torch.autograd.grad(y, a)
    alpha = g.mean(dim=(2, 3), keepdim=True)
    return (alpha * a).sum(dim=1).detach()


def fd_cam(rest, a: torch.Tensor, class_idx: int = 0, eps: float = 1e-6) -> torch.Tensor:
    """M = sum_k alpha_k A_k with alpha_k the spatial mean of central differences of y^c.

    ``rest`` maps a feature map (B, K, h, w) to logits; ``a`` is float64.
    """
    n, k, h, w = a.shape
    out = []
    for i in range(n):
        basis = torch.eye(k * h * w, dtype=a.dtype).view(k * h * w, k, h, w)
        with torch.no_grad():
            y_plus = rest(a[i] + eps * basis)[:, class_idx]
            y_minus = rest(a[i] - eps * basis)[:, class_idx]
        grad = ((y_plus - y_minus) / (2 * eps)).view(k, h, w)
        alpha = grad.mean(dim=(1, 2))
        out.append(torch.einsum("k,khw->hw", alpha, a[i]))
    return torch.stack(out)


def no_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


# --------------------------------------------------------------------------- hand computation


def hand_network() -> ConvClassifier:
    """1x1 conv with 2 channels, no BN, then GAP + linear; weights set by hand."""
    model = ConvClassifier(
        CNNConfig(in_channels=1, channels=(2,), kernel_sizes=(1,), strides=(1,), batch_norm=False)
    )
    with torch.no_grad():
        conv = model.features[0][0]
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([-0.3, 0.4]))
        model.fc.weight.copy_(torch.tensor([[2.0, -3.0], [0.5, 1.0]]))
        model.fc.bias.copy_(torch.tensor([0.1, -0.2]))
    return model.eval()


HAND_X = torch.tensor([[[[0.2, 0.8], [0.5, 0.1]]]])
# Feature maps A_k = ReLU(w_k * x + b_k):
#   channel 0: x - 0.3  = [[-0.1, 0.5], [0.2, -0.2]]  -> A_0 = [[0, 0.5], [0.2, 0]]
#   channel 1: 0.4 - x  = [[0.2, -0.4], [-0.1, 0.3]]  -> A_1 = [[0.2, 0], [0, 0.3]]
# Z = 4 pixels, y^c = sum_k w_ck mean(A_k) + b_c, so alpha_k = w_ck / 4:
#   class 0 (normal): alpha = [2/4, -3/4] = [0.5, -0.75]
#     M = 0.5 A_0 - 0.75 A_1 = [[0 - 0.15, 0.25 - 0], [0.1 - 0, 0 - 0.225]]
#   class 1:          alpha = [0.5/4, 1/4] = [0.125, 0.25]
#     M = [[0 + 0.05, 0.0625 + 0], [0.025 + 0, 0 + 0.075]]
HAND_M = {
    0: torch.tensor([[[-0.15, 0.25], [0.1, -0.225]]]),
    1: torch.tensor([[[0.05, 0.0625], [0.025, 0.075]]]),
}


@pytest.mark.parametrize("class_idx", [0, 1])
def test_grad_cam_closed_form_matches_hand_computation(class_idx):
    model = hand_network()
    m = grad_cam(model, HAND_X, class_idx=class_idx, method="closed_form")
    torch.testing.assert_close(m, HAND_M[class_idx], atol=1e-6, rtol=0)
    # "auto" picks the closed form here and must agree too
    torch.testing.assert_close(grad_cam(model, HAND_X, class_idx=class_idx), HAND_M[class_idx])


def test_hand_network_logits_sanity():
    # y = fc(mean A): mean A_0 = 0.7/4 = 0.175, mean A_1 = 0.5/4 = 0.125
    # y_0 = 2*0.175 - 3*0.125 + 0.1 = 0.075 ; y_1 = 0.5*0.175 + 1*0.125 - 0.2 = 0.0125
    with torch.no_grad():
        logits = hand_network()(HAND_X)
    torch.testing.assert_close(logits, torch.tensor([[0.075, 0.0125]]))


@pytest.mark.parametrize("class_idx", [0, 1])
def test_grad_cam_autograd_matches_hand_computation(class_idx):
    m = grad_cam(hand_network(), HAND_X, class_idx=class_idx, method="autograd")
    torch.testing.assert_close(m, HAND_M[class_idx], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- finite differences


def test_grad_cam_autograd_matches_finite_differences_intermediate_layer():
    """cam_layer=0 of a 2-block ConvClassifier: block 1 (conv, BN, ReLU) sits between A and GAP."""
    torch.manual_seed(3)
    model = ConvClassifier(
        CNNConfig(channels=(3, 4), kernel_sizes=(3, 3), strides=(2, 1), batch_norm=True)
    )
    with torch.no_grad():
        bn = model.features[1][1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    model = model.double().eval()
    assert not closed_form_applies(model, 0)
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        a = model.forward_features(x, 0)

    def rest(h):
        return model.head(model.features[1](h))

    expected = fd_cam(rest, a)
    for method in ("auto", "autograd"):
        m = grad_cam(model, x, layer=0, method=method)
        assert m.dtype == torch.float64 and m.shape == (2, 5, 5)
        torch.testing.assert_close(m, expected, atol=1e-7, rtol=1e-6)


class NonLinearHead(nn.Module):
    """Conv body followed by a non-linear, non-GAP head (no closed form)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh())
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        h = nn.functional.softplus(self.conv2(a)).flatten(1)
        return torch.sin(self.fc(h)) + 0.1 * self.fc(h) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.body(x))


@pytest.mark.parametrize("class_idx", [0, 1])
def test_grad_cam_autograd_matches_finite_differences_custom_module(class_idx):
    torch.manual_seed(5)
    model = NonLinearHead().double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        a = model.body(x)
    expected = fd_cam(model.rest, a, class_idx=class_idx)
    m = grad_cam(model, x, layer=model.body, class_idx=class_idx)
    torch.testing.assert_close(m, expected, atol=1e-7, rtol=1e-6)


def test_finite_difference_reference_agrees_with_reference_autograd():
    """Guards the two references against each other (so the FD tests test grad_cam only)."""
    model, c = random_classifier(11, batch_norm=True)
    model = model.double()
    x = torch.rand(2, c, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        a = model.forward_features(x, 0)

    def rest(h):
        for block in list(model.features)[1:]:
            h = block(h)
        return model.head(h)

    torch.testing.assert_close(fd_cam(rest, a), reference_cam(model, x, 0), atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------- closed form vs autograd


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_matches_reference_autograd_on_random_networks(seed):
    model, c = random_classifier(seed)
    x = torch.rand(3, c, 13 + seed, 11 + 2 * seed)
    m = grad_cam(model, x, method="closed_form")
    torch.testing.assert_close(m, reference_cam(model, x, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_closed_form_equals_autograd_on_random_networks(seed):
    model, c = random_classifier(seed)
    x = torch.rand(3, c, 13 + seed, 11 + 2 * seed)
    closed = grad_cam(model, x, method="closed_form")
    auto = grad_cam(model, x, method="autograd")
    assert closed.shape == auto.shape
    torch.testing.assert_close(closed, auto, atol=1e-5, rtol=1e-5)


def test_grad_cam_is_per_image_independent_of_batch():
    model, c = random_classifier(2, batch_norm=True)
    x = torch.rand(4, c, 12, 12)
    whole = grad_cam(model, x)
    parts = torch.cat([grad_cam(model, x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, parts, atol=1e-6, rtol=1e-5)


def test_closed_form_applies_only_to_last_block():
    model = ConvClassifier(CNNConfig(channels=(2, 2, 2)))  # default kernels/strides: 3 layers
    assert closed_form_applies(model, -1) and closed_form_applies(model, 2)
    assert not closed_form_applies(model, 0) and not closed_form_applies(model, 1)
    assert not closed_form_applies(NonLinearHead(), -1)


def test_grad_cam_argument_errors():
    model = ConvClassifier(CNNConfig(channels=(2, 2), kernel_sizes=(3, 3), strides=(2, 1)))
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="closed_form"):
        grad_cam(model, x, layer=0, method="closed_form")
    with pytest.raises(ValueError, match="method"):
        grad_cam(model, x, method="exact")
    with pytest.raises(ValueError, match="layer"):
        grad_cam(NonLinearHead(), torch.rand(1, 1, 4, 4), layer=0)


def test_grad_cam_layer_not_in_forward_raises_and_cleans_up():
    model = NonLinearHead().train()
    stray = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="not run"):
        grad_cam(model, torch.rand(1, 1, 4, 4), layer=stray)
    assert len(stray._forward_hooks) == 0 and no_hooks(model)
    assert model.training and all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- branches and ROI


def test_apply_branch_on_known_tensor():
    m = torch.tensor([[[-2.0, 0.5], [0.0, -0.25]]])
    torch.testing.assert_close(apply_branch(m, "abs"), torch.tensor([[[2.0, 0.5], [0.0, 0.25]]]))
    torch.testing.assert_close(apply_branch(m, "relu"), torch.tensor([[[0.0, 0.5], [0.0, 0.0]]]))
    torch.testing.assert_close(apply_branch(m, "identity"), m)
    torch.testing.assert_close(apply_branch(m, "none"), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="branch"):
        apply_branch(m, "square")


def test_apply_branch_does_not_modify_input():
    m = torch.tensor([-1.0, 2.0])
    for b in ("abs", "relu", "none"):
        apply_branch(m, b)
    torch.testing.assert_close(m, torch.tensor([-1.0, 2.0]))


@pytest.mark.parametrize(
    "layer",
    [-1, 0],
)
def test_spade_roi_equals_separate_grad_cams(layer):
    model = bn_model().eval()
    u, u_hat = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    expected = grad_cam(model, u, layer=layer).abs() + grad_cam(model, u_hat, layer=layer).clamp(
        min=0
    )
    with pytest.warns(DeprecationWarning, match="spade_roi"):
        roi = spade_roi(model, u, u_hat, layer=layer)
    torch.testing.assert_close(roi, expected, atol=1e-6, rtol=1e-5)
    assert (roi >= 0).all()
    # the ablation branches combine the same two maps
    m_u = grad_cam(model, u, layer=layer)
    torch.testing.assert_close(eq5(m_u, None, "identity", "none"), m_u)
    torch.testing.assert_close(eq5(m_u, grad_cam(model, u_hat, layer=layer)), expected,
                               atol=1e-6, rtol=1e-5)


def test_spade_roi_shape_mismatch():
    model = ConvClassifier(CNNConfig(channels=(2,), kernel_sizes=(3,), strides=(2,)))
    with pytest.raises(ValueError, match="same shape"), pytest.warns(DeprecationWarning):
        spade_roi(model, torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_moved_roi_helpers_warn_from_their_old_module():
    import spadecam.cam as cam
    import spadecam.roi as roi

    for name in ("BRANCHES", "apply_branch", "normalise_roi", "upsample_roi", "weighted_error"):
        with pytest.warns(DeprecationWarning, match=f"spadecam.roi.{name}"):
            assert getattr(cam, name) is getattr(roi, name)
    with pytest.raises(AttributeError):
        cam.no_such_name  # noqa: B018


def test_roi_weights_by_hand():
    # maps 1x2 -> eq. 5: Abs([-2, 1]) + ReLU([1, -3]) = [3, 1]; "nearest" to 1x4 gives
    # [3, 3, 1, 1]; padding on the last pixel -> [3, 3, 1, 0]; power 2 -> [9, 9, 1, 0],
    # sum 19 -> weights [9, 9, 1, 0] / 19
    m_u, m_h = torch.tensor([[[-2.0, 1.0]]]), torch.tensor([[[1.0, -3.0]]])
    valid = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    w = roi_weights(m_u, m_h, (1, 4), upsample="nearest", valid=valid, power=2.0)
    torch.testing.assert_close(w, torch.tensor([[[9.0, 9.0, 1.0, 0.0]]]) / 19)
    raw = roi_weights(m_u, m_h, (1, 4), upsample="nearest", normalise=False)
    torch.testing.assert_close(raw, torch.tensor([[[3.0, 3.0, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="roi_power"):
        roi_weights(m_u, m_h, (1, 4), power=0.0)
    with pytest.raises(ValueError, match="u_hat"):
        roi_weights(m_u, None, (1, 4))


def test_normalise_roi_sums_to_one_and_zero_stays_zero():
    torch.manual_seed(0)
    roi = torch.rand(3, 5, 6)
    roi[1] = 0.0
    out = normalise_roi(roi)
    assert not torch.isnan(out).any()
    sums = out.sum(dim=(1, 2))
    torch.testing.assert_close(sums[[0, 2]], torch.ones(2))
    assert torch.equal(out[1], torch.zeros(5, 6))
    torch.testing.assert_close(out[0], roi[0] / roi[0].sum())
    torch.testing.assert_close(out[2], roi[2] / roi[2].sum())


def test_normalise_roi_all_zero_batch():
    out = normalise_roi(torch.zeros(2, 3, 3))
    assert torch.equal(out, torch.zeros(2, 3, 3))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_upsample_roi_shape_and_constant(mode):
    roi = torch.full((2, 4, 4), 3.7)
    up = upsample_roi(roi, (28, 20), mode=mode)
    assert up.shape == (2, 28, 20)
    torch.testing.assert_close(up, torch.full((2, 28, 20), 3.7))


def test_upsample_roi_bilinear_is_align_corners_false():
    # 1x2 map [0, 1] upsampled to 1x4 with align_corners=False: source positions
    # (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped/interpolated 0, 0.25, 0.75, 1
    roi = torch.tensor([[[0.0, 1.0]]])
    up = upsample_roi(roi, (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_weighted_error_sums_channels():
    error = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    weights = torch.tensor([[[0.25, 0.75]]])
    # pixel 0: (1 + 3) * 0.25 = 1.0 ; pixel 1: (2 + 4) * 0.75 = 4.5
    torch.testing.assert_close(weighted_error(error, weights), torch.tensor([[[1.0, 4.5]]]))


# --------------------------------------------------------------------------- side effects

METHODS = ["closed_form", "autograd"]


def bn_model() -> ConvClassifier:
    torch.manual_seed(1)
    model = ConvClassifier(
        CNNConfig(channels=(3, 4), kernel_sizes=(3, 3), strides=(2, 1), batch_norm=True)
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("start_training", [True, False])
def test_grad_cam_restores_model_state(method, start_training):
    model = bn_model()
    x = torch.rand(3, 1, 12, 12)
    expected = grad_cam(bn_model().eval(), x, method="closed_form")
    model.train(start_training)
    model.fc.bias.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}

    m = grad_cam(model, x, method=method)

    # runs in eval mode whatever the start state (batch statistics would couple images)
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=1e-5)
    assert model.training is start_training
    assert all(mod.training is start_training for mod in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.fc.bias.requires_grad is False
    assert all(p.grad is None for p in model.parameters())
    for name, b in model.named_buffers():  # BN running stats untouched
        assert torch.equal(b, buffers[name]), name
    assert no_hooks(model)
    assert not m.requires_grad


def test_grad_cam_custom_layer_removes_hook():
    model = NonLinearHead().train()
    grad_cam(model, torch.rand(2, 1, 4, 4), layer=model.body)
    assert no_hooks(model) and model.training


@pytest.mark.parametrize("method", METHODS)
def test_grad_cam_under_no_grad_and_inference_mode(method):
    model = bn_model().eval()
    x = torch.rand(2, 1, 12, 12)
    expected = grad_cam(model, x, method="closed_form")
    with torch.no_grad():
        m_nograd = grad_cam(model, x, method=method)
    with torch.inference_mode():
        x_inf = x.clone()
        assert x_inf.is_inference()
        m_inf = grad_cam(model, x_inf, method=method)
    torch.testing.assert_close(m_nograd, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m_inf, expected, atol=1e-5, rtol=1e-5)
    assert no_hooks(model)
    assert all(p.requires_grad for p in model.parameters())


def test_grad_cam_intermediate_layer_inside_inference_mode():
    model = bn_model().eval()
    x = torch.rand(2, 1, 12, 12)
    expected = reference_cam(model, x, 0)
    with torch.inference_mode():
        m = grad_cam(model, x.clone(), layer=0)
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=1e-5)


class VGGStyle(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> GAP -> linear, with the ReLUs in place or not."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def test_grad_cam_of_a_layer_feeding_an_inplace_relu_equals_the_out_of_place_map():
    # the hook used to keep the conv output itself, which ReLU(inplace=True) then rectified:
    # the map differed by up to 25 % of its maximum from the same net with inplace=False
    torch.manual_seed(0)
    inplace, plain = VGGStyle(True).eval(), VGGStyle(False).eval()
    plain.load_state_dict(inplace.state_dict())
    x = torch.rand(5, 1, 12, 12)
    for layer in ("conv1", "conv2"):
        m_inplace = grad_cam(inplace, x, layer=getattr(inplace, layer))
        m_plain = grad_cam(plain, x, layer=getattr(plain, layer))
        assert (m_plain < 0).any()  # signed maps: the ReLU would have shown here
        torch.testing.assert_close(m_inplace, m_plain, rtol=0, atol=0)
    # and the network's own output is unchanged by the hook
    torch.testing.assert_close(inplace(x), plain(x))


def test_spade_with_a_user_classifier_whose_cam_layer_feeds_an_inplace_relu():
    from spadecam import SPADE
    from spadecam.models import ConvVAE, VAEConfig

    torch.manual_seed(1)
    vae = ConvVAE(VAEConfig(image_size=12, latent_dim=2, channels=(4, 4))).eval()
    inplace, plain = VGGStyle(True).eval(), VGGStyle(False).eval()
    plain.load_state_dict(inplace.state_dict())
    x = torch.rand(4, 1, 12, 12)
    a = SPADE.from_models(vae, inplace, cam_layer=inplace.conv2, knn_power=0.0,
        recipe="spadecam").anomaly_map(x)
    b = SPADE.from_models(vae, plain, cam_layer=plain.conv2, knn_power=0.0, recipe="spadecam").anomaly_map(x)
    assert (a == b).all()
