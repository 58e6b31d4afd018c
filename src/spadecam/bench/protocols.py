"""The benchmarks as data: how each one loads, splits and names its known classes.

Each ``*_data(seed, ...)`` function describes one seed of a benchmark as a
:class:`BenchmarkData` (normal training images, test images and labels,
one :class:`Protocol` per classifier) for the one runner,
:func:`spadecam.bench.runner.run_benchmark`:

* Noisy-MNIST (paper, section III-B): digit 0 normal; each known digit a protocol
  ``known_<k>`` whose classifier sees 0s and that digit; every non-zero test digit is an
  anomaly (:func:`noisy_mnist_data`, test set; :func:`noisy_mnist_val_data`, a validation
  split of the MNIST training set for choosing settings).
* ELPV (real solar-cell images): protocols ``unseen_type`` (mono defects known, poly
  unknown), ``few_labels_10`` / ``few_labels_50`` and a supervised reference
  (:func:`elpv_data`); and the field's protocol (DRA, :mod:`spadecam.data.elpv_dra`:
  general and hard settings with 1 or 10 labelled anomalies, :func:`elpv_dra_data`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam.bench.configs import BenchmarkConfig
from spadecam.data import NoisyMNISTConfig, load_mnist, make_noisy_mnist

__all__ = [
    "DRA_COLUMNS", "ELPV_COLUMNS", "ELPV_SPLIT", "MNIST_VAL_START", "NORMAL_DIGIT", "TEST_SEED",
    "VAL_SEED", "BenchmarkData", "NoisyMNISTSource", "Protocol", "elpv_data", "elpv_dir",
    "elpv_dra_data", "noisy_mnist_data", "noisy_mnist_source", "noisy_mnist_val_data",
]

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
        Methods scored with this classifier (:data:`spadecam.bench.tables.METHODS` keys).
    rename : dict
        Method names in the results, e.g. {"cnn": "cnn_all_labels"} for a supervised
        reference.
    meta : dict
        Extra columns of every row of this protocol (e.g. {"known_class": 3}).
    """

    name: str
    x_known: torch.Tensor
    columns: dict[tuple[str, str], np.ndarray]
    methods: tuple[str, ...] = ("vae", "cnn", "naive_spade", "spade")
    rename: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


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



NORMAL_DIGIT = 0
#: Seed of the noisy test set: fixed, so every model seed is scored on the same images.
TEST_SEED = 1810_02607
#: Offset so the training images of seed s never equal the test images.
_TRAIN_SEED_BASE = 1000
#: MNIST training images from this index on are the validation split of Noisy-MNIST: models
#: train on the ones before it, settings are chosen on these, the test set stays unseen.
MNIST_VAL_START = 50_000
#: Seed of the noisy validation set (fixed, like TEST_SEED).
VAL_SEED = 2019_0101


# --------------------------------------------------------------------------- Noisy-MNIST


def _render(digits: np.ndarray, seed: int, copies: int, cfg: NoisyMNISTConfig) -> np.ndarray:
    out = [make_noisy_mnist(digits, seed * 100 + c, cfg) for c in range(copies)]
    return np.concatenate(out)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)


@dataclass
class NoisyMNISTSource:
    """The MNIST digits a Noisy-MNIST run trains on and the noisy images it is scored on.

    Attributes
    ----------
    x_train : ndarray (N, 28, 28) uint8, y_train : ndarray (N,) int, training digits
    u_eval : Tensor (T, 1, 84, 84) uint8, the noisy evaluation images (same for every seed)
    digits : ndarray (T,) int, their digit labels
    copies : int, noisy renderings of each training digit
    """

    x_train: np.ndarray
    y_train: np.ndarray
    u_eval: torch.Tensor
    digits: np.ndarray
    copies: int = 1


