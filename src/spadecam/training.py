"""Training loops for the VAE (eq. 1) and the classifier (eq. 2), run through Lightning Fabric.

Device, precision and distribution are Fabric settings in :class:`TrainConfig`, so the
loops below stay the same on CPU, one GPU or several processes under DDP
(:mod:`spadecam.distributed` launches them). Each loop holds out a seeded validation split,
trains for a budget of optimiser steps (or epochs), reports each validation (a tqdm bar on a
terminal, one line per validation elsewhere), early-stops on the validation loss and returns
the model with the best validation weights, in eval mode on the CPU; under DDP every rank
returns rank 0's.

Seeds are local: the weights, the batch order and the VAE's sampling noise are drawn inside
``torch.random.fork_rng``, so the caller's global RNG state is the same before and after a
training call, and a call's numbers depend on its seed alone, not on what ran before it.

A non-finite loss (training or validation) stops the loop at once with
:class:`TrainingDivergedError`, which names the model, the epoch (or step) and what to try.

Under DDP (``W`` processes) each process takes ``batch_size`` images per step, so a step
sees ``W * batch_size`` images; the gradient is their mean, as in one process with that
batch. What agrees and what differs across ranks:

* agree: the initial weights (drawn with ``seed`` on every rank; DDP copies rank 0's too),
  the validation split, the shuffling permutation of each epoch, the validation loss (an
  all-reduced sum over exactly the held-out images), hence the early-stopping decision;
* differ: the images of each step (every W-th image of the permutation, DistributedSampler)
  and the VAE's sampling noise (:func:`spadecam.distributed.rank_seed`);
* batch norm: statistics of each process's own batch (no SyncBatchNorm: it needs a GPU and
  a collective per layer); the running statistics kept are rank 0's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from spadecam import inputs as _inputs
from spadecam._progress import bar as progress_bar
from spadecam._progress import interactive, note, tick
from spadecam.distributed import (
    fabric_settings,
    launch,
    measures_auto_precision,
    rank_seed,
    shard,
)
from spadecam.linear_head import build_classifier, fit_linear_head, pooled_last_features
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig, classifier_loss
from spadecam.models.resnet import ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig, negative_elbo
from spadecam.train_config import TrainConfig, TrainingDivergedError, local_rng

_M = TypeVar("_M", bound=torch.nn.Module)

__all__ = ["TrainConfig", "TrainingDivergedError", "build_classifier", "fit_linear_head",
           "pooled_last_features", "train_cnn", "train_vae"]


def __getattr__(name: str):
    if name == "to_float_images":  # moved to spadecam.inputs in 0.2, goes in 0.3
        import warnings

        warnings.warn("spadecam.training.to_float_images moved to "
                      "spadecam.inputs.to_float_images in 0.2; the old name goes in 0.3",
                      DeprecationWarning, stacklevel=2)
        return _inputs.to_float_images
    raise AttributeError(f"module 'spadecam.training' has no attribute {name!r}")


def _diverged(name: str, what: str, value: float, where: str, cfg: TrainConfig) -> Exception:
    return TrainingDivergedError(
        f"{name} training diverged: the {what} loss is {value} in {where}. "
        f"Try a lower learning rate (lr={cfg.lr:g}; e.g. {cfg.lr / 10:g}, --lr on the command "
        "line) and check that the "
        "inputs are images scaled to [0, 1]. The model was not fitted."
    )


def _fabric(cfg: TrainConfig):
    return launch(cfg.accelerator, cfg.devices, cfg.strategy, cfg.num_nodes, cfg.precision)


def _sync_from_rank_zero(fabric, tensors) -> None:
    """Overwrite ``tensors`` (in place) with rank 0's values on every rank."""
    if fabric.world_size > 1:
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


