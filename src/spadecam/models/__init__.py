"""Models: the convolutional VAE (eq. 1) and the CNN classifiers (eq. 2; 3-conv or ResNet-18)."""

from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier, classifier_loss
from spadecam.models.resnet import ResNetClassifier, ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig, negative_elbo

__all__ = [
    "NORMAL_CLASS",
    "CNNConfig",
    "ConvClassifier",
    "ConvVAE",
    "ResNetClassifier",
    "ResNetConfig",
    "VAEConfig",
    "classifier_loss",
    "negative_elbo",
]
