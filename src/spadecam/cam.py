"""Grad-CAM maps of the normal class (paper eq. 3-4); the ROI built on them is :mod:`spadecam.roi`.

Notation follows Narita et al., arXiv 1810.02607, section II-C and Algorithm 1:

* A_k — the k-th feature map of the chosen conv layer, y^c — the pre-softmax score of the
  normal class.
* eq. 3: alpha_k = (1/Z) sum_ij dy^c / dA_k^ij (Z = number of feature-map pixels).
* eq. 4: the signed map M = sum_k alpha_k A_k (captum's ``LayerGradCam`` with
  ``relu_attributions=False``); plain Grad-CAM would apply ReLU to it.
* eq. 5 (:mod:`spadecam.roi`): L = Abs(M(u)) + ReLU(M(u_hat)), upsampled to the image, and
  the weighted error e' = e * L / |L|.

``apply_branch``, ``upsample_roi``, ``normalise_roi``, ``weighted_error`` and ``BRANCHES`` lived
here until 0.2; they are :mod:`spadecam.roi`'s now, and importing them from here warns
(DeprecationWarning) for one release, as does :func:`spade_roi`.

Every function returns new tensors and leaves the model as it found it: train/eval mode and
``requires_grad`` flags are restored and no hook stays registered (the captum habit).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from spadecam.models.classifier import FeatureClassifier, has_linear_head
from spadecam.models.cnn import NORMAL_CLASS

__all__ = [
    "closed_form_applies",
    "eval_mode",
    "grad_cam",
    "grad_cam_and_logits",
    "grad_cam_logits_features",
    "spade_roi",
]

#: Names moved to :mod:`spadecam.roi` in 0.2, still importable from here with a warning.
_MOVED_TO_ROI = ("BRANCHES", "apply_branch", "normalise_roi", "upsample_roi", "weighted_error")


def __getattr__(name: str):
    if name in _MOVED_TO_ROI:
        warnings.warn(f"spadecam.cam.{name} moved to spadecam.roi.{name} in 0.2; the old "
                      "name goes in 0.3", DeprecationWarning, stacklevel=2)
        from spadecam import roi

        return getattr(roi, name)
    raise AttributeError(f"module 'spadecam.cam' has no attribute {name!r}")


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Every submodule of ``models`` in eval mode for the duration; each one's own
    ``training`` flag restored afterwards.

    ``Module.train(flag)`` sets the flag of every submodule, so restoring only the top-level
    module's would reset an encoder the caller had put in train mode inside an eval VAE, or a
    frozen (eval) batch norm inside a training classifier. Here each submodule gets
    back exactly the flag it had.
    """
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _eval_frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; restore both afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with eval_mode(model):
            for p, _ in flags:
                p.requires_grad_(False)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def closed_form_applies(model: nn.Module, layer: int = -1) -> bool:
    """True when the layer Grad-CAM reads is followed directly by GAP + linear.

    Then dy^c/dA_k^ij = w_ck / Z at every pixel, so alpha_k = w_ck / Z (eq. 3) exactly and no
    backward pass is needed. This holds for a
    :class:`~spadecam.models.classifier.FeatureClassifier` (the 3-conv CNN, ResNet-18) with its
    GAP + linear head, read at its last block.
    """
    if not (isinstance(model, FeatureClassifier) and has_linear_head(model)):
        return False
    return layer % len(model.features) == len(model.features) - 1


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    layer: int | nn.Module = -1,
    class_idx: int = NORMAL_CLASS,
    method: str = "auto",
) -> torch.Tensor:
    """Signed Grad-CAM map M = sum_k alpha_k A_k for a whole batch in one pass (eq. 3-4).

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits (N, n_classes). For a
        :class:`~spadecam.models.classifier.FeatureClassifier`, ``layer`` may be the index of
        a block; for any other model pass the module whose output is
        A (a forward hook reads it and is removed before returning).
    x : Tensor (N, C, H, W), float
        Input images, [0, 1] scale.
    layer : int or nn.Module
        Which feature map A to explain (default: the last conv block).
    class_idx : int
        Logit explained; default the normal class (pre-softmax score, as in the paper).
    method : {"auto", "closed_form", "autograd"}
        ``"auto"`` uses the closed form when :func:`closed_form_applies`, else autograd.

    Returns
    -------
    Tensor (N, h, w), same dtype as the feature map
        Signed map at the feature-map resolution (not rectified, not upsampled).

    Raises
    ------
    ValueError
        ``method="closed_form"`` on a model/layer where it does not hold, or a bad ``method``.

    Notes
    -----
    Runs in eval mode (batch statistics would couple images), restores the model's mode and
    ``requires_grad`` flags, works inside ``torch.no_grad()`` / ``torch.inference_mode()``.
    On the autograd path the layer's output A is captured by a forward hook and the network
    continues on a copy of it, so in-place operations after the layer (``ReLU(inplace=True)``)
    give the same map as their out-of-place versions.

    References
    ----------
    Narita et al., arXiv 1810.02607, eq. 3-4; Selvaraju et al. 2017 (Grad-CAM).
    """
    return grad_cam_and_logits(model, x, layer, class_idx, method)[0]


