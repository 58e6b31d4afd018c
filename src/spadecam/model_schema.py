"""The schema of a model directory's ``config.json``: what :func:`spadecam.io.read_config`
checks, and the detector parameter rules the API shares with it (:func:`check_detector_params`).

``config.json`` may have been edited or damaged, so :func:`read_config` validates it once,
before any weights are read, and every loader (``SPADE.load`` and the baselines',
:func:`load_model_parts`, ``spadecam score`` / ``evaluate``) goes through it. Each fault is one
line of :class:`ModelFormatError` naming the file, the dotted key (``input.image_size``) and
what was expected and found. Checked, where present (missing keys and unknown extra keys stay
allowed: older and newer directories load):

* types and ranges (``True`` is not an integer): the top level is an object;
  ``format_version``; ``cnn_backbone``; the fields of ``vae_config`` / ``cnn_config`` as
  :class:`VAEConfig`, :class:`CNNConfig` or :class:`ResNetConfig` take them (no unknown field);
  ``input`` (``image_size``, ``channels``, ``resize``); ``preprocessing`` (``image_size``,
  ``channels`` 1 or 3, ``resize``, ``normalisation``, ``min_input_size``); ``detector``
  (``class``, and each of ``params``: choices such as ``upsample`` and ``precision``,
  ``batch_size >= 1``, ``threshold_quantile`` in (0, 1], ``threshold_holdout`` in [0, 1),
  finite ``error_smoothing >= 0``, ...); ``threshold_`` (a number or ``"Infinity"`` /
  ``"-Infinity"``, not NaN); ``overlay_scale`` (finite, >= 0); ``weights_sha256``;
* consistency: the model configs build their networks, whose tensor names and shapes must be
  those in the weight files' safetensors headers (only the headers are read); the input sides
  (``input.image_size``, ``preprocessing.image_size``, ``detector.params.image_size``) equal
  ``vae_config.image_size`` when there is a VAE, agree with each other, and are at least the
  networks' minimum (:func:`spadecam.inputs.min_input_size`); ``input.channels`` and
  ``preprocessing.channels`` equal the models' ``in_channels`` (and the two models agree);
  ``detector.params.cam_layer`` (an integer or a list of them) indexes the classifier's feature
  layers, negative indices counting from the end.
"""


from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from spadecam._json import NON_FINITE_JSON
from spadecam.exceptions import ModelFormatError
from spadecam.inputs import min_input_size
from spadecam.models.backbones import BACKBONE_ALIASES, BACKBONES
from spadecam.models.cnn import CNNConfig
from spadecam.models.efficientnet import EfficientNetLiteConfig
from spadecam.models.resnet import ResNetConfig
from spadecam.models.vae import ConvVAE, VAEConfig
from spadecam.precision import SCORING_PRECISIONS
from spadecam.preprocess import RESIZE_POLICIES
from spadecam.recipes import RECIPE_DEFAULTS
from spadecam.roi import BRANCHES

__all__ = ["backbone_of", "check_detector_params", "validate_config"]


def backbone_of(config: dict) -> Any:
    """The BACKBONES name of config.json's ``cnn_backbone`` (0.1's names read as aliases)."""
    name = config.get("cnn_backbone", "small")
    return BACKBONE_ALIASES.get(name, name) if isinstance(name, str) else name


_UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_LOSSES = ("eq2", "cross_entropy")
_CAM_METHODS = ("auto", "closed_form", "autograd")
_ERROR_NORMS = ("l1", "l2")
_LIKELIHOODS = ("bernoulli", "gaussian")
#: Channels that image files are read into (``preprocessing.channels``).
_IMAGE_CHANNELS = (1, 3)
_NORMALISATIONS = ("dtype_max",)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def kind(value: Any) -> str:
    """What a JSON value is, for a message: "a list", "a string", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 60) -> str:
    """A value as JSON writes it (``true``, ``null``, ``"abc"``), shortened to one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _choices(options: Sequence[Any]) -> str:
    if len(options) == 1:
        return _shown(options[0])
    return "one of " + ", ".join(_shown(o) for o in options)


