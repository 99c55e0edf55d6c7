"""Apply each partition's sequenced records exactly in offset order.

After a rebalance faust seeks a partition back to its committed offset, but
records already taken into a ``take_events`` buffer before the rebalance are
still delivered: applying those first would apply later records before earlier
ones (seen on the broker: deposits applied before the first marks). The guard
knows the committed offset a partition's engine was rebuilt at and accepts
only the next offset: earlier ones were applied already. A later one means the
consumer resumed past records no engine applied (seen after a rebalance: faust
kept the retained partition's fetch position and dropped what it had buffered);
seeking back did not bring them back, and faust can commit past such gaps
(faust#606), so the worker exits with :data:`EXIT_OUT_OF_ORDER` before acking:
its supervisor's restart resumes from the committed offset.
"""
from __future__ import annotations

#: exit status of a worker that found a partition resumed past unapplied records
EXIT_OUT_OF_ORDER = 5

ACCEPT = "accept"
ALREADY_APPLIED = "already_applied"
OUT_OF_ORDER = "out_of_order"


class OffsetGuard:
    """Next expected offset per partition."""

    def __init__(self) -> None:
        self.expected: dict[int, int] = {}

    def start(self, partition: int, offset: int) -> None:
        """The engine of ``partition`` holds every record before ``offset``."""
        self.expected[partition] = offset

    def forget(self, partition: int) -> None:
        self.expected.pop(partition, None)

    def check(self, partition: int, offset: int) -> str:
        exp = self.expected.get(partition)
        if exp is None or offset == exp:
            return ACCEPT
        return ALREADY_APPLIED if offset < exp else OUT_OF_ORDER

    def advance(self, partition: int, offset: int) -> None:
        self.expected[partition] = offset + 1


#: how long :func:`group_offsets` retries while the group coordinator is not available
COORDINATOR_WAIT_S = 60.0


async def group_offsets(settings, tps: list, timeout_s: float = COORDINATOR_WAIT_S) -> dict:
    """The margin agent group's committed offsets of ``tps``.

    Retries retriable errors (no coordinator yet: a fresh broker creates
    ``__consumer_offsets`` on the first request; coordinator loading after a
    broker restart; connection refused while it comes back) for up to
    ``timeout_s``, then raises the last one.
    """
    import asyncio
    import logging
    import time

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from ..topics import bootstrap, kafka_security

    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings), **kafka_security(settings))
        try:
            await admin.start()
            return await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() + delay > deadline:
                raise
            logging.getLogger(__name__).info("committed offsets of group %s not available yet (%r); retrying",
                                             settings.app_id, exc)
        finally:
            try:
                await admin.close()
            except Exception:
                pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def committed_offset(mapp, partition: int) -> int:
    """The margin agent group's committed offset of a sequenced partition
    (the partition's first offset when nothing was committed yet)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ..topics import bootstrap, kafka_security

    tp = TopicPartition(mapp.sequenced.get_topic_name(), partition)
    sec = kafka_security(mapp.settings)
    offsets = await group_offsets(mapp.settings, [tp])
    meta = offsets.get(tp)
    if meta is not None and meta.offset >= 0:
        return meta.offset
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(mapp.settings), **sec)
    await consumer.start()
    try:
        return (await consumer.beginning_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def commit_baseline(settings) -> int:
    """Commit each sequenced partition's first offset for the margin agent's group
    where the group has no committed offset yet; returns how many were committed.

    With nothing committed, faust was seen to resume a partition after a rebalance
    where its consumer had fetched to, and to commit from the first offset acked,
    past records no engine applied. A committed baseline gives every partition a
    position to seek back to and a base for faust's contiguous-offset commits.
    Committing as a group without members is allowed only while the group is empty
    (the first worker to start); otherwise a baseline exists already or is being
    made by a running worker, and the error is ignored.
    """
    import logging

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError
    from aiokafka.structs import OffsetAndMetadata

    from ..topics import bootstrap, kafka_security, sequenced_topic

    sec = kafka_security(settings)
    topic = sequenced_topic(settings)
    tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
    offsets = await group_offsets(settings, tps)
    missing = [tp for tp in tps if offsets.get(tp) is None or offsets[tp].offset < 0]
    if not missing:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(settings), group_id=settings.app_id,
                                enable_auto_commit=False, **sec)
    await consumer.start()
    try:
        consumer.assign(missing)
        begin = await consumer.beginning_offsets(missing)
        await consumer.commit({tp: OffsetAndMetadata(begin[tp], "") for tp in missing})
        return len(missing)
    except KafkaError as exc:
        logging.getLogger(__name__).info("baseline offsets not committed (%s): the group is active", exc)
        return 0
    finally:
        await consumer.stop()
