"""CNN binary classifier (normal vs known anomaly) with a GAP + linear head, and its loss (eq. 2).

The paper (Narita et al., arXiv 1810.02607, section III-B) uses three convolutional layers;
kernels, strides and widths are left open and live in :class:`CNNConfig`. The head after the
last conv layer is global average pooling followed by one linear layer giving two logits,
ordered like the detector labels: index 0 = normal (:data:`NORMAL_CLASS`), index 1 = known
anomaly. With this head Grad-CAM has a closed form (see :mod:`spadecam.cam`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from spadecam.models._config import check_optional_size
from spadecam.models.classifier import FeatureClassifier, sized

__all__ = ["NORMAL_CLASS", "CNNConfig", "ConvClassifier", "classifier_loss"]

#: Logit index of the normal class; its pre-softmax score y^c is what Grad-CAM explains (eq. 3).
NORMAL_CLASS = 0


@dataclass
class CNNConfig:
    """Hyper-parameters of :class:`ConvClassifier`.

    Attributes
    ----------
    in_channels : int or None
        Image channels. None (default): the detectors' ``fit`` takes the data's
        (:meth:`sized`); a bare :class:`ConvClassifier` takes 1.
    channels, kernel_sizes, strides : tuple of int
        One entry per conv layer (paper: three layers). Each layer is conv -> (batch norm)
        -> ReLU with padding ``kernel // 2``.
    batch_norm : bool
        Batch normalisation after each conv (not stated in the paper; it speeds training).
    num_classes : int
        Always 2 here: normal (index 0) and known anomaly (index 1).
    """

    in_channels: int | None = None
    channels: tuple[int, ...] = field(default=(32, 64, 64))
    kernel_sizes: tuple[int, ...] = field(default=(3, 3, 3))
    strides: tuple[int, ...] = field(default=(2, 2, 2))
    batch_norm: bool = True
    num_classes: int = 2

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        self.strides = tuple(int(s) for s in self.strides)
        if not (len(self.channels) == len(self.kernel_sizes) == len(self.strides) >= 1):
            raise ValueError(
                "CNNConfig.channels, kernel_sizes and strides must have the same non-zero "
                f"length, got {len(self.channels)}, {len(self.kernel_sizes)}, {len(self.strides)}"
            )
        check_optional_size("CNNConfig", "in_channels", self.in_channels)

    def sized(self, in_channels: int) -> CNNConfig:
        """This config with ``in_channels`` filled in if None (ValueError if it differs)."""
        return sized(self, in_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("channels", "kernel_sizes", "strides"):
            d[k] = list(d[k])
        return d

    @property
    def receptive_field(self) -> int:
        """Receptive field of one unit of the last conv layer, in input pixels."""
        r, j = 1, 1
        for k, s in zip(self.kernel_sizes, self.strides):
            r += (k - 1) * j
            j *= s
        return r


class ConvClassifier(FeatureClassifier):
    """Conv layers -> global average pooling -> linear, giving 2 logits (a
    :class:`~spadecam.models.classifier.FeatureClassifier`).

    Input (N, C, H, W) float in [0, 1]; output logits (N, 2) float, index 0 = normal.

    ``features[i]`` is the i-th conv block (conv, BN, ReLU); Grad-CAM reads the output of one
    block (by default the last, ``cam_layer = -1``).
    """

    config: CNNConfig

    def __init__(self, config: CNNConfig | None = None) -> None:
        super().__init__()
        config = config or CNNConfig()
        self.config = config = config.sized(1 if config.in_channels is None else config.in_channels)
        blocks = []
        c_in = config.in_channels
        assert c_in is not None  # sized just above
        for c, k, s in zip(config.channels, config.kernel_sizes, config.strides):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c, k, stride=s, padding=k // 2, bias=not config.batch_norm)
            ]
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c))
            # in place: the conv's and batch norm's backward do not read their output, and
            # the ReLU's reads its result; one activation less to allocate and write per
            # block (the same values; classifier training 4-5 % faster on a 2-core CPU)
            layers.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.features = nn.ModuleList(blocks)
        self.fc = nn.Linear(c_in, config.num_classes)


def classifier_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "eq2") -> torch.Tensor:
    """Classifier loss, averaged over the batch.

    Parameters
    ----------
    logits : Tensor (N, 2), index 0 = normal
    y : Tensor (N,), int64, 0 = normal, 1 = known anomaly
    kind : {"eq2", "cross_entropy"}
        ``"eq2"``: the paper's eq. 2, ||t - f(x)|| with f the softmax output and t the one-hot
        target (t_normal = 1 for normal images); we read ||.|| as the Euclidean norm of the
        2-vector difference, per image. ``"cross_entropy"``: the usual log loss.

    References
    ----------
    Narita et al., arXiv 1810.02607, eq. 2.
    """
    if kind == "eq2":
        t = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        diff = t - logits.softmax(dim=1)
        # sqrt(x + eps) keeps the gradient finite when an image is classified perfectly
        return torch.sqrt(diff.pow(2).sum(dim=1) + 1e-12).mean()
    if kind == "cross_entropy":
        return F.cross_entropy(logits, y)
    raise ValueError(f"loss must be 'eq2' or 'cross_entropy', got {kind!r}")
