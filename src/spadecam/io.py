"""Model directories: weights in safetensors plus a JSON config; never pickle.

Layout of a model directory::

    MODEL_DIR/config.json        format_version, model configs, cnn_backbone, weights_sha256,
                                 preprocessing, threshold_, ...
    MODEL_DIR/vae.safetensors    VAE weights (absent for the CNN-based baseline and for
                                 SPADE's default pretrained recipe, which trains no VAE)
    MODEL_DIR/cnn.safetensors    classifier weights (absent for the VAE-based baseline)
    MODEL_DIR/patch.safetensors  the feature-space error's memory bank and frozen backbone
                                 layers (``error="feature"``, the pretrained recipe)
    MODEL_DIR/knn.safetensors    SPADE's image-level feature bank (``knn_power`` > 0)

``config.json`` is strict JSON (RFC 8259): an infinite ``threshold_`` is written as the string
``"Infinity"`` (or ``"-Infinity"``) and read back as a float; NaN is refused.

Every file is written to a temp file in the same folder and renamed, and ``config.json`` is
written last with the sha256 of both weight files, so a crash never leaves a directory that
loads as a half model: an interrupted re-save leaves weights that fail the check, with a
clear error. ``cnn_backbone`` is a :data:`~spadecam.models.backbones.BACKBONES` name: "small"
(:class:`ConvClassifier`, the default when absent) or "resnet18"
(:class:`~spadecam.models.resnet.ResNetClassifier`); "conv" / "resnet", written by 0.1,
are read as the same two.

``config.json`` may have been edited or damaged, so :func:`read_config` validates it once,
before any weights are read (:mod:`spadecam.model_schema` lists what is checked), and every
loader (``SPADE.load`` and the baselines', :func:`load_model_parts`, ``spadecam score`` /
``evaluate``) goes through it; each fault is one line of :class:`ModelFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from spadecam._fs import atomic_write_bytes, atomic_write_text
from spadecam._json import json_text
from spadecam.exceptions import ModelFormatError
from spadecam.model_schema import backbone_of, check_detector_params, validate_config
from spadecam.model_schema import is_int as _is_int
from spadecam.model_schema import kind as _kind
from spadecam.models.backbones import BACKBONES, backbone_name
from spadecam.models.classifier import FeatureClassifier
from spadecam.models.vae import ConvVAE, VAEConfig

__all__ = [
    "FORMAT_VERSION",
    "ModelFormatError",
    "check_detector_params",
    "load_model_parts",
    "load_models",
    "read_config",
    "load_tensors",
    "save_models",
]

#: Bumped whenever the layout or the meaning of a config field changes.
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
def save_models(
    model_dir: str | os.PathLike,
    vae: ConvVAE | None,
    cnn: FeatureClassifier | None,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a model directory (weights as safetensors, configs as JSON).

    Parameters
    ----------
    model_dir : path
        Created if missing.
    vae, cnn : the trained models; either may be None (the VAE-based and CNN-based
        baselines hold one model), not both
    extra : dict, optional
        More JSON-serialisable fields for config.json (preprocessing, threshold_, detector
        parameters).
    tensors : dict name -> {key: Tensor}, optional
        More safetensors files, ``name.safetensors`` (SPADE's feature bank, "knn"), hashed
        in config.json like the weights; read back with :func:`load_tensors`.

    Returns
    -------
    Path of the directory.

    Raises
    ------
    ValueError
        Both models None, or a NaN in ``extra`` (JSON cannot hold it; nothing is written).
    TypeError
        ``cnn`` is not one of :data:`~spadecam.models.backbones.BACKBONES` (a user's own
        classifier); nothing is written.
        Infinite floats are written as ``"Infinity"`` / ``"-Infinity"``
        (:func:`spadecam._json.json_text`).
    """
    if vae is None and cnn is None:
        raise ValueError("save_models needs a VAE, a classifier or both; got neither")
    if cnn is not None:
        try:
            backbone_name(cnn)
        except TypeError:  # a user's own FeatureClassifier: nothing could rebuild it on load
            raise TypeError(
                f"{type(cnn).__name__} is not one of spadecam's backbones ({', '.join(BACKBONES)}"
                "), so a model directory could not rebuild it: save your classifier's weights "
                "yourself (torch.save of its state_dict) and wrap it again with "
                "SPADE.from_models") from None
    d = Path(model_dir)
    weights, hashes = {}, {}
    groups = {name: model.state_dict() for name, model in (("vae", vae), ("cnn", cnn))
              if model is not None}
    for name, group in {**groups, **(tensors or {})}.items():
        data = save_bytes({k: v.detach().cpu().contiguous() for k, v in group.items()})
        weights[f"{name}.safetensors"] = data
        hashes[f"{name}.safetensors"] = hashlib.sha256(data).hexdigest()
    config: dict[str, Any] = {"format_version": FORMAT_VERSION, "weights_sha256": hashes}
    if vae is not None:
        config["vae_config"] = vae.config.to_dict()
    if cnn is not None:
        config["cnn_config"] = cnn.config.to_dict()
        config["cnn_backbone"] = backbone_name(cnn)
    config.update(extra or {})
    # encode before writing anything: a value JSON cannot hold must not leave new weights
    # beside an old config.json
    text = json_text(config, indent=2, sort_keys=True)
    d.mkdir(parents=True, exist_ok=True)
    for file_name, data in weights.items():
        atomic_write_bytes(d / file_name, data)
    atomic_write_text(d / "config.json", text)
    for name, model in (("vae", vae), ("cnn", cnn)):  # a re-save with one model fewer
        if model is None:
            (d / f"{name}.safetensors").unlink(missing_ok=True)
    return d


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a model directory.

    The config is checked once, before any weights are read (see the module notes for the
    list): the type and range of every known key present, and its consistency with the model
    configs and with the shapes recorded in the weight files' headers. Missing optional keys
    (older directories) and unknown extra keys (newer ones) are allowed.

    Returns
    -------
    dict, the config as written.

    Raises
    ------
    ModelFormatError
        Missing directory or config, pickle-style files, invalid JSON, a top level that is not
        an object, a format version other than :data:`FORMAT_VERSION` (the message names the
        file and both versions), or a key whose value has the wrong type, is out of range or
        does not fit the models: one line naming the file, the dotted key (e.g.
        ``input.image_size``) and what was expected and found.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelFormatError(f"model directory {d} does not exist")
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ModelFormatError(
            f"{d} holds pickle-style files {pickles}; spadecam only loads safetensors weights "
            "(pickle can run arbitrary code). Remove them or re-save the model with spadecam."
        )
    path = d / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing: {d} is not a spadecam model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(
            f"{path}: the top level must be a JSON object ({{...}}), got {_kind(config)}"
        )
    version = config.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has format_version {version!r}; this spadecam reads version "
            f"{FORMAT_VERSION}. Re-train or convert the model."
        )
    validate_config(config, path)
    return config


