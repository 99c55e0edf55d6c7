"""Hostile input on the real broker: the worker never stops and accounts for everything.

The corpus of :mod:`tests.corpus.hostile` (every input topic: invalid JSON and UTF-8,
wrong types, NaN / Infinity / huge exponents, missing fields, duplicate keys, deep
nesting, ~900 KB messages, mismatched / missing / non-UTF-8 keys, unknown instruments
and assets, negative quantities, unknown extra fields, duplicates, stale ticks) plus
messages drawn by its hypothesis generator are produced to one worker, interleaved
with valid traffic. Then:

- the worker is alive and ``/healthz`` answers;
- nothing is dropped at the sequencer: ``marginwatch_sequencer_forwarded_total{topic}``
  equals the messages produced to the topic;
- every message is accounted for: Σ ``marginwatch_input_messages_total`` over outcomes
  (applied + duplicate + stale + dead_letter) = records sequenced (one per account
  message, one per partition for marks and risk-params, which go to every partition),
  per topic as well;
- each message has the outcome of an exact local run of the same engine over the
  same messages (``PartitionProcessor``; the corpus's hand labels agree with it):
  unknown extra fields are applied, and the dead-letters topic holds exactly the
  expected dead letters (error code per message, once per partition for broadcast
  topics), each valid against ``schemas/dead-letter.schema.json`` with a ``detail``
  that names its ``field``.
"""
from __future__ import annotations

import asyncio
import base64
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.codec import schema_validator
from streams.pipeline import PartitionProcessor, new_engine
from streams.sequencer import forwardable
from streams.settings import Settings
from streams.topics import SOURCE_HEADER
from tests.corpus.hostile import ACCEPTED, TS, Case, corpus, generated

from .harness import WorkerProcess, read_topic, wait_handled, wait_up, worker_env

pytestmark = [pytest.mark.kafka]

PARTITIONS = 4
GENERATED = 300
ACCOUNT_TOPICS = ("fills", "collateral", "account-snapshots")
DL_SCHEMA = schema_validator("dead-letters", strict=True)
_SAMPLE = re.compile(r'^(\w+)\{(.*)\}$')


def valid_traffic(n: int) -> list[Case]:
    """Ordinary messages to interleave: deposits, fills and marks of other accounts."""
    out = []
    for i in range(n):
        acct = f"V-{i % 40}"
        kind = i % 3
        if kind == 0:
            v = {"event_id": f"vd-{i}", "account_id": acct, "asset": "USDT", "amount": "2000", "reason": "deposit",
                 "ts": TS + i}
            out.append(Case("collateral", "valid-deposit", acct.encode(), orjson.dumps(v), "applied"))
        elif kind == 1:
            v = {"fill_id": f"vf-{i}", "account_id": acct, "symbol": "ETHUSDT", "side": "buy" if i % 2 else "sell",
                 "qty": "0.1", "price": "3000", "ts": TS + i}
            out.append(Case("fills", "valid-fill", acct.encode(), orjson.dumps(v), "applied"))
        else:
            v = {"symbol": "ETHUSDT", "mark_price": str(3000 + i % 17), "ts": TS + i, "seq": i}
            out.append(Case("mark-prices", "valid-mark", b"ETHUSDT", orjson.dumps(v), "applied"))
    return out


def interleave(hostile: list[Case], valid: list[Case]) -> list[Case]:
    out, vi = [], 0
    for i, case in enumerate(hostile):
        out.append(case)
        if i % 2 == 1 and vi < len(valid):
            out.append(valid[vi])
            vi += 1
    return out + valid[vi:]


def fan_out(topic: str) -> int:
    return 1 if topic in ACCOUNT_TOPICS else PARTITIONS


async def produce_raw(bootstrap: str, prefix: str, cases: list[Case]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                max_request_size=1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(prefix + c.topic, c.value, key=c.key) for c in cases]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def identity(dl: dict) -> tuple:
    """How a dead letter names its input: topic, key text / key_b64, raw / raw_b64 (cut), error."""
    return dl["source_topic"], dl["key"], dl.get("key_b64"), dl.get("raw"), dl.get("raw_b64"), dl["error"]


def local_outcomes(cases: list[Case], settings: Settings) -> list[tuple[str, str | None, dict | None]]:
    """(outcome, error, dead-letter) of each message, by the same engine, in production order,
    of what the sequencer forwards (a record too large to forward becomes its stand-in)."""
    proc = PartitionProcessor(new_engine(settings), 0)
    out = []
    for i, c in enumerate(cases):
        key, value, _ = forwardable(c.key, c.value, [(SOURCE_HEADER, c.topic.encode())])
        r = proc.process(c.topic, key, value, i)
        out.append((r.outcome, r.error, r.outputs[0].value if r.error else None))
    return out


def parse_metrics(samples: dict[str, float]) -> dict[tuple[str, frozenset], float]:
    out = {}
    for name, value in samples.items():
        m = _SAMPLE.match(name)
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2))) if m else frozenset()
        out[(m.group(1) if m else name, labels)] = value
    return out


def metric_sum(metrics: dict, name: str, **want: str) -> float:
    return sum(v for (n, labels), v in metrics.items()
               if n == name and all((k, w) in labels for k, w in want.items()))


def names_field(dl: dict) -> bool:
    """The detail is a sentence naming the field at fault (the whole value when there is none)."""
    detail, field = dl["detail"], dl.get("field")
    if field:
        return field in detail or field.rsplit(".", 1)[-1] in detail
    return dl["error"] == "invalid_json" and ("the value" in detail or "key" in detail)