class _Section:
    """One JSON object of a config.json (``prefix`` its dotted key) and checks of its keys.

    Each check returns the value (None when the key is absent, or null where null is allowed)
    or raises the one-line :class:`ModelFormatError` naming the file, the key, what was
    expected and what was found.
    """

    def __init__(self, path: Path | str, data: dict[str, Any], prefix: str = "",
                 error: type[Exception] = ModelFormatError,
                 rename: Callable[[str], str] | None = None) -> None:
        self.path, self.data, self.prefix, self.error = path, data, prefix, error
        self.rename = rename  # how a message names a key (e.g. as a CLI option)

    def key(self, name: str) -> str:
        if self.rename is not None:
            return self.rename(name)
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, expected: str, found: Any) -> NoReturn:
        if self.rename is not None:  # an option left out is the default, never a "null"
            expected = expected.removesuffix(" or null")
        raise self.error(
            f"{self.path}: {self.key(name)} must be {expected}, got {_shown(found)}"
        )

    def _get(self, name: str, null: bool) -> tuple[bool, Any]:
        """(present and not an allowed null, value)."""
        if name not in self.data:
            return False, None
        value = self.data[name]
        return not (value is None and null), value

    def section(self, name: str, null: bool = True) -> _Section | None:
        present, value = self._get(name, null)
        if not present:
            return None
        if not isinstance(value, dict):
            self.fail(name, "an object" + (" or null" if null else ""), value)
        return _Section(self.path, value, self.key(name))

    def integer(self, name: str, low: int = 1, null: bool = False) -> int | None:
        present, value = self._get(name, null)
        if present and not (is_int(value) and value >= low):
            self.fail(name, f"an integer >= {low}" + (" or null" if null else ""), value)
        return value if present else None

    def integers(self, name: str, low: int = 1) -> list[int] | None:
        present, value = self._get(name, False)
        if present and not (isinstance(value, list) and value
                            and all(is_int(v) and v >= low for v in value)):
            self.fail(name, f"a non-empty list of integers >= {low}", value)
        return value if present else None

    def number(self, name: str, ok: Callable[[float], bool], expected: str,
               null: bool = False) -> float | None:
        present, value = self._get(name, null)
        if present and not (_is_number(value) and math.isfinite(value) and ok(value)):
            self.fail(name, f"a finite number {expected}" + (" or null" if null else ""), value)
        return value if present else None

    def numbers(self, name: str, length: int, ok: Callable[[float], bool],
                expected: str) -> list[float] | None:
        present, value = self._get(name, False)
        if present and not (isinstance(value, list) and len(value) == length and all(
                _is_number(v) and math.isfinite(v) and ok(v) for v in value)):
            self.fail(name, f"a list of {length} finite numbers {expected}", value)
        return value if present else None

    def choice(self, name: str, options: Sequence[Any], null: bool = False) -> Any:
        present, value = self._get(name, null)
        # type-strict: true is not 1, 1 is not "1"
        if present and not any(type(value) is type(o) and value == o for o in options):
            self.fail(name, _choices(options) + (" or null" if null else ""), value)
        return value if present else None

    def flag(self, name: str) -> bool | None:
        present, value = self._get(name, False)
        if present and not isinstance(value, bool):
            self.fail(name, "true or false", value)
        return value if present else None

    def text(self, name: str, null: bool = False) -> str | None:
        present, value = self._get(name, null)
        if present and not (isinstance(value, str) and value):
            self.fail(name, "a non-empty string" + (" or null" if null else ""), value)
        return value if present else None

    def numbers_or_null(self, name: str, length: int, ok: Callable[[float], bool],
                        expected: str) -> list[float] | None:
        if self.data.get(name) is None:
            return None
        return self.numbers(name, length, ok, expected)