def noisy_mnist_source(
    recipe: BenchmarkConfig, split: str = "test", data_dir: str | Path | None = None,
    n_val: int = 2000, mnist: tuple | None = None,
) -> NoisyMNISTSource:
    """Load MNIST and render the evaluation images of ``split`` once, for every seed.

    ``split="test"``: the MNIST training set trains, the first ``recipe.n_test`` (all when
    None) test images made noisy with :data:`TEST_SEED` are scored. ``split="val"``: images
    ``[:MNIST_VAL_START]`` of the training set train, the next ``n_val`` made noisy with
    :data:`VAL_SEED` are scored; the MNIST test set is not read. ``mnist``: the training set
    as (x, y), already loaded.

    Raises
    ------
    ValueError
        ``split`` other than "test" or "val".
    MNISTNotFoundError
        No MNIST folder found (the message says where it looked).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    x_all, y_all = mnist if mnist is not None else load_mnist("train", data_dir)
    if split == "val":
        x_ev = x_all[MNIST_VAL_START : MNIST_VAL_START + n_val]
        y_ev = y_all[MNIST_VAL_START : MNIST_VAL_START + n_val]
        return NoisyMNISTSource(x_all[:MNIST_VAL_START], y_all[:MNIST_VAL_START],
                                _to_tensor(make_noisy_mnist(x_ev, VAL_SEED, recipe.noisy)),
                                np.asarray(y_ev), 1)
    x_te, y_te = load_mnist("test", data_dir)
    if recipe.n_test is not None:
        x_te, y_te = x_te[: recipe.n_test], y_te[: recipe.n_test]
    return NoisyMNISTSource(x_all, y_all, _to_tensor(make_noisy_mnist(x_te, TEST_SEED,
                                                                      recipe.noisy)),
                            np.asarray(y_te), recipe.train_copies)


def noisy_mnist_data(
    seed: int, recipe: BenchmarkConfig, known: Sequence[int], source: NoisyMNISTSource
) -> BenchmarkData:
    """One seed of Noisy-MNIST (paper, section III-B) as data for the shared runner.

    Normal training images: the digits 0 of ``source`` (the recipe's ``n_train_normal``
    slice), rendered with seed ``1000 + seed``; per known digit k a protocol ``known_<k>``
    (row column ``known_class`` = k) whose known anomalies are that digit's training images
    (``n_train_known`` slice) rendered with seed ``1000 + seed + 17 k``; one result column
    ``(known_<k>, all)``: every evaluation image, every non-zero digit anomalous.
    """
    x_tr, y_tr, r = source.x_train, source.y_train, recipe
    normal = x_tr[y_tr == NORMAL_DIGIT][: r.n_train_normal]
    x_normal = _to_tensor(_render(normal, _TRAIN_SEED_BASE + seed, source.copies, r.noisy))
    every = np.arange(len(source.digits))

    def protocols() -> Iterator[Protocol]:
        for k in known:
            digits = x_tr[y_tr == k][: r.n_train_known]
            # a different render seed per class, so known-class images differ across classes
            x_k = _to_tensor(_render(digits, _TRAIN_SEED_BASE + seed + 17 * k, source.copies,
                                     r.noisy))
            yield Protocol(f"known_{k}", x_k, {(f"known_{k}", "all"): every},
                           meta={"known_class": int(k)})

    labels = (source.digits != NORMAL_DIGIT).astype(np.int64)
    return BenchmarkData(x_normal, source.u_eval, labels, protocols())


def noisy_mnist_val_data(
    seed: int, recipe: BenchmarkConfig, known: Sequence[int] = (3, 9), n_val: int = 2000,
    data_dir: str | Path | None = None, mnist: tuple | None = None,
) -> BenchmarkData:
    """One seed of Noisy-MNIST on its VALIDATION split (:func:`noisy_mnist_source`, "val")."""
    source = noisy_mnist_source(recipe, "val", data_dir, n_val, mnist)
    return noisy_mnist_data(seed, recipe, known, source)


# --------------------------------------------------------------------------- ELPV

#: The committed ELPV split, package data (it was found through the repository root, which
#: an installed wheel does not have).
ELPV_SPLIT = Path(__file__).resolve().parents[1] / "data" / "elpv_split.csv"
#: Test columns of the ELPV benchmark, in table order: (protocol, subset).
ELPV_COLUMNS = (
    ("unseen_type", "mono"), ("unseen_type", "poly"), ("unseen_type", "all"),
    ("unseen_type", "uncertain"), ("few_labels_10", "all"), ("few_labels_50", "all"),
)
#: Test columns of the DRA protocol, in table order: (protocol, subset).
DRA_COLUMNS = (
    ("dra_general_10", "all"), ("dra_general_1", "all"), ("dra_hard_mono_10", "poly"),
    ("dra_hard_poly_10", "mono"), ("dra_hard_mono_1", "poly"), ("dra_hard_poly_1", "mono"),
)
#: Seed offset of the random known cells of the few_labels protocols.
_FEW_LABELS_SEED = 5150


def elpv_dir() -> Path:
    """The elpv-dataset package's data folder (ModuleNotFoundError naming the extra)."""
    from spadecam.data.elpv import elpv_dir as _dir

    return _dir()


