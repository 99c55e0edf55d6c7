"""Batched sends of a margin-agent batch: one Kafka record batch per topic partition.

The agent's outputs and changelog records of a batch all go to the partition
being processed, so they can be handed to the producer as whole record batches
(aiokafka ``create_batch`` / ``send_batch``) instead of one ``Topic.send`` each:
faust's per-message path (FutureMessage, callbacks, sensors, a debug log line
and several awaits per record) cost more than the margin evaluation itself.
Changelog records are written this way too, not with ``table[key] = value``:
faust's table writes go through a buffer that produces one message per
event-loop turn, which capped the agent near 120 events/s.

Under exactly-once the batches go through the transactional producer of the
partition (``{app_id}-{group}-{partition}``, the one faust begins, commits with
the input offsets and aborts), so they join the same transaction as they did
through ``Topic.send``; under at-least-once through faust's shared producer,
which faust flushes before it commits offsets.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

log = logging.getLogger(__name__)


class BatchSender:
    """Collect ``(topic, partition, key, value)`` records; :meth:`flush` hands them
    to the producer as one record batch per topic partition, in collection order.

    ``flush`` returns once every batch is queued in the producer (not acknowledged):
    faust's commit waits for delivery (``producer.flush`` under at-least-once, the
    transaction commit under exactly-once), and the agent's commit barrier keeps
    commits out of a batch, so a commit covers a batch's records with its offsets.
    """

    def __init__(self, app, group_topic: str) -> None:
        self.app = app
        self.group_topic = group_topic
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = defaultdict(list)
        self.count = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        self.records[(topic, partition)].append((key, value))
        self.count += 1

    def _producer(self, partition: int):
        """The aiokafka producer that must carry records of ``partition``."""
        faust_producer = self.app.producer
        if self.app.in_transaction:
            group = self.app.assignor.group_for_topic(self.group_topic)
            tid = f"{self.app.conf.id}-{group}-{partition}"
            producer = faust_producer._transaction_producers.get(tid)
            if producer is None:
                from faust.exceptions import ProducerSendError

                raise ProducerSendError(f"no transactional producer {tid!r} for partition {partition}")
            return producer
        return faust_producer._ensure_producer()

    async def flush(self) -> list[asyncio.Future]:
        """Queue every collected record; return the delivery futures (one per batch)."""
        futures = []
        records, self.records = self.records, defaultdict(list)
        self.count = 0
        for (topic, partition), items in records.items():
            producer = self._producer(partition)
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    continue
                if batch.record_count():
                    futures.append(await self._send(producer, batch, topic, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is not None:
                        continue
                # larger than a whole batch: the producer's own path (and its size check)
                futures.append(await producer.send(topic, value, key=key, partition=partition))
            if batch.record_count():
                futures.append(await self._send(producer, batch, topic, partition))
        return futures

    @staticmethod
    async def _send(producer, batch, topic: str, partition: int) -> asyncio.Future:
        # closed: complete, so the producer sends it at once instead of lingering
        batch.close()
        return await producer.send_batch(batch, topic, partition=partition)
