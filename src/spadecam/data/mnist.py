"""MNIST reader for the IDX files (numpy only, no torch).

The four standard files by LeCun et al. are read either gzipped (``.gz``) or raw,
from a folder given directly or from torchvision's layout ``<dir>/MNIST/raw/``.

Public API
----------
load_mnist
    Load the ``"train"`` (60000) or ``"test"`` (10000) split as uint8 arrays.
read_idx
    Parse one IDX file (uint8 payload) with strict checks.
resolve_data_dir
    Find the data folder (argument, ``SPADECAM_DATA``, ``../shared/data/mnist``, cache).
download_mnist
    Download the four files into the cache and verify their payload sha256.

Errors
------
MNISTNotFoundError (FileNotFoundError)
    A file or folder is missing.
MNISTFormatError (ValueError)
    A file is corrupt: bad gzip, truncated, wrong magic, trailing bytes, bad shape,
    or a payload hash that does not match the published one.
MNISTDownloadError (OSError)
    The download itself failed (network, HTTP error).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from spadecam._fs import atomic_write

__all__ = [
    "DEFAULT_MNIST_URL",
    "FILENAMES",
    "PAYLOAD_SHA256",
    "MNISTDownloadError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "default_cache_dir",
    "download_mnist",
    "load_mnist",
    "read_idx",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

#: Default download mirror (the one torchvision uses); overridable with ``SPADECAM_MNIST_URL``.
DEFAULT_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: Split name -> (images file stem, labels file stem), LeCun's names without ``.gz``.
FILENAMES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Published sha256 of the UNCOMPRESSED payloads (the .gz bytes differ between mirrors).
PAYLOAD_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_IDX_UINT8 = 0x08
_HINT = (
    "Pass --data-dir DIR (or data_dir=...), set the SPADECAM_DATA environment variable "
    "to a folder holding the MNIST IDX files, or use --download (download_mnist()) to "
    "fetch them into the cache."
)


class MNISTNotFoundError(FileNotFoundError):
    """An MNIST file or data folder could not be found."""


class MNISTFormatError(ValueError):
    """An MNIST/IDX file is corrupt or not what was expected."""


class MNISTDownloadError(OSError):
    """Downloading an MNIST file failed."""


# --------------------------------------------------------------------------- IDX parsing


def _parse_idx(buf: bytes, source: str, expected_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes; ``source`` names the file in error messages."""
    n = len(buf)
    if n < 4:
        raise MNISTFormatError(
            f"{source}: truncated IDX file: expected at least a 4-byte magic number, "
            f"found {n} byte(s)"
        )
    magic = int.from_bytes(buf[:4], "big")
    dtype_code, ndim = buf[2], buf[3]
    if expected_ndim is None:
        want = ""
    else:
        m = 0x800 | expected_ndim
        want = f" {m} (0x{m:08x}: uint8, {expected_ndim} dims)"
    if buf[0] != 0 or buf[1] != 0:
        raise MNISTFormatError(
            f"{source}: bad IDX magic number: expected{want or ' 0x000008NN (uint8, NN dims)'}, "
            f"found {magic} (0x{magic:08x}); the first two bytes must be zero"
        )
    if dtype_code != _IDX_UINT8:
        raise MNISTFormatError(
            f"{source}: unsupported IDX data type: expected 0x08 (uint8), "
            f"found 0x{dtype_code:02x} (magic 0x{magic:08x})"
        )
    if ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
        raise MNISTFormatError(
            f"{source}: wrong IDX magic number / number of dimensions: expected"
            f"{want or ' at least 1 dimension'}, found {magic} (0x{magic:08x}: {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if n < header:
        raise MNISTFormatError(
            f"{source}: truncated IDX header: expected {header} bytes for {ndim} "
            f"dimension sizes, found {n} bytes"
        )
    dims = tuple(int.from_bytes(buf[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = 1
    for d in dims:
        expected *= d
    found = n - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes in"
        raise MNISTFormatError(
            f"{source}: {what} IDX payload: dims {dims} need exactly {expected} bytes "
            f"after the {header}-byte header, found {found}"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently decompressing ``*.gz``; map errors to MNIST errors."""
    if not path.is_file():
        raise MNISTNotFoundError(f"{path}: MNIST file not found")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise MNISTFormatError(
                f"{path}: expected a valid gzip file, found a corrupt or truncated one ({exc})"
            ) from exc
    return data


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file with a uint8 payload.

    Layout: big-endian uint32 magic ``0x00000800 | ndim`` (byte 2 is the dtype code,
    ``0x08`` = uint8; e.g. 2051 for 3-D images, 2049 for 1-D labels), then ``ndim``
    big-endian uint32 dimension sizes, then ``prod(dims)`` uint8 values in C order.

    Parameters
    ----------
    path : str or os.PathLike
        The file; if its name ends in ``.gz`` it is decompressed first.
    expected_ndim : int, optional
        If given, the magic number must be exactly ``0x800 | expected_ndim``.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape ``dims`` (writable, owns its memory).

    Raises
    ------
    MNISTNotFoundError
        The file does not exist.
    MNISTFormatError
        Bad gzip stream, wrong magic / dtype / number of dims, truncated header or
        payload, or trailing bytes. The message names the file and what was expected
        versus found.
    """
    p = Path(path)
    return _parse_idx(_read_bytes(p), str(p), expected_ndim)


# --------------------------------------------------------------------------- locating files


def _candidates(folder: Path, stem: str) -> list[Path]:
    raw = folder / "MNIST" / "raw"
    return [folder / stem, folder / f"{stem}.gz", raw / stem, raw / f"{stem}.gz"]


def _find_file(folder: Path, stem: str) -> Path:
    """First existing candidate (raw before gz, flat before torchvision layout)."""
    cands = _candidates(folder, stem)
    for c in cands:
        if c.is_file():
            return c
    tried = "\n  ".join(str(c) for c in cands)
    raise MNISTNotFoundError(
        f"MNIST file {stem!r} not found in {folder}; tried:\n  {tried}\n{_HINT}"
    )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and all(
        any(c.is_file() for c in _candidates(folder, stem))
        for pair in FILENAMES.values()
        for stem in pair
    )


def default_cache_dir() -> Path:
    """Cache folder ``$XDG_CACHE_HOME/spadecam/mnist`` (default ``~/.cache/spadecam/mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spadecam" / "mnist"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the folder holding the MNIST files.

    Search order:

    1. ``data_dir`` if given (must be an existing folder; no fallback);
    2. the environment variable ``SPADECAM_DATA`` if set (must be an existing folder);
    3. ``../shared/data/mnist`` relative to the current working directory, if it holds
       the four files (flat or ``MNIST/raw`` layout, raw or ``.gz``);
    4. the cache folder :func:`default_cache_dir` if it holds the four files.

    Returns
    -------
    pathlib.Path
        The folder (not resolved to an absolute path).

    Raises
    ------
    MNISTNotFoundError
        Nothing was found; the message lists every place tried and how to fix it
        (``--data-dir``, ``SPADECAM_DATA``, ``--download``).
    """
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if not p.is_dir():
            raise MNISTNotFoundError(
                f"MNIST data folder {p} (from data_dir) does not exist.\n{_HINT}"
            )
        return p
    env = os.environ.get("SPADECAM_DATA")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise MNISTNotFoundError(
                f"MNIST data folder {p} (from SPADECAM_DATA) does not exist.\n{_HINT}"
            )
        return p
    tried = ["data_dir argument: not given", "SPADECAM_DATA environment variable: not set"]
    shared = Path("..") / "shared" / "data" / "mnist"
    for label, p in (
        ("../shared/data/mnist relative to the working directory", shared),
        ("cache folder", default_cache_dir()),
    ):
        if _has_files(p):
            return p
        why = "does not exist" if not p.is_dir() else "does not hold all four MNIST files"
        tried.append(f"{label}: {p.absolute()} ({why})")
    listing = "\n  ".join(tried)
    raise MNISTNotFoundError(f"MNIST data not found. Places tried:\n  {listing}\n{_HINT}")


# --------------------------------------------------------------------------- loading


def load_mnist(
    split: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split.

    Parameters
    ----------
    split : {"train", "test"}
        ``"train"`` reads ``train-*`` (60000 images), ``"test"`` reads ``t10k-*`` (10000).
    data_dir : str or os.PathLike, optional
        Folder with the files; see :func:`resolve_data_dir` for the search when omitted.
        Each file may be raw or ``.gz``, directly in the folder or under ``MNIST/raw/``.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 28, 28)``, pixel values 0-255 (0 = background).
    labels : numpy.ndarray
        uint8, shape ``(N,)``, values 0-9.

    Raises
    ------
    ValueError
        ``split`` is not ``"train"`` or ``"test"``.
    MNISTNotFoundError
        Folder or file missing.
    MNISTFormatError
        A file is corrupt, images are not 28x28, image and label counts differ, or a
        label is outside 0-9.
    """
    if split not in FILENAMES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = resolve_data_dir(data_dir)
    img_stem, lab_stem = FILENAMES[split]
    img_path, lab_path = _find_file(folder, img_stem), _find_file(folder, lab_stem)
    images = read_idx(img_path, expected_ndim=3)
    labels = read_idx(lab_path, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise MNISTFormatError(
            f"{img_path}: expected 28x28 images, found {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise MNISTFormatError(
            f"{img_path} holds {images.shape[0]} images but {lab_path} holds "
            f"{labels.shape[0]} labels; expected equal counts"
        )
    if labels.size and int(labels.max()) > 9:
        raise MNISTFormatError(f"{lab_path}: expected labels 0-9, found {int(labels.max())}")
    return images, labels


# --------------------------------------------------------------------------- download


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """Return the body of ``url`` (urllib only). Tests monkeypatch this."""
    req = urllib.request.Request(url, headers={"User-Agent": "spadecam"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _existing_ok(folder: Path, stem: str) -> bool:
    """True if a flat copy (raw or .gz) of ``stem`` exists with the published payload hash."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            try:
                if _sha256(_read_bytes(p)) == PAYLOAD_SHA256[stem]:
                    return True
            except MNISTFormatError:
                pass
    return False


def _atomic_write(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write, suffix=".part")


def download_mnist(
    cache_dir: str | os.PathLike | None = None, base_url: str | None = None
) -> Path:
    """Download the four MNIST ``.gz`` files and verify them.

    Each file ``<base_url><name>.gz`` is fetched, decompressed in memory and the sha256
    of the uncompressed payload is compared with :data:`PAYLOAD_SHA256`. Only then is the
    ``.gz`` written, via a temporary file in the same folder and :func:`os.replace`, so
    no half-written file is ever visible. Files already present (raw or ``.gz``) whose
    payload hash matches are skipped without network access.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Target folder; default :func:`default_cache_dir` (``$XDG_CACHE_HOME/spadecam/mnist``
        or ``~/.cache/spadecam/mnist``). Created if needed.
    base_url : str, optional
        Mirror prefix; default ``$SPADECAM_MNIST_URL`` or :data:`DEFAULT_MNIST_URL`.

    Returns
    -------
    pathlib.Path
        The folder holding the verified files (usable as ``data_dir``).

    Raises
    ------
    MNISTDownloadError
        The fetch failed (network or HTTP error).
    MNISTFormatError
        The download is not valid gzip, or its payload sha256 differs from the published
        value (the message names the file and both hashes); nothing is written then.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = base_url or os.environ.get("SPADECAM_MNIST_URL") or DEFAULT_MNIST_URL
    if not base.endswith("/"):
        base += "/"
    folder.mkdir(parents=True, exist_ok=True)
    for pair in FILENAMES.values():
        for stem in pair:
            if _existing_ok(folder, stem):
                logger.info("MNIST %s already present and verified in %s", stem, folder)
                continue
            url = f"{base}{stem}.gz"
            logger.info("downloading %s", url)
            try:
                gz = _fetch(url)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise MNISTDownloadError(
                    f"could not download {url}: {exc}. Set SPADECAM_MNIST_URL to another "
                    f"mirror, or pass --data-dir / SPADECAM_DATA to use local files."
                ) from exc
            try:
                payload = gzip.decompress(gz)
            except (OSError, EOFError, zlib.error) as exc:
                raise MNISTFormatError(
                    f"{stem}.gz from {url}: expected a valid gzip file, found a corrupt "
                    f"one ({exc})"
                ) from exc
            got, want = _sha256(payload), PAYLOAD_SHA256[stem]
            if got != want:
                raise MNISTFormatError(
                    f"{stem} from {url}: payload sha256 mismatch: expected {want}, "
                    f"found {got}; nothing was written"
                )
            _atomic_write(folder / f"{stem}.gz", gz)
    return folder
