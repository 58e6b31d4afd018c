"""Scale-out on Lightning Fabric: launching processes, sharding inputs, gathering results.

spadecam does not start or wire processes itself. Every process of a run is created by
one of three launchers, and all of them meet in one ``torch.distributed`` process group
that Fabric initialises:

* ``torchrun --nproc-per-node N ... spadecam train ...`` (torch's elastic launcher),
* ``fabric run --devices N ... $(which spadecam) train ...`` (Lightning's, which calls
  torchrun),
* ``spadecam train --devices N ...`` on its own: :func:`launch` calls ``Fabric.launch()``,
  whose subprocess launcher starts N - 1 more copies of the same command line with
  ``LOCAL_RANK`` set (``devices`` is per node; with ``num_nodes > 1`` the same command is
  started on every node with ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set).

Settings left at ``None`` come from the launcher (:func:`fabric_settings`), so the same
``spadecam`` command line works under all three. ``launch`` may be called any number of
times in a process (once per training loop): only the first call starts processes and the
process group; later calls join them.

Which values agree across ranks and which differ is decided in :mod:`spadecam.training`:
weights, the validation split and the shuffling seed agree; the images of each step and
the VAE's sampling noise differ.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from spadecam.precision import resolve_training_precision

__all__ = [
    "PRECISIONS",
    "barrier",
    "fabric_settings",
    "fail_together",
    "gather_in_order",
    "global_rank",
    "launch",
    "rank_seed",
    "shard",
    "world_size",
]

#: Training precisions of the CLI and their Fabric names.
PRECISIONS = {"auto": "auto", "32": "32-true", "32-true": "32-true",
              "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
#: Environment variables torchrun (TorchElastic) sets in every process it starts.
_TORCHRUN_VARS = ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")


def fabric_settings(
    accelerator: str | None = None,
    devices: int | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``lightning.fabric.Fabric``; ``None`` means "not given".

    A value that is given is passed on as it is (``precision="32"`` becomes "32-true").
    One that is not given comes from the launcher:

    * under ``fabric run`` (``LT_CLI_USED=1``): Fabric's own default, so that the
      ``--accelerator/--devices/--num-nodes/--strategy/--precision`` of ``fabric run`` apply
      (Fabric raises if a given value contradicts them);
    * under ``torchrun``: ``devices = LOCAL_WORLD_SIZE`` and
      ``num_nodes = WORLD_SIZE / LOCAL_WORLD_SIZE``, so each process joins the job it was
      started for instead of training alone; accelerator "cpu";
    * otherwise one process on the CPU: accelerator "cpu", devices 1, num_nodes 1.

    strategy defaults to "auto" (Fabric picks DDP for more than one process) and precision
    to "auto": "bf16-mixed" where the accelerator computes bf16 natively, else "32-true"
    (:func:`spadecam.precision.resolve_training_precision`; under ``fabric run`` "auto"
    leaves the precision to ``fabric run``).

    Raises
    ------
    ValueError
        An unknown precision, or devices / num_nodes below 1.
    """
    env = os.environ if env is None else env
    if env.get("LT_CLI_USED") == "1":
        defaults: dict[str, Any] = dict(
            accelerator="auto", devices="auto", strategy="auto", num_nodes=1, precision=None
        )
    elif all(k in env for k in _TORCHRUN_VARS):
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        defaults = dict(accelerator="cpu", devices=local, strategy="auto",
                        num_nodes=max(1, world // max(local, 1)), precision="auto")
    else:
        defaults = dict(accelerator="cpu", devices=1, strategy="auto", num_nodes=1,
                        precision="auto")
    given = dict(accelerator=accelerator, devices=devices, strategy=strategy,
                 num_nodes=num_nodes, precision=precision)
    out = {k: defaults[k] if v is None else v for k, v in given.items()}
    for k in ("devices", "num_nodes"):
        v = given[k]
        if v is not None and int(v) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if precision is not None:
        if str(precision) not in PRECISIONS:
            raise ValueError(
                f"--precision must be one of {sorted(set(PRECISIONS) - {'32-true'})}, "
                f"got {precision!r}"
            )
        out["precision"] = PRECISIONS[str(precision)]
    if out["precision"] == "auto":
        out["precision"] = (
            None if env.get("LT_CLI_USED") == "1"
            else resolve_training_precision("auto", str(out["accelerator"]))
        )
    return out


def measures_auto_precision(
    accelerator: str | None = None,
    devices: int | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """True where a training precision of "auto" (or None) is chosen by timing both at the
    start of each training rather than by rule: one process on a CPU with native bf16, not
    under ``fabric run`` (:func:`spadecam.precision.measure_training_precision`; trainings
    shorter than ``MEASURE_MIN_STEPS`` steps keep the rule). Arguments as
    :func:`fabric_settings`."""
    from spadecam.precision import training_precision_is_measured

    return (precision in (None, "auto")
            and _one_cpu_process(accelerator, devices, strategy, num_nodes, env)
            and training_precision_is_measured("cpu"))


def _one_cpu_process(accelerator: str | None, devices: int | None, strategy: str | None,
                     num_nodes: int | None, env: Mapping[str, str] | None = None) -> bool:
    """The settings give one process on the CPU, not under ``fabric run``."""
    env = os.environ if env is None else env
    if env.get("LT_CLI_USED") == "1":
        return False
    fab = fabric_settings(accelerator, devices, strategy, num_nodes, "32-true", env)
    return fab["accelerator"] == "cpu" and fab["devices"] == 1 and fab["num_nodes"] == 1


def training_precision_label(**fabric: Any) -> str:
    """The training precision for logs and records before training: the Fabric precision,
    "fabric run", or where :func:`measures_auto_precision` "auto (measured per model, RULE
    for short trainings)"."""
    rule = fabric_settings(**fabric)["precision"] or "fabric run"
    if measures_auto_precision(**fabric):
        from spadecam.precision import MEASURE_MIN_STEPS

        return f"auto (measured per model; {rule} below {MEASURE_MIN_STEPS} steps)"
    return str(rule)


def launch(
    accelerator: str | None = None,
    devices: int | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
):
    """A ``Fabric`` whose processes are running and joined in one process group.

    Parameters are those of :func:`fabric_settings`. Without an external launcher and with
    more than one device, the first call starts the other processes of this node by running
    this program's command line again (``Fabric.launch()``; so call it from a script or the
    CLI, not from a notebook). Under ``fabric run`` the processes already exist and
    ``launch()`` must not be called; under torchrun it only initialises the process group.
    Later calls in the same process find ``LOCAL_RANK`` set and the group initialised, and
    start nothing.

    Returns
    -------
    lightning.fabric.Fabric
    """
    from lightning.fabric import Fabric
    from lightning.fabric.connector import _is_using_cli

    # Fabric announces the precision at every construction (once per training loop); spadecam
    # prints the resolved precision once itself, so its info lines are kept out of the logs
    # (its logger is chosen by lightning at import time, so info is disabled for the call)
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.INFO))
    try:
        fabric = Fabric(**fabric_settings(accelerator, devices, strategy, num_nodes, precision))
    finally:
        logging.disable(disabled)
    if not _is_using_cli():  # `fabric run` has set up the processes in Fabric(...)
        fabric.launch()
    if fabric.world_size > 1 and not _teardown_registered:
        _register_teardown()
    return fabric


class OneProcess:
    """What scoring uses of a ``Fabric`` (device, ranks, all_reduce, broadcast, barrier) for
    one process on the CPU, without importing Lightning: its import costs 3.2-3.4 s
    (torch._dynamo, scipy.signal), 4 ms per image of `spadecam score` on 1,000 images
    (measured on a 2-core AVX2 EPYC). Returned by :func:`launch_scoring`."""

    device = torch.device("cpu")
    global_rank = 0
    local_rank = 0
    node_rank = 0
    world_size = 1
    is_global_zero = True

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        """The data itself: the sum, mean, max or min over one process."""
        return data

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        return None


def launch_scoring(
    accelerator: str | None = None,
    devices: int | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
) -> Any:
    """:func:`launch` for `spadecam score` / `evaluate`: a :class:`OneProcess` where the
    settings give one process on the CPU (not under ``fabric run``, no process group
    already), else a ``Fabric`` as :func:`launch` starts it. Arguments as
    :func:`fabric_settings`."""
    if _one_cpu_process(accelerator, devices, strategy, num_nodes) and not _initialised():
        return OneProcess()
    return launch(accelerator, devices, strategy, num_nodes)


_teardown_registered = False


def _register_teardown() -> None:
    # Left to interpreter shutdown, the gloo process group's threads are sometimes torn
    # down while still running ("terminate called without an active exception", SIGABRT
    # after all the work is done); destroying the group at exit ends them in order.
    global _teardown_registered
    atexit.register(_destroy_process_group)
    _teardown_registered = True


def _destroy_process_group() -> None:
    if _initialised():
        torch.distributed.destroy_process_group()


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's rank in the process group; 0 when there is none."""
    return torch.distributed.get_rank() if _initialised() else 0


def world_size() -> int:
    """Number of processes in the process group; 1 when there is none."""
    return torch.distributed.get_world_size() if _initialised() else 1


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if _initialised():
        torch.distributed.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of the per-rank randomness (the VAE's sampling noise) of ``seed`` on ``rank``.

    Rank 0 keeps ``seed``, so a one-process run draws what it always drew; other ranks get
    seeds far from those of nearby user seeds (seed s on rank 1 is not seed s + 1 on rank 0).
    """
    return seed if rank == 0 else (seed + 1_000_003 * rank) % (2**63)


def shard(n: int, rank: int, world: int) -> range:
    """Contiguous share of ``range(n)`` for ``rank`` out of ``world``.

    The first ``n % world`` ranks get one item more, so shards differ by at most one item
    and concatenating them in rank order gives ``range(n)`` back (input order).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def gather_in_order(fabric, local: np.ndarray, n: int) -> np.ndarray:
    """Concatenate every rank's :func:`shard` of a length-``n`` result, in input order.

    Parameters
    ----------
    fabric : launched Fabric, or None for one process
    local : ndarray (len(shard(n, rank, world)), ...), this rank's results
    n : int, total number of items

    Returns
    -------
    ndarray (n, ...), the same on every rank.

    Notes
    -----
    ``all_gather`` needs the same shape on every rank, so each shard is padded to the
    longest one first; the shard lengths follow from ``n`` and are dropped again here.
    """
    if fabric is None or fabric.world_size == 1:
        return local
    world = fabric.world_size
    longest = len(shard(n, 0, world))
    padded = np.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    mine = torch.from_numpy(padded).to(fabric.device)  # NCCL gathers on the GPU
    parts = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(parts, mine)
    return np.concatenate([parts[r][: len(shard(n, r, world))].cpu().numpy()
                           for r in range(world)])


@contextlib.contextmanager
def fail_together(fabric) -> Iterator[None]:
    """If the block raises on any rank, raise on every rank once all have finished it.

    Without this a rank whose share of the inputs holds a bad file would stop, and the
    others would wait for it forever in the next collective. A failing rank raises its own
    error; the others raise one of the same type and message as the lowest failing rank's
    (only type and message travel, as any exception object may not pickle). With one
    process it is a plain block.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # re-raised below, on every rank
        error = exc
    if fabric is not None and fabric.world_size > 1:
        sent = None if error is None else (type(error), str(error))
        errors: list[Any] = [None] * fabric.world_size
        torch.distributed.all_gather_object(errors, sent)
        first = next((e for e in errors if e is not None), None)
        if error is None and first is not None:
            cls, message = first
            try:
                other = cls(message)
            except Exception:  # an exception type that needs other arguments
                other = RuntimeError(f"{cls.__name__}: {message}")
            raise other
    if error is not None:
        raise error
