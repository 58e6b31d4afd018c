"""spadecam — SPADE, Spatially-weighted Anomaly Detection (Narita et al., arXiv 1810.02607).

Public API: the four detectors (SPADE and the paper's three baselines) and ``__version__``.
"""

from spadecam.detectors import SPADE, CNNDetector, NaiveSPADE, VAEDetector

__version__ = "0.1.0"

__all__ = ["SPADE", "CNNDetector", "NaiveSPADE", "VAEDetector", "__version__"]
