"""MW_CONFLATE_TICKS: which ticks of a batch a later tick supersedes (streams.agents.batching)."""
from __future__ import annotations

import orjson

from streams.agents.batching import superseded_ticks


def tick(p, symbol, ts, seq=None, key=None):
    value = {"symbol": symbol, "mark_price": "100", "ts": ts}
    if seq is not None:
        value["seq"] = seq
    return (p, "mark-prices", (key or symbol).encode(), orjson.dumps(value))


def fill(p, account="a"):
    value = {"fill_id": "f1", "account_id": account, "symbol": "BTCUSDT", "side": "buy", "qty": "1",
             "price": "100", "ts": 5}
    return (p, "fills", account.encode(), orjson.dumps(value))


def test_adjacent_ticks_of_a_partition():
    items = [tick(0, "BTCUSDT", 1), tick(1, "BTCUSDT", 1), tick(0, "BTCUSDT", 2), tick(1, "BTCUSDT", 2),
             tick(0, "BTCUSDT", 3)]
    # partition 0: 0 -> 2 -> 4 (0 and 2 superseded); partition 1: 1 -> 3 (1 superseded)
    assert superseded_ticks(items) == {0, 1, 2}


def test_an_account_event_in_between_keeps_the_tick():
    items = [tick(0, "BTCUSDT", 1), fill(0), tick(0, "BTCUSDT", 2)]
    assert superseded_ticks(items) == set()
    # ... but a fill of another partition does not
    items = [tick(0, "BTCUSDT", 1), fill(1), tick(0, "BTCUSDT", 2)]
    assert superseded_ticks(items) == {0}


def test_other_symbol_older_or_undecodable_successor_keeps_the_tick():
    assert superseded_ticks([tick(0, "BTCUSDT", 1), tick(0, "ETHUSDT", 2)]) == set()
    # staleness rule: seq when both have one (ts does not matter), else ts
    assert superseded_ticks([tick(0, "BTCUSDT", 9, seq=5), tick(0, "BTCUSDT", 1, seq=6)]) == {0}
    assert superseded_ticks([tick(0, "BTCUSDT", 1, seq=6), tick(0, "BTCUSDT", 9, seq=5)]) == set()
    assert superseded_ticks([tick(0, "BTCUSDT", 5), tick(0, "BTCUSDT", 5)]) == set()
    bad = (0, "mark-prices", b"BTCUSDT", b'{"symbol": "BTCUSDT", "mark_price": "NaN", "ts": 9}')
    assert superseded_ticks([tick(0, "BTCUSDT", 1), bad]) == set()
    # an undecodable tick itself is never skipped: it is dead-lettered
    assert superseded_ticks([bad, tick(0, "BTCUSDT", 9)]) == set()
    # key and symbol disagree: a dead letter, never a successor
    assert superseded_ticks([tick(0, "BTCUSDT", 1), tick(0, "BTCUSDT", 2, key="ETHUSDT")]) == set()
