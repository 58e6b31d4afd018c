"""The benchmark of the "pretrained" recipe (no VAE): the one-class pretrained baseline, the
CNN-based score on the pretrained classifier and SPADE's margin fusion, each computed as the
library computes it, on the data of :mod:`spadecam.bench.protocols`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spadecam.bench.protocols import BenchmarkData, Protocol
from spadecam.bench.runner import SCORE_BATCH, Execution, ProtocolResult, float_batch
from spadecam.detectors import SPADE
from spadecam.fusion import calibrate, error_term, margin_score
from spadecam.knn import FeatureBank
from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS
from spadecam.scoring import cnn_score
from spadecam.threshold import holdout_split
from spadecam.training import build_classifier, fit_linear_head, pooled_last_features, train_cnn

__all__ = ["PRETRAINED_LABELS", "PRETRAINED_METHODS", "logit_differences", "max_feature_errors",
           "run_pretrained_benchmark"]

#: The rows of a "pretrained" recipe's run (:func:`run_pretrained_benchmark`).
PRETRAINED_METHODS = ("patchcore", "one_class_pretrained", "cnn_pretrained", "spade_pretrained")
#: Their table labels (ELPV and Noisy-MNIST).
PRETRAINED_LABELS = {
    "patchcore": "Patch kNN, pretrained, no labels (PatchCore-style)",
    "one_class_pretrained": "SPADE's one-class term, pretrained, no labels (patch kNN + image "
                            "kNN)",
    "cnn_pretrained": "CNN-based, pretrained (linear head on ImageNet features)",
    "spade_pretrained": "SPADE, pretrained (margin fusion)",
}

_CHUNK = 64  # images per backbone pass


def max_feature_errors(bank: Any, x: torch.Tensor) -> np.ndarray:
    """The feature-space error's maximum (N,) float64 of uint8 images x (no padding)."""
    with torch.inference_mode():
        return torch.cat([bank.error_map(float_batch(x[i : i + _CHUNK])).flatten(1).amax(1)
                          for i in range(0, len(x), _CHUNK)]).double().numpy()


def logit_differences(cnn: Any, x: torch.Tensor) -> np.ndarray:
    """The classifier's y_anomaly - y_normal (N,) float64 of uint8 images x, in fp32."""
    with torch.inference_mode():
        return torch.cat([cnn_score(cnn(float_batch(x[i : i + _CHUNK])))
                          for i in range(0, len(x), _CHUNK)]).double().numpy()


@dataclass
class _Seed:
    """What one seed shares across its protocols: the kept and held-out normals, the
    feature-space error's maxima, and (head-only training) the frozen backbone's pooled
    features with the network they come from."""

    seed: int
    normal: torch.Tensor
    held: torch.Tensor
    err_test: np.ndarray
    err_held: np.ndarray
    train: Any
    bank_shape: tuple[int, ...]
    net: Any = None
    pooled: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _prepare_seed(data: BenchmarkData, config: Any, params: dict, seed: int,
                  progress: bool) -> _Seed:
    """A tenth of the normals held out (as ``SPADE.fit``), the patch bank from the rest, the
    errors of the test and held-out images, and the pooled features when only the head trains."""
    hold = holdout_split(torch.zeros(len(data.x_normal), dtype=torch.long), 0.1, seed)
    assert hold is not None
    normal, held = data.x_normal[~hold], data.x_normal[hold]
    train = dataclasses.replace(config.cnn_train, seed=seed, progress=progress)
    det = SPADE(recipe="pretrained", cnn_train=train, batch_size=SCORE_BATCH,
                patch_bank_size=params.get("patch_bank_size", 16384))
    bank = det.build_patch_bank(normal)
    s = _Seed(seed, normal, held, max_feature_errors(bank, data.x_test),
              max_feature_errors(bank, held), train, tuple(bank.features.shape))
    if train.head_only:  # the frozen backbone's pooled features, once per seed
        s.net = build_classifier(config.cnn, normal.shape[1], seed)  # as train_cnn builds it
        s.pooled = {k: pooled_last_features(s.net, v, _CHUNK)
                    for k, v in (("normal", normal), ("held", held), ("test", data.x_test))}
    return s


def _classifier_scores(s: _Seed, prot: Protocol, x_test: torch.Tensor, config: Any,
                       with_features: bool) -> tuple[Any, np.ndarray, np.ndarray, dict]:
    """The protocol's classifier on the kept normals and its known anomalies: (classifier,
    test logit differences, held-out ones, pooled features for the image-level bank)."""
    x = torch.cat([s.normal, prot.x_known])
    y = torch.cat([torch.zeros(len(s.normal)), torch.ones(len(prot.x_known))]).long()
    if s.train.head_only:  # the same regression as train_cnn's, on the cached features
        cnn = fit_linear_head(s.net, x, y, s.train, torch.cat(
            [s.pooled["normal"], pooled_last_features(s.net, prot.x_known, _CHUNK)]))
        with torch.inference_mode():
            return (cnn, cnn_score(cnn.fc(s.pooled["test"])).double().numpy(),
                    cnn_score(cnn.fc(s.pooled["held"])).double().numpy(), s.pooled)
    cnn = train_cnn(x, y, config.cnn, s.train, config.loss)
    feats = ({k: pooled_last_features(cnn, v, _CHUNK) for k, v in
              (("normal", s.normal), ("held", s.held), ("test", x_test))}
             if with_features else {})
    return cnn, logit_differences(cnn, x_test), logit_differences(cnn, s.held), feats


