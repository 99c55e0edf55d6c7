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
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from .codec import OVERSIZE_KEEP, oversize_stand_in
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


#: Largest record the sequencer forwards (as the producer counts it: one record in its own
#: batch, key, value and the source header), = aiokafka's default ``max_request_size``
#: and below the broker's default ``max.message.bytes`` (1048588).
MAX_FORWARD_BYTES = 1024 * 1024


class Sequencer:
    """Consume the input topics, produce the sequenced log, commit.

    An input record too large to forward with its source header (the producer would
    refuse it, and the worker would stop on it at every restart) is replaced by the
    codec's stand-in (:func:`streams.codec.oversize_stand_in`: its size, hash and first
    64 KiB), which the margin agent dead-letters: nothing is dropped, nothing blocks.
    """

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
            linger_ms=1, max_batch_size=256 * 1024, max_request_size=MAX_FORWARD_BYTES, **sec,
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
                        key, value = self.fit(rec, topic, headers)
                        if topic in ACCOUNT_TOPICS:
                            targets = (account_partition(rec.key, partitions),)
                        else:
                            targets = range(partitions)
                        for p in targets:
                            futures.append(await producer.send(
                                self.out_topic, value, key=key, partition=p, headers=headers,
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

    def fit(self, rec, topic: str, headers: list) -> tuple[bytes | None, bytes | None]:
        """(key, value) to forward for ``rec``: see :func:`forwardable`."""
        key, value, size = forwardable(rec.key, rec.value, headers)
        if size is not None:
            log.warning("%s partition %d offset %d: %d bytes, too large to forward (max %d); forwarded a stand-in "
                        "to be dead-lettered", topic, rec.partition, rec.offset, size, MAX_FORWARD_BYTES)
        return key, value

    def stop(self) -> None:
        self._stopping.set()


def forwardable(key: bytes | None, value: bytes | None, headers: list) -> tuple[bytes | None, bytes | None, int | None]:
    """(key, value, None) when the record fits in :data:`MAX_FORWARD_BYTES`; else the codec's
    stand-in value (and the key cut to 64 KiB if even that does not fit) and the record's
    size. The partition stays the original key's (the caller computes it)."""
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    if size <= MAX_FORWARD_BYTES:
        return key, value, None
    value = oversize_stand_in(value, size, MAX_FORWARD_BYTES)
    if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) > MAX_FORWARD_BYTES:
        key = bytes(key)[:OVERSIZE_KEEP]
    return key, value, size


def _position_nowait(consumer: AIOKafkaConsumer, tp) -> int | None:
    """``consumer.position(tp)`` without waiting: None while the position is not known
    (``position()`` would wait for the offset reset, stalling the forwarding loop)."""
    subscription = consumer._subscription
    if not subscription.is_assigned(tp):
        return None
    state = subscription.subscription.assignment.state_value(tp)
    return state.position if state is not None and state.has_valid_position else None


assert set(ACCOUNT_TOPICS) | set(BROADCAST_TOPICS) == set(INPUT_TOPICS)