def validate_config(config: dict[str, Any], path: Path) -> None:
    """Check a config.json (types, ranges, consistency with the models); see the module notes.

    Raises ModelFormatError (one line: file, dotted key, expected, found) at the first fault.
    Reads the weight files' safetensors headers, never their tensors.
    """
    top = _Section(path, config)
    models = _Models(top, config)
    inp, pre = top.section("input"), top.section("preprocessing")
    models.side(inp, "image_size")
    if inp is not None:
        inp.integer("channels", null=True)
        models.same_channels(inp, "channels")
        inp.choice("resize", RESIZE_POLICIES)
    models.side(pre, "image_size")
    if pre is not None:
        pre.choice("channels", _IMAGE_CHANNELS)
        models.same_channels(pre, "channels")
        pre.choice("resize", RESIZE_POLICIES)
        pre.choice("normalisation", _NORMALISATIONS)
        pre.integer("min_input_size")
    patch = top.section("patch")
    if patch is not None:  # the feature-space error's bank (spadecam.feature_error)
        for key in ("layers", "pool", "in_channels"):
            if key not in patch.data:
                patch.fail(key, "present", None)
        patch.integers("layers", low=0)
        patch.integer("pool")
        if patch.data["pool"] % 2 == 0:
            patch.fail("pool", "an odd integer >= 1", patch.data["pool"])
        patch.choice("in_channels", (1, 3))
        if "stride" in patch.data:
            patch.integer("stride")
        models.same_channels(patch, "in_channels")
    cal = top.section("calibration")
    if cal is not None:  # the margin fusion's held-out normal statistics (spadecam.fusion)
        for key in ("error_mean", "error_std", "logit_mean", "logit_std", "n_images"):
            if key not in cal.data:
                cal.fail(key, "present", None)
        for key in ("error_mean", "logit_mean"):
            cal.number(key, lambda v: True, "")
        for key in ("error_std", "logit_std"):
            cal.number(key, lambda v: v > 0, "> 0")
        cal.integer("n_images", low=2)
        cal.choice("source", ("held_out", "train"))
        # the image-level bank's statistics (knn_power > 0): all or none
        cal.number("knn_mean", lambda v: True, "", null=True)
        for key in ("knn_std", "joint_std"):
            cal.number(key, lambda v: v > 0, "> 0", null=True)
        cal.number("knn_weight", lambda v: v >= 0, ">= 0", null=True)
        bank = [cal.data.get(k) is not None for k in ("knn_mean", "knn_std", "joint_std")]
        if any(bank) and not (all(bank) and (cal.data.get("knn_weight") or 0) > 0):
            cal.fail("knn_mean", "knn_mean, knn_std, joint_std and knn_weight > 0 all set, "
                     "or none of them", cal.data.get("knn_mean"))
    params = _detector_params(top, models)
    _same_resize(inp, pre, params)
    _top_level_values(top, config)
    for key, network in models.networks.items():
        _check_weights(path, key, network)


