"""Keep glibc from handing big buffers back to the kernel after every image.

A build allocates and frees arrays of 0.1-2 MB per image and stage (decoded photos, float depth, encoded
members). With glibc's defaults most of them are fresh ``mmap``s or land above the heap's trim threshold, so
every image pays page faults for memory it just freed (measured here: 1.5-2.5 ms of a 10-11 ms in-process
build per image). Raising the two thresholds lets freed memory be reused: a process keeps up to
``trim_threshold`` of free heap, and only arrays of ``mmap_threshold`` or more get their own mapping.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_tuned: bool | None = None


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls return the first answer).

    Nothing is changed where the allocator is not glibc's, or where the environment already sets malloc
    parameters (the user's choice wins).

    Returns:
        True when both thresholds were set.
    """
    global _tuned
    if _tuned is None:
        _tuned = _set(mmap_threshold, trim_threshold)
    return _tuned


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
