"""The one backbone name set: "small" (the 3-conv CNN), "resnet18", "efficientnet_lite0" and
"wide_resnet50_2".

The CLI's ``--backbone``, :func:`spadecam.workflow.build_detector` and ``config.json``'s
``cnn_backbone`` all use these names; model directories written by spadecam 0.1 say "conv" /
"resnet", read as aliases (:data:`BACKBONE_ALIASES`).
"""

from __future__ import annotations

from typing import Any

from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import CNNConfig, ConvClassifier
from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig
from spadecam.models.resnet import ResNetClassifier, ResNetConfig

__all__ = ["BACKBONES", "BACKBONE_ALIASES", "CLASSIFIER_CONFIGS", "backbone_name"]

#: Backbone name -> (classifier class, config class): "small" is the 3-conv CNN of
#: :class:`~spadecam.models.cnn.CNNConfig` (the paper's section III-B layout; its kernels
#: follow the image size under the default recipe), "resnet18" the ResNet-18 of
#: :class:`~spadecam.models.resnet.ResNetConfig` (the paper's Table II), "efficientnet_lite0"
#: EfficientNet-Lite0 from its ImageNet weights
#: (:class:`~spadecam.models.efficientnet.EfficientNetLiteConfig`), "wide_resnet50_2" the
#: bottleneck ResNet of :meth:`~spadecam.models.resnet.ResNetConfig.wide_resnet50_2`
#: (PatchCore's backbone; its weights a torchvision file the user gives). "resnet18" names
#: every basic-block ResNetConfig and "wide_resnet50_2" every bottleneck one.
BACKBONES: dict[str, tuple[type[FeatureClassifier], type]] = {
    "small": (ConvClassifier, CNNConfig),
    "resnet18": (ResNetClassifier, ResNetConfig),
    "efficientnet_lite0": (EfficientNetLiteClassifier, EfficientNetLiteConfig),
    "wide_resnet50_2": (ResNetClassifier, ResNetConfig),
}
#: The classifier config classes, in the order of :data:`BACKBONES`.
CLASSIFIER_CONFIGS: tuple[type, ...] = tuple(dict.fromkeys(cfg for _, cfg in BACKBONES.values()))
#: Names of the same backbones in model directories written by spadecam 0.1.
BACKBONE_ALIASES = {"conv": "small", "resnet": "resnet18"}


def backbone_name(model_or_config: Any) -> str:
    """The :data:`BACKBONES` name of a classifier or of its config.

    Raises
    ------
    TypeError
        Neither a backbone's classifier nor its config.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, ResNetConfig):  # one class, two names: the block says which
        return "wide_resnet50_2" if config.block == "bottleneck" else "resnet18"
    for name, (model_cls, cfg_cls) in BACKBONES.items():
        if isinstance(model_or_config, (model_cls, cfg_cls)):
            return name
    raise TypeError(f"not a spadecam classifier or classifier config: "
                    f"{type(model_or_config).__name__}")