def grad_cam_and_logits(
    model: nn.Module,
    x: torch.Tensor,
    layer: int | nn.Module = -1,
    class_idx: int = NORMAL_CLASS,
    method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`grad_cam` and the classifier's logits (N, 2) from the same forward pass.

    The closed form reads the logits off the head it already applies (GAP + linear on A), the
    autograd path off the forward it differentiates; so a score that also needs the
    classifier's probability (SPADE's ``classifier_weight``) costs no second forward.
    Parameters, errors and notes as :func:`grad_cam`.
    """
    cam, logits, _ = grad_cam_logits_features(model, x, layer, class_idx, method)
    return cam, logits


def grad_cam_logits_features(
    model: nn.Module,
    x: torch.Tensor,
    layer: int | nn.Module = -1,
    class_idx: int = NORMAL_CLASS,
    method: str = "auto",
    feature_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`grad_cam_and_logits` and the globally average-pooled output (N, K) float32 of
    block ``feature_layer`` of a :class:`~spadecam.models.classifier.FeatureClassifier`, all
    from the same forward pass (None when ``feature_layer`` is None).

    The feature bank's query (:func:`spadecam.knn.pooled_features`) then costs no
    second classifier pass: block ``feature_layer`` runs once, on the way to the CAM layer
    (or past it, on the autograd path). Parameters, errors and notes as :func:`grad_cam`;
    ValueError also for an int ``feature_layer`` on a model that is not a FeatureClassifier.
    """
    if method not in ("auto", "closed_form", "autograd"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'autograd', got {method!r}")
    if feature_layer is not None and not isinstance(model, FeatureClassifier):
        raise ValueError("feature_layer needs a FeatureClassifier (a list of blocks), got "
                         f"a {type(model).__name__}")
    if isinstance(layer, int) and not isinstance(model, FeatureClassifier):
        raise ValueError(
            "layer must be an nn.Module for models other than a FeatureClassifier (features + "
            "GAP + linear head), got an int"
        )
    use_closed = isinstance(layer, int) and closed_form_applies(model, layer)
    if method == "closed_form" and not use_closed:
        raise ValueError(
            "method='closed_form' needs a FeatureClassifier read at its last block, with its "
            "GAP + linear head after the CAM layer"
        )
    if method == "autograd":
        use_closed = False
    with _eval_frozen(model):
        if use_closed:
            assert isinstance(model, FeatureClassifier)
            return _closed_form_cam(model, x, class_idx, feature_layer)
        return _autograd_cam(model, x, layer, class_idx, feature_layer)


def _pooled(a: torch.Tensor) -> torch.Tensor:
    return a.float().mean(dim=(2, 3))


def _closed_form_cam(
    model: FeatureClassifier, x: torch.Tensor, class_idx: int, feature_layer: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        keep = None if feature_layer is None else feature_layer % len(model.features)
        a, pooled = x, None
        for i, block in enumerate(model.features):  # forward_features(x, -1), keeping one block
            a = block(a)
            if i == keep:
                pooled = _pooled(a)
        z = a.shape[2] * a.shape[3]
        alpha = model.fc.weight[class_idx].to(a.dtype) / z  # eq. 3 in closed form
        return torch.einsum("nkhw,k->nhw", a, alpha), model.head(a), pooled


def _autograd_cam(
    model: nn.Module, x: torch.Tensor, layer: int | nn.Module, class_idx: int,
    feature_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if isinstance(layer, int):
        features = model.get_submodule("features")
        if not isinstance(features, nn.ModuleList | nn.Sequential):
            raise TypeError(f"the classifier's features is a {type(features).__name__}, not a list "
                            "of layers; pass the Grad-CAM layer as a module")
        module = features[layer]
    else:
        module = layer
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"the Grad-CAM layer {type(_mod).__name__} returns {type(out).__name__}, not a "
                "tensor (N, K, h, w); pass the module whose output is the feature map"
            )
        captured.append(out)
        # the rest of the network gets a copy: a later in-place op (VGG's ReLU(inplace=True))
        # would otherwise overwrite A itself, and the map would use ReLU(A) in eq. 4
        return out.clone()

    pooled: list[torch.Tensor] = []
    handles = [module.register_forward_hook(hook)]
    if feature_layer is not None:
        assert isinstance(model, FeatureClassifier)  # grad_cam_logits_features checked
        handles.append(model.features[feature_layer].register_forward_hook(
            lambda _m, _i, out: pooled.append(_pooled(out.detach()))))
    try:
        # inference tensors cannot enter autograd; leave inference mode and copy the input
        with torch.inference_mode(False), torch.enable_grad():
            # parameters are frozen, so the input carries the gradient path to A
            xin = x.detach().clone().requires_grad_(True)
            logits = model(xin)
            if not captured:
                raise ValueError("the Grad-CAM layer was not run by the model's forward")
            a = captured[-1]
            if not a.requires_grad:
                raise ValueError("the Grad-CAM layer's output does not depend on a gradient path")
            # images are independent in eval mode, so d(sum y)/dA gives per-image gradients
            (grads,) = torch.autograd.grad(logits[:, class_idx].sum(), a)
            alpha = grads.mean(dim=(2, 3), keepdim=True)  # eq. 3
            # eq. 4, signed
            return ((alpha * a).sum(dim=1).detach(), logits.detach(),
                    pooled[-1] if pooled else None)
    finally:
        for handle in handles:
            handle.remove()


def spade_roi(
    cnn: nn.Module,
    u: torch.Tensor,
    u_hat: torch.Tensor,
    layer: int | nn.Module = -1,
    input_branch: str = "abs",
    recon_branch: str = "relu",
    method: str = "auto",
) -> torch.Tensor:
    """SPADE ROI L = Abs(M(u)) + ReLU(M(u_hat)) at feature resolution (eq. 5).

    Deprecated in 0.2 (goes in 0.3): the product computes the ROI with
    :func:`spadecam.roi.roi_weights` on the maps of :func:`grad_cam`; this is
    ``spadecam.roi.eq5`` on them.

    u and u_hat go through the CNN as one batch of 2N images (one forward, and one backward
    when the autograd path is needed).

    Parameters
    ----------
    cnn : nn.Module
        The normal-vs-known-anomaly classifier.
    u, u_hat : Tensor (N, C, H, W), float in [0, 1]
        Input images and their VAE reconstructions.
    input_branch, recon_branch : str
        See :func:`apply_branch`; defaults are the paper's eq. 5.

    Returns
    -------
    Tensor (N, h, w), float, >= 0 for the paper's branches.
    """
    warnings.warn("spadecam.cam.spade_roi is deprecated (goes in 0.3): use "
                  "spadecam.roi.eq5 / roi_weights on grad_cam's maps", DeprecationWarning,
                  stacklevel=2)
    if u.shape != u_hat.shape:
        raise ValueError(f"u and u_hat must have the same shape, got {u.shape} and {u_hat.shape}")
    from spadecam.roi import eq5

    n = u.shape[0]
    m = grad_cam(cnn, torch.cat([u, u_hat]), layer=layer, method=method)
    return eq5(m[:n], m[n:], input_branch, recon_branch)
