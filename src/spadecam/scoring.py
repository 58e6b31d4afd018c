"""The scoring graph: one ``nn.Module`` per detector kind, ``forward(u, valid) -> (score, map)``.

* :class:`SPADEScorer` (Algorithm 1): u_hat = VAE(u); the signed Grad-CAM maps M(u), M(u_hat)
  of the normal-class score (eq. 3-4, :mod:`spadecam.cam`), the ROI L (eq. 5,
  :mod:`spadecam.roi`), the reconstruction error e (:mod:`spadecam.error`) and the weighted
  error e' = e * L / |L|; score = sum of e'. With the Naive SPADE parameters
  (``input_branch="relu", recon_branch="none", normalise=False``) it is that baseline. With
  ``score="margin"`` (our option, :mod:`spadecam.fusion`): the error map's maximum and the
  classifier's logit difference, fused by their spread over held-out normal images.
* :class:`VAEScorer`: score = sum of e (the VAE-based baseline).
* :class:`CNNScorer`: score = the classifier's logit difference (the CNN-based baseline).

The detectors (:mod:`spadecam.detectors`) and the benchmarks run these modules, inside
:func:`scoring_context` (eval mode, inference mode, bf16 autocast where chosen). With the
closed-form Grad-CAM (a GAP + linear head read at its last block) a SPADE scorer is one
forward graph with no autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from spadecam.cam import eval_mode, grad_cam_logits_features
from spadecam.error import reconstruction_error
from spadecam.feature_error import PatchBank, in_chunks
from spadecam.fusion import (
    EvidenceCalibration,
    algorithm1_score,
    evidence_weighted_error,
    margin_score,
)
from spadecam.knn import FeatureBank
from spadecam.model_schema import SCORES
from spadecam.models.classifier import has_linear_head
from spadecam.models.cnn import NORMAL_CLASS
from spadecam.precision import resolve_scoring_precision
from spadecam.roi import roi_weights, weighted_error

__all__ = [
    "CNNScorer",
    "SPADEScorer",
    "SignedCams",
    "VAEScorer",
    "cnn_score",
    "scoring_context",
    "signed_cams",
    "spade_error_map",
]


class MarginParts(NamedTuple):
    """The margin fusion's raw numbers for a batch of N images
    (:meth:`SPADEScorer.margin_parts`): the error map e (N, H, W), its maximum (N,), the
    logit difference y_anomaly - y_normal (N,) and the feature bank's kNN distance (N,) or
    None (``knn_power`` 0), all float32."""

    e: torch.Tensor
    error_score: torch.Tensor
    logit: torch.Tensor
    knn_distance: torch.Tensor | None


class SignedCams(NamedTuple):
    """The signed maps M(u), M(u_hat) (N, h, w) of one layer and the logits (N, 2) of u.

    ``pooled_u``: u's pooled classifier features (N, K) float32 at block ``pooled_layer``
    (>= 0) of the classifier, the feature bank's, read in the same forward (None when the
    scorer has no bank). A scorer whose bank reads another block computes its own.
    """

    m_u: torch.Tensor
    m_u_hat: torch.Tensor | None
    logits_u: torch.Tensor
    pooled_u: torch.Tensor | None = None
    pooled_layer: int | None = None


class SPADEScorer(nn.Module):
    """SPADE's score and weighted error e' of a batch (Algorithm 1), as one module.

    Parameters
    ----------
    vae : ConvVAE or None
        The VAE trained on normal images (eq. 1); None when only :meth:`error_map` is used
        (the reconstructions are given).
    cnn : nn.Module
        Normal-vs-known-anomaly classifier (logit index 0 = normal; eq. 2).
    cam_layer : int or tuple of int
        Block whose Grad-CAM is read (default the last). A tuple reads several and averages
        their ROIs, each upsampled and normalised (a multi-layer ROI; our option).
    input_branch, recon_branch : str
        Functions on the signed maps of u and u_hat (eq. 5: "abs" and "relu"; "none" drops
        the term). Naive SPADE uses ("relu", "none").
    normalise : bool
        Divide the upsampled ROI by its per-image sum (L / |L|).
    upsample : str
        Interpolation of the ROI to the image size.
    cam_method : {"auto", "closed_form", "autograd"}, see :func:`spadecam.cam.grad_cam`
    error_smoothing, error_norm :
        The reconstruction error e, see :func:`~spadecam.error.reconstruction_error`
        (defaults: the paper's |u - u_hat|).
    roi_power : float > 0
        L ** roi_power before L / |L| (1 = the paper; our option).
    classifier_weight : float >= 0
        Multiplies e' by (1 + classifier_weight * p), p the classifier's softmax probability
        of the known-anomaly class, read off the Grad-CAM forward of u (no second pass). 0 =
        the paper. Our option.
    knn : FeatureBank, optional
        The normal training images' pooled classifier features (:mod:`spadecam.knn`).
    knn_power : float >= 0
        Multiplies e' by d ** knn_power, d the kNN distance of u's features to the bank
        (1 = a typical normal image). 0 (default) = the paper; our option. Under
        ``score="margin"`` it is instead w, the weight of d's z-score beside the error
        maximum's in the fusion's one-class term (:mod:`spadecam.fusion`).
    patch_bank : PatchBank, optional
        With it, e is the feature-space error (:mod:`spadecam.feature_error`: each patch's
        distance to the nearest normal training patch in a frozen pretrained backbone's
        features) instead of the reconstruction error; the ROI, the classifier weight and
        the feature bank weight it as they weight the reconstruction error. Our option.
    score : {"weighted_error", "margin"}
        "weighted_error" (default): Algorithm 1's sum of e' (with the factors above).
        "margin" (our option, :mod:`spadecam.fusion`): z(max of e) (joined by the feature
        bank's z(d) when ``knn_power`` > 0) + evidence_weight * max(0, z(l) -
        evidence_margin), l the classifier's logit difference, z in units of
        ``calibration`` (held-out normal images); no ROI (validation preferred the error's
        maximum to the ROI-weighted sum, docs/elpv.md), no VAE with a ``patch_bank``. The
        map it returns is e (N, H, W), whose maximum is the error term.
    calibration : EvidenceCalibration, optional
        Needed by ``forward`` with ``score="margin"`` (:meth:`margin_parts` computes the raw
        numbers it is made from); made with the feature bank exactly when ``knn_power`` > 0,
        with w = ``knn_power``.
    evidence_weight, evidence_margin : float >= 0
        The margin fusion's weight and margin (in held-out normal standard deviations).

    Raises
    ------
    ValueError
        ``roi_power <= 0``, ``classifier_weight < 0``, ``knn_power < 0``, ``knn_power > 0``
        without a ``knn`` bank, an unknown ``score``, a negative evidence weight / margin, or
        a ``calibration`` made with another ``knn_power`` (or with / without the bank).

    References
    ----------
    Narita et al., arXiv 1810.02607, eq. 3-5 and Algorithm 1.
    """

    def __init__(
        self,
        vae: Any,
        cnn: nn.Module,
        *,
        cam_layer: int | tuple[int, ...] = -1,
        input_branch: str = "abs",
        recon_branch: str = "relu",
        normalise: bool = True,
        upsample: str = "bilinear",
        cam_method: str = "auto",
        error_smoothing: float = 0.0,
        error_norm: str = "l1",
        roi_power: float = 1.0,
        classifier_weight: float = 0.0,
        knn: FeatureBank | None = None,
        knn_power: float = 0.0,
        patch_bank: PatchBank | None = None,
        score: str = "weighted_error",
        calibration: EvidenceCalibration | None = None,
        evidence_weight: float = 1.0,
        evidence_margin: float = 3.0,
    ) -> None:
        super().__init__()
        self.patch_bank = patch_bank
        # checked once per scorer, not per batch: a head fitted alone on the extractor's
        # frozen backbone lets one forward give the patch features and the logits
        self._shares_trunk = (patch_bank is not None
                              and patch_bank.extractor.shares_blocks_with(cnn))
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if not (evidence_weight >= 0 and evidence_margin >= 0):
            raise ValueError(f"evidence_weight and evidence_margin must be >= 0, got "
                             f"{evidence_weight!r}, {evidence_margin!r}")
        self.score, self.calibration = score, calibration
        self.evidence_weight, self.evidence_margin = float(evidence_weight), float(evidence_margin)
        if not (roi_power > 0 and classifier_weight >= 0):
            raise ValueError(f"roi_power must be > 0 and classifier_weight >= 0, got "
                             f"{roi_power!r}, {classifier_weight!r}")
        if not knn_power >= 0 or (knn_power > 0 and knn is None):
            raise ValueError(f"knn_power must be >= 0 and needs a feature bank (fit builds "
                             f"it), got {knn_power!r} with knn={knn!r}")
        self.knn, self.knn_power = knn, knn_power
        if score == "margin" and calibration is not None:
            calibration.check_knn_power(knn_power, "scorer")
        self.vae, self.cnn = vae, cnn
        self.layers = tuple(cam_layer) if isinstance(cam_layer, (tuple, list)) else (cam_layer,)
        self.input_branch, self.recon_branch = input_branch, recon_branch
        self.normalise, self.upsample, self.cam_method = normalise, upsample, cam_method
        self.error_smoothing, self.error_norm = error_smoothing, error_norm
        self.roi_power, self.classifier_weight = roi_power, classifier_weight

    def cams(self, u: torch.Tensor, u_hat: torch.Tensor, layer: int | None = None) -> SignedCams:
        """M(u), M(u_hat) (eq. 4; None when ``recon_branch="none"``), the logits of u and,
        with a feature bank in use, u's pooled features at the bank's block (a
        :class:`SignedCams`).

        With u_hat, u and u_hat go through the classifier as one batch of 2N images (one
        forward, and one backward if the autograd path is needed).
        """
        layer = self.layers[0] if layer is None else layer
        n = u.shape[0]
        x = u if self.recon_branch == "none" else torch.cat([u, u_hat])
        bank_layer = self._bank_layer()
        m, logits, pooled = grad_cam_logits_features(self.cnn, x, layer, method=self.cam_method,
                                                     feature_layer=bank_layer)
        return SignedCams(m[:n], None if self.recon_branch == "none" else m[n:], logits[:n],
                          None if pooled is None else pooled[:n], bank_layer)

    def _bank_layer(self) -> int | None:
        """The classifier block (>= 0) the feature bank reads; None without a bank in use."""
        if not self.knn_power or self.knn is None:
            return None
        features = self.cnn.get_submodule("features")
        assert isinstance(features, nn.ModuleList | nn.Sequential)  # a FeatureClassifier's
        return self.knn.layer % len(features)

    def error_map(
        self,
        u: torch.Tensor,
        u_hat: torch.Tensor,
        valid: torch.Tensor | None = None,
        cams: tuple | None = None,
    ) -> torch.Tensor:
        """Weighted reconstruction error e' (N, H, W) float32 of u (N, C, H, W) in [0, 1].

        ``valid`` (N, 1, H, W) in {0, 1}: image pixels (1) versus letterbox padding (0); the
        ROI and the error are zeroed on the padding before L / |L|, so padding never counts.
        ``cams``: the :meth:`cams` of the same classifier, layer and precision (a
        :class:`SignedCams`, or the (M(u), M(u_hat)) pair of :func:`signed_cams`); given,
        the classifier is not run again for the maps. One layer only. The classifier weight
        and the feature bank take the logits and features ``cams`` carries; when it carries
        none (a bare pair, or features of another block) they run the classifier on u.
        """
        roi, logits, pooled = self._roi(u, u_hat, valid, cams)
        # the feature-space error: the backbone in the scoring precision, distances in fp32
        feature_error = None if self.patch_bank is None else self.patch_bank.error_map(u, valid)
        # under bf16 autocast only the networks run in bf16: the ROI, the blur and the error
        # are fp32 (a blurred, squared residual would lose its small values in bf16)
        with torch.autocast(u.device.type, enabled=False):
            error = feature_error if feature_error is not None else reconstruction_error(
                u.float(), u_hat.float(), self.error_smoothing, self.error_norm, valid)
            m = weighted_error(error, roi)
        p = d = None
        if self.classifier_weight:
            if logits is None:  # maps given without logits: one classifier pass for them
                logits = self.cnn(u)
            p = logits.float().softmax(dim=1)[:, 1 - NORMAL_CLASS]
        if self.knn_power:
            assert self.knn is not None  # __init__ checked
            d = self.knn(self.cnn, u, features=pooled)  # pooled: read in the CAM's forward
        return evidence_weighted_error(m, p, self.classifier_weight or 0.0, d,
                                       self.knn_power or 0.0)

    def roi(self, u: torch.Tensor, u_hat: torch.Tensor,
            valid: torch.Tensor | None = None) -> torch.Tensor:
        """The ROI weights (N, H, W) float32 >= 0 that multiply e (eq. 5, L / |L| when
        ``normalise``; each image sums to 1), as :meth:`error_map` uses them (figures and
        reports show them)."""
        return self._roi(u, u_hat, valid, None)[0]

    def _roi(self, u: torch.Tensor, u_hat: torch.Tensor, valid: torch.Tensor | None,
             cams: tuple | None) -> tuple[torch.Tensor, Any, Any]:
        """(ROI (N, H, W) fp32, logits of u or None, u's pooled bank features or None)."""
        if cams is not None and len(self.layers) > 1:
            raise ValueError("cams holds the maps of one cam_layer; a multi-layer ROI reads its "
                             "own")
        rois, logits, pooled = [], None, None
        for layer in self.layers:
            c = cams if cams is not None else self.cams(u, u_hat, layer)
            m_u, m_u_hat = c[0], c[1]
            if logits is None and len(c) > 2:
                logits = c[2]
            if pooled is None and len(c) > 4 and c[4] == self._bank_layer():
                pooled = c[3]  # the bank's block, read in the CAM's forward
            rois.append(roi_weights(m_u, m_u_hat, u.shape[-2:], input_branch=self.input_branch,
                                    recon_branch=self.recon_branch, upsample=self.upsample,
                                    valid=valid, power=self.roi_power, normalise=self.normalise))
        with torch.autocast(u.device.type, enabled=False):
            return (rois[0] if len(rois) == 1 else torch.stack(rois).mean(0)), logits, pooled

    def forward(
        self, u: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (N,), map (N, H, W)) of u (N, C, H, W) float in [0, 1]: score = sum of e'
        and the map e' (Algorithm 1), or with ``score="margin"`` the fused score and e."""
        if self.score == "margin":
            if self.calibration is None:
                raise ValueError("score='margin' needs the held-out normals' calibration "
                                 "(SPADE.fit sets it)")
            parts = self.margin_parts(u, valid)
            return margin_score(parts.error_score, parts.logit, self.calibration,
                                self.evidence_weight, self.evidence_margin,
                                parts.knn_distance), parts.e
        if self.vae is None:
            raise ValueError("SPADEScorer without a VAE only computes error_map")
        u_hat = self.vae.reconstruct(u)
        m = self.error_map(u, u_hat, valid)
        return algorithm1_score(m), m


    def margin_parts(self, u: torch.Tensor, valid: torch.Tensor | None = None) -> MarginParts:
        """The margin fusion's raw numbers for u (N, C, H, W) in [0, 1] (a
        :class:`MarginParts`): the error e (N, H, W) float32 (the feature error with a
        ``patch_bank``, else the VAE's reconstruction error; 0 on letterbox padding), its
        maximum (N,), the classifier's logit difference y_anomaly - y_normal (N,) float32
        and, with ``knn_power`` > 0, the feature bank's kNN distance (N,) float32 (its
        pooled features read in the classifier's forward when the bank reads the last
        block), else None."""
        if self._shares_trunk:
            e, logits, pooled = in_chunks(self._shared_parts, u, valid)
        elif self.patch_bank is not None:
            e = self.patch_bank.error_map(u, valid)
            # a pretrained classifier beside it: memory bounded as the backbone's is
            logits, pooled = in_chunks(self._logits_pooled, u)
        else:
            if self.vae is None:
                raise ValueError("score='margin' with the reconstruction error needs a VAE")
            u_hat = self.vae.reconstruct(u)
            with torch.autocast(u.device.type, enabled=False):
                e = reconstruction_error(u.float(), u_hat.float(), self.error_smoothing,
                                         self.error_norm, valid)
            logits, pooled = self._logits_pooled(u)
        e = e.float().sum(dim=1)
        d = None
        if self.knn_power:
            assert self.knn is not None  # __init__ checked
            d = self.knn(self.cnn, u, features=pooled).float()
        return MarginParts(e, e.flatten(1).amax(dim=1), cnn_score(logits), d)

    def _reads_last_pooled(self) -> bool:
        """True when the feature bank reads the pooled last block, the linear head's input."""
        return self._bank_layer() == len(cast(Any, self.cnn).features) - 1 and has_linear_head(
            self.cnn)

    def _logits_pooled(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits (N, 2) of u and, when the feature bank reads the last block, its pooled
        features (N, K) float32 from the same forward (else None)."""
        if not self._reads_last_pooled():
            return self.cnn(u), None
        a = cast(Any, self.cnn).forward_features(u, -1)
        return cast(Any, self.cnn).head(a), a.float().mean(dim=(2, 3))

    def _shared_parts(self, u: torch.Tensor, valid: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The feature error (N, 1, H, W), the logits (N, 2) and, when the feature bank reads
        the last block, its pooled features (N, K) float32 (else None) from ONE forward of
        the classifier, whose first blocks are the patch extractor's (the frozen backbone
        under a head fitted alone): its trunk in fp32, as the extractor runs it, then the
        rest of the classifier and its head. The same numbers as the separate forwards, to
        fp32 rounding. One batch as given: :meth:`margin_parts` runs it in chunks."""
        bank = self.patch_bank
        assert bank is not None
        ext = bank.extractor
        blocks = cast(nn.ModuleList, self.cnn.features)
        x, maps = ext.trunk(u, blocks)
        e = bank.error_from_features(ext.combine(maps), u.shape[-2:], valid)
        for block in list(blocks)[len(ext.blocks):]:
            x = block(x)
        pooled = x.float().mean(dim=(2, 3)) if self._reads_last_pooled() else None
        return e, cast(Any, self.cnn).head(x), pooled


class VAEScorer(nn.Module):
    """The VAE-based baseline: e summed over channels (the map) and pixels (the score).

    ``forward(u, valid) -> (score (N,), map (N, H, W))`` float32; e is
    :func:`~spadecam.error.reconstruction_error` with ``error_smoothing`` / ``error_norm``,
    in fp32 under any autocast, letterbox padding (``valid`` = 0) never counting.
    """

    def __init__(self, vae: Any, error_smoothing: float = 0.0, error_norm: str = "l1") -> None:
        super().__init__()
        self.vae, self.error_smoothing, self.error_norm = vae, error_smoothing, error_norm

    def forward(
        self, u: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.vae.reconstruct(u).float()
        with torch.autocast(u.device.type, enabled=False):  # the error in fp32, as in SPADE
            e = reconstruction_error(u.float(), u_hat, self.error_smoothing, self.error_norm,
                                     valid).sum(dim=1)
        return e.sum(dim=(1, 2)), e


class CNNScorer(nn.Module):
    """The CNN-based baseline: score = y_anomaly - y_normal, the classifier's logit difference.

    A monotone function of the softmax probability of the known-anomaly class (same AUROC)
    that does not saturate to ties. ``forward(u, valid) -> (score (N,) float32, None)``: the
    classifier sees the letterboxed image whole, as in training (``valid`` unused), and gives
    no map.
    """

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, u: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[Any, None]:
        return cnn_score(self.cnn(u)), None


def cnn_score(logits: torch.Tensor) -> torch.Tensor:
    """The CNN-based baseline's score y_anomaly - y_normal (N,) float32 of logits (N, 2)
    (index 0 = normal, eq. 2): :class:`CNNScorer`'s, also from logits already computed (the
    benchmark reads them off SPADE's Grad-CAM forward, :class:`SignedCams`)."""
    logits = logits.float()
    return logits[:, 1 - NORMAL_CLASS] - logits[:, NORMAL_CLASS]


def spade_error_map(
    cnn: nn.Module,
    u: torch.Tensor,
    u_hat: torch.Tensor,
    *,
    cams: tuple | None = None,
    valid: torch.Tensor | None = None,
    **params: Any,
) -> torch.Tensor:
    """Weighted reconstruction error e' of SPADE (Algorithm 1), one map per image.

    ``SPADEScorer(None, cnn, **params).error_map(u, u_hat, valid, cams)``: u, u_hat (N, C,
    H, W) float in [0, 1]; ``params`` those of :class:`SPADEScorer`. Returns (N, H, W)
    float32; ``.sum((1, 2))`` is the anomaly score. Raises ValueError for a bad parameter.
    """
    return SPADEScorer(None, cnn, **params).error_map(u, u_hat, valid, cams)


def signed_cams(
    cnn: nn.Module,
    u: torch.Tensor,
    u_hat: torch.Tensor | None,
    cam_layer: int = -1,
    cam_method: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Signed Grad-CAM maps M(u) and M(u_hat) (eq. 3-4), (N, h, w) each, for :func:`spade_error_map`.

    ``u_hat`` None skips its map. With ``u_hat``, both go through the classifier as one batch
    of 2N images. :meth:`SPADEScorer.cams` also returns the logits of u.
    """
    scorer = SPADEScorer(None, cnn, cam_layer=cam_layer, cam_method=cam_method,
                         recon_branch="none" if u_hat is None else "relu")
    c = scorer.cams(u, u if u_hat is None else u_hat)
    return c.m_u, c.m_u_hat


@contextlib.contextmanager
def scoring_context(precision: str, model: nn.Module, *others: nn.Module) -> Iterator[str]:
    """Eval mode, inference_mode and bf16 autocast where ``precision`` resolves to it.

    Yields the device type. ``precision`` is "auto", "32" or "bf16"
    (:func:`spadecam.precision.resolve_scoring_precision`). ``model`` and ``others`` run in
    eval mode (batch norm with its running statistics, no VAE sampling) and every submodule
    gets its own train/eval flag back afterwards (:func:`spadecam.cam.eval_mode`), so a
    model passed to ``from_models`` is scored correctly and left as the caller had it.
    """
    device = next(model.parameters()).device.type
    use_bf16 = resolve_scoring_precision(precision, device) == "bf16"
    # every submodule gets its own train/eval flag back, not the top-level module's
    with eval_mode(model, *others), torch.inference_mode(), torch.autocast(
            device, dtype=torch.bfloat16, enabled=use_bf16):
        yield device
