"""Models: the convolutional VAE (eq. 1) and the CNN classifiers (eq. 2; 3-conv, ResNet-18 or
EfficientNet-Lite0 from its ImageNet weights)."""

from spadecam.models.backbones import BACKBONE_ALIASES, BACKBONES, backbone_name
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier, classifier_loss
from spadecam.models.efficientnet import EfficientNetLiteClassifier, EfficientNetLiteConfig
from spadecam.models.resnet import ResNetClassifier, ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig, negative_elbo

__all__ = [
    "BACKBONES",
    "BACKBONE_ALIASES",
    "NORMAL_CLASS",
    "CNNConfig",
    "ConvClassifier",
    "ConvVAE",
    "EfficientNetLiteClassifier",
    "EfficientNetLiteConfig",
    "FeatureClassifier",
    "ResNetClassifier",
    "ResNetConfig",
    "VAEConfig",
    "backbone_name",
    "classifier_loss",
    "negative_elbo",
]
