"""``spadecam score``: a model directory on image files, a CSV of path,score,label,map and
overlays (through :class:`~spadecam.deploy.TorchInferencer`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spadecam._fs import outputs
from spadecam.data.folders import collect_inputs
from spadecam.deploy import outputs as _outputs
from spadecam.deploy.outputs import map_names, rows_to_csv  # noqa: F401 (re-exported)
from spadecam.deploy.torch_inferencer import TorchInferencer
from spadecam.distributed import fail_together, gather_in_order, launch_scoring, shard

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
    WriteError (an OSError)
        An output cannot be written (e.g. a full disk): the message names the option
        (``--out`` / ``--maps``) and the file. Nothing new is left: the overlays already
        moved into place are taken back (the ones they replaced put back) and the folders
        created are removed. A KeyboardInterrupt (Ctrl-C) at any moment leaves the same:
        either the CSV and every overlay, or nothing new. With several processes each one
        undoes its own overlays.

    Warns
    -----
    SpadecamWarning
        Skipped files, link cycles not followed, and existing files that are replaced (the
        CSV, overlays).
    """
    # all or nothing: a failure or Ctrl-C before the CSV is in place takes the overlays back
    with outputs(("--out", out), ("--maps", maps)):
        return _score(model_dir, inputs, out, maps, progress, distributed, precision, log)


def _score(model_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
           out: str | os.PathLike | None, maps: str | os.PathLike | None, progress: bool,
           distributed: dict[str, Any] | None, precision: str | None,
           log: Callable[[str], Any] | None) -> list[dict[str, Any]]:
    inf = TorchInferencer.load(model_dir, precision)
    if log is not None:  # the scoring precision as resolved, once the model is loaded
        log(inf.describe_precision(precision is not None))
    _outputs.check_outputs(out, maps, inf.detector.has_anomaly_map)
    paths = collect_inputs(inputs)
    names = map_names(paths) if maps is not None else None  # from the full list: all ranks
    fabric = launch_scoring(**(distributed or {}))  # Lightning only for several processes
    if fabric.device.type != "cpu":  # score on this process's GPU (accelerator "cuda")
        inf.to(fabric.device)
    mine = shard(len(paths), fabric.global_rank, fabric.world_size)
    progress = progress and fabric.global_rank == 0
    mine_paths = paths[mine.start : mine.stop]
    mine_names = [names[i] for i in mine] if names is not None else []
    with fail_together(fabric):  # every image of every shard is read before any write
        inf.check(mine_paths, progress)
    local = _outputs.score_with_overlays(
        inf.read, lambda x, chunk: inf.score(x, chunk, progress), mine_paths, mine_names, maps,
        inf.overlay_scale, progress, guard=lambda: fail_together(fabric),
        reduce_max=lambda v: float(fabric.all_reduce(torch.tensor(v), reduce_op="max")))
    scores = gather_in_order(fabric, local, len(paths))
    rows = _outputs.score_rows(paths, scores, inf.threshold, maps, names)
    fabric.barrier()  # every rank's overlays are there before the CSV that names them
    # the CSV last: an interrupted or failed run never leaves one describing missing overlays
    if out is not None and fabric.global_rank == 0:
        _outputs.write_csv(out, rows)
    return rows
