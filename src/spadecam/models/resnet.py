"""ResNet-18-style classifier (normal vs known anomaly) with a GAP + linear head.

The paper's Table II (Narita et al., arXiv 1810.02607) uses a ResNet as SPADE's classifier.
torchvision does not import beside this torch build, so the network is written here after
He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Table 1, 18-layer
column: a 7x7/2 conv + 3x3/2 max-pool stem, then four stages of two basic blocks
(3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU) with widths 64-128-256-512, the last
three stages starting with stride 2. The Grad-CAM grid is therefore 1/32 of the image side
(4x4 at 128 pixels); the smallest input is 32 pixels (:attr:`ResNetConfig.min_input_size`).

:class:`ResNetClassifier` is a :class:`~spadecam.models.classifier.FeatureClassifier`, as the
3-conv :class:`~spadecam.models.cnn.ConvClassifier` is: ``features`` is a ModuleList (stem,
stage 1..4), ``fc`` the linear head after global average pooling, and ``forward_features`` /
``head`` / ``forward`` are the protocol's. Grad-CAM's closed form
(``spadecam.cam.closed_form_applies``) and the detectors therefore work unchanged; reading
``cam_layer=-1`` explains the output of the last stage, as in the Grad-CAM paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn

from spadecam.models._config import check_optional_size
from spadecam.models.classifier import FeatureClassifier, sized

__all__ = ["BasicBlock", "ResNetClassifier", "ResNetConfig"]


@dataclass
class ResNetConfig:
    """Hyper-parameters of :class:`ResNetClassifier` (defaults: ResNet-18).

    Attributes
    ----------
    in_channels : int or None
        Image channels (1 grey, 3 colour). None (default): the detectors' ``fit`` takes
        the data's (:meth:`sized`); a bare :class:`ResNetClassifier` takes 1.
    widths : tuple of int
        Channels of the four stages (ResNet-18: 64, 128, 256, 512; smaller widths make a
        lighter network with the same structure, e.g. for tests).
    blocks : tuple of int
        Basic blocks per stage (ResNet-18: 2, 2, 2, 2).
    num_classes : int
        Always 2 here: normal (index 0) and known anomaly (index 1).
    """

    in_channels: int | None = None
    widths: tuple[int, ...] = field(default=(64, 128, 256, 512))
    blocks: tuple[int, ...] = field(default=(2, 2, 2, 2))
    num_classes: int = 2

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        if not (len(self.widths) == len(self.blocks) >= 1) or min(self.blocks) < 1:
            raise ValueError(
                "ResNetConfig.widths and blocks must have the same non-zero length and at "
                f"least one block per stage, got widths={self.widths}, blocks={self.blocks}"
            )
        check_optional_size("ResNetConfig", "in_channels", self.in_channels)

    def sized(self, in_channels: int) -> ResNetConfig:
        """This config with ``in_channels`` filled in if None (ValueError if it differs)."""
        return sized(self, in_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        return d

    @property
    def min_input_size(self) -> int:
        """Total stride, the smallest side whose last-stage map is not padding (stem /4, stages /2).
        """
        return 4 * 2 ** (len(self.widths) - 1)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or 1x1 conv + BN) shortcut (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLUs in place, as ConvClassifier's: neither batch norm's nor the sum's backward
        # reads its output (the same values, one activation less to write)
        h = torch.relu_(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu_(h + self.shortcut(x))


class ResNetClassifier(FeatureClassifier):
    """ResNet-18-style stem and stages -> global average pooling -> linear, 2 logits.

    Input (N, C, H, W) float in [0, 1] with H, W >= ``config.min_input_size``; output logits
    (N, 2) float, index 0 = normal. ``features[0]`` is the stem, ``features[i]`` stage i.
    """

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        config = config or ResNetConfig()
        self.config = config = config.sized(1 if config.in_channels is None else config.in_channels)
        stem = nn.Sequential(
            nn.Conv2d(cast(int, config.in_channels), config.widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = [stem]
        c_in = config.widths[0]
        for i, (width, n) in enumerate(zip(config.widths, config.blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(c_in, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.features = nn.ModuleList(stages)
        self.fc = nn.Linear(c_in, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
