"""Remembered ids are forgotten after 24 h of event time, on the real broker, across a kill -9.

Deposits of one account with times 13 h apart (amounts 1, 2, 4, 16: the balance
names what was applied), and redeliveries inside and outside the window:

    phase 1   d0 +1 @0h, d1 +2 @13h, d2 +4 @26h (forgets d0: 0h < 26h − 24h),
              d1 again (duplicate), d0 again (outside: applied, not remembered)   -> 8
    kill -9, restart (the engine is rebuilt from the committed changelog)
    phase 2   d1 again (duplicate: 13h ≥ 2h), d5 +16 @40h (forgets d1: 13h < 16h),
              d1 again (outside: applied)                                         -> 26

A second account's old id is never forgotten by the first one's clock. The committed
account records and the committed seen-ids (tombstones applied) equal those of the
engine fed the same inputs.
"""
from __future__ import annotations

import asyncio
import signal
from decimal import Decimal

import orjson
import pytest

from streams.agents import state_keys
from streams.margin import records
from streams.pipeline import PartitionProcessor, new_engine
from streams.topics import account_partition, sequenced_topic

from .harness import (
    WorkerProcess,
    envelope_bytes,
    expected_sequenced,
    latest_values,
    produce,
    settings_for,
    wait_processed,
    wait_up,
    worker_env,
)

pytestmark = [pytest.mark.kafka]
PARTITIONS = 2
T0 = 1_767_225_600_000
H = 3_600_000


def deposit(account: str, event_id: str, amount: int, hours: int) -> dict:
    return {"topic": "collateral", "key": account,
            "value": {"event_id": event_id, "account_id": account, "asset": "USDT", "amount": str(amount),
                      "reason": "deposit", "ts": T0 + hours * H}}


@pytest.mark.timeout(420)
def test_ids_forgotten_after_a_day_of_event_time_across_a_kill(kafka_bootstrap, unique_prefix, tmp_path):
    f, g = "acct-f", "acct-g"
    d0, d1, d2, d5 = deposit(f, "d0", 1, 0), deposit(f, "d1", 2, 13), deposit(f, "d2", 4, 26), deposit(f, "d5", 16, 40)
    g0 = deposit(g, "g0", 100, 0)
    phase1 = [g0, d0, d1, d2, d1, d0]
    phase2 = [d1, d5, d1, g0]
    env = worker_env(kafka_bootstrap, unique_prefix, PARTITIONS)
    settings = settings_for(env)
    topic = sequenced_topic(settings)
    worker = WorkerProcess(env, tmp_path, "w").start()
    try:
        wait_up(worker)
        asyncio.run(produce(kafka_bootstrap, unique_prefix, phase1))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], topic, expected_sequenced(phase1, PARTITIONS), 120, [worker])
        worker.kill(signal.SIGKILL)
        worker.start()
        wait_up(worker)
        asyncio.run(produce(kafka_bootstrap, unique_prefix, phase2))
        wait_processed(kafka_bootstrap, env["MW_APP_ID"], topic,
                       expected_sequenced(phase1 + phase2, PARTITIONS), 120, [worker])
    finally:
        worker.stop()

    # the same inputs through the engine (per account, partitioning does not matter)
    engine = new_engine(settings)
    proc = PartitionProcessor(engine, partition=0)
    outcomes = []
    for offset, e in enumerate(phase1 + phase2):
        key, value = envelope_bytes(e)
        outcomes.append(proc.process(e["topic"], key, value, offset).outcome)
    assert outcomes == ["applied", "applied", "applied", "applied", "duplicate", "applied",
                        "duplicate", "applied", "applied", "duplicate"]
    assert engine.accounts[f].book.balances["USDT"] == Decimal(26)
    assert engine.accounts[g].book.balances["USDT"] == Decimal(100)

    accounts = asyncio.run(latest_values(kafka_bootstrap, f"{env['MW_APP_ID']}-accounts-changelog"))
    seen = asyncio.run(latest_values(kafka_bootstrap, f"{env['MW_APP_ID']}-seen-ids-changelog"))
    committed_ids: dict[str, str] = {}
    for a in (f, g):
        p = account_partition(a.encode(), PARTITIONS)
        _, by_account = state_keys.split_accounts_table(p, accounts)
        assert orjson.loads(by_account[a]) == orjson.loads(orjson.dumps(records.account_record(engine, a))), a
        committed_ids.update((k, v) for k, v in state_keys.split_seen_table(p, seen) if k.startswith(a + "\x1f"))
    assert sorted(k.rsplit("\x1f", 1)[1] for k in committed_ids) == ["d2", "d5", "g0"]
    assert committed_ids == dict(engine.seen.dated_items())
