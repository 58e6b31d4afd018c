"""One benchmark runner; a benchmark is data: what to train on, which protocols, which columns.

A data set describes one seed of a benchmark as a :class:`BenchmarkData`: the normal
training images (the VAE's, eq. 1, and the classifier's normal class), the test images and
their labels, and a list of :class:`Protocol` s. A protocol is one classifier (eq. 2): the
known anomalies it is trained on, the methods scored with it and the result columns
(protocol, subset of the test set) those scores enter. :func:`run_benchmark` does the rest
the same way for every data set:

1. per seed, train the VAE once on the normal images and reconstruct the test set once;
2. per protocol, train the classifier on normal + known images and score the test set with
   the methods (VAE-based, CNN-based, Naive SPADE, SPADE; Algorithm 1);
3. one row per (method, protocol, subset, seed) with AUROC and AUPR (anomalous = positive).

The ELPV benchmark (:func:`spadecam.reproduce.run_elpv`) is built this way; the Noisy-MNIST
reproduction shares its scoring functions.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spadecam.detectors import (
    SPADE,
    CNNDetector,
    NaiveSPADE,
    reconstruction_error,
)
from spadecam.evaluation import METHOD_LABELS, auroc
from spadecam.inputs import _channels_last, to_float_images
from spadecam.metrics import average_precision
from spadecam.scoring import _scoring_context
from spadecam.training import train_cnn, train_vae

__all__ = [
    "BenchmarkData",
    "Protocol",
    "format_columns_table",
    "method_scores",
    "run_benchmark",
]

_BATCH = 256
#: Columns of a benchmark's results CSV.
COLUMNS = ("method", "protocol", "subset", "seed", "auroc", "aupr", "recipe")


@dataclass
class Protocol:
    """One classifier of a benchmark and the result columns it feeds.

    Attributes
    ----------
    name : str
        Protocol name in the results, e.g. "unseen_type".
    x_known : Tensor (K, C, S, S), uint8
        Known anomalies the classifier is trained on (with the normal training images).
    columns : dict of (protocol, subset) -> ndarray of test indices
        The test images each result column is computed on (normal and anomalous ones).
    methods : tuple of str
        Methods scored with this classifier (:data:`spadecam.evaluation.METHODS` keys).
    rename : dict
        Method names in the results, e.g. {"cnn": "cnn_all_labels"} for a supervised
        reference.
    """

    name: str
    x_known: torch.Tensor
    columns: dict[tuple[str, str], np.ndarray]
    methods: tuple[str, ...] = ("vae", "cnn", "naive_spade", "spade")
    rename: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchmarkData:
    """One seed of a benchmark.

    Attributes
    ----------
    x_normal : Tensor (N, C, S, S), uint8, the normal training images
    x_test : Tensor (T, C, S, S), uint8
    y_test : ndarray (T,), int64, 0 = normal, 1 = anomalous
    protocols : iterable of Protocol (may be a generator, read one at a time)
    """

    x_normal: torch.Tensor
    x_test: torch.Tensor
    y_test: np.ndarray
    protocols: Iterable[Protocol]


def _float(u8: torch.Tensor) -> torch.Tensor:
    return _channels_last(to_float_images(u8))


def reconstruct(vae: Any, u8: torch.Tensor, precision: str = "32") -> torch.Tensor:
    """u_hat = VAE(u) for every image, (N, C, S, S) float32 in [0, 1], in batches."""
    # layout only; eval mode for the duration comes from _scoring_context, which gives every
    # submodule its own mode back (this used to leave the caller's VAE in eval mode)
    vae = vae.to(memory_format=torch.channels_last)
    with _scoring_context(precision, vae):
        return torch.cat(
            [vae.reconstruct(_float(u8[i : i + _BATCH])) for i in range(0, len(u8), _BATCH)]
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
    for j, i in enumerate(range(0, len(u8), _BATCH)):
        yield det.error_map_from_reconstruction(
            _float(u8[i : i + _BATCH]), u_hat[i : i + _BATCH], None if cams is None else cams[j]
        )


def cam_batches(det: SPADE, u8: torch.Tensor, u_hat: torch.Tensor) -> list:
    """The signed maps M(u), M(u_hat) of every batch (a few MB for 10,000 images)."""
    return [det.signed_cams(_float(u8[i : i + _BATCH]), u_hat[i : i + _BATCH])
            for i in range(0, len(u8), _BATCH)]


def spade_scores(
    det: SPADE, u8: torch.Tensor, u_hat: torch.Tensor, cams: list | None = None
) -> np.ndarray:
    """SPADE / Naive SPADE scores (sum of e', Algorithm 1) from precomputed reconstructions."""
    parts = [m.sum(dim=(1, 2)) for m in spade_map_batches(det, u8, u_hat, cams)]
    return torch.cat(parts).double().numpy()


def vae_scores(u8: torch.Tensor, u_hat: torch.Tensor, smoothing: float, norm: str) -> np.ndarray:
    """VAE-based scores: the reconstruction error summed over pixels and channels."""
    return np.concatenate([
        reconstruction_error(_float(u8[i : i + _BATCH]), u_hat[i : i + _BATCH], smoothing, norm)
        .sum(dim=(1, 2, 3)).double().numpy()
        for i in range(0, len(u8), _BATCH)
    ])


def detector_params(recipe: Any) -> dict[str, Any]:
    """The scoring parameters of SPADE and Naive SPADE a recipe sets."""
    return {"cam_layer": recipe.cam_layer, "upsample": recipe.upsample,
            "error_smoothing": recipe.error_smoothing, "error_norm": recipe.error_norm,
            **getattr(recipe, "spade_params", {})}


def method_scores(
    methods: Sequence[str], recipe: Any, vae: Any, cnn: Any, u8: torch.Tensor,
    u_hat: torch.Tensor, s_vae: np.ndarray, precision: str = "32", cams: list | None = None,
) -> dict[str, np.ndarray]:
    """Test scores of each method (higher = more anomalous), the VAE's computed once.

    ``precision``: scoring precision of the networks ("32" or "bf16"; ``u_hat`` should come
    from :func:`reconstruct` in the same one). ``cams``: SPADE's signed maps from
    :func:`cam_batches` (same classifier, layer and precision), so no extra CNN pass.
    """
    base = {**detector_params(recipe), "precision": precision}
    naive = {k: v for k, v in base.items() if k in ("cam_layer", "upsample", "error_smoothing",
                                                     "error_norm", "precision")}
    make = {
        "vae": lambda: s_vae,
        "cnn": lambda: CNNDetector.from_models(cnn, precision=precision).decision_function(u8),
        "naive_spade": lambda: spade_scores(NaiveSPADE.from_models(vae, cnn, **naive), u8, u_hat),
        "spade": lambda: spade_scores(SPADE.from_models(vae, cnn, **base), u8, u_hat, cams),
    }
    return {m: make[m]() for m in methods}


def run_benchmark(
    load: Callable[[int], BenchmarkData],
    recipe: Any,
    seeds: Sequence[int] = (0,),
    progress: bool = True,
    log: Callable[[str], Any] = print,
    on_protocol: Callable[..., Any] | None = None,
) -> list[dict]:
    """Train and score a benchmark over seeds; one row per (method, protocol, subset, seed).

    Parameters
    ----------
    load : callable seed -> BenchmarkData
        The data set's description of one seed.
    recipe : object with ``name``, ``vae``, ``cnn``, ``vae_train``, ``cnn_train``, ``loss``,
        ``cam_layer``, ``upsample``, ``error_smoothing``, ``error_norm`` (and optionally
        ``spade_params``), e.g. :class:`spadecam.reproduce.Recipe`; the training seeds are
        replaced by each seed.
    seeds : model seeds (weights, batch order, splits the data set draws per seed)
    on_protocol : callable, optional
        Called as ``on_protocol(seed, protocol, vae, cnn, data, u_hat, scores)`` after each
        protocol (ablations, figures).

    Returns
    -------
    list of dict with keys method, protocol, subset, seed, auroc, aupr, recipe, n_test,
    n_anomalous.
    """
    rows: list[dict] = []
    t0 = time.perf_counter()
    for seed in seeds:
        data = load(seed)
        vae = train_vae(data.x_normal, recipe.vae,
                        dataclasses.replace(recipe.vae_train, seed=seed, progress=progress))
        log(f"seed {seed}: VAE {_summary(vae)}")
        u_hat = reconstruct(vae, data.x_test)
        s_vae = vae_scores(data.x_test, u_hat, recipe.error_smoothing, recipe.error_norm)
        for prot in data.protocols:
            x = torch.cat([data.x_normal, prot.x_known])
            y = torch.cat([torch.zeros(len(data.x_normal)), torch.ones(len(prot.x_known))]).long()
            cnn = train_cnn(x, y, recipe.cnn,
                            dataclasses.replace(recipe.cnn_train, seed=seed, progress=progress),
                            recipe.loss)
            scores = method_scores(prot.methods, recipe, vae, cnn, data.x_test, u_hat, s_vae)
            for (pname, subset), idx in prot.columns.items():
                for m, s in scores.items():
                    lab, sc = data.y_test[idx], s[idx]
                    rows.append({"method": prot.rename.get(m, m), "protocol": pname,
                                 "subset": subset, "seed": seed, "auroc": auroc(lab, sc),
                                 "aupr": average_precision(lab, sc), "recipe": recipe.name,
                                 "n_test": len(idx), "n_anomalous": int(lab.sum())})
            log(f"seed {seed} {prot.name} ({len(prot.x_known)} known, CNN {_summary(cnn)}): "
                + ", ".join(f"{r['method']} {r['protocol']}/{r['subset']} {r['auroc']:.3f}"
                            for r in rows[-len(scores) * len(prot.columns):]))
            if on_protocol is not None:
                on_protocol(seed, prot, vae, cnn, data, u_hat, scores)
        log(f"seed {seed} done: {time.perf_counter() - t0:.0f} s since the start")
    return rows


def _summary(model: Any) -> str:
    t = getattr(model, "training_log_", None)
    if not t:
        return ""
    stop = "early stop" if t["stopped_early"] else "budget spent"
    return f"{t['steps']} steps ({stop}, best at step {t['best_step']})"


def summarise_columns(rows: Iterable[dict], key: str = "auroc"
                      ) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(method, protocol, subset) -> (mean, sample sd (0 for one seed), number of seeds)."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["method"], r["protocol"], r["subset"])].append(float(r[key]))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in acc.items()}


def format_columns_table(
    rows: Sequence[dict], methods: Sequence[str], columns: Sequence[tuple[str, str]],
    key: str = "auroc", labels: dict[str, str] | None = None,
) -> str:
    """Markdown table: one row per method, one column per (protocol, subset), mean ± sd."""
    stats = summarise_columns(rows, key)
    labels = {**METHOD_LABELS, **(labels or {})}
    head = "| method | " + " | ".join(f"{p} / {s}" for p, s in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for m in methods:
        cells = []
        for p, s in columns:
            if (m, p, s) not in stats:
                cells.append("–")
                continue
            mean, sd, n = stats[(m, p, s)]
            cells.append(f"{mean:.3f} ± {sd:.3f}" if n > 1 else f"{mean:.3f}")
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
