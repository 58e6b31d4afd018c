"""How the VAE and the classifier train (:class:`TrainConfig`: budget, batch, optimiser,
precision, Fabric settings, head-only training) and the error a diverged training raises;
read by :mod:`spadecam.training` and :mod:`spadecam.linear_head`. Seeds stay local
(:func:`local_rng`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from spadecam.recipes import FIT_DEFAULTS

__all__ = ["TrainConfig", "TrainingDivergedError", "local_rng"]


class TrainingDivergedError(ValueError):
    """A training loss became NaN or infinite; the message names the model, epoch and a hint."""


@dataclass
class TrainConfig:
    """Optimisation and device settings shared by both training loops.

    The training length is a budget of optimiser steps, not of epochs, so that a folder of
    600 images and one of 6,000 get the same number of updates; early stopping on the
    validation loss ends training once it has converged (with an old default of
    10 epochs, 640 images and batches of 128 gave the VAE 50 steps, its validation loss
    still falling).

    Attributes
    ----------
    steps : int
        Budget of optimiser steps (default 2000, :data:`spadecam.recipes.FIT_DEFAULTS` as
        every default here and ``spadecam train``'s), used when ``epochs`` is None. Batches are
        drawn epoch after epoch (a new permutation each) until the budget is spent or early
        stopping ends training.
    epochs : int or None
        An epoch budget instead (``epochs * ceil(n_train / batch_size)`` steps, validation
        after every epoch): the recipes of the Noisy-MNIST reproduction use it.
    val_every : int or None
        Steps between validations; None: once per epoch with ``epochs``, else
        ``ceil(steps / 50)`` (at most 50 validations whatever the data size).
    lr, weight_decay : float
        AdamW settings.
    schedule : {"constant", "cosine"}
        Learning-rate schedule over the step budget (cosine decays to 0 by its last step).
    val_fraction : float in [0, 1)
        Share of the training images held out for early stopping (0 disables it).
    patience : int
        Validations without a better validation loss before stopping.
    batch_size : int
        Images per step and process (default 32): a DDP step over W processes sees
        W * batch_size.
    seed : int
        Seeds the weights, the split, the batch order and the VAE's sampling.
    accelerator, devices, num_nodes, precision, strategy :
        Passed to ``lightning.fabric.Fabric`` (e.g. "cpu", 2, 1, "32-true" or "bf16-mixed",
        "ddp"); ``devices`` is processes per node. ``None`` takes the launcher's value under
        torchrun or ``fabric run``, else one process on the CPU
        (:func:`spadecam.distributed.fabric_settings`). ``precision="auto"`` (default): on
        a CPU with native bf16 (AMX or AVX512-BF16), one process and at least
        ``MEASURE_MIN_STEPS`` (100) steps, the faster of "bf16-mixed" and "32-true" as
        timed on this model and batch before training
        (:func:`spadecam.precision.measure_training_precision`, kept per machine); else
        "bf16-mixed" on CPUs with AMX and on CUDA with bf16, "32-true" elsewhere
        (:func:`spadecam.precision.resolve_training_precision`). The precision that trained
        is in the model's ``training_log_["precision"]``. "32-true" gives exact fp32
        training.
    progress : bool
        Report each epoch: a tqdm bar when stderr is a terminal, else one line per epoch
        (training and validation loss) on stderr.
    head_only : bool
        The classifier only (:func:`spadecam.training.train_cnn`): keep the pretrained
        backbone as it is and fit its linear head alone, as a class-balanced L2-regularised
        logistic regression
        (scikit-learn, ``head_c``) on the globally pooled last-block features of the training
        images, standardised and folded into the head (normal logit 0, known-anomaly logit
        the regression's). No optimiser steps: ``steps``, ``epochs``, ``lr``, ``schedule``
        and the devices are unused; the features are computed in fp32 on the CPU in
        batches of ``batch_size``. Our option (the paper fine-tunes all of eq. 2's network).
    head_c : float > 0
        The regression's inverse regularisation strength (scikit-learn's ``C``) on the
        standardised features (default 0.1).
    """

    steps: int = FIT_DEFAULTS["steps"]
    epochs: int | None = None
    val_every: int | None = None
    batch_size: int = FIT_DEFAULTS["batch_size"]
    lr: float = FIT_DEFAULTS["lr"]
    weight_decay: float = 0.0
    schedule: str = "constant"
    val_fraction: float = 0.1
    patience: int = 5
    seed: int = FIT_DEFAULTS["seed"]
    accelerator: str | None = None
    devices: int | None = None
    precision: str | None = "auto"
    strategy: str | None = None
    num_nodes: int | None = None
    progress: bool = True
    head_only: bool = False
    head_c: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def local_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global RNG (CPU, and ``device`` if CUDA) for the block; restore after.

    Module initialisers, ``randn_like`` and DataLoader draw from the global generators, so
    they are seeded here rather than given a ``torch.Generator``; ``fork_rng`` puts the
    caller's states back when the block ends, even on an error.
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device is not None and device.type == "cuda") else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
