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
import time

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
        self._lag_reported: set[tuple[str, int]] = set()
        self._lag_at = 0.0

    LAG_INTERVAL_S = 1.0

    async def report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Set ``marginwatch_consumer_lag_messages{topic=<input topic>}`` of the assigned
        input partitions (high watermark − position); drop partitions no longer assigned."""
        if self.metrics is None:
            return
        now = set()
        for tp in consumer.assignment():
            topic = self.by_name.get(tp.topic)
            if topic is None:
                continue
            try:
                hw = consumer.highwater(tp)
                position = _position_nowait(consumer, tp)
            except Exception:  # revoked meanwhile: next time
                continue
            if hw is None or position is None:
                continue
            self.metrics.set_lag(topic, tp.partition, max(0, hw - position))
            now.add((topic, tp.partition))
        for topic, partition in self._lag_reported - now:
            self.metrics.forget_lag(topic, partition)
        self._lag_reported = now

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
                if time.monotonic() - self._lag_at >= self.LAG_INTERVAL_S:
                    self._lag_at = time.monotonic()
                    await self.report_lag(consumer)
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
                if self.metrics is not None:
                    for tp, records in batches.items():
                        self.metrics.observe_forwarded(self.by_name[tp.topic], len(records))
        finally:
            await consumer.stop()
            await producer.stop()

    def stop(self) -> None:
        self._stopping.set()


def _position_nowait(consumer: AIOKafkaConsumer, tp) -> int | None:
    """``consumer.position(tp)`` without waiting: None while the position is not known
    (``position()`` would wait for the offset reset, stalling the forwarding loop)."""
    subscription = consumer._subscription
    if not subscription.is_assigned(tp):
        return None
    state = subscription.subscription.assignment.state_value(tp)
    return state.position if state is not None and state.has_valid_position else None


assert set(ACCOUNT_TOPICS) | set(BROADCAST_TOPICS) == set(INPUT_TOPICS)
