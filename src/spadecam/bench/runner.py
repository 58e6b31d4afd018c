"""The one benchmark runner; a benchmark is data: what to train on, which protocols, columns.

A data set describes one seed of a benchmark as a :class:`BenchmarkData`: the normal
training images (the VAE's, eq. 1, and the classifier's normal class), the test images and
their labels, and a list of :class:`Protocol` s. A protocol is one classifier (eq. 2): the
known anomalies it is trained on, the methods scored with it and the result columns
(protocol, subset of the test set) those scores enter. :func:`run_benchmark` does the rest
the same way for Noisy-MNIST (:func:`spadecam.bench.reproduce.run_noisy_mnist`) and ELPV
(:func:`spadecam.bench.elpv.run_elpv`):

1. per seed, train the VAE once on the normal images and reconstruct the test set once;
2. per protocol, train the classifier on normal + known images and score the test set with
   the methods (VAE-based, CNN-based, Naive SPADE, SPADE; Algorithm 1) and the SPADE
   variants (ablations) on the same models, the signed Grad-CAM maps computed once;
3. one row per (method, protocol, subset, seed) with AUROC and AUPR (anomalous = positive).

Precision and distribution come from one :class:`Execution` (:func:`start`): the training
precision and Fabric settings (DDP: each process trains on its shard, every process scores
the whole test set, rank 0 reports) and the scoring precision of every method and variant.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spadecam.bench.protocols import BenchmarkData, Protocol
from spadecam.detectors import SPADE, CNNDetector, NaiveSPADE
from spadecam.error import reconstruction_error
from spadecam.exceptions import _check_finite
from spadecam.inputs import _channels_last, to_float_images
from spadecam.metrics import auroc, average_precision
from spadecam.precision import resolve_training_precision
from spadecam.scoring import cnn_score, scoring_context
from spadecam.training import (
    train_cnn,
    train_vae,
    trained_precision,
)

__all__ = [
    "Execution",
    "ProtocolResult",
    "method_scores",
    "run_benchmark",
    "start",
]

#: Test images per scoring batch of every method (the cached maps come in batches of it).
SCORE_BATCH = 256
#: Columns of a benchmark's results CSV.
COLUMNS = ("method", "protocol", "subset", "seed", "auroc", "aupr", "recipe")


@dataclass(frozen=True)
class Execution:
    """Where and in which precision a benchmark trains and scores (:func:`start`).

    Attributes
    ----------
    train : dict
        Fabric options put into every :class:`~spadecam.training.TrainConfig` (empty: each
        recipe's own precision, one process).
    score_precision : {"32", "bf16"}
        Scoring precision of every method and variant (and of the reconstructions).
    train_precision : str
        The training precision as resolved (for the result rows), or "recipe".
    rank, world_size : int
        This process's DDP rank and the number of processes (0 and 1 without DDP).
    device : str
        The training device type.
    """

    train: dict = field(default_factory=dict)
    score_precision: str = "32"
    train_precision: str = "recipe"
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"


def start(precision: str | None = None, distributed: dict | None = None) -> Execution:
    """Resolve the precision and start the DDP processes (if any) before any work.

    Parameters
    ----------
    precision : {"auto", "32", "bf16", "32-true", "bf16-mixed", "16-mixed"} or None
        Training and scoring precision (:func:`spadecam.precision.from_option`). None: each
        recipe's training precision, fp32 scoring (what the ELPV table and the validation
        scripts measured).
    distributed : dict, optional
        Fabric settings (``accelerator``, ``devices``, ``strategy``, ``num_nodes``,
        ``precision``; :func:`spadecam.distributed.launch`); ``precision`` here overrides
        the training part. With several devices this starts the other processes.

    Raises
    ------
    ValueError
        An unknown precision or bad Fabric settings.
    """
    from spadecam.distributed import launch, training_precision_label
    from spadecam.precision import from_option, resolve_scoring_precision

    given = {k: v for k, v in (distributed or {}).items() if v is not None}
    if precision is None and not given:
        return Execution()
    train_prec, score_prec = from_option(precision) if precision is not None else (None, "32")
    fab: dict[str, Any] = {} if train_prec is None else {"precision": train_prec}
    fab.update(given)
    fabric = launch(**fab)
    return Execution(
        train=fab,
        score_precision=resolve_scoring_precision(score_prec, "cpu"),  # scoring on the CPU
        train_precision=training_precision_label(**fab),
        rank=fabric.global_rank, world_size=fabric.world_size, device=fabric.device.type,
    )


def float_batch(u8: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, S, S) as the networks take them: float32 in [0, 1], channels-last."""
    return _channels_last(to_float_images(u8))


