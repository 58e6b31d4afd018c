"""Models: the convolutional VAE (eq. 1) and the CNN classifiers (eq. 2; 3-conv or ResNet-18)."""

from spadecam.models.backbones import BACKBONE_ALIASES, BACKBONES, backbone_name
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier, classifier_loss
from spadecam.models.resnet import ResNetClassifier, ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig, negative_elbo

__all__ = [
    "BACKBONES",
    "BACKBONE_ALIASES",
    "NORMAL_CLASS",
    "CNNConfig",
    "ConvClassifier",
    "ConvVAE",
    "FeatureClassifier",
    "ResNetClassifier",
    "ResNetConfig",
    "VAEConfig",
    "backbone_name",
    "classifier_loss",
    "negative_elbo",
]
