"""Process-level tuning shared by the CLI and the benchmarks, and the thread count of image IO."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["io_threads", "is_exporting", "tune_malloc"]

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_malloc(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed large blocks in the heap instead of returning them to the OS.

    glibc serves every allocation above its mmap threshold (32 MB at most) with fresh pages
    and unmaps them on free, so a scoring loop that allocates the same big tensors each batch
    pays page faults every time (1.1-2.7x slower on the 2-core machines we measured).
    ``mallopt(M_MMAP_MAX, 0)`` and a high ``M_TRIM_THRESHOLD`` keep those pages for reuse;
    peak memory is unchanged, only its release to the OS is deferred. Same effect as the
    environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>``.

    Returns True when applied (glibc on Linux), False elsewhere (a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok


def is_exporting() -> bool:
    """True while torch.export traces the code (``spadecam export``): code that branches on
    data, or uses ops ONNX lacks, takes its export path then. False on torch builds without
    ``torch.compiler.is_exporting`` (before 2.7), which cannot run the export anyway."""
    import torch

    probe = getattr(torch.compiler, "is_exporting", None)
    return bool(probe()) if probe is not None else False


def io_threads() -> int:
    """Threads for decoding and encoding images (Pillow releases the GIL): the cores, <= 4."""
    return max(1, min(4, os.cpu_count() or 1))
