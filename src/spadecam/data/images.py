"""Reading the user's own images and masks with Pillow: bit depth, channels, size.

numpy + Pillow only (no torch). Every image becomes a float32 array (C, H, W) in [0, 1].

Choices, and what this module does
----------------------------------
* **Scaling**: an image is divided by the maximum of its storage type — 255 for 8-bit and
  65535 for 16-bit (PNG ``I;16``, TIFF ``I;16``, e.g. Kinect depth frames). 16-bit images are
  read at full precision and never pass through 8 bits. No mean/std normalisation follows:
  the VAE's Bernoulli likelihood (eq. 1) wants [0, 1].
* **Orientation**: images and masks are read as they are displayed: an EXIF Orientation tag
  (a phone's JPEG stored 300x200 and shown 200x300) is applied before anything else, so
  scores, overlays and mask sizes refer to the picture the user sees.
* **Modes**: ``1``, ``L``, ``LA``, ``I;16*`` are grey (1 channel); ``RGB``, ``RGBA``,
  ``CMYK``, ``YCbCr`` (JPEG) are colour (3 channels); palette images (``P``, ``PA``) are grey
  when every palette entry their pixels use is grey (R = G = B), else colour. Alpha is
  dropped, not composited. 32-bit integer or float images and 16-bit colour (which Pillow
  would silently reduce to 8 bits) are refused with :class:`ImageError`.
* **Channels**: ``channels=1`` turns colour into grey with the ITU-R 601-2 luma weights
  (0.299 R + 0.587 G + 0.114 B, Pillow's own), computed in float so 16 bits survive;
  ``channels=3`` repeats a grey image three times; ``None`` keeps the image's own count.
* **Size policy** (:data:`spadecam.preprocess.RESIZE_POLICIES`): ``"resize"`` (default)
  stretches every image to size x size and may change its aspect ratio; ``"letterbox"``
  scales the longer side to ``size``, keeps the aspect ratio and pads the rest with zeros
  (black), centred. Both use
  Pillow's bilinear filter in 32-bit float mode ("F"; antialiased when shrinking, never
  overshoots [0, 1]).
* **Masks**: any non-zero pixel is anomalous; masks go through the same size policy with
  nearest-neighbour resampling, so they stay binary.
* **One image per file**: a file of several pages or frames (a multi-page TIFF, an animated
  GIF or PNG) is refused with an :class:`ImageError` naming it, never read from its first
  page alone; a phone's MPO JPEG is read as its primary picture. Files given by name are
  read whatever their suffix (a single-frame GIF too); in folders only
  :data:`spadecam.data.folders.IMAGE_SUFFIXES` are listed.
* **Large images**: above Pillow's decompression-bomb limit (89 megapixels) a
  ``SpadecamWarning`` names the file and the memory scoring it takes (about
  :data:`BYTES_PER_PIXEL_SCORED` bytes per pixel); above twice the limit the file is refused.
* **Errors**: :func:`read_images` reads every file before it fails and lists every file it
  cannot use in one :class:`ImageError`, so one run shows all of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from spadecam._progress import bar, tick
from spadecam.data._pillow import (  # noqa: F401 (the public names re-exported)
    _ORIENTATION,
    _TRANSPOSED,
    BYTES_PER_PIXEL_SCORED,
    COLOUR_MODES,
    GREY_MODES,
    ImageError,
    _check_one_frame,
    _missing,
    _open,
    _open_file,
)
from spadecam.preprocess import resize_image, resize_mask

__all__ = [
    "GREY_MODES",
    "COLOUR_MODES",
    "ImageError",
    "image_channels",
    "image_hw",
    "image_sizes",
    "load_image",
    "load_mask",
    "read_image",
    "read_images",
    "to_channels",
]



def _grey_palette(image: Image.Image) -> bool:
    """True for a palette image whose pixels use only grey entries (R = G = B)."""
    palette = image.getpalette("RGB")
    if palette is None:
        return False
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    index = np.asarray(image)
    used = np.unique(index[..., 0] if index.ndim == 3 else index)  # PA: (index, alpha)
    used = used[used < len(rgb)]
    entries = rgb[used]
    return bool((entries[:, 0] == entries[:, 1]).all() and (entries[:, 1] == entries[:, 2]).all())


def image_channels(image: Image.Image, path: str | os.PathLike = "<image>") -> int:
    """Channel count an opened image is read with: 1 (grey) or 3 (colour).

    Grey: :data:`GREY_MODES`, and palette images whose used entries are all grey. Colour:
    the other :data:`COLOUR_MODES`.

    Raises
    ------
    ImageError
        For a mode in neither :data:`GREY_MODES` nor :data:`COLOUR_MODES`.
    """
    if image.mode in GREY_MODES:
        return 1
    if image.mode in ("P", "PA"):
        return 1 if _grey_palette(image) else 3
    if image.mode in COLOUR_MODES:
        return 3
    raise ImageError(
        f"{path}: unsupported image mode {image.mode!r} (32-bit integer or float images are "
        f"not read); supported: grey {GREY_MODES}, colour {COLOUR_MODES}", [path],
    )


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as displayed (EXIF Orientation applied).

    Read from the header where the format allows (JPEG, BMP); a PNG keeps its EXIF after
    the pixels and Pillow applies a TIFF's orientation itself, so those are decoded.

    Raises
    ------
    ImageError
        Missing, empty or unidentifiable file.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)", [path])
    try:
        with _open_file(path) as im:
            _check_one_frame(im, path)
            if im.format == "TIFF":  # Pillow turns some TIFFs itself: decode to be sure
                oriented = _open(path)
                return oriented.height, oriented.width
            turned = im.getexif().get(_ORIENTATION) in _TRANSPOSED
            return (im.width, im.height) if turned else (im.height, im.width)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})",
                         [path]) from None


def image_sizes(paths: Sequence[str | os.PathLike], min_size: int = 1) -> list[tuple[int, int]]:
    """(height, width) of each file as displayed (:func:`image_hw`, from the header where the
    format allows), in input order.

    Raises
    ------
    ImageError
        Every missing, unreadable or too small file (a side below ``min_size``) at once.
    """
    out: list[tuple[int, int]] = []
    errors: list[ImageError] = []
    for p in paths:
        try:
            h, w = image_hw(p)
        except ImageError as exc:
            errors.append(exc)
            continue
        if min(h, w) < min_size:
            errors.append(ImageError(
                f"{p}: image is {w}x{h} pixels, smaller than the network's minimum of "
                f"{min_size}x{min_size}", [p]))
        out.append((h, w))
    if errors:
        raise ImageError.combine(errors, len(paths))
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to float32 (C, H, W) in [0, 1] with its own channel count.

    Parameters
    ----------
    path : path to a PNG, TIFF, JPEG or BMP file

    Returns
    -------
    ndarray (C, H, W), float32 in [0, 1], C = 1 (grey) or 3 (colour); 8-bit values are
    divided by 255, 16-bit values by 65535.

    Raises
    ------
    ImageError
        Missing file or broken link, zero-byte, corrupt or truncated file; unsupported mode;
        16-bit colour; a file of several pages or frames.

    Notes
    -----
    The EXIF Orientation tag is applied (the array is the image as displayed); palette
    images with grey entries only are read as one channel (see the module notes).
    """
    path = Path(path)
    im = _open(path)
    c = image_channels(im, path)
    if im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535.0
    elif c == 1:
        a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    else:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    return np.ascontiguousarray(a, dtype=np.float32)


