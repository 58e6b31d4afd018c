"""Images to the model's square input and maps back, in numpy and Pillow alone (no torch).

The one implementation of the letterbox / resize step that every scoring path shares: the
torch detectors (:mod:`spadecam.inputs` calls it), ``spadecam train`` (the letterbox mask)
and the ONNX runner (:mod:`spadecam.deploy.onnx_inferencer`), which must run where torch is
not installed. So the exported graph and the torch path see the same pixels.

* :func:`check_images`: validate images given as numpy arrays (or lists of them) and return
  them as a list of (C, H, W) arrays, channels-last layouts recognised.
* :func:`to_model_input`: a list of images (C, H_i, W_i) -> the :class:`ModelBatch` (N, C, S, S)
  float32 in [0, 1], the letterbox mask ``valid`` (N, 1, S, S), each image's size and box.
* :func:`maps_to_sizes`: maps on the model grid (N, S, S) -> each image's region, resized
  bilinearly to the image's own H x W.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ACCEPTED_LAYOUTS",
    "RESIZE_POLICIES",
    "content_box",
    "resize_image",
    "resize_mask",
    "CHANNEL_COUNTS",
    "LAYOUTS",
    "batch_layout",
    "image_layout",
    "ModelBatch",
    "check_images",
    "is_channels_last",
    "letterbox_mask",
    "model_batch",
    "maps_to_sizes",
    "resize_map",
    "stack_maps",
    "to_float",
    "to_model_input",
]

#: Ways of bringing an image to size x size: stretch, or keep the aspect ratio and pad.
RESIZE_POLICIES = ("resize", "letterbox")


def content_box(
    height: int, width: int, size: int, policy: str = "resize"
) -> tuple[int, int, int, int]:
    """Where an image of height x width lands inside the size x size output.

    Returns
    -------
    (top, left, h, w) : the pasted region; ``(0, 0, size, size)`` for ``"resize"``.

    Raises
    ------
    ValueError
        An unknown ``policy`` or a size below 1.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    if policy == "resize":
        return 0, 0, size, size
    scale = size / max(height, width)
    h = min(size, max(1, round(height * scale)))
    w = min(size, max(1, round(width * scale)))
    return (size - h) // 2, (size - w) // 2, h, w