class _Models:
    """The model configs of a config.json, their networks (built without memory) and the
    input constraints they set: channels, the VAE's side, the networks' minimum side."""

    def __init__(self, top: _Section, config: dict[str, Any]) -> None:
        backbone = backbone_of(config)
        if not isinstance(backbone, str) or backbone not in BACKBONES:
            raise ModelFormatError(
                f"{top.path}: unknown cnn_backbone {config.get('cnn_backbone')!r}; expected "
                f"one of {sorted(BACKBONES)} (or {sorted(BACKBONE_ALIASES)}, their names in 0.1)"
            )
        vae_cfg = cnn_cfg = None
        self.cnn_layers: int | None = None
        self.networks: dict[str, nn.Module] = {}  # compared with the weights last
        if "vae_config" in config:
            vae_cfg, self.networks["vae_config"] = _model_config(top, "vae_config", VAEConfig,
                                                                 ConvVAE)
        if "cnn_config" in config:
            cnn_cls, cfg_cls = BACKBONES[backbone]
            cnn_cfg, cnn = _model_config(top, "cnn_config", cfg_cls, cnn_cls)
            self.networks["cnn_config"] = cnn
            self.cnn_layers = len(cnn.features)
        self.channels = None
        for key, cfg in (("vae_config", vae_cfg), ("cnn_config", cnn_cfg)):
            if cfg is None:
                continue
            c = cfg.in_channels or 1  # the networks' default
            if self.channels is not None and c != self.channels:
                top.fail(f"{key}.in_channels", f"equal to vae_config.in_channels "
                         f"({self.channels})", c)
            self.channels = c
        self.need = min_input_size(vae_cfg, cnn_cfg)
        self.vae_size = None if vae_cfg is None else vae_cfg.image_size
        if self.vae_size is not None and self.vae_size < self.need:
            top.fail("vae_config.image_size", f"an integer >= {self.need}, the smallest input "
                     "side the networks accept", self.vae_size)
        self.sides: dict[str, int] = {}

    def side(self, section: _Section | None, name: str) -> None:
        """An input side: an integer, the VAE's, the others', at least the minimum."""
        if section is None:
            return
        value = section.integer(name, null=True)
        if value is None:
            return
        if self.vae_size is not None and value != self.vae_size:
            section.fail(name, f"equal to vae_config.image_size ({self.vae_size}), the side "
                         "the VAE was built for", value)
        if value < self.need:
            section.fail(name, f"an integer >= {self.need}, the smallest input side the "
                         "networks accept", value)
        for other, v in self.sides.items():
            if v != value:
                section.fail(name, f"equal to {other} ({v})", value)
        self.sides[section.key(name)] = value

    def same_channels(self, section: _Section | None, name: str) -> None:
        if section is None or self.channels is None:
            return
        value = section.data.get(name)
        if value is not None and value != self.channels:
            section.fail(name, f"the models' in_channels ({self.channels})", value)


def _detector_params(top: _Section, models: _Models) -> _Section | None:
    """``detector``: its class name and each of its parameters (returned, or None)."""
    detector = top.section("detector")
    if detector is None:
        return None
    if "class" in detector.data and not isinstance(detector.data["class"], str):
        detector.fail("class", "a detector class name (a string)", detector.data["class"])
    params = detector.section("params")
    if params is not None:
        _check_params(params, models.cnn_layers)
        models.side(params, "image_size")
    return params


def _same_resize(*sections: _Section | None) -> None:
    """A directory of 0.1 records the resize policy up to three times: they must agree."""
    policies: dict[str, Any] = {}
    for section in sections:
        if section is not None and section.data.get("resize") is not None:
            for other, v in policies.items():
                if v != section.data["resize"]:
                    section.fail("resize", f"equal to {other} ({v!r})", section.data["resize"])
            policies[section.key("resize")] = section.data["resize"]


def _top_level_values(top: _Section, config: dict[str, Any]) -> None:
    """``threshold_``, ``overlay_scale`` and ``weights_sha256``."""
    threshold = config.get("threshold_")
    if not (threshold is None or threshold in NON_FINITE_JSON.values()
            or (_is_number(threshold) and not math.isnan(threshold))):
        top.fail("threshold_", 'a number, "Infinity", "-Infinity" or null', threshold)
    top.number("overlay_scale", lambda v: v >= 0, ">= 0", null=True)
    hashes = top.section("weights_sha256")
    if hashes is not None:
        for name, digest in hashes.data.items():
            if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                hashes.fail(name, "a sha256 (64 lowercase hex digits) or null", digest)


#: What SPADE's error map e is: the VAE's reconstruction error (the paper's) or the
#: feature-space error of a pretrained backbone (:mod:`spadecam.feature_error`).
ERROR_SOURCES = ("reconstruction", "feature")
#: SPADE's scores (``score``): Algorithm 1's weighted error, or the margin fusion.
SCORES = ("weighted_error", "margin")