def to_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert (C, H, W) float images to ``channels`` channels (see the module notes).

    Parameters
    ----------
    x : ndarray (1 or 3, H, W), float in [0, 1]
    channels : {1, 3} or None
        None returns ``x`` unchanged.

    Raises
    ------
    ValueError
        ``channels`` other than 1, 3 or None, or ``x`` with other than 1 or 3 channels.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if x.shape[0] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {x.shape}")
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=0)
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"
    return np.tensordot(luma, x, axes=1)[None].astype(np.float32)


def load_image(
    path: str | os.PathLike,
    channels: int | None = None,
    size: int | None = None,
    policy: str = "resize",
    min_size: int = 1,
) -> np.ndarray:
    """Read one image and prepare it for the models: channels, then size.

    Parameters
    ----------
    path : image file (PNG, TIFF, JPEG, BMP; 8- or 16-bit grey, RGB, RGBA, palette)
    channels : {1, 3} or None
        Output channels (None keeps the file's own).
    size : int or None
        Output height = width (None keeps the file's size).
    policy : {"resize", "letterbox"}
    min_size : int
        Smallest accepted height and width of the file, e.g. the networks' minimum input.

    Returns
    -------
    ndarray (C, H, W), float32 in [0, 1]

    Raises
    ------
    ImageError
        Unreadable file (see :func:`read_image`) or a side below ``min_size``.
    """
    x = read_image(path)
    if min(x.shape[1:]) < min_size:
        raise ImageError(
            f"{path}: image is {x.shape[2]}x{x.shape[1]} pixels, smaller than the network's "
            f"minimum of {min_size}x{min_size}", [path],
        )
    x = to_channels(x, channels)
    return resize_image(x, size, policy) if size is not None else x


