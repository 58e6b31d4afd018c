"""Data: MNIST IDX reader/downloader and the Noisy-MNIST generator (numpy + Pillow, no torch)."""

from spadecam.data.mnist import (
    DEFAULT_MNIST_URL,
    FILENAMES,
    PAYLOAD_SHA256,
    MNISTDownloadError,
    MNISTFormatError,
    MNISTNotFoundError,
    default_cache_dir,
    download_mnist,
    load_mnist,
    read_idx,
    resolve_data_dir,
)
from spadecam.data.noisy_mnist import RESAMPLE_FILTERS, NoisyMNISTConfig, make_noisy_mnist

__all__ = [
    "DEFAULT_MNIST_URL",
    "FILENAMES",
    "PAYLOAD_SHA256",
    "RESAMPLE_FILTERS",
    "MNISTDownloadError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "NoisyMNISTConfig",
    "default_cache_dir",
    "download_mnist",
    "load_mnist",
    "make_noisy_mnist",
    "read_idx",
    "resolve_data_dir",
]
