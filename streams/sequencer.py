"""The sequencer: input topics -> one ordered log per account partition.

Account events (fills, collateral, snapshots) go to the partition of their key;
marks and risk-params go to every partition. Records keep their key and raw value
and carry their source topic in a header, so the margin agent (and a replay of
the exported log) sees exactly the bytes that arrived. It runs at-least-once on
plain aiokafka: offsets are committed after the batch's records are acknowledged;
a redelivered input is harmless because the engine is idempotent by contract.
(faust's exactly-once picks the transactional producer by destination partition,
so a fan-out to partitions other workers own cannot join its transaction.)
"""
from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .settings import Settings
from .topics import (
    ACCOUNT_TOPICS,
    BROADCAST_TOPICS,
    INPUT_TOPICS,
    SOURCE_HEADER,
    account_partition,
    bootstrap,
    kafka_security,
    sequenced_topic,
)

log = logging.getLogger(__name__)


class Sequencer:
    """Consume the input topics, produce the sequenced log, commit."""

    def __init__(self, settings: Settings, metrics=None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.out_topic = sequenced_topic(settings)
        self.by_name = {settings.topic(t): t for t in INPUT_TOPICS}
        self.forwarded = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        s = self.settings
        sec = kafka_security(s)
        consumer = AIOKafkaConsumer(
            *self.by_name,
            bootstrap_servers=bootstrap(s), group_id=f"{s.app_id}-sequencer",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000), heartbeat_interval_ms=max(1000, int(s.session_timeout_s * 250)),
            max_poll_records=5000, fetch_max_wait_ms=10, **sec,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap(s), acks="all", enable_idempotence=True,
            linger_ms=1, max_batch_size=256 * 1024, **sec,
        )
        await producer.start()
        await consumer.start()
        try:
            partitions = None
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                if not batches:
                    continue
                if partitions is None:
                    partitions = len(await producer.partitions_for(self.out_topic))
                futures = []
                for tp, records in batches.items():
                    topic = self.by_name[tp.topic]
                    headers = [(SOURCE_HEADER, topic.encode())]
                    for rec in records:
                        if topic in ACCOUNT_TOPICS:
                            targets = (account_partition(rec.key, partitions),)
                        else:
                            targets = range(partitions)
                        for p in targets:
                            futures.append(await producer.send(
                                self.out_topic, rec.value, key=rec.key, partition=p, headers=headers,
                            ))
                        self.forwarded += 1
                if futures:
                    await asyncio.gather(*futures)
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()

    def stop(self) -> None:
        self._stopping.set()


assert set(ACCOUNT_TOPICS) | set(BROADCAST_TOPICS) == set(INPUT_TOPICS)
