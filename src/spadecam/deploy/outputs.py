"""What scoring writes, without torch: the CSV of ``spadecam score`` and the overlay PNGs.

Shared by the torch path (:mod:`spadecam.deploy.torch_inferencer`, ``spadecam score``) and the
ONNX runner (:mod:`spadecam.deploy.onnx_inferencer`, ``spadecam score --onnx``), so that both
write the same files.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spadecam._fs import Staging, atomic_write, atomic_write_text, check_writable, outputs
from spadecam._progress import bar, warn
from spadecam._runtime import io_threads
from spadecam.decision import flag_anomalous

__all__ = ["SCORE_CHUNK", "StagedOverlays", "check_outputs", "map_names", "non_finite_error",
           "overlay", "rows_to_csv", "score_in_chunks", "score_rows", "score_with_overlays",
           "warn_replaced",
           "write_csv", "write_overlays", "write_png"]


def check_outputs(out: str | os.PathLike | None, maps: str | os.PathLike | None,
                  has_map: bool) -> None:
    """Every output of ``spadecam score`` checked before any work (a read-only
    --maps used to fail after scoring, leaving a CSV that named overlays never written).

    Raises
    ------
    ValueError
        ``--maps`` for a model without a per-pixel map (the CNN-based baseline), or an
        output that cannot be written (naming the option).
    """
    if maps is not None:
        if not has_map:
            raise ValueError("--maps: this model gives no per-pixel map (the CNN-based "
                             "baseline scores whole images); leave out --maps")
        check_writable(maps, "--maps", folder=True)
    if out is not None:
        check_writable(out, "--out")


def score_rows(paths: Sequence[Path], scores: np.ndarray, threshold: float,
               maps: str | os.PathLike | None, names: Sequence[Path] | None) -> list[dict]:
    """The rows of ``spadecam score``: path, score, label (1 when score > threshold) and map
    (the overlay ``maps / names[i]``, "" without ``maps``), in input order."""
    labels = flag_anomalous(scores, threshold)
    column = ([str(Path(maps) / n) for n in names] if maps is not None and names is not None
              else [""] * len(paths))
    return [{"path": str(p), "score": float(s), "label": int(lab), "map": m}
            for p, s, lab, m in zip(paths, scores, labels, column)]


def write_overlays(folder: str | os.PathLike, names: Sequence[Path], images: Sequence[np.ndarray],
                   maps: Sequence[np.ndarray], scale: float, progress: bool = False,
                   check_replaced: bool = True) -> None:
    """One overlay PNG per image (:func:`overlay` at ``scale``) at ``folder / names[i]``;
    warns once when some replace existing files (``check_replaced``)."""
    d = Path(folder)
    if check_replaced:
        warn_replaced(d, names)

    def encode(i: int) -> bytes:
        return png_bytes(overlay(images[i], maps[i], float(scale)))

    # the colour map and the PNG encoding (Pillow releases the GIL) run on every core; the
    # files are written here, in input order, so an interruption leaves a prefix of them
    with bar(total=len(names), desc="writing overlays", enabled=progress) as shown, \
            ThreadPoolExecutor(io_threads()) as pool:
        try:
            for start in range(0, len(names), _WINDOW):
                idx = range(start, min(start + _WINDOW, len(names)))
                for i, data in zip(idx, pool.map(encode, idx)):
                    write_png(d / names[i], data)
                    shown.update(1)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


class StagedOverlays(Staging):
    """Overlays written under a hidden folder of ``--maps`` and moved into place at once.

    ``spadecam score`` scores and draws a chunk of images at a time (memory stays that of one
    chunk, whatever the number of images) yet writes nothing visible before every image was
    scored: an unreadable file or a non-finite score found late leaves no overlay behind, and
    an interruption neither. :meth:`commit` renames each staged file into place (the same
    file system, so each rename is atomic; a replaced overlay keeps its mode, as ``open``
    would) with Ctrl-C held back: a failure or an interruption while they move puts back
    what had moved (and the overlays they replaced) once the enclosing
    :func:`~spadecam._fs.outputs` block ends; :meth:`discard` removes the staging folder.

    Raises
    ------
    WriteError
        ``folder`` cannot be created, or (:meth:`write`, :meth:`commit`) an overlay cannot
        be written; the message names the overlay's file under ``folder``.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__(folder)
        self.names: list[Path] = []

    def write(self, names: Sequence[Path], images: Sequence[np.ndarray],
              maps: Sequence[np.ndarray], scale: float, progress: bool = False) -> None:
        """Stage the overlays of these images (see :func:`write_overlays`)."""
        with self.named():
            write_overlays(self.stage, names, images, maps, scale, progress,
                           check_replaced=False)
        self.names += list(names)

    def commit(self, names: Sequence[str | os.PathLike] | None = None,
               remove: Iterable[str | os.PathLike] = ()) -> None:
        """Move the staged overlays into place, all or none (:meth:`Staging.commit`)."""
        super().commit(self.names if names is None else names, remove)