def _split(n: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(n, generator=g)
    n_val = int(round(n * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    if 0 < cfg.val_fraction and n_val == 0 and n > 1:
        n_val = 1
    return perm[n_val:], perm[:n_val]


def _fit(
    model: _M,
    tensors: tuple[torch.Tensor, ...],
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    cfg: TrainConfig,
    name: str,
) -> _M:
    """Generic loop: AdamW, optional cosine schedule, early stopping on held-out loss."""
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.epochs is None and cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.val_every is not None and cfg.val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {cfg.val_every}")
    n = tensors[0].shape[0]
    if n < 2:
        raise ValueError(f"{name}: need at least 2 training images, got {n}")
    train_idx, val_idx = _split(n, cfg)  # seeded by cfg.seed alone: the same on every rank
    cfg = _measured_precision(model, tensors, loss_fn, cfg, name, train_idx)
    fabric = _fabric(cfg)
    # the VAE's sampling noise differs per rank; seeded and restored: the caller's RNG is kept
    with local_rng(rank_seed(cfg.seed, fabric.global_rank), fabric.device):
        return _fit_seeded(fabric, model, tensors, loss_fn, cfg, name, train_idx, val_idx)


def _measured_precision(model, tensors, loss_fn, cfg: TrainConfig, name: str, train_idx):
    """``cfg`` with "auto" replaced by the measured choice where auto is measured: a CPU with
    native bf16, one process, at least MEASURE_MIN_STEPS steps
    (:func:`spadecam.precision.measure_training_precision`); else ``cfg`` unchanged."""
    from spadecam.precision import MEASURE_MIN_STEPS, measure_training_precision

    if not measures_auto_precision(cfg.accelerator, cfg.devices, cfg.strategy, cfg.num_nodes,
                                   cfg.precision):
        return cfg
    per_epoch = max(1, len(train_idx) // cfg.batch_size)
    steps = cfg.epochs * per_epoch if cfg.epochs is not None else cfg.steps
    if steps < MEASURE_MIN_STEPS:
        return cfg
    batch = tuple(t[train_idx[: cfg.batch_size]] for t in tensors)
    m = measure_training_precision(model, loss_fn, batch)
    if cfg.progress:
        note(f"{name} training precision: {m.describe()}")
    return dataclasses.replace(cfg, precision=m.precision)


def _loaders(fabric, tensors, cfg: TrainConfig, train_idx, val_idx):
    """The training sampler and loader, and the validation loader (None without a split)."""
    rank, world = fabric.global_rank, fabric.world_size
    train_set = TensorDataset(*(t[train_idx] for t in tensors))
    # one permutation per (seed, epoch) on every rank; rank r takes every world-th image
    # from position r, so step i of all ranks together is step i of one process with
    # world * batch_size images (one process runs the same sampler with world = 1)
    sampler: DistributedSampler = DistributedSampler(train_set, num_replicas=world, rank=rank,
                                                     seed=cfg.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > cfg.batch_size,
    )
    train_loader = fabric.setup_dataloaders(train_loader, use_distributed_sampler=False)
    val_loader = None
    if len(val_idx):
        # a contiguous shard per rank without the sampler's padding, so the all-reduced
        # loss is the mean over exactly the held-out images, whatever the world size
        mine = shard(len(val_idx), rank, world)
        mine = val_idx[mine.start : mine.stop]
        val_loader = DataLoader(TensorDataset(*(t[mine] for t in tensors)), batch_size=512)
        val_loader = fabric.setup_dataloaders(val_loader, use_distributed_sampler=False)
    return sampler, train_loader, val_loader


def _budget(cfg: TrainConfig, per_epoch: int) -> tuple[int, int]:
    """(optimiser steps, steps between validations) of an epoch or a step budget."""
    if cfg.epochs is not None:
        return cfg.epochs * per_epoch, cfg.val_every or per_epoch
    return cfg.steps, cfg.val_every or math.ceil(cfg.steps / 50)


def _scheduler(optimizer, cfg: TrainConfig, steps: int):
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {cfg.schedule!r}")
    if cfg.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def _validation_loss(fabric, model, module, val_loader, loss_fn) -> float:
    """Mean loss over every rank's held-out images, of rank 0's model (eval mode)."""
    model.eval()
    # validate rank 0's model on every rank: its batch-norm running statistics too;
    # the plain module, as DDP's forward may run collectives that ranks with unequal
    # numbers of validation batches would not match
    _sync_from_rank_zero(fabric, module.buffers())
    total, count = torch.zeros(()), torch.zeros(())
    with torch.no_grad(), fabric.autocast():
        for batch in val_loader:
            k = batch[0].shape[0]
            total += loss_fn(module, batch).float().cpu() * k
            count += k
    total = fabric.all_reduce(total, reduce_op="sum")
    count = fabric.all_reduce(count, reduce_op="sum")
    model.train()
    return float(total / count)


def _train_step(fabric, model, optimizer, scheduler, loss_fn, batch, fail) -> float:
    """One optimiser step; ``fail(value)`` raises when the loss is not finite on any rank."""
    loss = loss_fn(model, batch)
    value = loss.item()
    # stop at the first non-finite loss, on every rank together (no rank may leave the
    # others waiting in the next collective)
    bad = torch.tensor(0.0 if math.isfinite(value) else 1.0)
    if fabric.world_size > 1:
        bad = fabric.all_reduce(bad, reduce_op="sum")
    if bad.item() > 0:
        fail(value)
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return value


def _fit_seeded(fabric, model, tensors, loss_fn, cfg, name, train_idx, val_idx):
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = fabric.setup(model, optimizer)
    module = model.module  # the plain model, outside the DDP wrapper
    sampler, train_loader, val_loader = _loaders(fabric, tensors, cfg, train_idx, val_idx)
    steps, val_every = _budget(cfg, max(1, len(train_loader)))
    scheduler = _scheduler(optimizer, cfg, steps)

    def where() -> str:  # for messages: the epoch of an epoch budget, else the step
        return (f"epoch {epoch + 1}/{cfg.epochs}" if cfg.epochs is not None
                else f"step {step}/{steps}")

    def fail(kind: str, value: float):
        raise _diverged(name, kind, value, where(), cfg)

    report = cfg.progress and fabric.global_rank == 0
    best, best_state, stale, best_step = math.inf, None, 0, 0
    step, epoch, stop, history = 0, 0, False, []
    while step < steps and not stop:
        sampler.set_epoch(epoch)
        model.train()
        desc = (f"{name} epoch {epoch + 1}/{cfg.epochs}" if cfg.epochs is not None
                else f"{name} epoch {epoch + 1} (step {step}/{steps})")
        bar = progress_bar(train_loader, enabled=report, desc=desc)
        loss_sum, loss_count = 0.0, 0
        for batch in bar:
            value = _train_step(fabric, model, optimizer, scheduler, loss_fn, batch,
                                lambda v: fail("training", v))
            step += 1
            k = batch[0].shape[0]
            loss_sum, loss_count = loss_sum + value * k, loss_count + k
            bar.set_postfix(loss=f"{value:.4g}")
            tick(f"{name}: step {step}/{steps}, training loss {value:.4g}")
            if val_loader is not None and (step % val_every == 0 or step == steps):
                val = _validation_loss(fabric, model, module, val_loader, loss_fn)
                if not math.isfinite(val):  # the same on every rank (all-reduced)
                    fail("validation", val)
                history.append((step, val))
                if report:
                    line = f"{name} {where()}: training loss {loss_sum / max(loss_count, 1):.5g}"
                    note(f"{line}, validation loss {val:.5g}" if not interactive()
                         else f"{name} {where()}: validation loss {val:.5g}")
                loss_sum, loss_count = 0.0, 0
                if val < best - 1e-6:
                    best, stale, best_step = val, 0, step
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                    stop = stale >= cfg.patience
            if stop or step >= steps:
                break
        if val_loader is None and report and not interactive():
            note(f"{name} {where()}: training loss {loss_sum / max(loss_count, 1):.5g}")
        epoch += 1
    precision = fabric_settings(cfg.accelerator, cfg.devices, cfg.strategy, cfg.num_nodes,
                                cfg.precision)["precision"] or "fabric run"
    return _finish(fabric, module, best_state, {
        "steps": step, "epochs": epoch, "budget_steps": steps, "best_step": best_step,
        "stopped_early": stop, "validation": history, "precision": precision})


def _finish(fabric, module, best_state, log: dict):
    """The best weights, rank 0's on every rank, on the CPU in eval mode, with the log."""
    if best_state is not None:
        module.load_state_dict(best_state)
    # every rank returns rank 0's model (identical weights; batch-norm statistics too)
    _sync_from_rank_zero(fabric, module.state_dict().values())
    module = module.to("cpu", memory_format=torch.contiguous_format).eval()
    module.training_log_ = log  # what happened, for reports (not saved with the weights)
    return module


def trained_precision(*models: torch.nn.Module) -> str | None:
    """The Fabric precision the models trained in (``training_log_["precision"]``): one
    value when they agree, else "VAE x, classifier y"; None for models without a log."""
    names = {"ConvVAE": "VAE"}
    logs = [(m, getattr(m, "training_log_", None)) for m in models]
    got = [(names.get(type(m).__name__, "classifier"), log.get("precision"))
           for m, log in logs if isinstance(log, dict)]
    got = [(n, p) for n, p in got if p]
    if not got:
        return None
    if len({p for _, p in got}) == 1:
        return str(got[0][1])
    return ", ".join(f"{n} {p}" for n, p in got)


def train_vae(
    x_normal: torch.Tensor, config: VAEConfig | None = None, train: TrainConfig | None = None
) -> ConvVAE:
    """Train a :class:`ConvVAE` on normal images by minimising the negative ELBO (eq. 1).

    Parameters
    ----------
    x_normal : Tensor (N, C, S, S), uint8 in [0, 255] or float in [0, 1]
        Normal images only, square, at the model's input size (the detectors' ``fit``
        resizes images of other sizes first).
    config : VAEConfig
        Its ``in_channels`` / ``image_size``, when None, are taken from ``x_normal``.
    train : TrainConfig

    Returns
    -------
    ConvVAE on the CPU, eval mode, with the best validation weights. The caller's global RNG
    state is left as it was (seeds are local).

    Raises
    ------
    TrainingDivergedError
        A training or validation loss became NaN or infinite (the message names the VAE,
        the epoch, and suggests a lower ``lr`` and checking the input scale).
    ValueError
        Fewer than 2 images, ``epochs < 1``, ``steps < 1``, an unknown schedule,
        non-square images, or a config whose channels or size differ from the images'.
    """
    if x_normal.ndim != 4 or x_normal.shape[-1] != x_normal.shape[-2]:
        raise ValueError(
            f"train_vae needs square (N, C, S, S) images, got shape {tuple(x_normal.shape)}; "
            "the detectors' fit resizes other sizes first"
        )
    config = (config or VAEConfig()).sized(x_normal.shape[1], x_normal.shape[-1])
    train = train or TrainConfig()
    with local_rng(train.seed):  # initial weights from the seed; the caller's RNG kept
        model = ConvVAE(config)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        u = _inputs.to_float_images(batch[0]).contiguous(memory_format=torch.channels_last)
        logits, mu, logvar = m(u, sample=m.training)
        return negative_elbo(
            logits.float(), u, mu.float(), logvar.float(),
            config.likelihood, config.gaussian_var, config.beta,
        )

    return _fit(model, (x_normal,), loss_fn, train, "VAE")


def train_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    config: CNNConfig | ResNetConfig | None = None,
    train: TrainConfig | None = None,
    loss: str = "eq2",
    features: torch.Tensor | None = None,
) -> FeatureClassifier:
    """Train the normal-vs-known-anomaly classifier (eq. 2).

    Parameters
    ----------
    x : Tensor (N, C, H, W), uint8 in [0, 255] or float in [0, 1]
    y : Tensor (N,), int64, 0 = normal, 1 = known anomaly
    config : CNNConfig or ResNetConfig
        The backbone: the paper's small conv stack, or ResNet-18 (paper Table II).
    loss : {"eq2", "cross_entropy"}
        See :func:`spadecam.models.cnn.classifier_loss`.
    features : Tensor (N, K) float32, optional
        With ``train.head_only``: x's :func:`pooled_last_features` on the network
        ``build_classifier(config, C, train.seed)`` builds, already computed (then x is not
        read again). Ignored otherwise.

    Returns
    -------
    ConvClassifier on the CPU, eval mode, with the best validation weights. The caller's
    global RNG state is left as it was (seeds are local).

    Raises
    ------
    TrainingDivergedError
        A training or validation loss became NaN or infinite (the message names the
        classifier and the epoch, and suggests a lower ``lr`` and checking the input scale).
    ValueError
        Fewer than 2 images, ``epochs < 1``, an unknown schedule or loss.
    """
    train = train or TrainConfig()
    model = build_classifier(config, x.shape[1], train.seed)
    if train.head_only:
        return fit_linear_head(model, x, y, train, features)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        u = _inputs.to_float_images(batch[0]).contiguous(memory_format=torch.channels_last)
        return classifier_loss(m(u).float(), batch[1], loss)

    return _fit(model, (x, y.long()), loss_fn, train, "classifier")
