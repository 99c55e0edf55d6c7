"""streams/heap.py: the worker's fixed glibc mmap threshold.

mallopt is process-wide and cannot be undone, so each case runs in a fresh
interpreter. The probe frees a 4 MiB mmap'ed buffer (glibc's dynamic threshold
then rises to 4 MiB) and counts how many of four 512 KiB buffers are mmap'ed
(``mallinfo2().hblks``): all four with the threshold pinned, none without.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams import heap

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, sys
from streams.heap import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pin":
    assert pin_mmap_threshold(128 * 1024)
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblks
bufs = [bytearray(512 << 10) for _ in range(4)]
print(libc.mallinfo2().hblks - before)
"""


def _mmapped_buffers(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(heap._glibc() is None or not hasattr(heap._glibc(), "mallinfo2"), reason="needs glibc >= 2.33")
def test_pinned_threshold_keeps_large_buffers_out_of_the_heap():
    assert _mmapped_buffers("dynamic") == 0  # glibc raised its threshold past 512 KiB
    assert _mmapped_buffers("pin") == 4


def test_zero_or_oversized_threshold_leaves_glibc_alone():
    assert heap.pin_mmap_threshold(0) is False
    assert heap.pin_mmap_threshold(heap.MAX_MMAP_THRESHOLD + 1) is False
