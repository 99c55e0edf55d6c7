"""What the engine keeps per applied event: the remembered id, and nothing else.

A soak of the worker (bench/soak.py) grew ~1 MiB/min: besides the ids the
contract asks to remember, margin-status formatting kept an ``lru_cache`` of
65,536 Decimal → text entries, filled by every distinct balance, quantity and
entry price ever formatted (~20 MiB when full). State must follow the live book.
"""
from __future__ import annotations

import gc
import sys
import tracemalloc

from streams.margin.reference import MarginConfig
from tests.unit.conftest import asset, collateral, fill, instrument, new_engine, outputs_of

LIN = instrument("LIN", "linear", "USDT", "1", ((None, "0.1"),), ts=0)


def _seen_bytes(seen) -> int:
    return seen.memory_bytes(sys.getsizeof)


def test_applied_events_retain_only_their_remembered_ids():
    eng = new_engine(MarginConfig(status_interval_ms=0), params=[LIN, asset("BTC", "BTCUSDT", "0.05")])
    eng.apply(collateral("dep-0", "a", "USDT", "1000", 1))
    eng.apply(fill("open", "a", "LIN", "buy", 1, 100, 1))
    n = 3000
    gc.collect()
    tracemalloc.start()
    try:
        before, seen_before = tracemalloc.get_traced_memory()[0], _seen_bytes(eng.seen)
        statuses = 0
        for k in range(1, n + 1):
            # every deposit makes a new balance (a distinct Decimal) and a margin-status body
            result = eng.apply(collateral(f"dep-{k}", "a", "USDT", f"0.{k:06d}", 1 + k))
            statuses += len(outputs_of(result, "margin-status"))
            eng.take_dirty()
        del result
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    ids = _seen_bytes(eng.seen) - seen_before
    assert statuses == n  # each deposit was formatted into a body
    # the remembered ids are the growth; anything per event beyond them is a leak
    assert grown - ids < n * 32, (grown, ids)
    # ... and they are counted whole: key, fingerprint, heap entry and time, a few hundred bytes
    assert 150 * n < ids < 400 * n, ids