def reconstruct(vae: Any, u8: torch.Tensor, precision: str = "32") -> torch.Tensor:
    """u_hat = VAE(u) for every image, (N, C, S, S) float32 in [0, 1], in batches."""
    # layout only; eval mode for the duration comes from scoring_context, which gives every
    # submodule its own mode back (this used to leave the caller's VAE in eval mode)
    vae = vae.to(memory_format=torch.channels_last)
    with scoring_context(precision, vae):
        return torch.cat(
            [vae.reconstruct(float_batch(u8[i : i + SCORE_BATCH])) for i in range(0, len(u8), SCORE_BATCH)]
        ).float()


def spade_map_batches(
    det: SPADE, u8: torch.Tensor, u_hat: torch.Tensor, cams: list | None = None
) -> Iterator[torch.Tensor]:
    """Weighted error maps e' batch by batch, for every image of ``u8`` (and ``u_hat``).

    ``cams``: per batch, the signed Grad-CAM maps of :func:`cam_batches` (then the
    classifier is not run again).
    """
    if len(u8) != len(u_hat):
        raise ValueError(f"{len(u8)} images but {len(u_hat)} reconstructions")
    for j, i in enumerate(range(0, len(u8), SCORE_BATCH)):
        yield det.error_map_from_reconstruction(
            float_batch(u8[i : i + SCORE_BATCH]), u_hat[i : i + SCORE_BATCH],
            None if cams is None else cams[j])


def cam_batches(det: SPADE, u8: torch.Tensor, u_hat: torch.Tensor) -> list:
    """The signed maps M(u), M(u_hat) and logits of u of every batch (SignedCams; a few MB
    for 10,000 images)."""
    return [det.signed_cams(float_batch(u8[i : i + SCORE_BATCH]), u_hat[i : i + SCORE_BATCH])
            for i in range(0, len(u8), SCORE_BATCH)]


def spade_scores(
    det: SPADE, u8: torch.Tensor, u_hat: torch.Tensor, cams: list | None = None
) -> np.ndarray:
    """SPADE / Naive SPADE scores (sum of e', Algorithm 1) from precomputed reconstructions."""
    parts = [m.sum(dim=(1, 2)) for m in spade_map_batches(det, u8, u_hat, cams)]
    return torch.cat(parts).double().numpy()


def vae_scores(u8: torch.Tensor, u_hat: torch.Tensor, smoothing: float, norm: str) -> np.ndarray:
    """VAE-based scores: the reconstruction error summed over pixels and channels."""
    return np.concatenate([
        reconstruction_error(float_batch(u8[i : i + SCORE_BATCH]), u_hat[i : i + SCORE_BATCH],
                             smoothing, norm)
        .sum(dim=(1, 2, 3)).double().numpy()
        for i in range(0, len(u8), SCORE_BATCH)
    ])


def detector_params(config: Any) -> dict[str, Any]:
    """The scoring parameters of SPADE and Naive SPADE a benchmark config sets: the detector's
    recipe is "spadecam" (the benchmarks' VAE and CNN) unless ``spade_params`` names one."""
    return {"recipe": "spadecam", "cam_layer": config.cam_layer, "upsample": config.upsample,
            "error_smoothing": config.error_smoothing, "error_norm": config.error_norm,
            **getattr(config, "spade_params", {})}


