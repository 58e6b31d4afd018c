"""ELPV: electroluminescence images of solar cells (Buerhop-Lutz et al. 2018, Deitsch et al. 2019).

2,624 grey 8-bit 300 x 300 images of mono- and polycrystalline cells, each labelled by
experts with a defect probability 0, 1/3, 2/3 or 1. The images come from the PyPI package
``elpv-dataset`` (images CC BY-NC-SA 4.0, code Apache-2.0), the optional extra
``pip install -e .[benchmarks]``; nothing is downloaded by spadecam.

Labels used by the benchmark (:func:`label_of`)
-----------------------------------------------
* normal: probability 0;
* defective: probability >= 2/3 (2/3 or 1);
* uncertain: probability 1/3, left out of the main AUROC and reported as its own subset.

Split (:func:`make_split`)
--------------------------
Train / validation / test, stratified by (probability, cell type): within each of the 8
strata the cells are shuffled with a fixed seed and cut 60 / 20 / 20. The split is committed
as ``src/spadecam/data/elpv_split.csv`` (package data) (``path,probability,type,split``) and read back with
:func:`read_split`, so every run and every seed uses the same cells.

numpy + Pillow only (no torch).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spadecam.data.images import read_image
from spadecam.preprocess import resize_image

__all__ = [
    "SPLITS",
    "ElpvCell",
    "elpv_dir",
    "label_of",
    "load_cells",
    "make_split",
    "read_labels",
    "read_split",
    "split_to_csv",
]

#: The split names, in file order.
SPLITS = ("train", "val", "test")
_FRACTIONS = (0.6, 0.2, 0.2)
_SPLIT_SEED = 20190101
_EXTRA = "pip install -e '.[benchmarks]' (or pip install elpv-dataset)"


@dataclass(frozen=True)
class ElpvCell:
    """One labelled cell image.

    Attributes
    ----------
    path : str, relative to the package's data folder, e.g. "images/cell0001.png"
    probability : float in {0, 1/3, 2/3, 1}, the experts' defect probability
    type : {"mono", "poly"}
    split : {"train", "val", "test"} or "" before a split is made
    """

    path: str
    probability: float
    type: str
    split: str = ""

    @property
    def label(self) -> str:
        return label_of(self.probability)


def label_of(probability: float) -> str:
    """"normal" (p = 0), "uncertain" (p = 1/3) or "defective" (p >= 2/3).

    Raises
    ------
    ValueError
        A probability outside [0, 1].
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"defect probability must be in [0, 1], got {probability!r}")
    if probability == 0:
        return "normal"
    return "defective" if probability >= 2 / 3 - 1e-6 else "uncertain"


def elpv_dir() -> Path:
    """The ``data`` folder of the installed ``elpv-dataset`` package (labels.csv, images/).

    Raises
    ------
    ModuleNotFoundError
        The package is missing; the message names the extra that installs it.
    """
    try:
        import elpv_dataset
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the ELPV benchmark needs the elpv-dataset package: {_EXTRA}"
        ) from None
    return Path(elpv_dataset.__file__).parent / "data"


def read_labels(path: str | os.PathLike) -> list[ElpvCell]:
    """Read the package's labels.csv (whitespace-separated: path probability type).

    Raises
    ------
    ValueError
        A line that is not ``path probability mono|poly`` (naming the file and line).
    """
    cells = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            p, prob, kind = parts[0], float(parts[1]), parts[2]
            label_of(prob)
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{i}: expected 'path probability type', got {line!r}") from None
        if kind not in ("mono", "poly") or len(parts) != 3:
            raise ValueError(f"{path}:{i}: type must be mono or poly, got {line!r}")
        cells.append(ElpvCell(p, prob, kind))
    return cells


def make_split(cells: list[ElpvCell], seed: int = _SPLIT_SEED) -> list[ElpvCell]:
    """Assign train / val / test, stratified by (probability, type), 60 / 20 / 20 per stratum.

    Within a stratum of n cells (in file order, shuffled by a local generator seeded with
    ``seed``) the first round(0.6 n) go to train, the next round(0.2 n) to val, the rest to
    test. Returns the cells in their input order with ``split`` set.
    """
    rng = np.random.default_rng(seed)
    split = [""] * len(cells)
    strata: dict[tuple[float, str], list[int]] = {}
    for i, c in enumerate(cells):
        strata.setdefault((round(c.probability, 4), c.type), []).append(i)
    for key in sorted(strata):
        idx = np.array(strata[key])[rng.permutation(len(strata[key]))]
        n_train = round(_FRACTIONS[0] * len(idx))
        n_val = round(_FRACTIONS[1] * len(idx))
        for j, i in enumerate(idx):
            split[i] = "train" if j < n_train else "val" if j < n_train + n_val else "test"
    return [ElpvCell(c.path, c.probability, c.type, s) for c, s in zip(cells, split)]


def split_to_csv(cells: list[ElpvCell]) -> str:
    """CSV text ``path,probability,type,split`` (probability with 6 decimals)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "probability", "type", "split"])
    for c in cells:
        w.writerow([c.path, f"{c.probability:.6f}", c.type, c.split])
    return buf.getvalue()


def read_split(path: str | os.PathLike) -> list[ElpvCell]:
    """Read a split file written by :func:`split_to_csv`.

    Raises
    ------
    ValueError
        Missing columns, an unknown split or type, a bad probability or a repeated path
        (naming the file and line).
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["path", "probability", "type", "split"]:
            raise ValueError(f"{path}: expected the header path,probability,type,split, "
                             f"got {reader.fieldnames}")
        cells, seen = [], set()
        for i, row in enumerate(reader, 2):
            try:
                prob = float(row["probability"])
                label_of(prob)
            except ValueError:
                raise ValueError(f"{path}:{i}: bad probability {row['probability']!r}") from None
            if row["split"] not in SPLITS or row["type"] not in ("mono", "poly"):
                raise ValueError(f"{path}:{i}: split must be one of {SPLITS} and type mono or "
                                 f"poly, got {row['split']!r}, {row['type']!r}")
            if row["path"] in seen:
                raise ValueError(f"{path}:{i}: {row['path']} appears twice")
            seen.add(row["path"])
            cells.append(ElpvCell(row["path"], prob, row["type"], row["split"]))
    return cells


def load_cells(cells: list[ElpvCell], root: str | os.PathLike, size: int) -> np.ndarray:
    """Read cell images and bring them to size x size (the API's resizing function).

    Parameters
    ----------
    cells : the cells to read, in order
    root : folder the cells' paths are relative to (:func:`elpv_dir`)
    size : int >= 1, output side in pixels (the cells are square, so nothing is padded)

    Returns
    -------
    ndarray (N, 1, size, size), uint8 in [0, 255]

    Raises
    ------
    ImageError
        A missing or unreadable image (naming it).
    """
    out = np.empty((len(cells), 1, size, size), dtype=np.uint8)
    for i, c in enumerate(cells):
        x = read_image(Path(root) / c.path)[:1]
        out[i] = np.round(resize_image(x, size, "letterbox") * 255.0).astype(np.uint8)
    return out
