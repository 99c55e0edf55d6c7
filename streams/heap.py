"""The worker's C heap: keep glibc from growing it with freed network buffers.

glibc serves allocations at or above its mmap threshold (128 KiB at start) with
``mmap`` and returns them to the OS on ``free``. Its threshold is dynamic: freeing
an mmap'ed chunk raises the threshold to that chunk's size (up to 32 MiB), so from
then on the large, short-lived buffers of a Kafka client (fetch responses, record
batches being built) come from the heap instead, between long-lived small objects
that keep it from shrinking. In a soak (``bench/soak.py``, 40 events/s) the main
arena grew ~0.45 MiB/min with the bytes in use flat at 17 MiB: free space glibc
kept resident. With the threshold fixed at 128 KiB the arena stayed at 18 MiB
(free ~1 MiB) over the same run.

Setting ``M_MMAP_THRESHOLD`` with ``mallopt`` fixes it and turns the dynamic
adjustment off (mallopt(3)). Only on glibc; elsewhere nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: mallopt(3) parameter number of the mmap threshold (glibc malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc's largest accepted threshold on 64-bit (HEAP_MAX_SIZE / 2)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def pin_mmap_threshold(nbytes: int) -> bool:
    """Serve allocations of at least ``nbytes`` with mmap from now on, without the dynamic raise.

    Returns True when glibc accepted it; False when ``nbytes`` is 0 (leave glibc's
    default), outside ``1..MAX_MMAP_THRESHOLD``, or the C library is not glibc.
    """
    if nbytes <= 0:
        return False
    if nbytes > MAX_MMAP_THRESHOLD:
        log.warning("mmap threshold %d is above glibc's maximum %d: left dynamic", nbytes, MAX_MMAP_THRESHOLD)
        return False
    libc = _glibc()
    if libc is None:
        log.info("not glibc: the C heap's mmap threshold is left as it is")
        return False
    ok = bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(nbytes)))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused: left dynamic", nbytes)
    return ok