def method_scores(
    methods: Sequence[str], config: Any, vae: Any, cnn: Any, u8: torch.Tensor,
    u_hat: torch.Tensor, s_vae: np.ndarray, precision: str = "32", cams: list | None = None,
    x_normal: torch.Tensor | None = None, knn_bank: Any = None,
) -> dict[str, np.ndarray]:
    """Test scores of each method (higher = more anomalous), the VAE's computed once.

    ``precision``: scoring precision of the networks ("32" or "bf16"; ``u_hat`` should come
    from :func:`reconstruct` in the same one). ``cams``: SPADE's signed maps from
    :func:`cam_batches` (same classifier, layer and precision), so no extra CNN pass: SPADE
    and Naive SPADE read the maps of u (and u_hat) from them, the CNN-based baseline the
    logits of u (the forward its own pass would run, on the batch [u; u_hat]: equal scores to
    float rounding, bit for bit on the 2-core AVX2 EPYC; tests/test_reproduce.py).
    ``x_normal``: the normal training images (uint8), SPADE's feature bank when the recipe
    sets ``knn_power``; ``knn_bank``: that bank already built (then ``x_normal`` is unused).
    """
    base = {**detector_params(config), "precision": precision}
    # Naive SPADE: SPADE's Grad-CAM (layer, method, precision) with its own ROI arithmetic
    naive = {k: v for k, v in base.items() if k in ("cam_layer", "cam_method", "upsample",
                                                     "error_smoothing", "error_norm",
                                                     "precision")}

    def cnn_scores() -> np.ndarray:
        det = CNNDetector.from_models(cnn, precision=precision)
        if cams is None:
            return det.decision_function(u8)
        s = torch.cat([cnn_score(c.logits_u) for c in cams]).double().numpy()
        if len(s) != len(u8):
            raise ValueError(f"cams hold the logits of {len(s)} images, not of the {len(u8)} "
                             "test images (cam_batches of the same images)")
        _check_finite(det, s)
        return s

    make = {
        "vae": lambda: s_vae,
        "cnn": cnn_scores,
        "naive_spade": lambda: spade_scores(NaiveSPADE.from_models(vae, cnn, **naive), u8, u_hat,
                                            cams),
        "spade": lambda: spade_scores(SPADE.from_models(vae, cnn, x_normal, knn_bank, **base),
                                      u8, u_hat, cams),
    }
    return {m: make[m]() for m in methods}


