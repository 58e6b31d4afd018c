"""Images to the model's square input and maps back, in numpy and Pillow alone (no torch).

The one implementation of the letterbox / resize step that every scoring path shares: the
torch detectors (:mod:`spadecam.inputs` calls it), ``spadecam train`` (the letterbox mask)
and the ONNX runner (:mod:`spadecam.deploy.onnx_inferencer`), which must run where torch is
not installed. So the exported graph and the torch path see the same pixels.

* :func:`check_images`: validate images given as numpy arrays (or lists of them) and return
  them as a list of (C, H, W) arrays, channels-last layouts recognised.
* :func:`to_model_input`: a list of images (C, H_i, W_i) -> the model batch (N, C, S, S)
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

from spadecam.data.images import RESIZE_POLICIES, content_box, resize_image

__all__ = [
    "ACCEPTED_LAYOUTS",
    "CHANNEL_COUNTS",
    "LAYOUTS",
    "batch_layout",
    "image_layout",
    "ModelInput",
    "check_images",
    "is_channels_last",
    "letterbox_mask",
    "maps_to_sizes",
    "read_files",
    "resize_map",
    "stack_maps",
    "to_float",
    "to_model_input",
]

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
        (H, W), (C, H, W) or (H, W, C), whose sizes may differ; uint8 in [0, 255] or float in
        [0, 1]. The rules of :func:`spadecam.inputs.as_image_tensor`, without torch.
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


def read_files(paths: Sequence[Any], channels: int, min_size: int = 1,
               progress: bool = False, keep: bool = True) -> list[np.ndarray]:
    """Each image file at its own size in ``channels``, (C, H_i, W_i) float32 in [0, 1]
    (:func:`spadecam.data.images.load_image`), for ``spadecam score`` and ``evaluate``.

    Every file is tried before an error: one ImageError lists all unusable files
    (unreadable, or a side below ``min_size``, the networks' minimum). ``keep=False`` only
    checks them (each decoded, nothing kept: memory stays flat) and returns [].
    """
    from concurrent.futures import ThreadPoolExecutor

    from spadecam._progress import bar
    from spadecam.data.images import ImageError, load_image
    from spadecam.deploy.outputs import io_threads

    def load(p: Any) -> np.ndarray | ImageError | None:
        try:
            x = load_image(p, channels, None, min_size=min_size)
        except ImageError as exc:
            return exc
        return x if keep else None

    # decoding runs on every core (Pillow releases the GIL); results in input order
    with ThreadPoolExecutor(io_threads()) as pool:
        done = list(bar(pool.map(load, paths), total=len(paths), enabled=progress,
                        desc="reading images"))
    errors = [r for r in done if isinstance(r, ImageError)]
    if errors:
        raise ImageError.combine(errors, len(paths))
    return [r for r in done if isinstance(r, np.ndarray)]


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
    :func:`spadecam.data.images.content_box`), or None when no pixel is padding ("resize",
    or every image already square). The one mask the detectors, ``spadecam train`` and the
    ONNX runner use.
    """
    valid = np.zeros((len(sizes), 1, size, size), dtype=np.float32)
    for i, (h, w) in enumerate(sizes):
        top, left, bh, bw = content_box(h, w, size, policy)
        valid[i, 0, top : top + bh, left : left + bw] = 1.0
    return valid if policy == "letterbox" and bool((valid == 0).any()) else None


@dataclass
class ModelInput:
    """A batch at the model's input size, with what is needed to map results back.

    Attributes
    ----------
    u : ndarray (N, C, S, S) float32 in [0, 1]
    valid : ndarray (N, 1, S, S) float32 in {0, 1}, or None (every pixel is an image pixel)
    sizes : list of (H, W), each image's own size
    boxes : list of (top, left, h, w), or None when the images were not resized
    """

    u: np.ndarray
    valid: np.ndarray | None
    sizes: list[tuple[int, int]]
    boxes: list[tuple[int, int, int, int]] | None


def to_model_input(images: Sequence[np.ndarray], size: int, policy: str = "letterbox") -> ModelInput:
    """Bring images (each (C, H_i, W_i), uint8 or float [0, 1]) to the model's input.

    Images already ``size`` x ``size`` are only converted to float; others are resized with
    :func:`spadecam.data.images.resize_image` (Pillow, bilinear, antialiased) by ``policy``.

    Raises
    ------
    ValueError
        An unknown policy.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {policy!r}")
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
    if all(s == (size, size) for s in sizes):
        return ModelInput(np.stack([to_float(x) for x in images]), None, sizes, None)
    u = np.stack([resize_image(to_float(x), size, policy) for x in images])
    return ModelInput(u, letterbox_mask(sizes, size, policy), sizes,
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