def load_models(model_dir: str | os.PathLike) -> tuple[ConvVAE, FeatureClassifier]:
    """Load the VAE and classifier of a model directory (eval mode, CPU).

    Raises
    ------
    ModelFormatError
        See :func:`read_config`; also missing or mismatched weight files, or a directory
        that holds only one of the two models.
    """
    vae, cnn = load_model_parts(model_dir)
    for name, model in (("VAE (vae_config)", vae), ("classifier (cnn_config)", cnn)):
        if model is None:
            raise ModelFormatError(f"{Path(model_dir) / 'config.json'} holds no {name}")
    assert vae is not None and cnn is not None
    return vae, cnn


def load_tensors(model_dir: str | os.PathLike, name: str,
                 config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_models` wrote as ``name.safetensors`` (checked against the
    sha256 in ``config``, config.json as :func:`read_config` returned it).

    Raises
    ------
    ModelFormatError
        The file is missing, does not match its recorded sha256, or is not safetensors.
    """
    path = Path(model_dir) / f"{name}.safetensors"
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing")
    data = path.read_bytes()
    expected = (config.get("weights_sha256") or {}).get(path.name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ModelFormatError(f"{path} does not match the sha256 recorded in config.json (an "
                               "interrupted or partial save?); re-save or re-train the model")
    try:
        return load_bytes(data)
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFormatError(f"{path} is not a safetensors file: {exc}") from None


def load_model_parts(
    model_dir: str | os.PathLike, config: dict[str, Any] | None = None,
) -> tuple[ConvVAE | None, FeatureClassifier | None]:
    """Load whichever of the VAE and classifier a model directory holds (eval mode, CPU).

    ``config``: its config.json as :func:`read_config` returned it (else read here).

    Returns
    -------
    (vae or None, cnn or None); a model is present when config.json has its config.

    Raises
    ------
    ModelFormatError
        See :func:`read_config`; also a directory with neither model, missing or mismatched
        weight files.
    """
    d = Path(model_dir)
    config = read_config(d) if config is None else config
    if "vae_config" not in config and "cnn_config" not in config:
        raise ModelFormatError(f"{d / 'config.json'} holds neither vae_config nor cnn_config")
    backbone = backbone_of(config)  # validated by read_config
    vae: ConvVAE | None = None
    cnn: FeatureClassifier | None = None
    try:
        # the initial weights are replaced by the saved ones: draw them without moving the
        # caller's global RNG
        with torch.random.fork_rng(devices=[]):
            if "vae_config" in config:
                vae = ConvVAE(VAEConfig(**config["vae_config"]))
            if "cnn_config" in config:
                cnn_cls, cnn_cfg = BACKBONES[backbone]
                cnn = cnn_cls(cnn_cfg(**config["cnn_config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{d / 'config.json'}: bad model config ({exc})") from None
    for name, model in (("vae", vae), ("cnn", cnn)):
        if model is None:
            continue
        state = load_tensors(d, name, config)  # present, its sha256, safetensors
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise ModelFormatError(
                f"{d / (name + '.safetensors')} cannot be loaded into the configured model: "
                f"{exc}") from None
    return (vae.eval() if vae is not None else None), (cnn.eval() if cnn is not None else None)


# --------------------------------------------------------------------------- validation

#: ``F.interpolate``'s modes for 2-D maps (``detector.params.upsample``).
