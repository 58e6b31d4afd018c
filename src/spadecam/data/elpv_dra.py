"""The field's ELPV protocol (DRA: Ding, Pang, Shen, CVPR 2022, arXiv 2203.14506; its public
code, data/convert_elpv.py and datasets/mvtecad.py), reproduced from its rules.

* Labels: normal = defect probability 0; anomaly = probability **1.0 only** (1/3 and 2/3 are
  left out); 1,508 normal cells and 715 anomalies in the package's labels.csv.
* Normal split: ``sklearn.model_selection.train_test_split(normals, test_size=0.25,
  random_state=42)`` over the normal file names in labels.csv order: 1,131 train, 377 test.
* General setting, n labelled anomalies (``dra_general_<n>``): every anomaly (mono and poly),
  shuffled with ``numpy.random.RandomState(seed).shuffle``; the first n train the classifier,
  the rest are the test anomalies, scored against the test normals.
* Hard setting, seen class t (``dra_hard_<t>_<n>``): the anomalies of type t, shuffled the same
  way, give the n training anomalies; the test anomalies are **all** cells of the other type.

One difference from DRA's code, on purpose: DRA lists the anomaly files with ``os.listdir``,
whose order differs between file systems, so the same seed draws different cells on different
machines; here the list is **sorted** first (by DRA's path ``test/<type>/<file>``, i.e. by type,
then file name). The seed is the benchmark's model seed (0, 1, 2: three runs, as DRA reports the
mean of three). The lists are committed (``elpv_dra_split.csv``: the normal split;
``elpv_dra_known.csv``: the labelled anomalies of each protocol and seed) and
:func:`make_dra_files` rebuilds them from labels.csv.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spadecam.data.elpv import ElpvCell

__all__ = [
    "DRA_KNOWN", "DRA_PROTOCOLS", "DRA_SEEDS", "DRA_SPLIT", "DraProtocol", "dra_anomalies",
    "dra_known", "dra_normal_split", "make_dra_files", "read_dra_files",
]

_HERE = Path(__file__).resolve().parent
#: The committed normal split (path,type,split with split train / test).
DRA_SPLIT = _HERE / "elpv_dra_split.csv"
#: The committed labelled anomalies (protocol,seed,path).
DRA_KNOWN = _HERE / "elpv_dra_known.csv"
#: Seeds the committed lists are drawn with.
DRA_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class DraProtocol:
    """One setting of the DRA protocol: "general" (``seen`` None) or "hard" (seen type)."""

    name: str
    setting: str
    seen: str | None
    n: int

    @property
    def unseen(self) -> str:
        """The test subset: "all" (general) or the other cell type (hard)."""
        if self.seen is None:
            return "all"
        return "poly" if self.seen == "mono" else "mono"


#: The protocols, in table order.
DRA_PROTOCOLS = {p.name: p for p in (
    DraProtocol("dra_general_10", "general", None, 10),
    DraProtocol("dra_general_1", "general", None, 1),
    DraProtocol("dra_hard_mono_10", "hard", "mono", 10),
    DraProtocol("dra_hard_poly_10", "hard", "poly", 10),
    DraProtocol("dra_hard_mono_1", "hard", "mono", 1),
    DraProtocol("dra_hard_poly_1", "hard", "poly", 1),
)}


def _dra_path(c: ElpvCell) -> str:
    return f"test/{c.type}/{os.path.basename(c.path)}"


def dra_normal_split(cells: list[ElpvCell]) -> tuple[list[ElpvCell], list[ElpvCell]]:
    """(train normals, test normals): DRA's 75 / 25 split of the p = 0 cells, labels.csv order."""
    from sklearn.model_selection import train_test_split

    normal = [c for c in cells if c.probability == 0]
    train, test = train_test_split(np.arange(len(normal)), test_size=0.25, random_state=42)
    return [normal[i] for i in train], [normal[i] for i in test]


def dra_anomalies(cells: list[ElpvCell]) -> list[ElpvCell]:
    """The p = 1.0 cells, sorted by DRA's path (type, then file name)."""
    return sorted((c for c in cells if c.probability == 1.0), key=_dra_path)


def dra_known(cells: list[ElpvCell], protocol: str, seed: int) -> tuple[list[ElpvCell],
                                                                        list[ElpvCell]]:
    """(labelled training anomalies, test anomalies) of ``protocol`` for ``seed``.

    Raises
    ------
    KeyError
        An unknown protocol (see :data:`DRA_PROTOCOLS`).
    """
    p = DRA_PROTOCOLS[protocol]
    anomalies = dra_anomalies(cells)
    pool = anomalies if p.seen is None else [c for c in anomalies if c.type == p.seen]
    order = list(range(len(pool)))
    np.random.RandomState(seed).shuffle(order)  # DRA: RandomState(seed).shuffle(list)
    known = [pool[i] for i in order[: p.n]]
    if p.seen is None:
        test = [pool[i] for i in order[p.n :]]
    else:
        test = [c for c in anomalies if c.type == p.unseen]
    return known, test


def make_dra_files(cells: list[ElpvCell], seeds: tuple[int, ...] = DRA_SEEDS) -> tuple[str, str]:
    """The text of the two committed files, from the cells of labels.csv."""
    train, test = dra_normal_split(cells)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "type", "split"])
    for split, part in (("train", train), ("test", test)):
        for c in part:
            w.writerow([c.path, c.type, split])
    known = io.StringIO()
    k = csv.writer(known, lineterminator="\n")
    k.writerow(["protocol", "seed", "path"])
    for name in DRA_PROTOCOLS:
        for seed in seeds:
            for c in dra_known(cells, name, seed)[0]:
                k.writerow([name, seed, c.path])
    return buf.getvalue(), known.getvalue()


def read_dra_files(
    split_file: str | os.PathLike = DRA_SPLIT, known_file: str | os.PathLike = DRA_KNOWN
) -> tuple[dict[str, list[str]], dict[tuple[str, int], list[str]]]:
    """({"train": paths, "test": paths} of the normals, {(protocol, seed): known paths}).

    Raises
    ------
    ValueError
        A file without the expected header (naming it).
    """
    normals: dict[str, list[str]] = {"train": [], "test": []}
    with open(split_file, newline="") as f:
        r = csv.DictReader(f)
        if r.fieldnames != ["path", "type", "split"]:
            raise ValueError(f"{split_file}: expected the header path,type,split")
        for row in r:
            normals[row["split"]].append(row["path"])
    known: dict[tuple[str, int], list[str]] = {}
    with open(known_file, newline="") as f:
        r = csv.DictReader(f)
        if r.fieldnames != ["protocol", "seed", "path"]:
            raise ValueError(f"{known_file}: expected the header protocol,seed,path")
        for row in r:
            known.setdefault((row["protocol"], int(row["seed"])), []).append(row["path"])
    return normals, known