def warn_replaced(folder: Path, names: Sequence[Path]) -> None:
    """One warning when overlays ``folder / names`` already exist (they will be replaced)."""
    replaced = [folder / n for n in names if (folder / n).exists()]
    if replaced:
        warn(f"--maps {folder}: replacing {len(replaced)} existing overlay(s), e.g. "
             f"{replaced[0]}")


#: Images read, scored and drawn at once by ``spadecam score`` (torch or ONNX): its memory is
#: that of one chunk, whatever the number of images (make bench: rss_ratio_folder_10k_over_1k).
SCORE_CHUNK = 256


def score_in_chunks(read: Any, score: Any, paths: Sequence[Path], names: Sequence[Path],
                    staged: StagedOverlays | None, scale: float | None,
                    progress: bool = False) -> tuple[np.ndarray, Any]:
    """Scores of ``paths``, read (``read(chunk) -> images``) and scored (``score(images,
    chunk) -> (scores, maps)``) :data:`SCORE_CHUNK` at a time; with ``staged`` each chunk's
    overlays are staged at once at ``scale``. Without a scale (a model saved by the API)
    every image and map is kept for a scale over all of them: returned as ``kept`` (else
    None). A NonFiniteScoreError's indices are into ``paths``.
    """
    from spadecam.exceptions import NonFiniteScoreError

    scores = [np.zeros(0)]
    kept: tuple[list, list] | None = ([], []) if staged is not None and not scale else None
    for start in range(0, len(paths), SCORE_CHUNK):
        chunk = paths[start : start + SCORE_CHUNK]
        x = read(chunk)
        try:
            s, m = score(x, chunk)
        except NonFiniteScoreError as exc:  # indices into the whole list, not the chunk
            raise NonFiniteScoreError(str(exc), [start + i for i in exc.indices]) from None
        scores.append(np.asarray(s))
        if staged is not None and m is not None:
            if kept is not None:
                kept[0].extend(x)
                kept[1].extend(m)
            else:
                assert scale  # kept is None only with a scale
                staged.write(names[start : start + SCORE_CHUNK], x, list(m), float(scale),
                             progress)
    return np.concatenate(scores), kept


def score_with_overlays(read: Any, score: Any, paths: Sequence[Path], names: Sequence[Path],
                        maps: str | os.PathLike | None, scale: float | None,
                        progress: bool = False, guard: Any = contextlib.nullcontext,
                        reduce_max: Any = None) -> np.ndarray:
    """Scores of ``paths`` (:func:`score_in_chunks`) and, with ``maps``, their overlays at
    ``maps / names``: staged while scoring and moved into place only once every image is
    scored, so a failure or an interruption leaves none (the one outer step of ``spadecam
    score`` with torch and with ``--onnx``).

    ``guard()``: a context around the scoring (``fail_together`` across processes); without
    a ``scale`` (a model saved by the API) the overlays share the largest map value,
    ``reduce_max(value)`` over processes (None: this process's own). Warns before replacing
    existing overlays. Returns the scores, float (N,), in ``paths`` order.

    Runs in an :func:`~spadecam._fs.outputs` block (the caller's, when it has one: then a
    later failure, e.g. writing the CSV, takes the overlays back too): a failure or Ctrl-C at
    any moment leaves every overlay, or none and the overlays they would have replaced as
    they were, and no folder it created.

    Raises
    ------
    WriteError
        An overlay cannot be written (a full disk): the message names ``--maps`` and the
        file; nothing is left.
    Whatever ``read`` and ``score`` raise (nothing is written).
    """
    if maps is not None:
        warn_replaced(Path(maps), names)
    with outputs(("--maps", maps)):
        return _score_with_overlays(read, score, paths, names, maps, scale, progress, guard,
                                    reduce_max)


def _score_with_overlays(read: Any, score: Any, paths: Sequence[Path], names: Sequence[Path],
                         maps: str | os.PathLike | None, scale: float | None,
                         progress: bool, guard: Any, reduce_max: Any) -> np.ndarray:
    staged = StagedOverlays(maps) if maps is not None else None
    try:
        with guard():  # every image scored (and drawn, staged) before anything is written
            scores, kept = score_in_chunks(read, score, paths, names, staged, scale, progress)
        if staged is not None and kept is not None:  # no overlay scale: the largest value
            top = max((float(m.max()) for m in kept[1]), default=0.0)
            top = reduce_max(top) if reduce_max is not None else top
            staged.write(names, kept[0], kept[1], float(top) or 1.0, progress)
        if staged is not None:
            staged.commit()
    finally:
        if staged is not None:
            staged.discard()
    return scores


def non_finite_error(exc: Any, paths: Sequence[Any], offset: int = 0) -> Exception:
    """The NonFiniteScoreError of ``exc`` (indices into a batch starting at ``offset`` of
    ``paths``) re-told with the files' names, for ``spadecam score`` on torch or ONNX."""
    from spadecam.exceptions import NonFiniteScoreError

    idx = [offset + j for j in exc.indices]
    files = [str(paths[i]) for i in idx]
    return NonFiniteScoreError(
        f"the model gives non-finite scores for {', '.join(files[:5])}"
        + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        + "; its weights are probably not finite (a diverged training?): re-train it with a "
        "lower --lr", idx)