def check_detector_params(owner: str, params: dict[str, Any],
                          cnn_layers: int | None = None, as_options: bool = False) -> None:
    """The detector parameters ``params`` (a constructor's arguments) by the rules that
    config.json's ``detector.params`` is read by, so the API and a model directory accept
    the same values.

    Python forms are read as their JSON ones first (a tuple as a list, numpy scalars as
    numbers). ``owner`` names the detector (or command) in the message; ``as_options``
    names each parameter as its command-line option (``roi_power`` as ``--roi-power``).

    Raises
    ------
    ValueError
        The first bad parameter: "SPADE: error_norm must be one of "l1", "l2" or null, got
        "l3"".
    """
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(e) for e in v]
        return v.item() if isinstance(v, np.generic) else v

    rename = (lambda k: "--" + k.replace("_", "-")) if as_options else None
    _check_params(_Section(owner, {k: plain(v) for k, v in params.items()}, error=ValueError,
                           rename=rename), cnn_layers)


def _check_params(params: _Section, cnn_layers: int | None) -> None:
    """``detector.params``: each detector parameter present (``image_size`` apart)."""

    params.choice("loss", _LOSSES)
    if "cam_layer" in params.data:
        layer = params.data["cam_layer"]
        layers = [layer] if is_int(layer) else layer
        if not (isinstance(layers, list) and layers and all(is_int(v) for v in layers)):
            params.fail("cam_layer", "an integer or a non-empty list of integers (feature "
                        "layers of the classifier)", layer)
        if cnn_layers is not None and not all(-cnn_layers <= v < cnn_layers for v in layers):
            params.fail("cam_layer", f"an index of the classifier's {cnn_layers} feature "
                        f"layers ({-cnn_layers} to {cnn_layers - 1}) or a list of them", layer)
    params.choice("input_branch", BRANCHES)
    params.choice("recon_branch", BRANCHES)
    params.flag("normalise")
    params.choice("upsample", _UPSAMPLE_MODES)
    params.choice("cam_method", _CAM_METHODS)
    params.number("error_smoothing", lambda v: v >= 0, ">= 0 (pixels)", null=True)
    params.choice("error_norm", _ERROR_NORMS, null=True)
    params.integer("batch_size")
    params.choice("precision", SCORING_PRECISIONS)
    params.number("threshold_quantile", lambda v: 0 < v <= 1, "in (0, 1]")
    params.number("threshold_holdout", lambda v: 0 <= v < 1, "in [0, 1)")
    params.choice("resize", RESIZE_POLICIES)
    params.number("roi_power", lambda v: v > 0, "> 0", null=True)
    params.number("classifier_weight", lambda v: v >= 0, ">= 0", null=True)
    params.number("knn_power", lambda v: v >= 0, ">= 0", null=True)
    params.choice("error", ERROR_SOURCES, null=True)
    params.integer("patch_bank_size")
    params.choice("score", SCORES, null=True)
    params.integer("patch_stride", null=True)
    params.number("evidence_weight", lambda v: v >= 0, ">= 0", null=True)
    params.number("evidence_margin", lambda v: v >= 0, ">= 0 (standard deviations)", null=True)
    if "knn_layer" in params.data:
        layer = params.data["knn_layer"]
        if not is_int(layer) or (cnn_layers is not None and not -cnn_layers <= layer
                                 < cnn_layers):
            where = f" of the classifier's {cnn_layers}" if cnn_layers is not None else ""
            params.fail("knn_layer", f"an index{where} feature layers", layer)
    params.integer("knn_k")
    params.choice("recipe", tuple(sorted(RECIPE_DEFAULTS)))


