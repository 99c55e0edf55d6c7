"""The local Kafka broker works as marginwatch needs it: plain round trips,
transactions on a single node (exactly-once), and kcat can talk to it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.kafka


async def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, *, until: set[bytes], isolation_level: str,
                   timeout: float = 30.0) -> list[bytes]:
    """Values read from the start of `topic` until every value of `until` was seen."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while not until <= set(seen):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return seen


@pytest.mark.timeout(90)
async def test_produce_consume_round_trip(kafka_bootstrap: str, unique_prefix: str) -> None:
    topic = unique_prefix + "roundtrip"
    await _create_topic(kafka_bootstrap, topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = {f"k{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(50)}
        for key, value in sent.items():
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=unique_prefix + "g",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    got: dict[bytes, bytes] = {}
    try:
        async with asyncio.timeout(60):
            while len(got) < len(sent):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.update((r.key, r.value) for r in records)
        await consumer.commit()  # needs __consumer_offsets (rf=1 on one node)
    finally:
        await consumer.stop()
    assert got == sent


@pytest.mark.timeout(120)
async def test_transactions_commit_and_abort(kafka_bootstrap: str, unique_prefix: str) -> None:
    """Needs transaction.state.log.replication.factor=1 / min.isr=1 on one broker."""
    topic = unique_prefix + "tx"
    await _create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique_prefix + "txid")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, key=b"a", value=b"committed-1")
            await producer.send(topic, key=b"a", value=b"committed-2")

        await producer.begin_transaction()
        await producer.send(topic, key=b"a", value=b"aborted-1")
        await producer.send(topic, key=b"a", value=b"aborted-2")
        await producer.abort_transaction()

        async with producer.transaction():  # marks the end of what a reader must see
            await producer.send(topic, key=b"a", value=b"committed-3")
    finally:
        await producer.stop()

    committed = [b"committed-1", b"committed-2", b"committed-3"]
    seen = await _consume(kafka_bootstrap, topic, until=set(committed), isolation_level="read_committed")
    assert seen == committed

    # The aborted records were written (and are skipped only by read_committed).
    raw = await _consume(kafka_bootstrap, topic, until=set(committed), isolation_level="read_uncommitted")
    assert raw == [b"committed-1", b"committed-2", b"aborted-1", b"aborted-2", b"committed-3"]


@pytest.mark.timeout(60)
def test_kcat_lists_the_broker(kafka_bootstrap: str) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.fail("neither kcat nor kafkacat is installed: run `make deps` (apt-get install kcat)", pytrace=False)
    host, port = kafka_bootstrap.rsplit(":", 1)
    proc = subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-L", "-m", "20"],
        capture_output=True, text=True, timeout=45, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 brokers:" in proc.stdout, proc.stdout
    assert f"at {host}:{port}" in proc.stdout, proc.stdout
