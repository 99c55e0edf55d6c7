"""The margin agent: a thin adapter over the sequenced log.

Per batch (``stream.take_events``), each record in order: decode + apply
(:class:`~streams.pipeline.PartitionProcessor`); then write the changed state
records to the changelog-backed tables, send the outputs to the same partition
number of the output topics (so they join that partition's transaction under
exactly-once), ack the batch, all without a commit in between.

The in-memory engine of a partition is rebuilt from the tables the first time the
partition is processed after an assignment (recovery has completed by then: faust
resumes streams only after it), and dropped when the partition is revoked.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ..margin import records
from ..margin.events import MarkTick
from ..pipeline import PartitionProcessor, new_engine, load_seed
from ..replay import stamp
from ..topics import SOURCE_HEADER
from .ordering import ACCEPT, OffsetGuard, committed_offset

log = logging.getLogger(__name__)
SEP = "\x1f"


def _prefix(partition: int) -> str:
    return f"{partition}{SEP}"


async def read_committed_records(mapp, partition: int) -> dict[bytes, bytes]:
    """The committed state records of ``partition``: its changelog partitions read
    from the start up to the last stable offset, latest value per key.

    The engine is rebuilt from this rather than from faust's in-memory store:
    what counts is exactly what was committed with the input offsets (under
    exactly-once, the same transactions), and faust's recovery was seen on the
    broker to stop early after a takeover (highwater reported as -1).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ..topics import bootstrap, kafka_security

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap(mapp.settings), enable_auto_commit=False,
        isolation_level="read_committed", **kafka_security(mapp.settings),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t.changelog_topic.get_topic_name(), partition) for t in (mapp.accounts, mapp.seen)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[bytes, bytes] = {}
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, recs in batch.items():
                for rec in recs:
                    if rec.value is None:
                        latest.pop(rec.key, None)
                    else:
                        latest[rec.key] = rec.value
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        return latest
    finally:
        await consumer.stop()


async def build_processor(mapp, partition: int) -> PartitionProcessor:
    """A partition's processor, its engine rebuilt from the committed changelog."""
    t0 = time.perf_counter()
    if mapp.seed is None:
        mapp.seed = load_seed(mapp.settings.risk_params_file)
    engine = new_engine(mapp.settings, mapp.seed)
    prefix = _prefix(partition).encode()
    latest = await read_committed_records(mapp, partition)
    params = latest.pop(prefix + b"params", None)
    marks = latest.pop(prefix + b"marks", None)
    accounts, seen = [], []
    for key, value in latest.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):].decode()
        if SEP in rest:
            seen.append((rest, value.decode()))
        else:
            accounts.append((rest, orjson.loads(value)))
    accounts.sort()
    records.restore(engine, orjson.loads(params) if params else None, orjson.loads(marks) if marks else None,
                    accounts, seen)
    log.info("partition %d: rebuilt %d accounts, %d ids in %.3fs", partition, len(accounts), len(seen),
             time.perf_counter() - t0)
    return PartitionProcessor(engine, partition)


def changed_records(mapp, partition: int, proc: PartitionProcessor, state: dict) -> list:
    """(table, key, value) of every state record the last event changed."""
    engine = proc.engine
    accounts, seen, globals_changed = engine.take_dirty()
    prefix = _prefix(partition)
    out = []
    for account_id in sorted(accounts):
        out.append((mapp.accounts, (prefix + account_id).encode(),
                    orjson.dumps(records.account_record(engine, account_id))))
    for key, fp in seen.items():
        out.append((mapp.seen, (prefix + key).encode(), fp.encode()))
    if globals_changed:
        out.append((mapp.accounts, (prefix + "marks").encode(), orjson.dumps(records.marks_record(engine))))
    if engine.params_version != state.get("params_version"):
        out.append((mapp.accounts, (prefix + "params").encode(), orjson.dumps(records.params_record(engine))))
        state["params_version"] = engine.params_version
    return out


async def persist(changes: list, partition: int) -> None:
    """Write records to the tables' stores and their changelogs, partition ``partition``.

    The changelog records are sent directly (like the outputs) rather than through
    ``table[key] = value``: faust's table writes go through a buffer that produces
    one message per event-loop turn, which capped the agent near 120 events/s.
    Under exactly-once they join the same partition's transaction as the outputs.
    """
    for table, key, value in changes:
        table.data[key] = value
        await table.changelog_topic.send(key=key, value=value, partition=partition)


class CommitBarrier:
    """Mutual exclusion between a batch and faust's offset/transaction commits.

    A batch's outputs and changelog records are sent with several awaits; a
    timer commit between two of them would commit part of the batch's effects
    without its offsets (duplicates or losses after a crash), and under
    exactly-once a send during a commit fails ("not in transaction"). The batch
    and the consumer's ``commit`` (wrapped) take one FIFO lock, so a commit
    waiting for a batch runs before the next batch starts: commits never starve
    and never skip (a rebalance relies on its commit).
    """

    def __init__(self, consumer) -> None:
        self.lock = asyncio.Lock()
        original = consumer.commit

        async def commit(*args, **kwargs):
            async with self.lock:
                return await original(*args, **kwargs)

        consumer.commit = commit

    async def __aenter__(self) -> "CommitBarrier":
        await self.lock.acquire()
        return self

    async def __aexit__(self, *exc) -> None:
        self.lock.release()