#: Checks of each model config's fields: name -> (check, arguments).
_MODEL_FIELDS: dict[type, dict[str, tuple[str, tuple[Any, ...]]]] = {
    VAEConfig: {
        "in_channels": ("integer", (1, True)),
        "image_size": ("integer", (1,)),
        "latent_dim": ("integer", (1,)),
        "channels": ("integers", (1,)),
        "kernel_size": ("integer", (1,)),
        "likelihood": ("choice", (_LIKELIHOODS,)),
        "gaussian_var": ("number", (lambda v: v > 0, "> 0")),
        "beta": ("number", (lambda v: v >= 0, ">= 0")),
    },
    CNNConfig: {
        "in_channels": ("integer", (1, True)),
        "channels": ("integers", (1,)),
        "kernel_sizes": ("integers", (1,)),
        "strides": ("integers", (1,)),
        "batch_norm": ("flag", ()),
        "num_classes": ("choice", ((2,),)),
    },
    ResNetConfig: {
        "in_channels": ("integer", (1, True)),
        "widths": ("integers", (1,)),
        "blocks": ("integers", (1,)),
        "num_classes": ("choice", ((2,),)),
        "block": ("choice", (("basic", "bottleneck"),)),
        "width_factor": ("integer", (1,)),
        "weights": ("text", (True,)),
        "mean": ("numbers_or_null", (3, lambda v: True, "")),
        "std": ("numbers_or_null", (3, lambda v: v > 0, "> 0")),
    },
    EfficientNetLiteConfig: {
        "in_channels": ("choice", ((1, 3), True)),
        "num_classes": ("choice", ((2,),)),
        "pretrained": ("flag", ()),
        "mean": ("numbers", (3, lambda v: True, "")),
        "std": ("numbers", (3, lambda v: v > 0, "> 0")),
    },
}

#: Fields of a model config that hold one entry per layer (or stage).
_SAME_LENGTH: dict[type, tuple[str, ...]] = {
    CNNConfig: ("channels", "kernel_sizes", "strides"),
    ResNetConfig: ("widths", "blocks"),
}


def _model_config(top: _Section, key: str, cfg_cls: type, model_cls: type[nn.Module]
                  ) -> tuple[Any, Any]:
    """(config, network on the meta device) of ``vae_config`` / ``cnn_config``.

    Checks each field (no unknown ones, per-layer lists of one length), then builds the
    config dataclass and the network on the meta device (no memory, no random numbers drawn;
    :func:`_check_weights` compares it with the weight file).
    """
    section = top.section(key, null=False)
    assert section is not None  # the caller saw the key
    fields = _MODEL_FIELDS[cfg_cls]
    for name in section.data:
        if name not in fields:
            raise ModelFormatError(
                f"{top.path}: {key}.{name} is not a field of {cfg_cls.__name__}; expected "
                f"some of {', '.join(f.name for f in dataclasses.fields(cfg_cls))}"
            )
    for name, (check, args) in fields.items():
        getattr(section, check)(name, *args)
    present = [n for n in _SAME_LENGTH.get(cfg_cls, ()) if n in section.data]
    for name in present[1:]:
        n = len(section.data[present[0]])
        if len(section.data[name]) != n:
            section.fail(name, f"a list of {n} integers, as long as {key}.{present[0]}",
                         section.data[name])
    try:
        cfg = cfg_cls(**section.data)
        with torch.device("meta"):
            model = model_cls(cfg)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(
            f"{top.path}: {key} does not describe a {model_cls.__name__}: {_one_line(str(exc))}"
        ) from None
    return cfg, model


def _check_weights(path: Path, key: str, model: nn.Module) -> None:
    """The tensors of ``model`` (built from ``key``) are those of its weight file's header."""
    weights = path.parent / f"{key.split('_')[0]}.safetensors"
    found = _header_shapes(weights)
    if found is None:
        return
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            want = "absent" if name not in expected else f"of shape {expected[name]}"
            got = "absent" if name not in found else f"of shape {found[name]}"
            raise ModelFormatError(
                f"{path}: {key} must describe the network in {weights}: tensor {name} is "
                f"{got} there but {want} by {key} (was config.json edited, or are the "
                "weights another model's?)"
            )


def _header_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from a safetensors file's header; None when there is no file or
    no readable header (:func:`load_model_parts` then reports the file)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= min(path.stat().st_size - 8, 100_000_000):
                return None
            header = json.loads(f.read(size))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
