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
* **Size policy** (:data:`RESIZE_POLICIES`): ``"resize"`` (default) stretches every image to
  size x size and may change its aspect ratio; ``"letterbox"`` scales the longer side to
  ``size``, keeps the aspect ratio and pads the rest with zeros (black), centred. Both use
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
* **Errors**: :func:`load_images` reads every file before it fails and lists every file it
  cannot use in one :class:`ImageError`, so one run shows all of them.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from spadecam._progress import bar, tick, warn

__all__ = [
    "GREY_MODES",
    "COLOUR_MODES",
    "RESIZE_POLICIES",
    "ImageError",
    "content_box",
    "image_channels",
    "image_hw",
    "load_image",
    "load_images",
    "load_mask",
    "read_image",
    "resize_image",
    "resize_mask",
    "to_channels",
]

#: Pillow modes read as one grey channel (``LA`` loses its alpha).
GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N")
#: Pillow modes read as three colour channels (alpha dropped; palette expanded). Palette
#: modes ("P", "PA") whose used entries are all grey are read as one channel instead.
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
#: EXIF Orientation values that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = (5, 6, 7, 8)
_ORIENTATION = 0x0112
#: Ways of bringing an image to size x size: stretch, or keep the aspect ratio and pad.
RESIZE_POLICIES = ("resize", "letterbox")


class ImageError(ValueError):
    """An image or mask file cannot be used; the message names the file(s) and the reason.

    Attributes
    ----------
    paths : list of str
        The files at fault (several when :func:`load_images` lists every unusable file).
    """

    def __init__(self, message: str, paths: Sequence[str | os.PathLike] = ()) -> None:
        super().__init__(message)
        self.paths = [str(p) for p in paths]

    @classmethod
    def combine(
        cls, errors: Sequence[ImageError], total: int | None = None, what: str = "images"
    ) -> ImageError:
        """One error listing several (one per line); a single error is returned as it is."""
        if len(errors) == 1:
            return errors[0]
        lines = [line for e in errors for line in str(e).splitlines() if line.strip()
                 and not line.endswith("(nothing was written):")]
        return cls(
            f"{len(lines)}{'' if total is None else f' of {total}'} {what} cannot be used "
            "(nothing was written):\n  "
            + "\n  ".join(line.strip() for line in lines),
            [p for e in errors for p in e.paths],
        )


def _missing(path: Path) -> ImageError:
    if path.is_symlink():
        return ImageError(
            f"{path}: broken symbolic link (points to {os.readlink(path)}, which does not "
            "exist)", [path],
        )
    if path.exists():
        return ImageError(f"{path}: not a file", [path])
    return ImageError(f"{path}: no such file", [path])


def _misread_tiff(im: Image.Image) -> bool:
    """An uncompressed TIFF turned by 90/270 degrees, which Pillow's own decoder scrambles.

    Pillow (13.0 measured) swaps such an image's size for display but then decodes the
    stored rows with the swapped width; its libtiff path reads the same file correctly.
    """
    return (im.format == "TIFF" and im.getexif().get(_ORIENTATION) in _TRANSPOSED
            and not getattr(im, "use_load_libtiff", True))


_LIBTIFF_LOCK = threading.Lock()


def _open_with_libtiff(path: Path) -> ImageFile.ImageFile:
    from PIL import TiffImagePlugin

    # the flag is read when the file is opened; set it for this one open only
    with _LIBTIFF_LOCK:
        saved = TiffImagePlugin.READ_LIBTIFF
        TiffImagePlugin.READ_LIBTIFF = True
        try:
            with warnings.catch_warnings():  # _open_file said it once already
                warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            TiffImagePlugin.READ_LIBTIFF = saved


#: Bytes of memory per pixel that scoring one large image was measured to take at its peak
#: (a 10000 x 10000 grey PNG: 4.4 GB with torch, 1.65 GB with onnxruntime).
BYTES_PER_PIXEL_SCORED = 44


def _check_one_frame(im: Image.Image, path: Path) -> None:
    """ImageError for a file of several pages or frames (multi-page TIFF, animated GIF or
    PNG, ...): spadecam scores one image per file, and reading its first page alone would
    silently leave the others unscored. A JPEG of the MPO kind (phones write one: the picture
    and a preview or a second view) is read as its first, primary, picture."""
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1 and im.format == "TIFF":
        frames = _full_resolution_pages(im)
    if frames > 1 and im.format != "MPO":
        raise ImageError(
            f"{path}: holds {frames} pages or frames ({im.format}); spadecam reads one image per "
            "file and would score only the first: save each page as its own file (e.g. "
            "with Pillow's ImageSequence or `convert file.tif page-%d.png`)", [path])


