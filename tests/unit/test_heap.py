"""streams/heap.py: returning the free space inside glibc's heap to the OS.

Runs in a fresh interpreter: 96 MiB of 64 KiB buffers (below glibc's mmap
threshold, so from the heap) are allocated, all but the last are freed (the last
one pins the top of the heap, so glibc's own trimming of the top cannot release
anything), and the resident set is read before and after the trim.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams import heap

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from streams.heap import heap_trimmer

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

bufs = [bytearray(b"x" * (64 << 10)) for _ in range(96 * 16)]
top = bufs[-1]
del bufs[:-1]
before = rss_mib()
released, seconds = heap_trimmer()()
print(before - rss_mib(), released, seconds)
"""


@pytest.mark.skipif(heap.heap_trimmer() is None, reason="needs glibc")
def test_trim_returns_the_free_space_inside_the_heap():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    dropped, released, seconds = out.stdout.split()
    assert released == "True"
    assert float(dropped) > 64, out.stdout  # of the ~96 MiB freed below the pinned top
    assert float(seconds) < 1.0


@pytest.mark.skipif(heap.heap_trimmer() is None, reason="needs glibc")
def test_worker_trims_every_interval(caplog):
    import asyncio
    import contextlib
    import logging

    from streams.worker import trim_heap_every

    caplog.set_level(logging.DEBUG, logger="marginwatch.worker")

    async def run_for(seconds):
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(trim_heap_every(0.02), seconds)

    asyncio.run(run_for(0.3))
    trims = [r for r in caplog.records if r.getMessage().startswith("C heap trim: released=")]
    assert len(trims) >= 3, [r.getMessage() for r in caplog.records]


def test_interval_zero_turns_trimming_off(caplog):
    import asyncio
    import logging

    from streams.worker import trim_heap_every

    caplog.set_level(logging.INFO, logger="marginwatch.worker")
    asyncio.run(asyncio.wait_for(trim_heap_every(0), 1.0))  # returns at once
    assert any("C heap trimming off (MW_MALLOC_TRIM_INTERVAL_S=0)" in r.getMessage() for r in caplog.records)
