"""The classifier protocol SPADE needs (features + GAP + linear head) and the backbone table.

:class:`FeatureClassifier` is what Grad-CAM's closed form (:func:`spadecam.cam.closed_form_applies`)
and the detectors check: ``features`` is an ``nn.ModuleList`` of blocks whose outputs are the
feature maps A Grad-CAM may read (eq. 3-4), ``fc`` a linear layer, and the logits are
``fc(mean over pixels of the last block's output)``. With that head dy^c/dA_k^ij = w_ck / Z,
so alpha_k (eq. 3) needs no backward pass. Both backbones subclass it:
:class:`~spadecam.models.cnn.ConvClassifier` (three conv layers, the paper's section III-B
layout; its kernels follow the recipe) and :class:`~spadecam.models.resnet.ResNetClassifier`
(ResNet-18, the paper's Table II).

Their one name set is :data:`spadecam.models.backbones.BACKBONES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureClassifier", "has_linear_head", "sized"]


class FeatureClassifier(nn.Module):
    """Blocks -> global average pooling -> linear: 2 logits, index 0 = normal.

    Subclasses build ``self.features`` (``nn.ModuleList`` of blocks) and ``self.fc``
    (``nn.Linear``) in their ``__init__`` after calling ``super().__init__()``, and keep
    :meth:`head` as it is (the closed-form Grad-CAM relies on it: GAP then linear).

    Input (N, C, H, W) float in [0, 1]; output logits (N, 2) float.
    """

    features: nn.ModuleList
    fc: nn.Linear
    config: Any

    def forward_features(self, x: torch.Tensor, upto: int = -1) -> torch.Tensor:
        """Output of block ``upto`` (negative indices count from the end), (N, K, h, w)."""
        upto = upto % len(self.features)
        for i, block in enumerate(self.features):
            x = block(x)
            if i == upto:
                return x
        raise AssertionError("unreachable")

    def load_pretrained(self) -> FeatureClassifier:
        """Put the pretrained weights the config names into the blocks (the training calls
        it before the first step); a backbone without any keeps its own. Returns self."""
        return self

    def head(self, a: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) from the last block's feature map (N, K, h, w): GAP then linear."""
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x, -1))


def has_linear_head(model: nn.Module) -> bool:
    """True when ``model`` is a :class:`FeatureClassifier` whose head is GAP + linear."""
    return isinstance(model, FeatureClassifier) and type(model).head is FeatureClassifier.head


def sized(config: Any, in_channels: int) -> Any:
    """``config`` with ``in_channels`` filled in if None; ValueError if it is set and differs."""
    if config.in_channels is not None and config.in_channels != in_channels:
        raise ValueError(
            f"{type(config).__name__}.in_channels={config.in_channels} but the images have "
            f"{in_channels} channel(s)"
        )
    return dataclasses.replace(config, in_channels=in_channels)