def elpv_data(
    seed: int, image_size: int, eval_split: str = "test", split_file: str | Path | None = None,
    root: str | Path | None = None, images: dict | None = None,
) -> BenchmarkData:
    """One seed of the ELPV benchmark as data (:class:`spadecam.bench.runner.BenchmarkData`).

    * Training: the normal (p = 0) training cells of both types; known anomalies per
      protocol: ``unseen_type`` the defective (p >= 2/3) mono training cells;
      ``few_labels_10`` / ``few_labels_50`` 10 / 50 defective training cells of both
      types drawn with a generator seeded by ``seed``; ``cnn_all_labels`` (a supervised
      reference, CNN-based only) every defective training cell.
    * Evaluation on ``eval_split`` ("val" to choose settings, "test" for the table): every
      normal cell of the split against the subset's anomalous cells: ``mono`` / ``poly``
      defective cells of that type, ``all`` both, ``uncertain`` the p = 1/3 cells.

    Parameters
    ----------
    seed : int
    image_size : int, the model input side (cells are square, 300 px)
    eval_split : {"val", "test"}
    split_file : the split (default :data:`ELPV_SPLIT`)
    root : folder of labels.csv / images (default the elpv-dataset package's)
    images : dict, optional
        A cache {path: (1, S, S) uint8} filled and reused across seeds.

    Raises
    ------
    ModuleNotFoundError
        elpv-dataset is missing and no ``root`` is given (the message names the extra).
    ValueError
        A bad split file or ``eval_split``.
    """
    from spadecam.data.elpv import read_split

    if eval_split not in ("val", "test"):
        raise ValueError(f"eval_split must be 'val' or 'test', got {eval_split!r}")
    cells = read_split(split_file or ELPV_SPLIT)
    root = Path(root) if root is not None else elpv_dir()
    cache = images if images is not None else {}
    _load(cells, root, image_size, cache)

    def stack(sel) -> torch.Tensor:
        return torch.from_numpy(np.stack([cache[(c.path, image_size)] for c in sel]))

    train = [c for c in cells if c.split == "train"]
    normal = [c for c in train if c.label == "normal"]
    defective = [c for c in train if c.label == "defective"]
    test = [c for c in cells if c.split == eval_split]
    y = np.array([c.label != "normal" for c in test], dtype=np.int64)
    is_normal = np.array([c.label == "normal" for c in test])

    def col(pred) -> np.ndarray:
        return np.flatnonzero(is_normal | np.array([pred(c) for c in test]))

    def defect(kind: str | None):
        return lambda c: c.label == "defective" and (kind is None or c.type == kind)

    unseen = {("unseen_type", "mono"): col(defect("mono")),
              ("unseen_type", "poly"): col(defect("poly")),
              ("unseen_type", "all"): col(defect(None)),
              ("unseen_type", "uncertain"): col(lambda c: c.label == "uncertain")}
    rng = np.random.default_rng(_FEW_LABELS_SEED + seed)

    def protocols() -> Iterator[Protocol]:
        yield Protocol("unseen_type", stack([c for c in defective if c.type == "mono"]), unseen)
        for k in (10, 50):
            pick = [defective[i] for i in sorted(rng.choice(len(defective), k, replace=False))]
            yield Protocol(f"few_labels_{k}", stack(pick), {(f"few_labels_{k}", "all"): col(
                defect(None))})
        every = {**unseen, **{(f"few_labels_{k}", "all"): col(defect(None)) for k in (10, 50)}}
        yield Protocol("cnn_all_labels", stack(defective), every, methods=("cnn",),
                       rename={"cnn": "cnn_all_labels"})

    return BenchmarkData(stack(normal), stack(test), y, protocols())


