"""Opening one image file safely with Pillow, for :mod:`spadecam.data.images`: a missing,
empty or broken file named as such, one picture per file (no multi-page TIFF or animation
read from its first page), Pillow's decompression-bomb limit as a warning and a refusal,
TIFFs Pillow misreads decoded with libtiff, and the EXIF orientation applied. Everything
fails with :class:`ImageError`, which names the file.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

from spadecam._progress import warn

__all__ = ["BYTES_PER_PIXEL_SCORED", "COLOUR_MODES", "GREY_MODES", "ImageError"]

#: Pillow modes read as one grey channel (``LA`` loses its alpha).
GREY_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N")
#: Pillow modes read as three colour channels (alpha dropped; palette expanded). Palette
#: modes ("P", "PA") whose used entries are all grey are read as one channel instead.
COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
#: EXIF Orientation values that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = (5, 6, 7, 8)
_ORIENTATION = 0x0112


class ImageError(ValueError):
    """An image or mask file cannot be used; the message names the file(s) and the reason.

    Attributes
    ----------
    paths : list of str
        The files at fault (several when :func:`spadecam.data.images.read_images` lists every unusable file).
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
