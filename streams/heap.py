"""The worker's C heap: give the free space glibc keeps back to the OS.

glibc serves allocations at or above its mmap threshold with ``mmap`` and the
rest from its heap. The threshold is dynamic: freeing an mmap'ed chunk raises it
to that chunk's size (up to 32 MiB), so from then on the large, short-lived
buffers of the Kafka client come from the heap, between long-lived small objects
that keep the heap from shrinking at its top. In a soak (``bench/soak.py``, 40
events/s) the main arena grew ~0.45 MiB/min while the bytes in use stayed at
17 MiB: free space, kept resident.

Two remedies were measured (bench/README, soak):

- a fixed threshold (``mallopt(M_MMAP_THRESHOLD, 128 KiB)``) kept the arena flat,
  but numpy's temporaries of a 100,000-account tick (~800 KB each) were then
  mmap'ed and page-faulted on every tick: the vectorized tick went from 10 to
  21.5 ms of CPU (``bench/engine.py``, 3 interleaved pairs);
- ``malloc_trim(0)`` now and then returns the free pages inside the heap
  (``madvise``) without changing where anything is allocated: RSS then grew only
  with the remembered ids. That is what the worker does, off the event loop
  (ctypes releases the GIL for the call).

Only on glibc; elsewhere :func:`heap_trimmer` returns None.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def heap_trimmer() -> Optional[Callable[[], tuple[bool, float]]]:
    """A function that trims the C heap, returning (memory was released, seconds taken).

    None when the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_heap() -> tuple[bool, float]:
        t0 = time.perf_counter()
        released = bool(trim(0))
        return released, time.perf_counter() - t0

    return trim_heap
