"""Images in, model inputs out, maps back at each image's own size (the API's size handling).

The detectors take images of any height and width and bring them to the square input the
models were built for (``image_size`` x ``image_size``, recorded in the model directory):

* **Forms accepted** (:func:`iter_model_batches`): an array or tensor (N, H, W),
  (N, C, H, W) or (N, H, W, C), or one image (H, W, C) or (H, W); a list or tuple of single
  images, each (H, W), (C, H, W) or (H, W, C), whose sizes may differ; any other iterable
  (e.g. a DataLoader) of batches, each one of those arrays or a tuple whose first element
  is one (batches may differ in size). uint8 in [0, 255] or float in [0, 1]. Channels-last
  images (as ``np.asarray(PIL.Image)`` gives) are recognised when the last axis is 1, 3 or
  4 and the one before it is not (:func:`spadecam.preprocess.batch_layout`): a single RGB
  image (48, 64, 3) is one image, never 48 grey images 3 pixels wide. Numpy views with
  negative strides (``X[::-1]``, ``np.flip``, ``np.rot90``) are copied.
* **Resizing** uses the one function the CLI uses too,
  :func:`spadecam.preprocess.resize_image` (Pillow, bilinear, antialiased, float), with a
  policy: ``"letterbox"`` (default of the API and of ``spadecam train``) scales the longer
  side to ``image_size``, keeps the aspect ratio and pads the rest with zeros; ``"resize"``
  stretches. Images already at the model's size are not touched.
* **Padding never counts**: each batch carries a ``valid`` mask (1 on the image, 0 on the
  letterbox padding); the detectors zero the reconstruction error and the ROI there before
  the ROI is normalised, so the score is a sum over image pixels only.
* **Maps come back at the image's size** (:func:`maps_to_images`): the image's region of
  the model-size map is cut out and resized (bilinear) to the image's H x W. The score is
  the sum on the model grid (equal to the map's sum when the image already has the model's
  size), so scores of images of different sizes stay comparable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from spadecam.models.cnn import CNNConfig
from spadecam.models.vae import VAEConfig
from spadecam.preprocess import (
    RESIZE_POLICIES,  # noqa: F401 (re-exported)
    ModelBatch,
    batch_layout,
    image_layout,
    letterbox_mask,
    maps_to_sizes,
    stack_maps,
    to_model_input,
)
from spadecam.recipes import FIT_DEFAULTS, RECIPE_DEFAULTS, fit_default

__all__ = [
    "ModelBatch",
    "as_labels",
    "as_image_tensor",
    "image_list",
    "iter_model_batches",
    "letterbox_mask",
    "maps_to_images",
    "min_input_size",
    "fixed_input_side",
    "model_input_side",
    "stack_maps",
]


def as_image_tensor(X: Any, name: str = "X") -> torch.Tensor:
    """Validate images and return them as a (N, C, H, W) tensor, uint8 or float32.

    Parameters
    ----------
    X : array-like or Tensor
        uint8 in [0, 255] or float in [0, 1], any strides (reversed or flipped numpy views
        such as ``X[::-1]`` or ``np.flip(X, 2)`` are copied). A batch (N, C, H, W),
        (N, H, W, C) or (N, H, W), or one image (H, W, C) or (H, W), as
        :func:`spadecam.preprocess.batch_layout` reads the shape: channels-last when the last
        axis is 1, 3 or 4 and the one before it is not (so ``np.asarray(PIL.Image.open(p))``
        of an RGB file, (H, W, 3), is one image, not H grey images 3 pixels wide); a batch
        whose second axis is 1, 3 or 4 is read as channels-first.
    name : str
        Argument name used in error messages.

    Raises
    ------
    ValueError
        A shape of another number of axes (naming ``name`` and the accepted layouts), an
        empty batch or image, a dtype other than uint8/float,
        float values outside [0, 1] or NaN.
    """
    t = _as_tensor(X)
    layout = batch_layout(t.shape, name)
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2).contiguous()
    elif layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "HWC":
        t = t.permute(2, 0, 1).unsqueeze(0).contiguous()
    elif layout == "HW":
        t = t[None, None]
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if min(t.shape[1:]) == 0:
        raise ValueError(f"{name} has an empty channel or image side (shape {tuple(t.shape)})")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise ValueError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got {t.dtype}")
    t = t.float()
    if torch.isnan(t).any() or t.min() < 0 or t.max() > 1:
        raise ValueError(
            f"{name} is float, so it must lie in [0, 1] without NaN; got range "
            f"[{float(t.min()):.4g}, {float(t.max()):.4g}] (pass uint8 for 0-255 images)"
        )
    return t


def _as_tensor(x: Any) -> torch.Tensor:
    """A tensor of ``x``; numpy views with negative or odd strides are copied first (torch
    refuses negative strides: "At least one stride in the given numpy array is negative"),
    and so are read-only arrays."""
    if isinstance(x, torch.Tensor):
        return x
    a = np.ascontiguousarray(np.asarray(x))
    # a read-only array (np.asarray(PIL.Image)) is copied too: torch warns on sharing it
    return torch.as_tensor(a if a.flags.writeable else a.copy())


def min_input_size(vae_config: VAEConfig | None, cnn_config: Any) -> int:
    """Smallest model input side both networks accept with a non-empty last feature map.

    The VAE needs its ``len(channels)`` stride-2 convolutions to leave at least one pixel;
    the classifier needs at least its total stride (8 for the paper's CNN, 32 for ResNet-18)
    so that its Grad-CAM grid is not pure padding. A None config adds no constraint.
    """
    vae_min = 1
    if vae_config is not None:
        k, pad = vae_config.kernel_size, (vae_config.kernel_size - 1) // 2
        while True:
            s = vae_min
            for _ in vae_config.channels:
                s = (s + 2 * pad - k) // 2 + 1
            if s >= 1:
                break
            vae_min += 1
    cnn_min = 1
    if isinstance(cnn_config, CNNConfig):
        cnn_min = int(np.prod(cnn_config.strides))
    elif cnn_config is not None:  # ResNet, EfficientNet-Lite: their total stride
        cnn_min = int(cnn_config.min_input_size)
    return max(vae_min, cnn_min)


def fixed_input_side(image_size: int | None = None, config_size: int | None = None,
                     recipe: str | None = None) -> tuple[int, str] | None:
    """The model input side when it does not depend on the images: ``image_size`` when given,
    else the VAE config's ``config_size``, else the recipe's fixed side
    (:data:`spadecam.recipes.RECIPE_FIT`: 224 for "pretrained"); None otherwise. Returns
    (S, where S came from, in words for error messages).

    Raises
    ------
    ValueError
        ``image_size`` and ``config_size`` both given and different.
    """
    if image_size is not None and config_size is not None and image_size != config_size:
        raise ValueError(f"image_size={image_size} differs from vae_config.image_size="
                         f"{config_size}; give one of them")
    if image_size is not None:
        return int(image_size), f"image_size={image_size}"
    if config_size is not None:
        return int(config_size), f"vae_config.image_size={config_size}"
    fixed = fit_default("image_size", recipe) if recipe in RECIPE_DEFAULTS else None
    if fixed is not None:
        return int(fixed), f"recipe {recipe!r} ({fixed} px)"
    return None


def model_input_side(
    sizes: Sequence[tuple[int, int]] | None,
    image_size: int | None = None,
    config_size: int | None = None,
    recipe: str | None = None,
) -> tuple[int, str]:
    """The side S of the square model input a fit uses: the one rule of the detectors'
    ``fit`` and of ``spadecam train``, so both train the same networks from the same images
    (the classifier's kernels follow S, :func:`spadecam.defaults.default_cnn_config`).

    :func:`fixed_input_side` when it gives one; else the longest side among ``sizes`` (the
    training images' own (H, W), in pixels), at most :data:`spadecam.recipes.FIT_DEFAULTS`
    ``["max_image_size"]`` (128): small images keep their size, larger ones are shrunk to it.
    Images of any size are taken: each is resized to S.

    Returns
    -------
    (S, where S came from, in words for error messages)

    Raises
    ------
    ValueError
        ``image_size`` and ``config_size`` both given and different; ``sizes`` None (or
        empty) when S depends on them.
    """
    fixed = fixed_input_side(image_size, config_size, recipe)
    if fixed is not None:
        return fixed
    if not sizes:
        raise ValueError("the model input side is the images' longest side: give their sizes")
    longest, cap = int(max(max(hw) for hw in sizes)), int(FIT_DEFAULTS["max_image_size"])
    side = min(longest, cap)
    return side, (f"X (images up to {longest} px on their longest side; the model input is "
                  f"that side, at most {cap} px)")


def image_list(X: Any, name: str = "X") -> list[torch.Tensor] | torch.Tensor:
    """The images of ``X`` as one (N, C, H, W) tensor, or a list of (1, C, H, W) tensors.

    A list or tuple of arrays/tensors with 2 or 3 dimensions is read as single images
    (sizes may differ), each (H, W), (C, H, W) or channels-last (H, W, C) when its last axis
    is 1, 3 or 4 and its first is not; batches of one (1, C, H, W) are taken as they are (no
    layout to guess: what the CLI passes, whatever the image's size); anything else
    array-like as one batch
    (:func:`as_image_tensor`).

    Raises
    ------
    ValueError
        As :func:`as_image_tensor`, naming the image (``X[i]``) at fault; an empty list;
        images with different channel counts.
    """
    if isinstance(X, (list, tuple)):
        if not X:
            raise ValueError(f"{name} is an empty list")
        if all(isinstance(x, (np.ndarray, torch.Tensor)) and (
                x.ndim in (2, 3) or (x.ndim == 4 and x.shape[0] == 1)) for x in X):
            out = []
            for i, x in enumerate(X):
                t = _as_tensor(x)
                if t.ndim < 4:
                    layout = image_layout(t.shape, f"{name}[{i}]")
                    if layout == "HWC":
                        t = t.permute(2, 0, 1).contiguous()  # as np.asarray(PIL.Image) gives
                    t = t.unsqueeze(0) if t.ndim == 3 else t.unsqueeze(0).unsqueeze(0)
                out.append(as_image_tensor(t, name=f"{name}[{i}]"))
            channels = {t.shape[1] for t in out}
            if len(channels) > 1:
                raise ValueError(f"{name}: images have different channel counts {sorted(channels)}")
            if len({t.shape for t in out}) == 1 and all(t.dtype == out[0].dtype for t in out):
                return torch.cat(out)
            return out
    return as_image_tensor(X, name)


def as_labels(y: Any, n: int) -> torch.Tensor:
    """Fit's labels y as an (n,) int64 tensor, 0 = normal, 1 = known anomaly (None: all
    normal). ValueError for another length or other values."""
    if y is None:
        return torch.zeros(n, dtype=torch.long)
    ya = np.asarray(y).reshape(-1)
    if ya.shape[0] != n:
        raise ValueError(f"y must have one label per image: {n} images, {ya.shape[0]} labels")
    bad = sorted(set(np.unique(ya).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"y must hold 0 (normal) or 1 (known anomaly), found {bad[:5]}")
    return torch.as_tensor(ya.astype(np.int64))


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """Images as the networks take them: uint8 [0, 255] -> float32 [0, 1] (divided by 255);
    any float dtype -> float32 unchanged in value. Any shape; a new tensor for uint8, else
    ``x.float()`` (``x`` itself when already float32). The one conversion in spadecam
    (training, scoring, benchmarks)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # NHWC is the fast layout for oneDNN convolutions on the CPU (about 1.5-2x here)
    return x.contiguous(memory_format=torch.channels_last)


def to_model_batch(
    images: Sequence[torch.Tensor] | torch.Tensor,
    size: int | None,
    policy: str = "letterbox",
    channels: int | None = None,
    name: str = "X",
) -> ModelBatch:
    """Bring images (each (1, C, H, W) or one (B, C, H, W) tensor) to the model's input.

    Parameters
    ----------
    images : tensor (B, C, H, W) or sequence of (1, C, H_i, W_i), uint8 or float [0, 1]
    size : int or None
        The model's input side S; None keeps the images' size (they must then share it).
    policy : {"letterbox", "resize"}
    channels : int or None
        The channel count the models take; None accepts any.

    Raises
    ------
    ValueError
        A channel count the model does not take (naming ``name`` and both counts); images
        of different sizes with ``size=None``; an unknown policy.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    if isinstance(images, torch.Tensor):
        parts = list(images.split(1))
    else:
        parts = list(images)
    c = parts[0].shape[1]
    if channels is not None and c != channels:
        raise ValueError(
            f"{name} has {c} channel(s) but the model was fitted on {channels}; convert the "
            f"images to {channels} channel(s)"
        )
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in parts]
    if size is None or all(s == (size, size) for s in sizes):
        if len(set(sizes)) > 1:
            raise ValueError(
                f"{name} holds images of different sizes {sorted(set(sizes))[:3]} but the "
                "model has no fixed input size; give image_size"
            )
        u = torch.cat([to_float_images(t) for t in parts])
        return ModelBatch(_channels_last(u), None, sizes, None)
    # the numpy implementation the ONNX runner uses too (spadecam.preprocess)
    mi = to_model_input([t[0].cpu().numpy() for t in parts], size, policy)
    return ModelBatch(_channels_last(torch.from_numpy(mi.u)),
                      None if mi.valid is None else torch.from_numpy(mi.valid), sizes, mi.boxes)


def iter_model_batches(
    X: Any,
    batch_size: int,
    size: int | None,
    policy: str = "letterbox",
    channels: int | None = None,
    name: str = "X",
) -> Iterator[ModelBatch]:
    """Yield :class:`ModelBatch` es of at most ``batch_size`` images from any accepted form.

    See the module notes for the forms. An iterable that is not a list/tuple/array is read
    lazily, one of its batches at a time, so memory stays flat.

    Raises
    ------
    ValueError
        Bad images (naming ``name``, ``name[i]`` or ``name batch j``), or ``X`` of another type.
    """
    if isinstance(X, (np.ndarray, torch.Tensor, list, tuple)):
        imgs = image_list(X, name)
        for i in range(0, len(imgs), batch_size):
            yield to_model_batch(imgs[i : i + batch_size], size, policy, channels, name)
        return
    if not isinstance(X, Iterable):
        raise ValueError(f"{name} must be an array, a tensor or an iterable of batches, got {type(X)}")
    for j, batch in enumerate(X):
        if isinstance(batch, (tuple, list)) and not isinstance(batch, np.ndarray):
            batch = batch[0]
        t = as_image_tensor(batch, name=f"{name} batch {j}")
        for i in range(0, len(t), batch_size):
            yield to_model_batch(t[i : i + batch_size], size, policy, channels, f"{name} batch {j}")


def maps_to_images(maps: torch.Tensor, batch: ModelBatch) -> list[np.ndarray]:
    """Per-pixel maps at each image's own size.

    Parameters
    ----------
    maps : Tensor (B, S, S), float, >= 0, on the model grid
    batch : the :class:`ModelBatch` the maps were computed from

    Returns
    -------
    list of B ndarrays (H_i, W_i), float32, >= 0: the image's region of the map, resized
    bilinearly to the image's size (unchanged when the image was not resized).
    """
    return maps_to_sizes(maps.detach().float().cpu().numpy(), batch.sizes, batch.boxes)