def _full_resolution_pages(im: Image.Image) -> int:
    """Pages of a TIFF that are images of their own: a page whose NewSubfileType (tag 254)
    marks it a reduced-resolution copy (a thumbnail or a pyramid level, bit 0) is not
    counted. Leaves ``im`` on its first page."""
    count = 0
    try:
        for i in range(int(getattr(im, "n_frames", 1))):
            im.seek(i)
            count += not (int(getattr(im, "tag_v2", {}).get(254, 0) or 0) & 1)
    finally:
        im.seek(0)
    return count


_OPEN_LOCK = _LIBTIFF_LOCK  # one lock: both swap process-wide settings for one open


def _open_file(path: Path) -> ImageFile.ImageFile:
    """``Image.open`` with Pillow's DecompressionBombWarning replaced by a SpadecamWarning that
    names the file and the memory scoring it takes (Pillow's own names neither).

    Pillow checks the size in ``Image.open``; only its bomb warning is silenced there (other
    warnings follow the caller's filters), and the lock keeps the reading threads from
    swapping the warning filters under each other.
    """
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        f = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    pixels = f.width * f.height
    if limit is not None and pixels > limit:
        warn(f"{path}: {f.width}x{f.height} pixels ({pixels / 1e6:.0f} megapixels) is above "
             f"Pillow's decompression-bomb limit ({limit / 1e6:.0f} megapixels); scoring it "
             f"takes up to about {pixels * BYTES_PER_PIXEL_SCORED / 1e9:.1f} GB of memory. Make "
             "sure the file is what you meant to score, or shrink it")
    return f


def _open(path: Path) -> Image.Image:
    """Open, fully decode and orient an image; Pillow's many failure types become ImageError."""
    if not path.is_file():
        raise _missing(path)
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)", [path])
    try:
        f = _open_file(path)
        _check_one_frame(f, path)
        if _misread_tiff(f):
            f = _open_with_libtiff(path)
        # Pillow decodes 16-bit colour PNGs straight to 8 bits; refuse instead of clipping
        if f.mode in COLOUR_MODES and any(";16" in str(t.args) for t in f.tile):
            raise ImageError(
                f"{path}: 16-bit colour images cannot be read at full precision with Pillow; "
                "save it as 16-bit grey or 8-bit colour", [path],
            )
        f.load()  # decode now: truncated files fail here, not later
        im = ImageOps.exif_transpose(f)  # as displayed (EXIF Orientation applied)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})",
                         [path]) from None
    except Exception as exc:  # UnidentifiedImageError, OSError("truncated"), SyntaxError, ...
        raise ImageError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})",
                         [path]) from None
    return im


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


def load_images(
    paths: Sequence[str | os.PathLike],
    channels: int | None,
    size: int,
    policy: str = "resize",
    min_size: int = 1,
    progress: bool = True,
    desc: str = "reading images",
    sizes: list[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, int]:
    """Read many images into one float32 batch (N, C, size, size) in [0, 1].

    With ``channels=None`` all images must have the same channel count, which is then used;
    otherwise each image is converted. Every file is tried before an error is raised, so the
    error lists all unusable files at once.

    Parameters
    ----------
    paths : image files
    channels : {1, 3} or None
    size : int, output height = width
    policy, min_size : see :func:`load_image`
    progress : bool, a progress bar (on a terminal only)
    sizes : list, optional
        If given, the (height, width) of each file as read (oriented) is appended to it.

    Returns
    -------
    images : ndarray (N, C, size, size), float32 in [0, 1]
    channels : int, the C used

    Raises
    ------
    ImageError
        Unreadable or too small files (all of them, one per line; ``paths`` lists them), or
        mixed grey and colour files with ``channels=None`` (the message names one file of
        each kind).
    ValueError
        No paths.
    """
    if not paths:
        raise ValueError("no images to read")
    out: list[np.ndarray] = []
    errors: list[ImageError] = []
    first: dict[int, Path] = {}  # channel count -> first file with it
    for n, p in enumerate(bar(paths, enabled=progress, desc=desc)):
        tick(f"reading images: {n}/{len(paths)}")
        try:
            x = load_image(p, None, None, policy, min_size)
        except ImageError as exc:
            errors.append(exc)
            continue
        first.setdefault(x.shape[0], Path(p))
        if sizes is not None:
            sizes.append((int(x.shape[1]), int(x.shape[2])))
        if not errors:  # once a file failed, the batch is only checked, not built
            if channels is None and len(first) > 1:
                continue
            out.append(resize_image(to_channels(x, channels), size, policy))
    if errors:
        raise ImageError.combine(errors, len(paths))
    if channels is None and len(first) > 1:
        grey, colour = first[1], first[3]
        raise ImageError(
            f"mixed channel counts: {grey} has 1 channel(s) but {colour} has 3; pass "
            "--channels 1 or --channels 3 (channels=1 or 3) to convert them all",
            [grey, colour],
        )
    return np.stack(out), out[0].shape[0]


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
