"""Numeric precision of scoring and training: ``"auto"`` picks bf16 where the hardware has it.

SPADE's cost is convolutions (VAE encoder/decoder, the classifier on u and û). On CPUs with a
native bf16 dot product (Intel AMX-BF16 tiles or AVX512-BF16) and on CUDA GPUs with bf16
support, bf16 autocast runs those convolutions several times faster than fp32, and on
Noisy-MNIST it moves SPADE's AUROC by at most a few thousandths (README, Speed). Elsewhere
(older CPUs, Apple silicon, GPUs without bf16) bf16 is emulated and slower, so ``"auto"``
keeps fp32 there.

Scoring precisions (detectors, ``spadecam score/evaluate/reproduce``):

* ``"32"`` — fp32 throughout; bit-identical run to run on one CPU, and within fp32
  rounding of spadecam 0.1's scores (bit for bit with the paper's unblurred error on the
  same CPU; the blur, a matrix product since 0.2, and other CPUs' oneDNN kernels, e.g.
  with AMX, add in another order).
* ``"bf16"`` — bf16 autocast for the networks; reconstruction error, ROI arithmetic, blur and
  sums stay fp32.
* ``"auto"`` — ``"bf16"`` when :func:`bf16_is_fast` for the models' device, else ``"32"``.

Training precisions (:class:`~spadecam.training.TrainConfig`, ``--precision``) are Lightning
Fabric's (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``) plus ``"auto"``. On a CPU with
native bf16 (AMX or AVX512-BF16), one process, ``"auto"`` is chosen *by measurement*: before a
training of at least :data:`MEASURE_MIN_STEPS` steps, a few training steps of the very model,
loss and batch are timed in both precisions and the faster one trains
(:func:`measure_training_precision`; bf16-mixed must win by :data:`BF16_TRAINING_MARGIN`), and
the choice is kept per CPU, torch build, thread count, model and batch shape, in memory and in
a small JSON file (:func:`cache_dir`), so a machine decides once and the same seed gives the
same numbers on it afterwards. Why measure: bf16-mixed training measured 2.12-2.35x fp32 on one
AVX512-BF16 CPU (an AMD EPYC) and 0.48-0.62x on another (an Intel CPU), and 1.5-2.4x on an AMX
Xeon, so no rule by CPU flag holds (docs/speed.md). Elsewhere ``"auto"`` is the rule of
:func:`resolve_training_precision`: ``"bf16-mixed"`` on CUDA with bf16 and on CPUs with AMX,
``"32-true"`` otherwise (bf16 is emulated, 13x slower, where the CPU has neither).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BF16_TRAINING_MARGIN",
    "MEASURE_MIN_STEPS",
    "SCORING_PRECISIONS",
    "TrainingPrecisionMeasurement",
    "bf16_is_fast",
    "cache_dir",
    "describe",
    "from_option",
    "measure_training_precision",
    "resolve_scoring_precision",
    "resolve_training_precision",
    "training_precision_is_measured",
]

#: Values of the detectors' ``precision`` parameter.
SCORING_PRECISIONS = ("auto", "32", "bf16")


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """True when ``device`` computes bf16 convolutions natively (not emulated).

    Parameters
    ----------
    device : str or torch.device
        "cpu", "cuda", "cuda:1", ...; any other device type gives False.

    Returns
    -------
    bool
        CPU: torch reports AMX tiles or AVX512-BF16 (``torch.cpu._is_amx_tile_supported``,
        ``torch.cpu._is_avx512_bf16_supported``) and oneDNN is available. CUDA: the device
        exists and ``torch.cuda.is_bf16_supported()``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return _cpu_has_amx() or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _cpu_has_amx() -> bool:
    """torch's report of AMX tiles on this CPU (False on torch builds without the probe)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_scoring_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """The scoring precision actually used: "32" or "bf16".

    Parameters
    ----------
    precision : {"auto", "32", "bf16"}
    device : device the models are on (decides "auto")

    Raises
    ------
    ValueError
        ``precision`` not one of :data:`SCORING_PRECISIONS`.
    """
    if precision not in SCORING_PRECISIONS:
        raise ValueError(f"precision must be one of {SCORING_PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "32"
    return precision


def resolve_training_precision(precision: str, accelerator: str = "cpu") -> str:
    """Fabric precision for ``precision="auto"`` by rule, where it is not measured.

    "bf16-mixed" on CUDA with bf16 and on CPUs with AMX-BF16 tiles, else "32-true". On a CPU
    with native bf16, a one-process training of :data:`MEASURE_MIN_STEPS` steps or more
    measures instead (:func:`measure_training_precision`); this rule covers shorter trainings
    and several processes (whose ranks must agree without timing). It keeps fp32 on
    AVX512-BF16 without AMX, where bf16-mixed training measured 0.48-0.62x fp32 on one CPU
    (and 2.1-2.35x on another: docs/speed.md): never slower than fp32 there. Any other value
    is returned unchanged (Fabric validates it).

    Parameters
    ----------
    precision : str, "auto" or a Fabric precision
    accelerator : {"cpu", "cuda", "gpu", "auto"}
        "auto" means CUDA when it is available, else the CPU.
    """
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu"):
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return "bf16-mixed" if _cpu_has_amx() and bf16_is_fast("cpu") else "32-true"
    return "bf16-mixed" if bf16_is_fast(accelerator) else "32-true"


#: ``--precision`` values of the CLI -> (training precision, scoring precision).
_OPTION = {
    "auto": ("auto", "auto"),
    "32": ("32-true", "32"),
    "32-true": ("32-true", "32"),
    "bf16": ("bf16-mixed", "bf16"),
    "bf16-mixed": ("bf16-mixed", "bf16"),
    "16-mixed": ("16-mixed", "32"),  # fp16 scoring is not offered: it scores in fp32
}


def from_option(value: str | None) -> tuple[str, str]:
    """Split one ``--precision`` value into (training precision, scoring precision).

    Parameters
    ----------
    value : {"auto", "32", "bf16", "32-true", "bf16-mixed", "16-mixed"} or None (= "auto")

    Returns
    -------
    (str, str)
        A Fabric precision (or "auto") and one of :data:`SCORING_PRECISIONS`.

    Raises
    ------
    ValueError
        An unknown value (the message lists the known ones).
    """
    value = "auto" if value is None else str(value)
    if value not in _OPTION:
        raise ValueError(f"--precision must be one of {sorted(_OPTION)}, got {value!r}")
    return _OPTION[value]


def describe(device: str | torch.device = "cpu") -> str:
    """Why ``"auto"`` resolves as it does on ``device``, e.g. "the CPU has AVX512-BF16"."""
    dev = torch.device(device)
    if bf16_is_fast(dev):
        if dev.type == "cuda":
            why = "the GPU supports bf16"
        else:
            why = "the CPU has " + ("AMX-BF16" if _cpu_has_amx() else "AVX512-BF16")
        return why
    return f"no native bf16 on {dev.type}"


#: A training of fewer optimiser steps keeps :func:`resolve_training_precision`'s rule: the
#: measurement (2 x (1 + MEASURE_STEPS) steps, about 8) would cost more than it could save.
MEASURE_MIN_STEPS = 100
#: Timed steps per precision (after one warm-up step each); the best of them counts.
MEASURE_STEPS = 3
#: bf16-mixed trains only when its step is at least this many times faster than fp32's, so
#: that a tie on a noisy machine keeps exact fp32.
BF16_TRAINING_MARGIN = 1.1
_CACHE_FILE = "training_precision.json"
_MEASURED: dict[str, TrainingPrecisionMeasurement] = {}
_LOCK = threading.Lock()


def training_precision_is_measured(accelerator: str = "cpu") -> bool:
    """True where ``"auto"`` chooses the training precision by measurement: the CPU, with
    native bf16 (AMX tiles or AVX512-BF16, :func:`bf16_is_fast`). The caller also needs one
    process and a training of at least :data:`MEASURE_MIN_STEPS` steps
    (:func:`spadecam.training.train_vae` / ``train_cnn`` check both)."""
    return accelerator == "cpu" and bf16_is_fast("cpu")


@dataclasses.dataclass(frozen=True)
class TrainingPrecisionMeasurement:
    """What :func:`measure_training_precision` timed and chose.

    Attributes
    ----------
    precision : {"bf16-mixed", "32-true"}
        The Fabric precision that trains.
    fp32_seconds, bf16_seconds : float
        The best of :data:`MEASURE_STEPS` timed training steps (forward, backward, AdamW
        step) of one batch, in seconds.
    cached : bool
        True when the choice was read from the cache (the seconds are those measured then).
    """

    precision: str
    fp32_seconds: float
    bf16_seconds: float
    cached: bool = False

    @property
    def speedup(self) -> float:
        """bf16-mixed over fp32, steps per second (> 1: bf16 is faster)."""
        return self.fp32_seconds / self.bf16_seconds

    def describe(self) -> str:
        """One line for logs, e.g. "bf16-mixed (measured: 2.10x fp32 per step)"."""
        how = "cached measurement" if self.cached else "measured"
        return f"{self.precision} ({how}: bf16-mixed {self.speedup:.2f}x fp32 per step)"


def cache_dir() -> Path:
    """Where measured choices are kept: ``$SPADECAM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/spadecam``, else ``~/.cache/spadecam``."""
    if os.environ.get("SPADECAM_CACHE_DIR"):
        return Path(os.environ["SPADECAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spadecam"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cache_key(model: torch.nn.Module, batch: Sequence[torch.Tensor]) -> str:
    """CPU (name and bf16 report), torch build, threads, model (class, parameter count) and
    batch shapes: what the timing depends on."""
    n_params = sum(p.numel() for p in model.parameters())
    shapes = ",".join(f"{tuple(t.shape)}:{t.dtype}" for t in batch)
    return (f"{_cpu_name()}|amx={_cpu_has_amx()}|bf16={bf16_is_fast('cpu')}|torch="
            f"{torch.__version__}|threads={torch.get_num_threads()}|"
            f"{type(model).__name__}:{n_params}|{shapes}")


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _from_cache(entry: Any) -> TrainingPrecisionMeasurement | None:
    try:
        m = TrainingPrecisionMeasurement(str(entry["precision"]), float(entry["fp32_seconds"]),
                                         float(entry["bf16_seconds"]), cached=True)
    except (KeyError, TypeError, ValueError):
        return None
    return m if m.precision in ("bf16-mixed", "32-true") else None


def _write_cache(path: Path, key: str, m: TrainingPrecisionMeasurement) -> None:
    """Add one entry (temp file, then rename); a cache that cannot be written is skipped:
    the choice is then kept for this process only."""
    from spadecam._fs import atomic_write_text

    try:
        data = _read_cache(path)
        data[key] = {"precision": m.precision, "fp32_seconds": m.fp32_seconds,
                     "bf16_seconds": m.bf16_seconds}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass


def _step_seconds(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor],
                  batch: tuple[torch.Tensor, ...], bf16: bool) -> Callable[[], float]:
    """A function that runs one training step (as Fabric's "32-true" / "bf16-mixed" on the
    CPU: autocast to bf16 around the forward and the loss, fp32 weights and AdamW) of a copy
    of ``model`` and returns its seconds."""
    m = copy.deepcopy(model).to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-6)

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(m, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step


def measure_training_precision(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    batch: tuple[torch.Tensor, ...],
    steps: int = MEASURE_STEPS,
    use_cache: bool = True,
) -> TrainingPrecisionMeasurement:
    """Choose the CPU training precision of ``"auto"`` by timing both on this model.

    One warm-up step each, then ``steps`` steps of fp32 and of bf16 autocast in turn (so a
    change of machine load falls on both); the best step of each counts, and bf16-mixed is
    chosen when it is at least :data:`BF16_TRAINING_MARGIN` times faster. ``model`` is not
    changed (copies train) and torch's global RNG is left as it was.

    Parameters
    ----------
    model : torch.nn.Module
        The model about to be trained, on the CPU.
    loss_fn : callable(model, batch) -> scalar Tensor
        The training loss, as :func:`spadecam.training.train_vae` / ``train_cnn`` give it.
    batch : tuple of Tensor
        One training batch of the size that will train (images first).
    steps : int >= 1
    use_cache : bool
        Read and write the choice in :func:`cache_dir` and in memory (keyed by CPU, torch
        build, thread count, model class and parameter count, batch shapes); False measures
        afresh and keeps nothing.

    Returns
    -------
    TrainingPrecisionMeasurement

    Raises
    ------
    ValueError
        ``steps`` below 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    key = _cache_key(model, batch) if use_cache else ""
    path = cache_dir() / _CACHE_FILE
    with _LOCK:
        if use_cache:
            if key in _MEASURED:
                return _MEASURED[key]
            hit = _from_cache(_read_cache(path).get(key))
            if hit is not None:
                _MEASURED[key] = hit
                return hit
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fp32 = _step_seconds(model, loss_fn, batch, bf16=False)
            bf16 = _step_seconds(model, loss_fn, batch, bf16=True)
            fp32(), bf16()  # warm-up: oneDNN primitives, allocator
            t32, t16 = [], []
            for _ in range(steps):
                t32.append(fp32())
                t16.append(bf16())
        best32, best16 = min(t32), min(t16)
        chosen = "bf16-mixed" if best32 >= BF16_TRAINING_MARGIN * best16 else "32-true"
        m = TrainingPrecisionMeasurement(chosen, best32, best16)
        if use_cache:
            _MEASURED[key] = m
            _write_cache(path, key, m)
        return m