def purge_partition(mapp, partition: int) -> int:
    """Drop the keys of a partition this worker no longer holds from the memory stores.

    Records are written to the store directly (faust does not know their
    partition, so it never drops them itself); should the partition come back,
    faust recovers it from the start of its changelog, and keys left over from
    before would outlive state the committed changelog no longer has.
    """
    prefix = _prefix(partition).encode()
    dropped = 0
    for table in (mapp.accounts, mapp.seen):
        store = table.data
        data = getattr(store, "data", None)
        if not isinstance(data, dict):
            continue
        for key in [k for k in data if k.startswith(prefix)]:
            data.pop(key, None)
            getattr(store, "_key_partition", {}).pop(key, None)
            dropped += 1
    return dropped


def _keep_explicit_partitions(app, topics: set[str]) -> None:
    """Make exactly-once sends to ``topics`` honour their explicit partition.

    faust's transaction manager resolves the destination partition with the
    consumer's metadata, which knows only subscribed topics: for an output topic
    it got None, so the record was sent outside any transaction and partitioned
    by key. Outputs always carry the partition of their input, so use it.
    """
    consumer = app.consumer
    original = consumer.key_partition

    def key_partition(topic, key, partition=None):
        if partition is not None and topic in topics:
            return partition
        return original(topic, key, partition)

    consumer.key_partition = key_partition


def attach_margin_agent(mapp) -> None:
    app = mapp.app
    metrics = mapp.metrics
    settings = mapp.settings
    written: dict[int, dict] = {}
    guard = OffsetGuard()

    async def processor(p: int) -> PartitionProcessor:
        proc = mapp.processors.get(p)
        if proc is None:
            proc = mapp.processors[p] = await build_processor(mapp, p)
            guard.start(p, await committed_offset(mapp, p))
            written[p] = {"params_version": proc.engine.params_version}
        return proc

    @app.agent(mapp.sequenced, name="margin")
    async def margin(stream):
        _keep_explicit_partitions(app, {t.get_topic_name() for t in mapp.outputs.values()})
        barrier = CommitBarrier(app.consumer)
        async for events in stream.take_events(settings.batch_size, settings.batch_timeout_s):
            async with barrier:
                t0 = time.perf_counter()
                touched: dict[int, PartitionProcessor] = {}
                sends = []
                for event in events:
                    msg = event.message
                    p = msg.partition
                    proc = touched.get(p) or await processor(p)
                    touched[p] = proc
                    order = guard.check(p, msg.offset)
                    if order != ACCEPT:
                        log.info("partition %d offset %d %s (expected %s)", p, msg.offset, order, guard.expected.get(p))
                        continue
                    guard.advance(p, msg.offset)
                    headers = dict(msg.headers or ())
                    topic = (headers.get(SOURCE_HEADER) or b"").decode() or "unknown"
                    result = proc.process(topic, msg.key, msg.value, msg.offset)
                    metrics.observe_input(topic, result.outcome, result.error)
                    if result.event_ts is not None:
                        metrics.set_partition_progress(p, result.event_ts)
                    if isinstance(result.event, MarkTick) and result.outcome == "applied":
                        metrics.set_mark(result.event.symbol, result.event.ts)
                    for out in stamp(result.outputs, proc.clock):
                        sends.append((p, out))
                    mapp.last_offsets[p] = msg.offset
                changes = [(p, c) for p, proc in touched.items() for c in changed_records(mapp, p, proc, written[p])]
                metrics.observe_batch(len(events), time.perf_counter() - t0)
                for p, (table, key, value) in changes:
                    table.data[key] = value
                    await table.changelog_topic.send(key=key, value=value, partition=p)
                for p, out in sends:
                    await mapp.outputs[out.topic].send(key=out.key.encode(), value=orjson.dumps(out.value), partition=p)
                    metrics.observe_output(out.topic, event_ts_ms=out.value.get("ts"))
                    if out.topic == "margin-calls":
                        metrics.observe_transition(out.value["to"])
                    elif out.topic == "liquidations":
                        metrics.observe_liquidation(out.value["step"] == 1)
                for event in events:  # inside the barrier: the batch commits whole
                    await stream.ack(event)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs):  # noqa: ANN001
        for tp in revoked:
            if tp.topic == mapp.sequenced.get_topic_name():
                mapp.processors.pop(tp.partition, None)
                written.pop(tp.partition, None)
                guard.forget(tp.partition)
                metrics.forget_partition(tp.partition)
        metrics.observe_rebalance()

    held: set[int] = set()

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs):  # noqa: ANN001
        now = {tp.partition for tp in assigned if tp.topic == mapp.sequenced.get_topic_name()}
        for p in held - now:  # truly lost: the next owner of p has the committed state
            purge_partition(mapp, p)
        held.clear()
        held.update(now)

    @app.timer(interval=5.0)
    async def refresh_gauges():
        counts = {"healthy": 0, "margin_call": 0, "liquidation": 0}
        positions = 0
        accounts = 0
        for p, proc in list(mapp.processors.items()):
            for k, v in records.state_counts(proc.engine).items():
                counts[k] += v
            accounts += len(proc.engine.accounts)
            positions += sum(len(s.book.positions) for s in proc.engine.accounts.values())
            tp = _tp(mapp, p)
            hw = app.consumer.highwater(tp) if tp is not None else None
            if hw is not None and p in mapp.last_offsets:
                metrics.set_lag(mapp.sequenced.get_topic_name(), p, max(0, hw - mapp.last_offsets[p] - 1))
        metrics.set_account_states(counts)
        metrics.set_held(accounts, positions)


def _tp(mapp, partition: int):
    from faust.types import TP

    return TP(mapp.sequenced.get_topic_name(), partition)
