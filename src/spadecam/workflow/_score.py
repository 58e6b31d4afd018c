"""``spadecam score``: a model directory on image files, a CSV of path,score,label,map and
overlays (through :class:`~spadecam.deploy.TorchInferencer`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spadecam.data.folders import collect_inputs
from spadecam.deploy import outputs as _outputs
from spadecam.deploy.outputs import map_names, rows_to_csv  # noqa: F401 (re-exported)
from spadecam.deploy.torch_inferencer import TorchInferencer
from spadecam.distributed import fail_together, gather_in_order, launch, shard
from spadecam.exceptions import NonFiniteScoreError

__all__ = ["rows_to_csv", "score"]


def score(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    maps: str | os.PathLike | None = None,
    progress: bool = True,
    distributed: dict[str, Any] | None = None,
    precision: str | None = None,
    log: Callable[[str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Score images with a trained model directory; optionally write a CSV and overlays.

    Parameters
    ----------
    model_dir : path written by :func:`train` (or ``SPADE.save`` with preprocessing)
    inputs : image files and/or folders; folders are read recursively (links followed, no
        folder twice), each path being the folder as given joined with the file's path in it
    out : path, optional
        CSV with columns ``path,score,label,map`` (:func:`rows_to_csv`); ``label`` is the
        decision, 1 when score > ``threshold_`` (anomalous), else 0.
    maps : folder, optional
        One PNG per image: the weighted reconstruction error e' (Algorithm 1) over the image
        at the image's own size (see :func:`overlay`; the model scores it at its input size
        and the map is brought back, :mod:`spadecam.inputs`), at ``maps / map_names(path)``:
        the input paths mirrored, so names never collide.
    progress : bool
    distributed : dict, optional
        Fabric settings: ``accelerator``, ``devices``, ``strategy``, ``num_nodes`` (None or
        missing = the launcher's, else one process). With W processes each reads and scores
        a contiguous 1/W of the inputs (on its GPU with accelerator "cuda", else on the
        CPU); the scores are gathered in input order, rank 0 writes the CSV and each rank
        writes the overlays of its own images (so ``maps`` must be on a file system every
        node sees).
    precision : {"auto", "32", "bf16"}, optional
        Scoring precision (see :class:`SPADE`); None keeps the model directory's.
    log : callable, optional
        Receives one line: the scoring precision as resolved and where it came from.

    Returns
    -------
    list of dict(path=str, score=float, label=int, map=str), in input order, on every rank;
    ``map`` is the overlay written for the image, "" without ``maps``.

    Raises
    ------
    ModelFormatError, DatasetError, ImageError, ValueError
        A bad model directory, missing inputs, an empty folder, unreadable or too small
        images (all named in one error), or non-finite scores (NonFiniteScoreError, naming
        the files); nothing is written. With several processes, an image that one process
        cannot read makes every process raise.

    Warns
    -----
    SpadecamWarning
        Skipped files, link cycles not followed, and existing files that are replaced (the
        CSV, overlays).
    """
    inf = TorchInferencer.load(model_dir, precision)
    if log is not None:  # the scoring precision as resolved, once the model is loaded
        log(inf.describe_precision(precision is not None))
    _outputs.check_outputs(out, maps, inf.detector.has_anomaly_map)
    paths = collect_inputs(inputs)
    names = map_names(paths) if maps is not None else None  # from the full list: all ranks
    fabric = launch(**(distributed or {}))
    if fabric.device.type != "cpu":  # score on this process's GPU (accelerator "cuda")
        inf.to(fabric.device)
    mine = shard(len(paths), fabric.global_rank, fabric.world_size)
    progress = progress and fabric.global_rank == 0
    mine_paths = paths[mine.start : mine.stop]
    mine_names = [names[i] for i in mine] if names is not None else []
    with fail_together(fabric):  # every image of every shard is read before any write
        inf.check(mine_paths, progress)
    if maps is not None:
        _outputs.warn_replaced(Path(maps), mine_names)
    staged = _outputs.StagedOverlays(maps) if maps is not None else None
    try:
        with fail_together(fabric):  # every shard scored (and drawn, staged) before any write
            local, kept = _score_in_chunks(inf, mine_paths, mine_names, staged, progress)
        scores = gather_in_order(fabric, local, len(paths))
        if staged is not None and kept is not None:  # a model without an overlay scale
            top = torch.tensor(max((float(m.max()) for m in kept[1]), default=0.0))
            scale = float(fabric.all_reduce(top, reduce_op="max")) or 1.0
            staged.write(mine_names, kept[0], kept[1], scale, progress)
        if staged is not None:
            staged.commit()
    finally:
        if staged is not None:
            staged.discard()
    rows = _outputs.score_rows(paths, scores, inf.threshold, maps, names)
    fabric.barrier()  # every rank's overlays are there before the CSV that names them
    # the CSV last: an interrupted or failed run never leaves one describing missing overlays
    if out is not None and fabric.global_rank == 0:
        _outputs.write_csv(out, rows)
    return rows


#: Images read, scored and drawn at once by ``spadecam score``: its memory is that of one
#: chunk, whatever the number of images (``make bench``'s rss_ratio_folder_10k_over_1k).
SCORE_CHUNK = 256


def _score_in_chunks(inf: TorchInferencer, paths: Sequence[Path], names: Sequence[Path],
                     staged: Any, progress: bool) -> tuple[np.ndarray, Any]:
    """Scores of ``paths``, read and scored :data:`SCORE_CHUNK` at a time; with ``staged``
    each chunk's overlays are staged at once, at the model's overlay scale. A model without
    one (saved by the API) keeps every image and map for a scale over all of them: returns
    them as ``kept`` then (else None)."""
    scores = [np.zeros(0)]
    scale = inf.overlay_scale
    kept: tuple[list, list] | None = ([], []) if staged is not None and not scale else None
    for start in range(0, len(paths), SCORE_CHUNK):
        chunk = paths[start : start + SCORE_CHUNK]
        x = inf.read(chunk)
        try:
            s, m = inf.score(x, chunk, progress)
        except NonFiniteScoreError as exc:  # indices into the whole list, not the chunk
            raise NonFiniteScoreError(str(exc), [start + i for i in exc.indices]) from None
        scores.append(s)
        if staged is not None and m is not None:
            if kept is not None:
                kept[0].extend(x)
                kept[1].extend(m)
            else:
                assert scale  # kept is None only with a scale
                staged.write(names[start : start + SCORE_CHUNK], x, m, float(scale), progress)
    return np.concatenate(scores), kept
