"""State record keys (streams/agents/state_keys.py): any account id round-trips, and
none can take the place of a partition global or of another partition's record.

Before the escape, an account named ``marks`` wrote its record over the partition's
marks record (same key), and an account id holding ``\\x1f`` was read back as a
remembered id: either broke the rebuild of the partition.
"""
from __future__ import annotations

import pytest

from streams.agents import state_keys

ODD_IDS = ["params", "marks", "\x1eparams", "\x1e", "a\x1fb", "1\x1fmarks", "normal", "Ünï"]


@pytest.mark.parametrize("partition", [1, 11])
def test_accounts_table_round_trip(partition):
    records = {state_keys.account_key(partition, a): f"acct:{a}".encode() for a in ODD_IDS}
    records[state_keys.global_key(partition, state_keys.PARAMS)] = b"P"
    records[state_keys.global_key(partition, state_keys.MARKS)] = b"M"
    # another partition's records, one of them an account named like this partition's prefix
    other = 111 if partition == 11 else 11
    records[state_keys.account_key(other, "x")] = b"other"
    records[state_keys.global_key(other, state_keys.MARKS)] = b"other marks"
    assert len(records) == len(ODD_IDS) + 4  # no two keys collide
    globals_, accounts = state_keys.split_accounts_table(partition, records)
    assert globals_ == {"params": b"P", "marks": b"M"}
    assert accounts == {a: f"acct:{a}".encode() for a in ODD_IDS}


def test_plain_account_keys_are_unchanged():
    # the stored layout of every ordinary id is what it was before the escape existed
    assert state_keys.account_key(3, "A1") == b"3\x1fA1"
    assert state_keys.account_key(3, "marks") == b"3\x1f\x1emarks"
    assert state_keys.global_key(3, state_keys.MARKS) == b"3\x1fmarks"


def test_seen_table_round_trip():
    keys = ["a\x1fcollateral\x1fe1", "a\x1fb\x1ffills\x1ff1"]
    records = {state_keys.seen_key(2, key): f"v{i}".encode() for i, key in enumerate(keys)}
    records[state_keys.seen_key(12, keys[0])] = b"other partition"
    assert sorted(state_keys.split_seen_table(2, records)) == sorted([(keys[0], "v0"), (keys[1], "v1")])