def _protocol_scores(s: _Seed, prot: Protocol, data: BenchmarkData, config: Any,
                     params: dict, knn_w: float) -> tuple[Any, dict[str, np.ndarray]]:
    """The four methods' test scores of one protocol (see :func:`run_pretrained_benchmark`)."""
    cnn, logit_test, logit_held, feats = _classifier_scores(s, prot, data.x_test, config,
                                                            bool(knn_w))
    d_held = d_test = None
    if knn_w:  # the image-level bank: SPADE.fit builds it from the kept normals
        image_bank = FeatureBank(feats["normal"], -1, params.get("knn_k", FIT_DEFAULTS["knn_k"]))
        with torch.inference_mode():
            d_held, d_test = (image_bank(cnn, torch.empty(0), features=feats[k])
                              for k in ("held", "test"))
    cal = calibrate(s.err_held, logit_held, "held_out",
                    None if d_held is None else d_held.numpy(), knn_w or 1.0)
    fused = margin_score(torch.as_tensor(s.err_test), torch.as_tensor(logit_test), cal,
                         params["evidence_weight"], params["evidence_margin"], d_test)
    # SPADE's one-class term alone (no label): what the labels add is measured on it
    one_class = error_term(torch.as_tensor(s.err_test), cal, d_test)
    return cnn, {"patchcore": s.err_test, "one_class_pretrained": one_class.double().numpy(),
                 "cnn_pretrained": logit_test, "spade_pretrained": fused.double().numpy()}


def run_pretrained_benchmark(
    load: Callable[[int], BenchmarkData],
    config: Any,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> list[dict]:
    """:func:`~spadecam.bench.runner.run_benchmark` for the "pretrained" recipe: one row per
    (method, protocol, subset, seed) of the one-class pretrained baseline, the CNN-based score
    on the pretrained classifier and SPADE's margin fusion, each computed as the library does.

    Per seed: a tenth of the normal training images held out (as ``SPADE.fit`` holds them
    out, :func:`spadecam.threshold.holdout_split`); the patch bank built from the rest
    (:meth:`SPADE.build_patch_bank`) and the maximum of each test and held-out image's
    feature-space error computed once; the method ``"patchcore"`` is that maximum (patch
    kNN on the frozen ImageNet backbone, no label used), ``"one_class_pretrained"`` SPADE's
    one-class term (:func:`spadecam.fusion.error_term`: the maximum joined by the image-level
    bank's distance; with a head fitted alone the bank reads the frozen backbone, so no label
    is used either: the same scores in every protocol of a seed). Per protocol: the classifier
    (``config.cnn`` with ``config.cnn_train``; the head alone by default) on the kept normals
    and the known anomalies, its logit differences (``"cnn_pretrained"``), the calibration on
    the held-out normals and the margin fusion (``"spade_pretrained"``, its error term
    joined by the image-level bank of the kept normals' pooled last-block features when the
    recipe's ``knn_power`` > 0, as ``SPADE.fit`` builds it; with ``head_only`` the frozen
    backbone's pooled features are computed once per seed and each protocol fits its head on
    them, :func:`spadecam.fusion.margin_score` with the recipe's weight and margin): the score
    ``SPADE(recipe="pretrained").fit`` would give (tests/test_reproduce.py). Runs on the CPU
    in fp32, one process. Protocols that score no SPADE (a supervised reference) are
    skipped.

    Raises
    ------
    ValueError
        An image-level bank on another block than the last (``knn_layer`` != -1).
    """
    params = {**RECIPE_DEFAULTS["pretrained"], **getattr(config, "spade_params", {})}
    knn_w = float(params.get("knn_power") or 0.0)
    if knn_w and params.get("knn_layer", -1) != -1:
        raise ValueError("the pretrained benchmark's image-level bank reads the last block "
                         f"(knn_layer -1), got knn_layer {params['knn_layer']}")
    rows: list[dict] = []
    t0 = time.perf_counter()
    for seed in seeds:
        data = load(seed)
        s = _prepare_seed(data, config, params, seed, progress)
        log(f"seed {seed}: bank {s.bank_shape} from {len(s.normal)} normal images "
            f"({len(s.held)} held out), "
            f"errors of {len(data.x_test)} test images: "
            f"{time.perf_counter() - t0:.0f} s since the start")
        for prot in data.protocols:
            if "spade" not in prot.methods:
                continue  # a supervised reference (the from-scratch run's rows)
            cnn, scores = _protocol_scores(s, prot, data, config, params, knn_w)
            new = ProtocolResult(seed, prot, None, cnn, data, torch.empty(0), scores, config,
                                 Execution()).rows(scores)
            log(f"seed {seed} {prot.name} ({len(prot.x_known)} known): "
                + ", ".join(f"{q['method']} {q['protocol']}/{q['subset']} {q['auroc']:.3f}"
                            for q in new))
            rows += new
        log(f"seed {seed} done: {time.perf_counter() - t0:.0f} s since the start")
    return rows