def _resize_plane(plane: np.ndarray, hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if plane.shape == hw:
        return plane
    out = Image.fromarray(plane).resize((hw[1], hw[0]), resample)
    return np.asarray(out)


def resize_image(x: np.ndarray, size: int, policy: str = "resize") -> np.ndarray:
    """Bring a (C, H, W) float image to (C, size, size) by ``policy`` (bilinear, float).

    Parameters
    ----------
    x : ndarray (C, H, W), float32 in [0, 1]
    size : int, >= 1
    policy : {"resize", "letterbox"}
        See the module notes; letterbox pads with zeros.

    Returns
    -------
    ndarray (C, size, size), float32 in [0, 1]
    """
    top, left, h, w = content_box(x.shape[1], x.shape[2], size, policy)
    out = np.zeros((x.shape[0], size, size), dtype=np.float32)
    for c in range(x.shape[0]):
        plane = _resize_plane(x[c].astype(np.float32), (h, w), Image.Resampling.BILINEAR)
        out[c, top : top + h, left : left + w] = plane
    return np.clip(out, 0.0, 1.0)


def resize_mask(m: np.ndarray, size: int, policy: str = "resize") -> np.ndarray:
    """Bring a (H, W) binary mask to (size, size) with nearest-neighbour resampling.

    Returns
    -------
    ndarray (size, size), uint8 in {0, 1}; letterbox padding is 0 (normal).
    """
    top, left, h, w = content_box(m.shape[0], m.shape[1], size, policy)
    out = np.zeros((size, size), dtype=np.uint8)
    plane = _resize_plane((m > 0).astype(np.uint8), (h, w), Image.Resampling.NEAREST)
    out[top : top + h, left : left + w] = plane
    return out


#: Channel counts an image layout is recognised by: grey, RGB, RGBA.
CHANNEL_COUNTS = (1, 3, 4)


def is_channels_last(second: int, last: int) -> bool:
    """(..., H, W, C) rather than (..., C, H, W): the last axis a channel count, the first not."""
    return last in CHANNEL_COUNTS and second not in CHANNEL_COUNTS


#: What :func:`batch_layout` answers, and what each layout is read as.
LAYOUTS = {
    "NCHW": "a batch, channels first",
    "NHWC": "a batch, channels last (as np.stack of np.asarray(PIL.Image) gives)",
    "NHW": "a batch of grey images",
    "HWC": "one image, channels last (as np.asarray(PIL.Image) gives)",
    "HW": "one grey image",
}

#: The layouts accepted for one array, in words (for error messages).
ACCEPTED_LAYOUTS = ("(N, C, H, W), (N, H, W, C) or (N, H, W) for a batch; (H, W, C) or (H, W) "
                    "for one image; C is 1, 3 or 4")


def batch_layout(shape: Sequence[int], name: str = "X") -> str:
    """How an array of images given as one array is read: a key of :data:`LAYOUTS`.

    * 4 axes: (N, H, W, C) when the last axis is 1, 3 or 4 and the second is not
      (:func:`is_channels_last`), else (N, C, H, W).
    * 3 axes: one channels-last image (H, W, C) when the last axis is 1, 3 or 4 and the
      middle one is not (``np.asarray(PIL.Image.open(p))`` of an RGB file, (48, 64, 3), is
      one image, not 48 grey images 3 pixels wide); else a batch of grey images (N, H, W).
    * 2 axes: one grey image (H, W).

    Raises
    ------
    ValueError
        Any other number of axes, naming ``name``, its shape and the accepted layouts.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 4:
        return "NHWC" if is_channels_last(shape[1], shape[3]) else "NCHW"
    if len(shape) == 3:
        return "HWC" if is_channels_last(shape[1], shape[2]) else "NHW"
    if len(shape) == 2:
        return "HW"
    raise ValueError(f"{name} has shape {shape}; accepted: {ACCEPTED_LAYOUTS}")


def image_layout(shape: Sequence[int], name: str = "X[i]") -> str:
    """How one image of a list is read: "CHW", "HWC" or "HW".

    (C, H, W) when the first axis is 1, 3 or 4 and the last is not; (H, W, C) when the last
    is and the first is not (as ``np.asarray(PIL.Image)`` gives); 2 axes are one grey image.

    Raises
    ------
    ValueError
        Naming ``name``: a shape that fits both readings (e.g. (3, 64, 3)), neither, or
        another number of axes.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        return "HW"
    if len(shape) == 3:
        first, last = shape[0] in CHANNEL_COUNTS, shape[2] in CHANNEL_COUNTS
        if first != last:
            return "CHW" if first else "HWC"
        why = "both" if first else "neither"
        raise ValueError(f"{name} has shape {shape}: {why} its first and its last axis could "
                         "be the channels (1, 3 or 4); give it as (C, H, W) in a batch "
                         "(1, C, H, W)")
    raise ValueError(f"{name} must have shape (H, W), (C, H, W) or (H, W, C), got shape {shape}")


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [0, 1] (divided by 255); float -> float32 unchanged in value."""
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _check_one(a: np.ndarray, name: str) -> np.ndarray:
    """A (C, H, W) image as uint8 or float32 in [0, 1]; ValueError naming ``name``."""
    if min(a.shape) == 0:
        raise ValueError(f"{name} has an empty channel or image side (shape {a.shape})")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if np.isnan(a).any() or a.min() < 0 or a.max() > 1:
        raise ValueError(
            f"{name} is float, so it must lie in [0, 1] without NaN; got range "
            f"[{float(np.nanmin(a)):.4g}, {float(np.nanmax(a)):.4g}] (pass uint8 for 0-255 images)"
        )
    return a


def check_images(X: Any, name: str = "X") -> list[np.ndarray]:
    """Validate images and return them as a list of (C, H, W) arrays, uint8 or float32.

    Parameters
    ----------
    X : ndarray (N, H, W), (N, C, H, W) or (N, H, W, C), or one image (H, W, C) or (H, W),
        read as :func:`batch_layout` says; or a list / tuple of single images
        (H, W), (C, H, W) or (H, W, C), or batches of one (1, C, H, W) (no layout to guess:
        what the CLI passes), whose sizes may differ; uint8 in [0, 255] or float in [0, 1].
        The rules of :func:`spadecam.inputs.as_image_tensor`, without torch.
    name : str, the argument's name in error messages

    Raises
    ------
    ValueError
        Wrong number of dimensions, an empty batch or image, a dtype other than uint8 /
        float, float values outside [0, 1] or NaN, or images with different channel counts;
        the message names ``name`` (or ``name[i]``).
    """
    if isinstance(X, (list, tuple)):
        if not X:
            raise ValueError(f"{name} is an empty list")
        out = []
        for i, x in enumerate(X):
            a = np.asarray(x)
            if a.ndim == 4 and a.shape[0] == 1:  # a batch of one: read by batch_layout
                out += check_images(a, f"{name}[{i}]")
                continue
            layout = image_layout(a.shape, f"{name}[{i}]")
            a = {"CHW": a, "HWC": np.moveaxis(a, -1, 0), "HW": a[None]}[layout]
            out.append(_check_one(np.ascontiguousarray(a), f"{name}[{i}]"))
        channels = {a.shape[0] for a in out}
        if len(channels) > 1:
            raise ValueError(f"{name}: images have different channel counts {sorted(channels)}")
        return out
    a = np.asarray(X)
    layout = batch_layout(a.shape, name)
    a = {"NCHW": lambda: a, "NHWC": lambda: np.moveaxis(a, -1, 1), "NHW": lambda: a[:, None],
         "HWC": lambda: np.moveaxis(a, -1, 0)[None], "HW": lambda: a[None, None]}[layout]()
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    a = _check_one(np.ascontiguousarray(a), name)
    return list(a)


def letterbox_mask(
    sizes: Sequence[tuple[int, int]], size: int, policy: str = "letterbox"
) -> np.ndarray | None:
    """Which pixels of the ``size`` x ``size`` model inputs are image, not letterbox padding.

    Parameters
    ----------
    sizes : sequence of (H, W), each image's own size in pixels
    size : int, the model's input side
    policy : {"letterbox", "resize"}

    Returns
    -------
    ndarray (N, 1, size, size) float32 in {0, 1} (1 on the image,
    :func:`content_box`), or None when no pixel is padding ("resize",
    or every image already square). The one mask the detectors, ``spadecam train`` and the
    ONNX runner use.
    """
    valid = np.zeros((len(sizes), 1, size, size), dtype=np.float32)
    for i, (h, w) in enumerate(sizes):
        top, left, bh, bw = content_box(h, w, size, policy)
        valid[i, 0, top : top + bh, left : left + bw] = 1.0
    return valid if policy == "letterbox" and bool((valid == 0).any()) else None


@dataclass
class ModelBatch:
    """A batch at the model's input size, with what is needed to map results back: the one
    batch type of training and scoring, numpy (the ONNX runner, :func:`to_model_input`) or
    torch (the detectors, :func:`spadecam.inputs.to_model_batch`; ``spadecam train`` passes
    one to ``fit``).

    Attributes
    ----------
    u : ndarray or Tensor (N, C, S, S), float32 in [0, 1] (uint8 [0, 255] accepted by ``fit``)
    valid : ndarray or Tensor (N, 1, S, S) float32 in {0, 1}, or None
        1 on image pixels, 0 on letterbox padding; None when every pixel is an image pixel.
    sizes : list of (H, W)
        Each image's own size in pixels.
    boxes : list of (top, left, h, w) or None
        Where each image lies in the S x S input; None when the images were not resized.
    """

    u: Any
    valid: Any
    sizes: list[tuple[int, int]]
    boxes: list[tuple[int, int, int, int]] | None


def to_model_input(images: Sequence[np.ndarray], size: int, policy: str = "letterbox") -> ModelBatch:
    """Bring images (each (C, H_i, W_i), uint8 or float [0, 1]) to the model's input.

    Images already ``size`` x ``size`` are only converted to float; others are resized with
    :func:`resize_image` (Pillow, bilinear, antialiased) by ``policy``.

    Raises
    ------
    ValueError
        An unknown policy.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
    if all(s == (size, size) for s in sizes):
        return model_batch(np.stack([to_float(x) for x in images]), sizes, size, policy)
    u = np.stack([resize_image(to_float(x), size, policy) for x in images])
    return model_batch(u, sizes, size, policy)


def model_batch(u: np.ndarray, sizes: Sequence[tuple[int, int]], size: int,
                policy: str = "letterbox") -> ModelBatch:
    """The :class:`ModelBatch` of images already brought to the model's input.

    Parameters
    ----------
    u : ndarray (N, C, S, S), float32 in [0, 1], S = ``size``: the images resized by ``policy``
    sizes : sequence of N (H, W), each image's own size in pixels
    size : int, the model's input side S
    policy : {"letterbox", "resize"}

    Returns
    -------
    ModelBatch with the letterbox mask (:func:`letterbox_mask`) and each image's box
    (:func:`content_box`); both None when every image already had the size.
    """
    sizes = list(sizes)
    if all(s == (size, size) for s in sizes):
        return ModelBatch(u, None, sizes, None)
    return ModelBatch(u, letterbox_mask(sizes, size, policy), sizes,
                      [content_box(h, w, size, policy) for h, w in sizes])


def resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A map (h, w) resized bilinearly (Pillow, float) to ``hw``, clipped at 0, float32; the
    map itself when it already has that size."""
    if m.shape == hw:
        return m
    out = Image.fromarray(m.astype(np.float32)).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.maximum(np.asarray(out, dtype=np.float32), 0.0)


def maps_to_sizes(maps: np.ndarray, sizes: Sequence[tuple[int, int]],
                  boxes: Sequence[tuple[int, int, int, int]] | None) -> list[np.ndarray]:
    """Per-pixel maps (N, S, S) on the model grid at each image's own size.

    Returns a list of N float32 arrays (H_i, W_i): the image's region of the map (``boxes``,
    None = the whole map), resized bilinearly to the image's size.
    """
    if boxes is None:
        return list(np.asarray(maps, dtype=np.float32))
    return [resize_map(np.ascontiguousarray(mi[top : top + h, left : left + w]), hw)
            for mi, (top, left, h, w), hw in zip(maps, boxes, sizes)]


def stack_maps(maps: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One (N, H, W) float32 array when every map has the same size, else the list."""
    if len({m.shape for m in maps}) == 1:
        return np.stack(maps).astype(np.float32, copy=False)
    return maps
