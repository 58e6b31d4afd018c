"""spadecam — SPADE, Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607).

Public API: the four detectors (SPADE and the paper's three baselines) and ``__version__``.

The detectors are imported on first use (PEP 562 ``__getattr__``), so ``import spadecam``
and ``spadecam --help`` do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spadecam._moved import install as _install_moved
from spadecam._version import __version__

_install_moved()  # 0.1's module paths of the benchmarks, forwarded with a warning

__all__ = ["SPADE", "CNNDetector", "NaiveSPADE", "VAEDetector", "__version__"]

if TYPE_CHECKING:
    from spadecam.detectors import SPADE, CNNDetector, NaiveSPADE, VAEDetector


def __getattr__(name: str) -> Any:
    if name in ("SPADE", "CNNDetector", "NaiveSPADE", "VAEDetector"):
        from spadecam import detectors

        return getattr(detectors, name)
    raise AttributeError(f"module 'spadecam' has no attribute {name!r}")
