"""Finding the user's images on disk: plain folders and the MVTec AD layout.

No pixels are read here — only paths, labels (0 = normal, 1 = anomalous) and the mask file
of each image; :mod:`spadecam.data.images` reads them.

Folder layout
-------------
One or more folders of normal images, one or more folders of (known) anomalous images and,
optionally, folders of ground-truth masks::

    normal/     a.png b.png ...
    anomaly/    c.png d.png ...
    masks/      c.png  (or c_mask.png)  — matched to anomalous images by file stem

A folder is read without recursion; files whose suffix is not in :data:`IMAGE_SUFFIXES`
(case-insensitive) and hidden files are skipped. The same layout serves training (normal +
known anomalies) and testing (normal + anomalous test images + masks). With one mask folder,
masks are matched by stem against all anomalous images; with one mask folder per anomaly
folder, they are paired in order (useful when stems repeat across folders, as in MVTec).

MVTec AD layout
---------------
``ROOT/train/good``, ``ROOT/test/<kind>`` (``good`` = normal) and
``ROOT/ground_truth/<kind>/<stem>_mask.png`` (Bergmann et al., CVPR 2019).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "LabelledImages",
    "collect_inputs",
    "folder_layout",
    "list_images",
    "match_masks",
    "mvtec_layout",
]

#: File suffixes read as images (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

PathLike = str | os.PathLike


class DatasetError(ValueError):
    """A folder or layout cannot be used; the message names the folder or file."""


@dataclass
class LabelledImages:
    """Image paths with labels and optional mask paths, in a fixed order.

    Attributes
    ----------
    paths : list of Path
    labels : ndarray (N,), int64, 0 = normal, 1 = anomalous
    masks : list of (Path or None)
        Ground-truth mask of each image; None for normal images and unmasked anomalies.
    """

    paths: list[Path]
    labels: np.ndarray
    masks: list[Path | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not self.masks:
            self.masks = [None] * len(self.paths)
        if not (len(self.paths) == len(self.labels) == len(self.masks)):
            raise ValueError("paths, labels and masks must have the same length")

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def list_images(directory: PathLike, arg: str = "folder") -> list[Path]:
    """Image files of one folder (not recursive), sorted by name.

    Parameters
    ----------
    directory : path
    arg : str
        How the folder was given (e.g. ``"--normal"``), for error messages.

    Raises
    ------
    DatasetError
        The folder does not exist, is not a folder, or holds no image file.
    """
    d = Path(directory)
    if not d.exists():
        raise DatasetError(f"{arg} {d}: no such folder")
    if not d.is_dir():
        raise DatasetError(f"{arg} {d}: not a folder")
    files = sorted(p for p in d.iterdir() if _is_image(p))
    if not files:
        raise DatasetError(
            f"{arg} {d}: the folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def collect_inputs(inputs: Sequence[PathLike], arg: str = "INPUT") -> list[Path]:
    """Expand files and folders (each folder as :func:`list_images`) into image paths.

    Files are kept as given, in order, whatever their suffix; duplicates are dropped.

    Raises
    ------
    DatasetError
        No inputs, a path that does not exist, or an empty folder.
    """
    if not inputs:
        raise DatasetError(f"{arg}: give at least one image file or folder")
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += list_images(p, arg)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{arg} {p}: no such file or folder")
    return list(dict.fromkeys(out))


def _mask_stem(p: Path) -> str:
    return p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem


def match_masks(images: Sequence[Path], mask_dir: PathLike, arg: str = "--masks") -> dict:
    """Pair mask files with images by file stem (``c.png`` or ``c_mask.png`` for ``c.*``).

    Returns
    -------
    dict Path -> Path, image to mask; images without a mask are absent.

    Raises
    ------
    DatasetError
        An empty or missing folder, two masks or two images with one stem, or a mask that
        matches no image (the message names the mask).
    """
    by_stem: dict[str, Path] = {}
    for img in images:
        if img.stem in by_stem:
            raise DatasetError(
                f"{arg}: images {by_stem[img.stem]} and {img} share the stem {img.stem!r}, so "
                "masks cannot be matched by name; give one mask folder per anomaly folder"
            )
        by_stem[img.stem] = img
    out: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for m in list_images(mask_dir, arg):
        stem = _mask_stem(m)
        if stem in seen:
            raise DatasetError(f"{arg}: masks {seen[stem]} and {m} are both for {stem!r}")
        seen[stem] = m
        if stem not in by_stem:
            raise DatasetError(
                f"{arg}: mask {m} has no image: no anomalous image is named {stem!r} "
                "(masks are matched by file stem, optionally with a '_mask' suffix)"
            )
        out[by_stem[stem]] = m
    return out


def _as_list(dirs: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    if dirs is None:
        return []
    if isinstance(dirs, (str, os.PathLike)):
        return [dirs]
    return list(dirs)


def folder_layout(
    normal: PathLike | Sequence[PathLike],
    anomaly: PathLike | Sequence[PathLike] | None = None,
    masks: PathLike | Sequence[PathLike] | None = None,
    normal_arg: str = "--normal",
    anomaly_arg: str = "--anomaly",
    masks_arg: str = "--masks",
) -> LabelledImages:
    """Labelled images from normal folders, anomaly folders and optional mask folders.

    Parameters
    ----------
    normal : folder or list of folders (label 0)
    anomaly : folder or list of folders (label 1), optional
    masks : folder or list of folders, optional
        One folder (matched by stem against all anomalous images) or one per anomaly folder
        (paired in order).
    normal_arg, anomaly_arg, masks_arg : str
        Names used in error messages (the CLI options).

    Returns
    -------
    LabelledImages, normal images first, each folder sorted by name.

    Raises
    ------
    DatasetError
        A missing or empty folder, a file listed twice (e.g. the same folder given as normal
        and as anomaly), masks that cannot be matched, or a mask with no image.
    """
    normal_dirs, anomaly_dirs, mask_dirs = _as_list(normal), _as_list(anomaly), _as_list(masks)
    if not normal_dirs:
        raise DatasetError(f"{normal_arg}: give at least one folder of normal images")
    groups = [list_images(d, normal_arg) for d in normal_dirs]
    anomalies = [list_images(d, anomaly_arg) for d in anomaly_dirs]
    paths = [p for g in groups + anomalies for p in g]
    labels = [0] * sum(map(len, groups)) + [1] * sum(map(len, anomalies))
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise DatasetError(f"{p} is listed twice (also as {seen[key]}); give each image once")
        seen[key] = p
    pairs: dict[Path, Path] = {}
    if mask_dirs:
        if not anomaly_dirs:
            raise DatasetError(f"{masks_arg} needs anomalous images ({anomaly_arg})")
        if len(mask_dirs) == 1:
            pairs = match_masks([p for g in anomalies for p in g], mask_dirs[0], masks_arg)
        elif len(mask_dirs) == len(anomaly_dirs):
            for g, md in zip(anomalies, mask_dirs):
                pairs.update(match_masks(g, md, masks_arg))
        else:
            raise DatasetError(
                f"{masks_arg} given {len(mask_dirs)} times for {len(anomaly_dirs)} {anomaly_arg} "
                "folders: give one mask folder, or one per anomaly folder in the same order"
            )
    return LabelledImages(paths, np.array(labels), [pairs.get(p) for p in paths])


def mvtec_layout(
    root: PathLike, kinds: Sequence[str] | None = None
) -> tuple[LabelledImages, LabelledImages]:
    """Train and test sets of one MVTec AD category.

    Parameters
    ----------
    root : path
        The category folder, e.g. ``mvtec_ad/bottle``.
    kinds : list of str, optional
        Defect kinds to include in the test set (default all); ``good`` is always included.

    Returns
    -------
    train : LabelledImages, ``train/good`` (all normal, no masks)
    test : LabelledImages, ``test/good`` (0) then each defect kind (1) in name order, with
        ``ground_truth/<kind>/<stem>_mask.png`` as masks

    Raises
    ------
    DatasetError
        Missing ``train/good`` or ``test/good``, an unknown kind, an empty folder, or a mask
        with no image.
    """
    root = Path(root)
    train_paths = list_images(root / "train" / "good", "MVTec train/good")
    train = LabelledImages(train_paths, np.zeros(len(train_paths)))
    test_dir = root / "test"
    good = list_images(test_dir / "good", "MVTec test/good")
    found = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name != "good")
    wanted = found if kinds is None else list(kinds)
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise DatasetError(f"MVTec {root}: unknown defect kinds {unknown}; found {found}")
    paths, labels, masks = list(good), [0] * len(good), [None] * len(good)
    for kind in wanted:
        imgs = list_images(test_dir / kind, f"MVTec test/{kind}")
        gt = root / "ground_truth" / kind
        pairs = match_masks(imgs, gt, f"MVTec ground_truth/{kind}") if gt.is_dir() else {}
        paths += imgs
        labels += [1] * len(imgs)
        masks += [pairs.get(p) for p in imgs]
    return train, LabelledImages(paths, np.array(labels), masks)