def _load(cells: list, root: Path, image_size: int, cache: dict) -> None:
    from spadecam.data.elpv import load_cells

    missing = [c for c in cells if (c.path, image_size) not in cache]
    if missing:
        for c, x in zip(missing, load_cells(missing, root, image_size)):
            cache[(c.path, image_size)] = x


def elpv_dra_data(
    seed: int, image_size: int, root: str | Path | None = None, images: dict | None = None,
    protocols: tuple[str, ...] | None = None, split_file: str | Path | None = None,
    known_file: str | Path | None = None,
) -> BenchmarkData:
    """One seed of the field's ELPV protocol (DRA; :mod:`spadecam.data.elpv_dra`) as data.

    Normal training images: DRA's 1,131 training normals; test images: its 377 test normals
    and all 715 anomalies (p = 1.0). One protocol per setting (``dra_general_10``,
    ``dra_general_1``, ``dra_hard_mono_10``, ...; default all of
    :data:`~spadecam.data.elpv_dra.DRA_PROTOCOLS`), whose known anomalies are the committed
    cells of that protocol and seed, and whose one column is the test normals against its test
    anomalies: ``(dra_general_<n>, all)`` every anomaly but the n known,
    ``(dra_hard_<t>_<n>, <other type>)`` every cell of the other type.

    Raises
    ------
    ModuleNotFoundError
        elpv-dataset is missing and no ``root`` is given (the message names the extra).
    ValueError
        The lists name cells that ``root``'s labels.csv lacks.
    KeyError
        A seed or protocol the committed lists do not hold.
    """
    from spadecam.data.elpv import read_labels
    from spadecam.data.elpv_dra import (
        DRA_KNOWN,
        DRA_PROTOCOLS,
        DRA_SPLIT,
        dra_anomalies,
        read_dra_files,
    )

    root = Path(root) if root is not None else elpv_dir()
    cache = images if images is not None else {}
    by_path = {c.path: c for c in read_labels(root / "labels.csv")}
    normals, known = read_dra_files(split_file or DRA_SPLIT, known_file or DRA_KNOWN)
    listed = set(normals["train"] + normals["test"]) | {q for v in known.values() for q in v}
    absent = sorted(listed - set(by_path))
    if absent:
        raise ValueError(
            f"the DRA lists ({split_file or DRA_SPLIT}) name {len(absent)} cell(s) that "
            f"{root / 'labels.csv'} lacks, e.g. {absent[0]}; for other data make the lists with "
            "spadecam.data.elpv_dra.make_dra_files")
    train = [by_path[p] for p in normals["train"]]
    anomalies = dra_anomalies(list(by_path.values()))
    test = [by_path[p] for p in normals["test"]] + anomalies
    _load(train + test, root, image_size, cache)

    def stack(sel) -> torch.Tensor:
        return torch.from_numpy(np.stack([cache[(c.path, image_size)] for c in sel]))

    n_normal = len(normals["test"])
    y = np.r_[np.zeros(n_normal), np.ones(len(anomalies))].astype(np.int64)
    position = {c.path: n_normal + i for i, c in enumerate(anomalies)}
    names = protocols or tuple(DRA_PROTOCOLS)

    def protocol_list() -> Iterator[Protocol]:
        for name in names:
            p = DRA_PROTOCOLS[name]
            seen = known[(name, seed)]
            if p.seen is None:
                held = {position[q] for q in seen}
                anomalous = [i for i in position.values() if i not in held]
            else:
                anomalous = [position[c.path] for c in anomalies if c.type == p.unseen]
            idx = np.r_[np.arange(n_normal), np.array(anomalous, dtype=np.int64)]
            yield Protocol(name, stack([by_path[q] for q in seen]), {(name, p.unseen): idx})

    return BenchmarkData(stack(train), stack(test), y, protocol_list())
