"""Small generated image files for the own-image tests (folders, IO, CLI workflow).

Normal images are dark with faint noise; anomalies carry a bright 8x8 square whose mask is
saved beside them. Everything is seeded, tiny (32x32 by default) and written with Pillow.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write an array with Pillow (uint8 -> L/RGB/RGBA, uint16 -> I;16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def png_rgb16(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def normal_image(rng: np.random.Generator, size: int = 32, bits: int = 8) -> np.ndarray:
    if bits == 16:  # depth-like: mid-range values an 8-bit conversion would clip to 255
        return np.clip(rng.normal(20000, 1500, (size, size)), 0, 65535).astype(np.uint16)
    return np.clip(rng.normal(40, 10, (size, size)), 0, 255).astype(np.uint8)


def anomalous_image(
    rng: np.random.Generator, size: int = 32, bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    x = normal_image(rng, size, bits)
    m = np.zeros((size, size), dtype=np.uint8)
    r, c = rng.integers(2, size - 10, size=2)
    x[r : r + 8, c : c + 8] = 50000 if bits == 16 else 230
    m[r : r + 8, c : c + 8] = 255
    return x, m


def make_folders(
    root: Path,
    n_normal: int = 30,
    n_anomaly: int = 12,
    n_test: int = 8,
    size: int = 32,
    bits: int = 8,
    seed: int = 0,
) -> dict[str, Path]:
    """train/good, train/defect, test/good, test/defect, test/masks (``<stem>_mask.png``)."""
    rng = np.random.default_rng(seed)
    d = {k: root / k for k in ("train/good", "train/defect", "test/good", "test/defect",
                               "test/masks")}
    for i in range(n_normal):
        save(d["train/good"] / f"n{i:03d}.png", normal_image(rng, size, bits))
    for i in range(n_anomaly):
        save(d["train/defect"] / f"a{i:03d}.png", anomalous_image(rng, size, bits)[0])
    for i in range(n_test):
        save(d["test/good"] / f"tn{i:03d}.png", normal_image(rng, size, bits))
        x, m = anomalous_image(rng, size, bits)
        save(d["test/defect"] / f"ta{i:03d}.png", x)
        save(d["test/masks"] / f"ta{i:03d}_mask.png", m)
    return d
