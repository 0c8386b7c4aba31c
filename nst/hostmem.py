"""Host memory allocator settings for the CPU step.

XLA:CPU allocates each execution's scratch buffer (~110 MiB for a 256 px step) when the program
runs and frees it after. glibc serves a request that large from a fresh ``mmap`` (worker threads
get their own arenas, whose heaps cap at 64 MiB, so ``MALLOC_MMAP_THRESHOLD_`` cannot help), and
``free`` unmaps it: every step then page-faults the whole buffer in again (~29k faults, ~60 ms of
kernel time per 256 px step on 2 cores, measured with ``getrusage``). With one arena, no mmap'd
chunks and a high trim threshold, freed memory stays mapped and the next step reuses it.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap mapped

# Settings a user may already have chosen for the allocator: leave theirs alone.
_USER_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 -- glibc only (musl has no mallopt)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Keep freed heap memory mapped so per-step XLA buffers are reused without page faults.
    Call before JAX starts its threads (first thing in an entry point); threads that already
    own an arena keep it. Skipped, returning False, when ``NST_MALLOC_TUNE=0``, when the user
    set glibc allocator variables or preloads another allocator, or off glibc."""
    if os.environ.get("NST_MALLOC_TUNE", "1") == "0":
        return False
    if any(v in os.environ for v in _USER_ENV) or os.environ.get("LD_PRELOAD"):
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_ARENA_MAX, 1) == 1
    ok &= libc.mallopt(_M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return bool(ok)


def trim() -> None:
    """Give free heap memory back to the system (``malloc_trim``): before measuring a peak RSS
    that memory kept by :func:`tune_malloc` for an earlier, larger program would inflate."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["tune_malloc", "trim"]
