"""Convolutional VAE and its loss, the negative ELBO (paper eq. 1).

The paper (Narita et al., arXiv 1810.02607, section III-B) uses an encoder of four
convolutional layers and a 128-dimensional latent space with a mirrored decoder; every
other detail (channels, kernels, strides, likelihood) is left open and lives in
:class:`VAEConfig` so that each choice is visible and changeable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from spadecam.models._config import check_optional_size

__all__ = ["ConvVAE", "VAEConfig", "negative_elbo"]


@dataclass
class VAEConfig:
    """Hyper-parameters of :class:`ConvVAE`.

    Attributes
    ----------
    in_channels : int or None
        Image channels (1 for grey, 3 for colour). None (default): the detectors' ``fit``
        takes the data's (:meth:`sized`); a bare :class:`ConvVAE` takes 1.
    image_size : int or None
        Height = width of the (square) model input in pixels. None (default): the
        detectors' ``fit`` sizes it from the data (:meth:`sized`); a bare :class:`ConvVAE`
        needs it set (ValueError otherwise).
    latent_dim : int
        Latent dimension. The paper uses 128; a smaller bottleneck (e.g. 16) stops the VAE
        from reconstructing unseen digits and is the main accuracy lever (README).
    channels : tuple of int
        Output channels of the encoder's conv layers (paper: four layers). The decoder
        mirrors them with transposed convolutions.
    kernel_size : int
        Kernel of every conv layer (stride 2, padding ``(kernel_size - 1) // 2``).
    likelihood : {"bernoulli", "gaussian"}
        Decoder likelihood p(u|z) in eq. 1 (not stated in the paper). ``"bernoulli"``:
        binary cross-entropy on pixels in [0, 1] (the classic MNIST choice);
        ``"gaussian"``: squared error with unit variance scaled by ``1 / (2 * gaussian_var)``.
    gaussian_var : float
        Fixed decoder variance for the Gaussian likelihood, on the [0, 1] pixel scale.
    beta : float
        Weight of the KL term (1.0 = the ELBO of eq. 1).
    """

    in_channels: int | None = None
    image_size: int | None = None
    latent_dim: int = 128
    channels: tuple[int, ...] = field(default=(32, 64, 64, 128))
    kernel_size: int = 4
    likelihood: str = "bernoulli"
    gaussian_var: float = 0.05
    beta: float = 1.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"VAEConfig.likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}"
            )
        if self.latent_dim < 1:
            raise ValueError(f"VAEConfig.latent_dim must be >= 1, got {self.latent_dim}")
        if not self.channels:
            raise ValueError("VAEConfig.channels must name at least one conv layer")
        check_optional_size("VAEConfig", "in_channels", self.in_channels)
        check_optional_size("VAEConfig", "image_size", self.image_size)

    def sized(self, in_channels: int, image_size: int) -> VAEConfig:
        """This config with ``in_channels`` / ``image_size`` filled in where they are None.

        Raises
        ------
        ValueError
            A set field that differs from the given value (naming it and both values).
        """
        for name, value in (("in_channels", in_channels), ("image_size", image_size)):
            mine = getattr(self, name)
            if mine is not None and mine != value:
                raise ValueError(f"VAEConfig.{name}={mine} but the images give {value}")
        return dataclasses.replace(self, in_channels=in_channels, image_size=image_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvVAE(nn.Module):
    """Convolutional VAE: stride-2 conv encoder, Gaussian latent, mirrored decoder.

    Input and output are images of shape (N, C, H, W), float32, values in [0, 1].

    References
    ----------
    Narita et al., SPADE, arXiv 1810.02607, eq. 1 and section III-B; Kingma & Welling 2014.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        config = config or VAEConfig()
        image_size = config.image_size
        if image_size is None:
            raise ValueError(
                "VAEConfig.image_size is None: set it, or let a detector's fit size it from the "
                "data"
            )
        if config.in_channels is None:
            config = dataclasses.replace(config, in_channels=1)
        self.config = config
        in_channels = config.in_channels
        assert in_channels is not None  # set just above
        k, pad = config.kernel_size, (config.kernel_size - 1) // 2
        sizes = [image_size]
        enc: list[nn.Module] = []
        c_in = in_channels
        for c in config.channels:
            # in place, as the classifier's ReLU (ConvClassifier): the same values
            enc += [nn.Conv2d(c_in, c, k, stride=2, padding=pad), nn.LeakyReLU(0.2, inplace=True)]
            sizes.append(_conv_out(sizes[-1], k, 2, pad))
            c_in = c
        if sizes[-1] < 1:
            raise ValueError(
                f"image_size={config.image_size} is too small for {len(config.channels)} "
                "stride-2 layers"
            )
        self.encoder = nn.Sequential(*enc)
        self._sizes = sizes  # spatial size before each encoder layer, and after the last
        flat = c_in * sizes[-1] ** 2
        self.fc_mu = nn.Linear(flat, config.latent_dim)
        self.fc_logvar = nn.Linear(flat, config.latent_dim)
        self.fc_dec = nn.Linear(config.latent_dim, flat)
        rev = list(config.channels[::-1]) + [in_channels]
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(rev[i], rev[i + 1], k, stride=2, padding=pad)
            for i in range(len(config.channels))
        )

    def encode(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, logvar) of q(z|u), each (N, latent_dim)."""
        h = self.encoder(u).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-15.0, 15.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before the sigmoid, shape (N, C, H, W)."""
        c = self.config.channels[-1]
        s = self._sizes
        h = self.fc_dec(z).view(z.shape[0], c, s[-1], s[-1])
        for i, layer in enumerate(self.decoder):
            h = _upsample(cast(nn.ConvTranspose2d, layer), h, s[-2 - i])  # built as such above
            if i < len(self.decoder) - 1:
                h = F.leaky_relu(h, 0.2, inplace=True)
        return h

    def forward(
        self, u: torch.Tensor, sample: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, (sample,) decode.

        Parameters
        ----------
        u : Tensor (N, C, H, W), float in [0, 1]
        sample : bool, optional
            Draw z with the reparameterisation trick; default: in training mode only.
            In eval mode the reconstruction uses the posterior mean (deterministic).

        Returns
        -------
        logits : Tensor (N, C, H, W)
            Decoder output before the sigmoid; ``torch.sigmoid(logits)`` is u_hat in [0, 1].
        mu, logvar : Tensor (N, latent_dim)
        """
        mu, logvar = self.encode(u)
        if sample is None:
            sample = self.training
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode_logits(z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, u: torch.Tensor) -> torch.Tensor:
        """u_hat = VAE(u) from the posterior mean, (N, C, H, W) float in [0, 1]."""
        logits, _, _ = self.forward(u, sample=False)
        return torch.sigmoid(logits)


def _upsample(layer: nn.ConvTranspose2d, h: torch.Tensor, target: int) -> torch.Tensor:
    """``layer(h)`` brought to ``target`` x ``target`` pixels (the encoder's size there).

    An odd encoder size (e.g. 21 -> 10) needs an output padding of 1 on the way back. In bf16,
    oneDNN runs a transposed convolution with output padding on a generic path, 4-5x slower
    than without (measured on AVX512-BF16: 745 vs 160 ms for 256 x 64 x 10 x 10 -> 21 x 21).
    There the same values are computed without padding and cropped: a transposed convolution
    with padding p is the unpadded one with p rows and columns cut from each side, and the
    output padding adds the next row and column. fp32 keeps ``output_size`` (bit-identical to
    earlier versions); the two agree to rounding (1e-6 in fp32).
    """
    bf16 = h.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled(h.device.type)
        and torch.get_autocast_dtype(h.device.type) == torch.bfloat16
    )
    # padding is typed str | tuple for every conv; a transposed conv only takes numbers
    k, stride, pad = layer.kernel_size[0], layer.stride[0], int(layer.padding[0])
    natural = (h.shape[-1] - 1) * stride - 2 * pad + k
    if not bf16 or target == natural:
        return layer(h, output_size=(target, target))
    full = F.conv_transpose2d(h, layer.weight, layer.bias, stride=layer.stride)
    return full[..., pad : pad + target, pad : pad + target]


def negative_elbo(
    logits: torch.Tensor,
    u: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str = "bernoulli",
    gaussian_var: float = 0.05,
    beta: float = 1.0,
) -> torch.Tensor:
    """Negative ELBO of eq. 1, averaged over the batch (nats per image).

    -ELBO = -E_q[log p(u|z)] + beta * KL(q(z|u) || N(0, I)), with one sample of z.

    Parameters
    ----------
    logits : Tensor (N, C, H, W), decoder output before the sigmoid
    u : Tensor (N, C, H, W), float target in [0, 1]
    mu, logvar : Tensor (N, D), the Gaussian posterior
    likelihood : {"bernoulli", "gaussian"}
        Bernoulli: binary cross-entropy summed over pixels. Gaussian: squared error of
        ``sigmoid(logits)`` divided by ``2 * gaussian_var`` summed over pixels (the constant
        term is dropped).

    Returns
    -------
    Tensor, scalar

    References
    ----------
    Narita et al., arXiv 1810.02607, eq. 1.
    """
    n = u.shape[0]
    if likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(logits, u, reduction="sum")
    elif likelihood == "gaussian":
        rec = (torch.sigmoid(logits) - u).pow(2).sum() / (2.0 * gaussian_var)
    else:
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
    kl = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp())
    return (rec + beta * kl) / n