def write_csv(out: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """:func:`rows_to_csv` to ``out`` (temp file, then renamed); warns when replacing.

    Raises WriteError (an OSError) naming the file (and ``--out`` inside the command's
    :func:`~spadecam._fs.outputs` block) when it cannot be written."""
    if Path(out).exists():
        warn(f"--out {out}: replacing the existing file")
    atomic_write_text(out, rows_to_csv(rows))


def overlay(image: np.ndarray, error_map: np.ndarray, scale: float) -> np.ndarray:
    """Blend a weighted-error map over its image as an RGB picture.

    Parameters
    ----------
    image : ndarray (C, H, W), float in [0, 1], C = 1 or 3
    error_map : ndarray (H, W), float >= 0 (SPADE's e')
    scale : float > 0
        Map value shown at full colour; values are ``clip(map / scale, 0, 1)``. The
        ``spadecam train`` scale is the 99th percentile of the per-image maximum over normal
        training images, so colour means "above what normal images show" and is comparable
        across images.

    Returns
    -------
    ndarray (H, W, 3), uint8; the "inferno" colormap with opacity 0.6 x value.
    """
    v = np.clip(np.asarray(error_map, np.float64) / max(scale, 1e-12), 0.0, 1.0)
    # matplotlib's own lookup (a float v picks entry min(floor(256 v), 255)) from a cached
    # table: the same colours, without building an (H, W, 4) float RGBA first; the index
    # from float64 v as matplotlib takes it, the blend in float32 with the grey image
    # broadcast rather than repeated (6.2 -> 2.2 ms at 256 px; within one colour step of
    # the float64 blend: tests/test_deploy.py)
    colour = _inferno()[np.minimum((v * 256).astype(np.intp), 255)]  # (H, W, 3) float32
    alpha = (0.6 * v).astype(np.float32)[..., None]
    base = np.moveaxis(np.asarray(image, np.float32), 0, -1)  # (H, W, 1 or 3)
    colour -= base
    colour *= alpha
    colour += base  # (1 - a) base + a colour
    colour *= 255
    colour += 0.5
    return colour.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _inferno() -> np.ndarray:
    """The 256 RGB entries (float32 in [0, 1]) of matplotlib's "inferno" colormap."""
    from matplotlib import colormaps

    return colormaps["inferno"](np.arange(256))[:, :3].astype(np.float32)


def _mirrored(path: Path) -> Path:
    """``path`` as a relative path that stays inside a folder: no root, ``..`` spelled out."""
    parts = path.parts[1:] if path.anchor else path.parts
    return Path(*["_up_" if part == ".." else part for part in parts])


def map_names(paths: Sequence[Path]) -> list[Path]:
    """Overlay file of each input, relative to ``--maps``: the input path mirrored.

    ``test/good/a.jpg`` -> ``test/good/a.png``; an absolute ``/data/x/a.png`` ->
    ``data/x/a.png``; ``..`` becomes ``_up_``. So inputs with the same name in different
    folders (``a/000.png``, ``b/000.png``) never share an overlay, within a run or across
    runs. Two inputs of one folder that differ only by suffix (``a.jpg``, ``a.png``) keep
    their suffix (``a.jpg.png``); any remaining clash gets ``~2``, ``~3``, ... appended.
    """
    mirrored = [_mirrored(p) for p in paths]
    names = [m.with_suffix(".png") for m in mirrored]
    counts: dict[Path, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    names = [m.with_name(m.name + ".png") if counts[n] > 1 else n
             for m, n in zip(mirrored, names)]
    seen: dict[Path, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0) + 1
        seen[n] = k
        out.append(n if k == 1 else n.with_name(f"{n.stem}~{k}.png"))
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 picture as PNG bytes."""
    buf = io.BytesIO()
    # zlib level 1: 40 % less time than the default 6 on 256-px overlays, the same size
    # (their image noise does not compress either way; make bench's own-images lines)
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png(path: Path, rgb: np.ndarray | bytes) -> None:
    """Write an (H, W, 3) uint8 picture, or its PNG bytes, as a PNG (temp file, renamed).
    Raises WriteError (an OSError) naming ``path`` when it cannot be written."""
    data = rgb if isinstance(rgb, bytes) else png_bytes(rgb)
    atomic_write(path, lambda p: Path(p).write_bytes(data), suffix=".png")


#: Overlays encoded at once (bounds the memory of encoded PNGs waiting to be written).
_WINDOW = 64


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text with the columns path,score,label,map; the score is the shortest decimal that
    reads back as the very float64 the label was decided on (``repr``), so a score printed just
    above the threshold is above it, never equal after rounding.

    ``map`` is the overlay PNG of the row's image, empty when no overlays were written.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "score", "label", "map"])
    for r in rows:
        w.writerow([r["path"], repr(float(r["score"])), r["label"], r.get("map", "")])
    return buf.getvalue()
