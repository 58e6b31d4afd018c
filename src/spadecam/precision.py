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
Fabric's (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``) plus ``"auto"``: ``"bf16-mixed"``
on CUDA with bf16 and on CPUs with AMX, else ``"32-true"`` (on AVX512-BF16 without AMX, bf16
training measured slower than fp32: :func:`resolve_training_precision`).
"""

from __future__ import annotations

import torch

__all__ = [
    "SCORING_PRECISIONS",
    "bf16_is_fast",
    "describe",
    "from_option",
    "resolve_scoring_precision",
    "resolve_training_precision",
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
    """Fabric precision for ``precision="auto"``: "bf16-mixed" where it trains faster.

    That is CUDA with bf16 and CPUs with AMX-BF16 tiles. On CPUs with AVX512-BF16 but no AMX,
    bf16-mixed *training* measured slower than fp32 here (VAE + CNN, one epoch of the
    ``spadecam`` recipe: 0.62x and 0.48x in two bench runs, 14 vs 22 img/s for the VAE alone;
    docs/speed.md), although bf16 *scoring* is faster there; so "auto" trains in "32-true"
    on those CPUs and scores in bf16. Any other value is returned unchanged (Fabric
    validates it).

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
