"""Keep freed tensor memory in the process (glibc malloc), for CPU inference.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB, adjusted at run
time) with a fresh ``mmap`` and unmaps it on free, so each forward pass page-faults its large
activations in again: the small backbone's expanded stride-4 maps are 64 MiB per batch of 8,
and zero-filling one padded copy took 12 ms of a 76 ms forward on 2 cores, all of it first
touch. ``mallopt(M_MMAP_MAX, 0)`` serves them from the heap instead, and a high
``M_TRIM_THRESHOLD`` keeps freed pages for the next batch: the backbone at 288 px went from
0.076 to 0.042 s per batch of 8 and ``myriad expert evaluate`` from 51 to 78 images/s, with
the same numbers. The cost is that the process keeps its peak heap (it does not shrink after
a large batch). Process-wide; a no-op off glibc. ``expert.heap_allocations: false`` turns it
off.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the most mallopt takes (an int): ~2 GiB of freed heap kept
_done = False


def keep_freed_memory() -> bool:
    """Large allocations from the heap, freed pages kept; True when glibc took both settings."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if not _done:
        log.debug("mallopt refused the heap settings; allocations stay as they were")
    return _done