def test_hostile_input_on_every_topic(kafka_bootstrap: str, tmp_path: Path, unique_prefix: str) -> None:
    hostile = corpus() + generated(GENERATED)
    valid = valid_traffic(len(hostile) // 2)
    cases = interleave(hostile, valid)
    env = worker_env(kafka_bootstrap, unique_prefix, partitions=PARTITIONS)
    settings = Settings.from_env(env)

    # the expectation: the same engine over the same messages, in production order
    expected = local_outcomes(cases, settings)
    for case, (outcome, error, _) in zip(cases, expected):
        got = error or outcome
        if case.expect == ACCEPTED:
            assert got in ("applied", "duplicate", "stale"), (case.name, got)
        elif case.expect is not None:
            assert got == case.expect, (case.topic, case.name, got)

    worker = WorkerProcess(env, tmp_path, "hostile")
    worker.start()
    try:
        wait_up(worker, timeout=90)
        t0 = time.monotonic()
        asyncio.run(produce_raw(kafka_bootstrap, unique_prefix, cases))
        sequenced = sum(fan_out(c.topic) for c in cases)
        wait_handled([worker], sequenced, timeout=240)
        handled_s = time.monotonic() - t0
        time.sleep(2.0)  # anything beyond the expected count would show now
        assert worker.proc.poll() is None, worker.tail()
        health = urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/healthz", timeout=5)
        assert health.status == 200 and orjson.loads(health.read()) == {"alive": True}
        metrics = parse_metrics(worker.metrics())
        dead_letters = asyncio.run(read_topic(kafka_bootstrap, unique_prefix + "dead-letters"))
    finally:
        worker.stop()

    # nothing dropped at the sequencer, everything accounted for at ingress
    produced = Counter(c.topic for c in cases)
    for topic, n in produced.items():
        assert metric_sum(metrics, "marginwatch_sequencer_forwarded_total", topic=topic) == n, topic
        handled = metric_sum(metrics, "marginwatch_input_messages_total", topic=topic)
        assert handled == n * fan_out(topic), (topic, handled, n)
    outcomes = {o: metric_sum(metrics, "marginwatch_input_messages_total", outcome=o)
                for o in ("applied", "duplicate", "stale", "dead_letter")}
    assert sum(outcomes.values()) == sequenced, (outcomes, sequenced)

    # the outcomes are the local run's, per topic and outcome
    want_outcomes: Counter = Counter()
    want_dl: Counter = Counter()
    for case, (outcome, error, dl) in zip(cases, expected):
        want_outcomes[(case.topic, outcome)] += fan_out(case.topic)
        if error:
            want_dl[identity(dl)] += fan_out(case.topic)
    for (topic, outcome), n in want_outcomes.items():
        assert metric_sum(metrics, "marginwatch_input_messages_total", topic=topic, outcome=outcome) == n, \
            (topic, outcome)
    assert metric_sum(metrics, "marginwatch_dead_letters_total") == outcomes["dead_letter"]

    # the dead letters: exactly the expected ones, valid, each naming its field
    records = [r for recs in dead_letters.values() for r in recs]
    got_dl: Counter = Counter()
    other_kafka_key = Counter()  # the contract keys a dead letter by the input key
    for rec in records:
        dl = orjson.loads(rec.value)
        input_key = base64.b64decode(dl["key_b64"]) if "key_b64" in dl else (
            dl["key"].encode() if dl["key"] is not None else None)
        if rec.key != input_key:
            other_kafka_key["no key" if input_key is None else "key not UTF-8" if "key_b64" in dl else "other"] += 1
        DL_SCHEMA(dl)
        assert names_field(dl), dl
        assert len(rec.value) <= 70 * 1024
        got_dl[identity(dl)] += 1
    assert len(records) == outcomes["dead_letter"]
    assert not other_kafka_key, f"dead letters whose Kafka key is not the input key: {dict(other_kafka_key)}"
    missing, extra = want_dl - got_dl, got_dl - want_dl
    assert not missing and not extra, (list(missing.items())[:5], list(extra.items())[:5])

    hostile_per_topic = Counter(c.topic for c in hostile)
    dl_per_topic = Counter(orjson.loads(r.value)["source_topic"] for r in records)
    dl_per_error = Counter(orjson.loads(r.value)["error"] for r in records)
    print(
        f"\nhostile messages sent: {len(hostile)} ({len(hostile) - GENERATED} corpus + {GENERATED} generated): "
        + ", ".join(f"{t} {n}" for t, n in sorted(hostile_per_topic.items()))
        + f"; interleaved with {len(valid)} valid; {len(cases)} messages in all, handled in {handled_s:.1f}s"
        + f"\nsequenced records (marks and risk-params x {PARTITIONS}): {sequenced}; "
        + "input_messages_total: " + " + ".join(f"{o} {int(n)}" for o, n in outcomes.items())
        + f" = {int(sum(outcomes.values()))}"
        + f"\ndead letters received: {len(records)} ("
        + ", ".join(f"{t} {n}" for t, n in sorted(dl_per_topic.items())) + "); by error: "
        + ", ".join(f"{e} {n}" for e, n in sorted(dl_per_error.items()))
        + (f"\ndead letters whose Kafka key is not the input key: {dict(other_kafka_key)}" if other_kafka_key else "")
    )
