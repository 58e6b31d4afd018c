"""The one backbone name set: "small" (the 3-conv CNN) and "resnet18".

The CLI's ``--backbone``, :func:`spadecam.workflow.build_detector` and ``config.json``'s
``cnn_backbone`` all use these names; model directories written by spadecam 0.1 say "conv" /
"resnet", read as aliases (:data:`BACKBONE_ALIASES`).
"""

from __future__ import annotations

from typing import Any

from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.resnet import ResNetClassifier, ResNetConfig

__all__ = ["BACKBONES", "BACKBONE_ALIASES", "backbone_name"]

#: Backbone name -> (classifier class, config class): "small" is the 3-conv CNN of
#: :class:`~spadecam.models.cnn.CNNConfig` (the paper's section III-B layout; its kernels
#: follow the image size under the default recipe), "resnet18" the ResNet-18 of
#: :class:`~spadecam.models.resnet.ResNetConfig` (the paper's Table II).
BACKBONES: dict[str, tuple[type[FeatureClassifier], type]] = {
    "small": (ConvClassifier, CNNConfig),
    "resnet18": (ResNetClassifier, ResNetConfig),
}
#: Names of the same backbones in model directories written by spadecam 0.1.
BACKBONE_ALIASES = {"conv": "small", "resnet": "resnet18"}


def backbone_name(model_or_config: Any) -> str:
    """The :data:`BACKBONES` name of a classifier or of its config.

    Raises
    ------
    TypeError
        Neither a backbone's classifier nor its config.
    """
    for name, (model_cls, cfg_cls) in BACKBONES.items():
        if isinstance(model_or_config, (model_cls, cfg_cls)):
            return name
    raise TypeError(f"not a spadecam classifier or classifier config: "
                    f"{type(model_or_config).__name__}")