@dataclass
class ProtocolResult:
    """What :func:`run_benchmark` passes to ``on_protocol`` after each protocol.

    Attributes
    ----------
    seed : int
    protocol : Protocol
    vae, cnn : the trained models
    data : BenchmarkData
    u_hat : Tensor (T, C, S, S) float32, the reconstructions of ``data.x_test``
    scores : dict method -> ndarray (T,), the methods' test scores (before renaming)
    config : the run's :class:`~spadecam.bench.configs.BenchmarkConfig`
    execution : Execution
    """

    seed: int
    protocol: Protocol
    vae: Any
    cnn: Any
    data: BenchmarkData
    u_hat: torch.Tensor
    scores: dict[str, np.ndarray]
    config: Any
    execution: Execution
    _cams: list | None = None
    _cam_source: SPADE | None = None  # the detector the cached maps were computed with
    _u_hat_in: dict[str, torch.Tensor] = field(default_factory=dict)
    #: feature banks built so far, by (knn_layer, knn_k, precision): built once per run
    _banks: dict[tuple, Any] = field(default_factory=dict)

    def spade(self, **params: Any) -> np.ndarray:
        """Test scores of a SPADE variant on the same models (e.g. ``roi_power=2``).

        ``params`` override the recipe's SPADE parameters; the scoring precision is the
        run's unless ``precision`` is given (then the test set is reconstructed in it once).
        The signed Grad-CAM maps are reused when the variant reads the same ones.
        """
        prec = params.pop("precision", self.execution.score_precision)
        kw = {**detector_params(self.config), **params, "precision": prec}
        spec = SPADE(**kw)
        key = (spec.knn_layer, spec.knn_k, prec)
        det = SPADE.from_models(self.vae, self.cnn, self.data.x_normal, self._banks.get(key),
                                **kw)
        if det.knn_ is not None:
            self._banks[key] = det.knn_
        if prec != self.execution.score_precision:
            if prec not in self._u_hat_in:
                self._u_hat_in[prec] = reconstruct(self.vae, self.data.x_test, prec)
            return spade_scores(det, self.data.x_test, self._u_hat_in[prec])
        # the maps depend on the classifier, the layer, the method and the precision only
        src = self._cam_source
        same = src is not None and (det.cam_layer, det.cam_method) == (src.cam_layer,
                                                                       src.cam_method)
        return spade_scores(det, self.data.x_test, self.u_hat, self._cams if same else None)

    @property
    def detector(self) -> SPADE | None:
        """The run's SPADE on these models (the recipe's parameters, the run's scoring
        precision, its feature bank built); None when this protocol scores no SPADE."""
        return self._cam_source

    def spade_maps(self, n: int) -> torch.Tensor:
        """Weighted error maps e' (eq. 5 and Algorithm 1) of the first ``n`` test images,
        (min(max(n, 0), T), S, S) float32, from :attr:`detector` and the Grad-CAM maps the
        run already computed (the classifier and the feature bank are not run again).

        Raises
        ------
        ValueError
            This protocol scores no SPADE.
        """
        det = self.detector
        if det is None:
            raise ValueError(f"protocol {self.protocol.name} scores no SPADE")
        x, n = self.data.x_test, max(0, min(int(n), len(self.data.x_test)))
        if n == 0:
            return torch.zeros((0, *x.shape[-2:]), dtype=torch.float32)
        batches = -(-n // SCORE_BATCH)  # the cached maps come in whole batches of SCORE_BATCH
        end = min(len(x), batches * SCORE_BATCH)
        cams = None if self._cams is None else self._cams[:batches]
        return torch.cat(list(spade_map_batches(det, x[:end], self.u_hat[:end], cams)))[:n]

    def rows(self, scores: dict[str, np.ndarray]) -> list[dict]:
        """One row per (method, column) for ``scores`` on this protocol's columns."""
        out = []
        y = self.data.y_test
        for (pname, subset), idx in self.protocol.columns.items():
            for m, s in scores.items():
                lab, sc = y[idx], s[idx]
                out.append({"method": self.protocol.rename.get(m, m), "protocol": pname,
                            "subset": subset, "seed": self.seed, "auroc": auroc(lab, sc),
                            "aupr": average_precision(lab, sc), "recipe": self.config.name,
                            "n_test": len(idx), "n_anomalous": int(lab.sum()),
                            **self.protocol.meta})
        return out


def _per_process_batch(r: Any, world: int) -> Any:
    """The config with each batch split over ``world`` DDP processes (same global batch)."""
    for t in (r.vae_train, r.cnn_train):
        if t.batch_size % world:
            raise ValueError(
                f"recipe {r.name}: its batch of {t.batch_size} images does not split evenly "
                f"over {world} processes; use a number of processes that divides it"
            )
    return dataclasses.replace(
        r,
        vae_train=dataclasses.replace(r.vae_train, batch_size=r.vae_train.batch_size // world),
        cnn_train=dataclasses.replace(r.cnn_train, batch_size=r.cnn_train.batch_size // world),
    )


def run_benchmark(
    load: Callable[[int], BenchmarkData],
    config: Any,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    log: Callable[[str], Any] = print,
    on_protocol: Callable[[ProtocolResult], Any] | None = None,
    execution: Execution | None = None,
    ablations: dict[str, dict] | None = None,
) -> list[dict]:
    """Train and score a benchmark over seeds; one row per (method, protocol, subset, seed).

    Parameters
    ----------
    load : callable seed -> BenchmarkData
        The data set's description of one seed.
    config : :class:`spadecam.bench.configs.BenchmarkConfig` (or an object with its training and scoring
        fields); the training seeds are replaced by each seed.
    seeds : model seeds (weights, batch order, splits the data set draws per seed)
    on_protocol : callable, optional
        Called with a :class:`ProtocolResult` after each protocol (figures, measurements).
    execution : Execution, optional
        Precision and DDP (:func:`start`; default: the recipe's training precision, one
        process, fp32 scoring). Under DDP only rank 0 logs.
    ablations : dict name -> SPADE parameters, optional
        SPADE variants scored on the same models for every protocol that scores "spade"
        (:meth:`ProtocolResult.spade`); their rows follow the methods' rows.

    Returns
    -------
    list of dict with keys method, protocol, subset, seed, auroc, aupr, recipe, n_test,
    n_anomalous (and each protocol's ``meta``; with an ``execution`` from :func:`start`,
    train_precision and score_precision).
    """
    ex = execution or Execution()
    if ex.rank != 0:
        log, progress = (lambda *a, **k: None), False  # rank 0 reports
    r = _per_process_batch(config, ex.world_size)
    trained_in = ex.train_precision if ex.train else resolve_training_precision(
        str(r.vae_train.precision), r.vae_train.accelerator or "cpu")  # the recipe's
    extra = {} if execution is None else {"train_precision": trained_in,
                                          "score_precision": ex.score_precision}
    rows: list[dict] = []
    t0 = time.perf_counter()
    for seed in seeds:
        data = load(seed)
        vae = train_vae(data.x_normal, r.vae, dataclasses.replace(
            r.vae_train, seed=seed, progress=progress, **ex.train))
        log(f"seed {seed}: VAE {_summary(vae)}")
        # the VAE does not depend on the known class: reconstruct the test set once
        u_hat = reconstruct(vae, data.x_test, ex.score_precision)
        s_vae = vae_scores(data.x_test, u_hat, r.error_smoothing, r.error_norm)
        u_hat_in: dict[str, torch.Tensor] = {}  # reconstructions in other precisions, per seed
        synthetic = _synthetic_anomalies(r, data.x_normal, seed)  # the same for every protocol
        for prot in data.protocols:
            res = _score_protocol(seed, prot, data, r, ex, vae, u_hat, s_vae, u_hat_in,
                                  synthetic, progress)
            cnn, scores = res.cnn, res.scores
            new = res.rows(scores)
            log(f"seed {seed} {prot.name} ({len(prot.x_known)} known, CNN {_summary(cnn)}): "
                + ", ".join(f"{q['method']} {q['protocol']}/{q['subset']} {q['auroc']:.3f}"
                            for q in new))
            if ablations and "spade" in prot.methods:
                more = res.rows({name: res.spade(**params) for name, params in ablations.items()})
                log("  variants: " + ", ".join(f"{q['method']} {q['auroc']:.3f}" for q in more))
                new += more
            if extra:  # the precision that trained these models (auto may measure)
                extra["train_precision"] = trained_precision(vae, cnn) or trained_in
            rows += [q | extra for q in new]
            if on_protocol is not None:
                on_protocol(res)
        log(f"seed {seed} done: {time.perf_counter() - t0:.0f} s since the start")
    return rows


def _score_protocol(seed: int, prot: Protocol, data: BenchmarkData, r: Any, ex: Execution,
                    vae: Any, u_hat: torch.Tensor, s_vae: np.ndarray,
                    u_hat_in: dict[str, torch.Tensor], synthetic: torch.Tensor | None,
                    progress: bool) -> ProtocolResult:
    """One protocol of a seed: its classifier trained on the normal images and the known
    ones (with the synthetic anomalies, if any), every method scored on the test set."""
    # the classifier's known class: the labelled cells (and the synthetic ones)
    known = prot.x_known if synthetic is None else torch.cat([prot.x_known, synthetic])
    x = torch.cat([data.x_normal, known])
    y = torch.cat([torch.zeros(len(data.x_normal)), torch.ones(len(known))]).long()
    cnn = train_cnn(x, y, r.cnn, dataclasses.replace(
        r.cnn_train, seed=seed, progress=progress, **ex.train), r.loss)
    # the signed maps of u and u_hat, once: SPADE and the variants that only change the ROI
    # arithmetic read them without running the classifier again (and the feature bank's
    # query, read in the same forward)
    cams, det, banks = None, None, {}
    if "spade" in prot.methods:
        det = SPADE.from_models(vae, cnn, data.x_normal, **detector_params(r),
                                precision=ex.score_precision)
        cams = cam_batches(det, data.x_test, u_hat)
        if det.knn_ is not None:
            banks[(det.knn_layer, det.knn_k, ex.score_precision)] = det.knn_
    scores = method_scores(prot.methods, r, vae, cnn, data.x_test, u_hat, s_vae,
                           ex.score_precision, cams, data.x_normal,
                           det.knn_ if det is not None else None)
    return ProtocolResult(seed, prot, vae, cnn, data, u_hat, scores, r, ex, cams, det,
                          u_hat_in, banks)


def _synthetic_anomalies(r: Any, x_normal: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The recipe's synthetic anomalies for the classifier (None without them)."""
    n = round(getattr(r, "synthetic_anomalies", 0.0) * len(x_normal))
    if not n:
        return None
    from spadecam.bench.synthetic import cutpaste

    return cutpaste(x_normal, n, seed)


def _summary(model: Any) -> str:
    t = getattr(model, "training_log_", None)
    if not t:
        return ""
    stop = "early stop" if t["stopped_early"] else "budget spent"
    prec = f", {t['precision']}" if t.get("precision") else ""
    return f"{t['steps']} steps ({stop}, best at step {t['best_step']}{prec})"
