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

A labelled folder (``--normal``, ``--anomaly``, ``--masks``) is read without recursion, so a
sub-folder never changes an image's label unseen: its sub-folders are named in a warning (or
in the error when it holds no image itself). Folders given to ``spadecam score``
(:func:`collect_inputs`) are read recursively, following symbolic links to folders but
never entering a folder twice (a link cycle cannot loop; the skipped link is named).

Hidden files and folders (name starting with ".") are skipped. Other files whose suffix is
not in :data:`IMAGE_SUFFIXES` (case-insensitive) are skipped with a warning naming them. A
file with an image suffix is always listed, even a broken symbolic link, so the reader names
it in its error instead of dropping it. The same layout serves training (normal + known
anomalies) and testing (normal + anomalous test images + masks). With one mask folder,
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

from spadecam._progress import warn

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


def _names(paths: Sequence[Path], most: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _scan(d: Path, recursive: bool) -> tuple[list[Path], list[Path], list[Path], list[str]]:
    """Image paths under ``d`` in name order (depth first), plus what was left out.

    The real folder tree is read first, then the folders that symbolic links point to, each
    real folder at most once (so a link cycle ends, and a folder of the tree that a link
    also reaches is read under its own path).

    Returns (images, other_files, sub_folders_not_read, links_not_followed).
    """
    images: list[Path] = []
    others: list[Path] = []
    subfolders: list[Path] = []
    loops: list[str] = []
    seen = {d.resolve()}
    links: list[Path] = []  # links to folders, followed once the real tree is read

    def visit(folder: Path) -> None:
        for entry in sorted(folder.iterdir(), key=lambda q: q.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # true for symbolic links to folders too
                if not recursive:
                    subfolders.append(entry)
                elif entry.is_symlink():
                    links.append(entry)
                else:
                    seen.add(entry.resolve())
                    visit(entry)
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                images.append(entry)  # a broken link too: the reader names it
            else:
                others.append(entry)

    visit(d)
    while links:  # a folder is read once: through its real path if it is in the tree
        link = links.pop(0)
        real = link.resolve()
        if real in seen:  # a link cycle, or a folder of the tree reached again
            loops.append(f"{link} (a link to {real}, already read)")
            continue
        seen.add(real)
        visit(link)
    return images, others, subfolders, loops


def list_images(directory: PathLike, arg: str = "folder", recursive: bool = False) -> list[Path]:
    """Image files of one folder, sorted by name (see the module notes).

    Parameters
    ----------
    directory : path
    arg : str
        How the folder was given (e.g. ``"--normal"``), for error messages.
    recursive : bool
        Also read sub-folders (depth first, in name order), following links to folders but
        never entering a folder twice.

    Returns
    -------
    list of Path, ``directory`` joined with each file's path inside it. Files with an image
    suffix are listed even when they are broken links (the reader reports them).

    Raises
    ------
    DatasetError
        The folder does not exist, is not a folder, or holds no image file (the message
        names its sub-folders when it has any and ``recursive`` is False).

    Warns
    -----
    SpadecamWarning
        Files skipped because their suffix is not an image suffix, sub-folders not read
        (``recursive=False``), links to folders already read (``recursive=True``).
    """
    d = Path(directory)
    if d.is_symlink() and not d.exists():
        raise DatasetError(f"{arg} {d}: broken symbolic link (points to {os.readlink(d)})")
    if not d.exists():
        raise DatasetError(f"{arg} {d}: no such folder")
    if not d.is_dir():
        raise DatasetError(f"{arg} {d}: not a folder")
    files, others, subfolders, loops = _scan(d, recursive)
    if not files:
        hint = (f"; it has sub-folders ({_names(subfolders)}): give each as its own folder"
                if subfolders else "")
        raise DatasetError(
            f"{arg} {d}: the folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
            + hint
        )
    if others:
        warn(f"{arg} {d}: skipped {len(others)} file(s) that are not images (suffix not in "
             f"{', '.join(IMAGE_SUFFIXES)}): {_names(others)}")
    if subfolders:
        warn(f"{arg} {d}: sub-folders are not read for {arg}: {_names(subfolders)}")
    if loops:
        warn(f"{arg} {d}: not entered twice: {'; '.join(loops[:5])}")
    return files


def collect_inputs(inputs: Sequence[PathLike], arg: str = "INPUT") -> list[Path]:
    """Expand files and folders into image paths; folders are read recursively.

    Files are kept as given, in order, whatever their suffix; folders expand to their image
    files (:func:`list_images` with ``recursive=True``), each path being the folder as given
    joined with the file's path inside it. Duplicates are dropped.

    Raises
    ------
    DatasetError
        No inputs, paths that do not exist (all of them named, broken links as such), or a
        folder without images.
    """
    if not inputs:
        raise DatasetError(f"{arg}: give at least one image file or folder")
    out: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += list_images(p, arg, recursive=True)
        elif p.is_file():
            out.append(p)
        elif p.is_symlink():
            missing.append(f"{p} (broken symbolic link to {os.readlink(p)})")
        else:
            missing.append(str(p))
    if missing:
        raise DatasetError(f"{arg}: no such file or folder: {', '.join(missing)}")
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

    Warns
    -----
    SpadecamWarning
        A defect kind without a ``ground_truth`` folder (its images get no masks). Hidden
        folders (``.name``) are not defect kinds.
    """
    root = Path(root)
    train_paths = list_images(root / "train" / "good", "MVTec train/good")
    train = LabelledImages(train_paths, np.zeros(len(train_paths)))
    test_dir = root / "test"
    good = list_images(test_dir / "good", "MVTec test/good")
    found = sorted(d.name for d in test_dir.iterdir()
                   if d.is_dir() and d.name != "good" and not d.name.startswith("."))
    wanted = found if kinds is None else list(kinds)
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        raise DatasetError(f"MVTec {root}: unknown defect kinds {unknown}; found {found}")
    paths, labels = list(good), [0] * len(good)
    masks: list[Path | None] = [None] * len(good)
    for kind in wanted:
        imgs = list_images(test_dir / kind, f"MVTec test/{kind}")
        gt = root / "ground_truth" / kind
        if gt.is_dir():
            pairs = match_masks(imgs, gt, f"MVTec ground_truth/{kind}")
        else:
            pairs = {}
            warn(f"MVTec {root}: no folder {gt}, so the {len(imgs)} '{kind}' images have no "
                 "masks and do not enter the pixel AUROC")
        paths += imgs
        labels += [1] * len(imgs)
        masks += [pairs.get(p) for p in imgs]
    return train, LabelledImages(paths, np.array(labels), masks)