def read_images(
    paths: Sequence[str | os.PathLike],
    channels: int | None = None,
    size: int | None = None,
    policy: str = "resize",
    min_size: int = 1,
    progress: bool = False,
    keep: bool = True,
    sizes: list[tuple[int, int]] | None = None,
    desc: str = "reading images",
) -> list[np.ndarray]:
    """Read image files for the models: the one reader of ``spadecam train``, ``score``,
    ``evaluate`` and the ONNX runner (:func:`load_image` per file, decoded on up to four
    threads: Pillow releases the GIL; results in input order).

    Every file is tried before an error is raised, so one :class:`ImageError` lists all
    unusable files at once.

    Parameters
    ----------
    paths : image files
    channels : {1, 3} or None
        Output channels; None keeps the files' own count, which must then be the same for all.
    size : int or None
        Output height = width, each image resized by ``policy`` as it is read (memory stays
        that of the model-size images); None keeps each file's own size.
    policy, min_size : see :func:`load_image`
    progress : bool, a progress bar (on a terminal only)
    keep : bool
        False only checks the files (each decoded, nothing kept: memory stays flat) and
        returns [].
    sizes : list, optional
        If given, the (height, width) of each file as read (oriented) is appended to it.

    Returns
    -------
    list of ndarray (C, H, W), float32 in [0, 1]; H = W = ``size`` when given.

    Raises
    ------
    ImageError
        Unreadable or too small files (all of them, one per line; ``paths`` lists them), or
        mixed grey and colour files with ``channels=None`` (the message names one file of
        each kind).
    ValueError
        No paths.
    """
    from concurrent.futures import ThreadPoolExecutor

    from spadecam._runtime import io_threads

    if not paths:
        raise ValueError("no images to read")

    failed = threading.Event()  # once a file failed, the rest are only checked, not kept
    seen: set[int] = set()  # the channel counts met (channels=None)

    def load(p: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int], int] | ImageError:
        try:
            x = load_image(p, channels, None, policy, min_size)
        except ImageError as exc:
            failed.set()
            return exc
        hw, c = (int(x.shape[1]), int(x.shape[2])), int(x.shape[0])
        if channels is None:
            seen.add(c)
            if len(seen) > 1:
                failed.set()  # mixed channel counts: an error below, nothing to keep
        if not keep or failed.is_set():
            return np.empty(0, np.float32), hw, c
        return (resize_image(x, size, policy) if size is not None else x), hw, c

    done = []
    with ThreadPoolExecutor(io_threads()) as pool:
        try:
            for n, r in enumerate(bar(pool.map(load, paths), total=len(paths),
                                      enabled=progress, desc=desc)):
                tick(f"{desc}: {n}/{len(paths)}")
                done.append(r)
        except BaseException:  # Ctrl-C or a bug: the files not yet started are not read
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    errors = [r for r in done if isinstance(r, ImageError)]
    if errors:
        raise ImageError.combine(errors, len(paths))
    first: dict[int, Path] = {}  # channel count -> first file with it
    for p, r in zip(paths, done):
        first.setdefault(r[2], Path(p))
    if channels is None and len(first) > 1:
        grey, colour = first[1], first[3]
        raise ImageError(
            f"mixed channel counts: {grey} has 1 channel(s) but {colour} has 3; pass "
            "--channels 1 or --channels 3 (channels=1 or 3) to convert them all",
            [grey, colour],
        )
    if sizes is not None:
        sizes.extend(r[1] for r in done)
    return [r[0] for r in done] if keep else []


def load_mask(
    path: str | os.PathLike, size: int | None = None, policy: str = "resize"
) -> np.ndarray:
    """Read a ground-truth mask: any non-zero pixel (in any channel) is anomalous.

    Returns
    -------
    ndarray (H, W) or (size, size), uint8 in {0, 1}

    Raises
    ------
    ImageError
        Unreadable file or unsupported mode.
    """
    path = Path(path)
    x = read_image(path)
    m = np.asarray((x > 0).any(axis=0), dtype=np.uint8)
    return resize_mask(m, size, policy) if size is not None else m
