"""ResNet classifiers (normal vs known anomaly) with a GAP + linear head: ResNet-18 and
Wide-ResNet-50-2, from scratch or from a torchvision-format state dict the user has.

The paper's Table II (Narita et al., arXiv 1810.02607) uses a ResNet as SPADE's classifier.
torchvision does not import beside this torch build, so the networks are written here after
He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Table 1, and Zagoruyko
& Komodakis, "Wide Residual Networks" (BMVC 2016) as torchvision builds them:

* ResNet-18 (``block="basic"``): a 7x7/2 conv + 3x3/2 max-pool stem, then four stages of two
  basic blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU) with widths
  64-128-256-512, the last three stages starting with stride 2 (in the first 3x3 conv).
* Wide-ResNet-50-2 (:meth:`ResNetConfig.wide_resnet50_2`, ``block="bottleneck"``): the same
  stem, then 3-4-6-3 bottleneck blocks (1x1 conv to twice the usual inner width, 3x3 conv
  carrying the stride, 1x1 conv to 4 x the stage width, each with BN, + shortcut, ReLU), out
  widths 256-512-1024-2048: PatchCore's backbone (Roth et al., CVPR 2022).

The Grad-CAM grid is 1/32 of the image side (4x4 at 128 pixels); the smallest input is 32
pixels (:attr:`ResNetConfig.min_input_size`).

**Pretrained weights.** ``ResNetConfig(weights=PATH)`` (``--backbone-weights PATH``) starts
training from a torchvision-format state dict file (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ..., ``layer2.0.downsample.0.weight``; ``fc.*``, the ImageNet
classifier, is not used), read with ``torch.load(weights_only=True)``: every key and shape
is checked against the configured network and a wrong file is refused naming it
(:func:`load_torchvision_weights`). Such weights expect ImageNet's normalisation, which the
stem then applies to the [0, 1] input (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`; a grey
image is repeated into three channels). Nothing is downloaded: the file is the user's.

:class:`ResNetClassifier` is a :class:`~spadecam.models.classifier.FeatureClassifier`, as the
3-conv :class:`~spadecam.models.cnn.ConvClassifier` is: ``features`` is a ModuleList (stem,
stage 1..4), ``fc`` the linear head after global average pooling, and ``forward_features`` /
``head`` / ``forward`` are the protocol's. Grad-CAM's closed form
(``spadecam.cam.closed_form_applies``) and the detectors therefore work unchanged; reading
``cam_layer=-1`` explains the output of the last stage, as in the Grad-CAM paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch import nn

from spadecam.models._config import check_optional_size
from spadecam.models._weights import PretrainedWeightsError, mapped_state_dict, read_state_dict
from spadecam.models.classifier import FeatureClassifier, sized

__all__ = ["BLOCKS", "IMAGENET_MEAN", "IMAGENET_STD", "BasicBlock", "Bottleneck",
           "ResNetClassifier", "ResNetConfig", "check_weights", "load_torchvision_weights"]

#: ImageNet's per-channel mean and std on the [0, 1] scale, which torchvision's weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Residual block kinds: two 3x3 convs (ResNet-18/34) or a 1x1-3x3-1x1 bottleneck (50 and up).
BLOCKS = ("basic", "bottleneck")


@dataclass
class ResNetConfig:
    """Hyper-parameters of :class:`ResNetClassifier` (defaults: ResNet-18).

    Attributes
    ----------
    in_channels : int or None
        Image channels (1 grey, 3 colour). None (default): the detectors' ``fit`` takes
        the data's (:meth:`sized`); a bare :class:`ResNetClassifier` takes 1.
    widths : tuple of int
        Stage widths (ResNet-18: 64, 128, 256, 512; smaller widths make a lighter network
        with the same structure, e.g. for tests). A bottleneck stage outputs 4 x its width.
    blocks : tuple of int
        Residual blocks per stage (ResNet-18: 2, 2, 2, 2; Wide-ResNet-50-2: 3, 4, 6, 3).
    num_classes : int
        Always 2 here: normal (index 0) and known anomaly (index 1).
    block : {"basic", "bottleneck"}
        The residual block (:data:`BLOCKS`).
    width_factor : int >= 1
        A bottleneck's inner width is ``width x width_factor`` (2: the wide ResNets).
    weights : str or None
        A torchvision-format state dict file training starts from
        (:func:`load_torchvision_weights`); None (default): random initial weights.
    mean, std : tuple of 3 floats, or None
        The stem's input normalisation on the [0, 1] scale, ``(x - mean) / std`` per
        channel, a grey image repeated into three channels first; None: none (the input as
        it is, ``in_channels`` wide). Default: ImageNet's (:data:`IMAGENET_MEAN`,
        :data:`IMAGENET_STD`) when ``weights`` is given, else None.
    """

    in_channels: int | None = None
    widths: tuple[int, ...] = field(default=(64, 128, 256, 512))
    blocks: tuple[int, ...] = field(default=(2, 2, 2, 2))
    num_classes: int = 2
    block: str = "basic"
    width_factor: int = 1
    weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.blocks = tuple(int(b) for b in self.blocks)
        if not (len(self.widths) == len(self.blocks) >= 1) or min(self.blocks) < 1:
            raise ValueError(
                "ResNetConfig.widths and blocks must have the same non-zero length and at "
                f"least one block per stage, got widths={self.widths}, blocks={self.blocks}"
            )
        check_optional_size("ResNetConfig", "in_channels", self.in_channels)
        if self.block not in BLOCKS:
            raise ValueError(f"ResNetConfig.block must be one of {BLOCKS}, got {self.block!r}")
        if not (type(self.width_factor) is int and self.width_factor >= 1) or (
                self.block == "basic" and self.width_factor != 1):
            raise ValueError(f"ResNetConfig.width_factor must be an integer >= 1 (1 for basic "
                             f"blocks), got {self.width_factor!r} with block={self.block!r}")
        if self.weights is not None:
            self.weights = str(self.weights)
            if self.mean is None and self.std is None:
                self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        if (self.mean is None) != (self.std is None):
            raise ValueError("ResNetConfig.mean and std are given together or not at all")
        if self.mean is not None and self.std is not None:
            self.mean = tuple(float(v) for v in self.mean)
            self.std = tuple(float(v) for v in self.std)
            if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
                raise ValueError("ResNetConfig.mean and std must be 3 numbers each (std > 0), "
                                 f"got mean={self.mean}, std={self.std}")
            if self.in_channels not in (None, 1, 3):
                raise ValueError("a normalised ResNet takes 1 (grey, repeated) or 3 channels, "
                                 f"got in_channels={self.in_channels}")

    @classmethod
    def wide_resnet50_2(cls, **kwargs: object) -> ResNetConfig:
        """Wide-ResNet-50-2 (PatchCore's backbone): bottleneck blocks 3-4-6-3, inner width 2x."""
        return cls(**{"widths": (64, 128, 256, 512), "blocks": (3, 4, 6, 3),
                      "block": "bottleneck", "width_factor": 2, **kwargs})  # type: ignore[arg-type]

    def sized(self, in_channels: int) -> ResNetConfig:
        """This config with ``in_channels`` filled in if None (ValueError if it differs)."""
        return sized(self, in_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["blocks"] = list(self.blocks)
        for key in ("mean", "std"):
            d[key] = None if d[key] is None else list(d[key])
        return d

    @property
    def min_input_size(self) -> int:
        """Total stride, the smallest side whose last-stage map is not padding (stem /4, stages /2).
        """
        return 4 * 2 ** (len(self.widths) - 1)

    @property
    def out_width(self) -> int:
        """Channels of the last stage's output (the linear head's input)."""
        return self.widths[-1] * (4 if self.block == "bottleneck" else 1)


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


class Bottleneck(nn.Module):
    """1x1 conv to ``mid``, 3x3 conv (carrying the stride), 1x1 conv to ``c_out``, each with BN,
    + identity (or 1x1 conv + BN) shortcut, ReLU: torchvision's ResNet-50 block (v1.5)."""

    def __init__(self, c_in: int, mid: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.bn1(self.conv1(x)))
        h = torch.relu_(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return torch.relu_(h + self.shortcut(x))


class _Normalise(nn.Module):
    """``(x - mean) / std`` per channel on [0, 1] images, a grey image repeated into three."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class ResNetClassifier(FeatureClassifier):
    """ResNet stem and stages -> global average pooling -> linear, 2 logits.

    Input (N, C, H, W) float in [0, 1] with H, W >= ``config.min_input_size``; output logits
    (N, 2) float, index 0 = normal. ``features[0]`` is the stem (with the input
    normalisation first when ``config.mean`` is set), ``features[i]`` stage i. Built with
    random weights; the training loads ``config.weights`` (:meth:`load_pretrained`).
    """

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        config = config or ResNetConfig()
        self.config = config = config.sized(1 if config.in_channels is None else config.in_channels)
        normalise = config.mean is not None and config.std is not None
        c_stem = 3 if normalise else cast(int, config.in_channels)
        layers: list[nn.Module] = []
        if normalise:
            layers.append(_Normalise(cast(tuple, config.mean), cast(tuple, config.std)))
        layers += [
            nn.Conv2d(c_stem, config.widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(config.widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        stages: list[nn.Module] = [nn.Sequential(*layers)]
        c_in = config.widths[0]
        for i, (width, n) in enumerate(zip(config.widths, config.blocks)):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(n):
                s = stride if j == 0 else 1
                if config.block == "bottleneck":
                    c_out = 4 * width
                    blocks.append(Bottleneck(c_in, width * config.width_factor, c_out, s))
                else:
                    c_out = width
                    blocks.append(BasicBlock(c_in, c_out, s))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.features = nn.ModuleList(stages)
        self.fc = nn.Linear(c_in, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def load_pretrained(self) -> ResNetClassifier:
        """Put the weights of ``config.weights`` into every block (``fc`` keeps its own, 2
        classes); nothing when it is None. Returns self. Raises PretrainedWeightsError
        (:func:`load_torchvision_weights`)."""
        if self.config.weights is not None:
            self.features.load_state_dict(load_torchvision_weights(self.config.weights, self))
        return self


def check_weights(config: ResNetConfig) -> None:
    """The weights file ``config.weights`` names (if any) checked key by key against the
    network ``config`` describes, before any training; the caller's RNG is not drawn from.

    Raises
    ------
    PretrainedWeightsError
        As :func:`load_torchvision_weights`.
    """
    if config.weights is None:
        return
    with torch.random.fork_rng(devices=[]):  # the network's random weights: not the caller's
        load_torchvision_weights(config.weights, ResNetClassifier(config))


def _torchvision_names(model: ResNetClassifier) -> dict[str, str]:
    """torchvision key prefix -> this network's ``features`` key prefix."""
    stem = model.features[0]
    offset = 1 if isinstance(stem, nn.Sequential) and isinstance(stem[0], _Normalise) else 0
    names = {"conv1": f"0.{offset}", "bn1": f"0.{offset + 1}"}
    for i, n in enumerate(model.config.blocks, start=1):
        for j in range(n):
            for part in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
                names[f"layer{i}.{j}.{part}"] = f"{i}.{j}.{part}"
            names[f"layer{i}.{j}.downsample.0"] = f"{i}.{j}.shortcut.0"
            names[f"layer{i}.{j}.downsample.1"] = f"{i}.{j}.shortcut.1"
    return names


def load_torchvision_weights(path: str | Path, model: ResNetClassifier) -> dict[str, torch.Tensor]:
    """A torchvision-format ResNet state dict file as a state dict of ``model.features``.

    Parameters
    ----------
    path : a file ``torch.save`` wrote of a torchvision ResNet's ``state_dict()`` (e.g.
        ``resnet18-f37072fd.pth``, ``wide_resnet50_2-95faca4d.pth``), or a dict holding one
        under ``"state_dict"`` / ``"model"``
    model : the network the weights are for (its config names the architecture)

    Returns
    -------
    dict name -> Tensor, every key of ``model.features`` (the normalisation buffers are the
    model's own); ``fc.*`` of the file (its ImageNet classifier) is left out.

    Raises
    ------
    PretrainedWeightsError
        No such file, a file ``torch.load(weights_only=True)`` cannot read, keys the network
        does not have or lacks, or a shape that differs (each named, with the expected one).
    """
    file = Path(path)
    if not file.is_file():
        raise PretrainedWeightsError(f"{file}: no such weights file (ResNetConfig.weights, "
                                     "--backbone-weights)")
    state = read_state_dict(file)
    target = model.features.state_dict()
    kind = (f"a ResNet of {model.config.block} blocks {list(model.config.blocks)}, widths "
            f"{list(model.config.widths)} x {model.config.width_factor}")
    # the model's own: its normalisation, and the batch-norm step counters that files
    # written before torch 0.4.1 lack (unused in eval mode and by the training's momentum)
    own = [k for k in target if (k.endswith((".mean", ".std")) and k.startswith("0.0."))
           or k.endswith(".num_batches_tracked")]
    return mapped_state_dict(state, file, _torchvision_names(model).get, target,
                             f"{kind} (torchvision's key names)", "fc.", own)
