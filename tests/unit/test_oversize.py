"""A record too large for the sequenced log: the sequencer forwards a stand-in, which is dead-lettered.

Before: the sequencer's producer refused it (MessageSizeTooLargeError), the worker exited
(3) and, restarted, stopped on the same record again.
"""
from __future__ import annotations

import hashlib

import orjson
import pytest

from streams import codec
from streams.deadletter import build_dead_letter
from streams.margin.errors import INVALID_JSON, InputRejected
from streams.pipeline import PartitionProcessor, new_engine
from streams.sequencer import MAX_FORWARD_BYTES, forwardable
from streams.settings import Settings

HEADERS = [("mw-topic", b"fills")]
FILL = {"fill_id": "f-1", "account_id": "A1", "symbol": "BTCUSDT", "side": "buy", "qty": "1", "price": "60000",
        "ts": 1717000000000}


def _padded(n: int) -> bytes:
    return orjson.dumps({**FILL, "pad": "x" * n})


def test_small_records_pass_unchanged() -> None:
    value = _padded(1000)
    assert forwardable(b"A1", value, HEADERS) == (b"A1", value, None)
    assert forwardable(b"A1", None, HEADERS) == (b"A1", None, None)


@pytest.mark.parametrize("pad", [MAX_FORWARD_BYTES - 100, 3 * MAX_FORWARD_BYTES])
def test_too_large_value_becomes_a_dead_lettered_stand_in(pad: int) -> None:
    value = _padded(pad)
    key, stand_in, size = forwardable(b"A1", value, HEADERS)
    assert size is not None and size > MAX_FORWARD_BYTES and key == b"A1"
    assert len(stand_in) < 70 * 1024
    with pytest.raises(InputRejected) as info:
        codec.decode("fills", key, stand_in)
    err = info.value
    assert err.code == INVALID_JSON and "too large" in err.detail and str(size) in err.detail
    assert err.cause_id == "raw@" + hashlib.sha256(value).hexdigest()[:12]
    dl = build_dead_letter(source_topic="fills", partition=0, offset=7, key=key, value=stand_in, error=err,
                           fallback_ts=1, decided_at=2)
    codec.schema_validator("dead-letters", strict=True)(dl)
    assert dl["raw_truncated"] is True and value.decode().startswith(dl["raw"])
    # the worker's path: counted once, dead-lettered
    result = PartitionProcessor(new_engine(Settings.from_env({})), 0).process("fills", key, stand_in, 7)
    assert result.outcome == "dead_letter" and result.error == INVALID_JSON


def test_huge_key_is_cut() -> None:
    key = b"K" * MAX_FORWARD_BYTES
    fwd_key, stand_in, size = forwardable(key, orjson.dumps(FILL), HEADERS)
    assert size is not None and fwd_key == key[: codec.OVERSIZE_KEEP]
    with pytest.raises(InputRejected) as info:
        codec.decode("fills", fwd_key, stand_in)
    assert info.value.code == INVALID_JSON


def test_a_value_that_only_looks_like_a_stand_in_is_invalid_json() -> None:
    for value in (codec.OVERSIZE_MARK, codec.OVERSIZE_MARK + b"12 x\x00{}", b"\x00{}"):
        with pytest.raises(InputRejected) as info:
            codec.decode("fills", b"A1", value)
        assert info.value.code == INVALID_JSON
