"""Models: the convolutional VAE (eq. 1) and the CNN classifier (eq. 2)."""

from spadecam.models.cnn import NORMAL_CLASS, CNNConfig, ConvClassifier, classifier_loss
from spadecam.models.vae import ConvVAE, VAEConfig, negative_elbo

__all__ = [
    "NORMAL_CLASS",
    "CNNConfig",
    "ConvClassifier",
    "ConvVAE",
    "VAEConfig",
    "classifier_loss",
    "negative_elbo",
]
