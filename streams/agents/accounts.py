"""The margin agent: a thin adapter over the sequenced log.

Per batch (``stream.take_events``), each record in order: decode + apply
(:class:`~streams.pipeline.PartitionProcessor`); then write the changed state
records to the tables' changelogs, send the outputs to the same partition
number of the output topics (so they join that partition's transaction under
exactly-once), ack the batch, all without a commit in between.

The in-memory engine of a partition is rebuilt from the committed changelog the
first time the partition is processed after an assignment, and dropped when the
partition is revoked. faust's stores hold nothing (``streams.changelog_store``).

:class:`Health` feeds the metrics that are not per event: readiness and table
recovery (``marginwatch_recovering``, ``..._table_recovery_duration_seconds``),
rebalances, the consumer lag of the sequenced partitions; ``/readyz`` and the
stall watchdog of :mod:`streams.worker` read it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import orjson

from ..margin import records
from ..margin.events import MarkTick
from ..metrics import SEQUENCED_LAG_TOPIC, STATES
from ..pipeline import DEAD_LETTERS, PartitionProcessor, new_engine, load_seed
from ..replay import stamp
from ..topics import SOURCE_HEADER
from . import state_keys
from .batching import superseded_ticks, take_batches
from .sender import BatchSender
from .ordering import ACCEPT, EXIT_OUT_OF_ORDER, OUT_OF_ORDER, OffsetGuard, committed_offset

log = logging.getLogger(__name__)
# margin-status bodies deferred by one event above which its decisions are shipped first (ALO)
EARLY_SHIP_STATUSES = 16


async def read_committed_records(mapp, partition: int) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The committed state records of ``partition``, (accounts table, seen-ids table):
    its changelog partitions read from the start up to the last stable offset, latest
    value per key.

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
        latest: dict[str, dict[bytes, bytes]] = {tp.topic: {} for tp in tps}
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, recs in batch.items():
                for rec in recs:
                    if rec.value is None:
                        latest[tp.topic].pop(rec.key, None)
                    else:
                        latest[tp.topic][rec.key] = rec.value
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        return latest[tps[0].topic], latest[tps[1].topic]
    finally:
        await consumer.stop()


async def build_processor(mapp, partition: int) -> PartitionProcessor:
    """A partition's processor, its engine rebuilt from the committed changelog."""
    t0 = time.perf_counter()
    if mapp.seed is None:
        mapp.seed = load_seed(mapp.settings.risk_params_file)
    engine = new_engine(mapp.settings, mapp.seed)
    latest, remembered = await read_committed_records(mapp, partition)
    globals_, by_account = state_keys.split_accounts_table(partition, latest)
    params = globals_.get(state_keys.PARAMS)
    marks = globals_.get(state_keys.MARKS)
    accounts = sorted((a, orjson.loads(value)) for a, value in by_account.items())
    seen = state_keys.split_seen_table(partition, remembered)
    records.restore(engine, orjson.loads(params) if params else None, orjson.loads(marks) if marks else None,
                    accounts, seen)
    log.info("partition %d: rebuilt %d accounts, %d ids in %.3fs", partition, len(accounts), len(seen),
             time.perf_counter() - t0)
    return PartitionProcessor(engine, partition)


def source_topic(msg) -> str:
    """The input topic a sequenced record came from (the sequencer's header)."""
    headers = dict(msg.headers or ())
    return (headers.get(SOURCE_HEADER) or b"").decode() or "unknown"


def changed_records(mapp, partition: int, proc: PartitionProcessor, state: dict) -> list:
    """(table, key, value) of every state record the last event changed."""
    engine = proc.engine
    accounts, seen, globals_changed = engine.take_dirty()
    out = []
    for account_id in sorted(accounts):
        out.append((mapp.accounts, state_keys.account_key(partition, account_id),
                    orjson.dumps(records.account_record(engine, account_id))))
    for key, value in seen.items():  # None: forgotten (dedup.py), a tombstone
        out.append((mapp.seen, state_keys.seen_key(partition, key), None if value is None else value.encode()))
    if globals_changed:
        out.append((mapp.accounts, state_keys.global_key(partition, state_keys.MARKS),
                    orjson.dumps(records.marks_record(engine))))
    if engine.params_version != state.get("params_version"):
        out.append((mapp.accounts, state_keys.global_key(partition, state_keys.PARAMS),
                    orjson.dumps(records.params_record(engine))))
        state["params_version"] = engine.params_version
    return out


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


@dataclass(frozen=True)
class Probe:
    """What the stall watchdog reads (see :class:`streams.worker.StallWatchdog`)."""

    pending: int  # sequenced messages not committed yet on the assigned partitions (0 when unknown)
    last_progress: float  # metrics clock (wall s) of the last handled input
    busy: bool  # starting, rebalancing, recovering tables or rebuilding an engine


class Health:
    """Readiness, table recovery, rebalances and consumer lag of the margin agent.

    *Recovering* (``marginwatch_recovering`` = 1, ``/readyz`` 503) lasts from
    start-up or the start of a rebalance (partitions revoked) until faust has
    restored the tables and resumed the streams (``app.rebalancing`` false again)
    **and** every assigned sequenced partition with pending input has its engine
    rebuilt from the committed changelog (:func:`build_processor`, run by the agent
    on the partition's first batch). The recovery duration counts from the
    assignment. A partition whose high watermark is still unknown
    :attr:`UNKNOWN_HW_GRACE_S` after the streams resumed is not waited for.

    Lag of a sequenced partition (the metric) = high watermark − position: the
    high watermark is the larger of faust's (from fetch responses) and an
    ``end_offsets`` query of a group-less consumer every
    :attr:`END_OFFSETS_INTERVAL_S` (a wedged faust consumer stops updating its
    own); the position is the last processed offset + 1, or the committed offset
    before the partition's first batch.

    :meth:`probe` (the stall watchdog's view, called from the watchdog's thread, so
    it reads plain attributes and never awaits) counts as pending what is not
    *committed* yet: a batch applied but stuck in its sends or commit is pending.
    """

    UNKNOWN_HW_GRACE_S = 5.0
    END_OFFSETS_INTERVAL_S = 5.0

    def __init__(self, mapp) -> None:
        self.mapp = mapp
        self.app = mapp.app
        self.metrics = mapp.metrics
        self.topic = mapp.sequenced.get_topic_name()
        self.assigned: frozenset[int] = frozenset()
        self.lag: dict[int, int] = {}
        self.builds_in_flight = 0
        self._assigned_at: float | None = None
        self._resumed_at: float | None = None
        self._build_s = 0.0
        self._built: list[int] = []
        self._end_offsets: dict[int, int] = {}
        self._end_offsets_at = 0.0
        self._probe_consumer = None
        self.metrics.recovery_started()  # start-up: not ready before the first assignment is recovered

    # ------------------------------------------------------------- signals
    @property
    def recovering(self) -> bool:
        return self.metrics.is_recovering

    def ready(self) -> bool:
        return not (self.recovering or self.app.rebalancing or getattr(self.app, "in_recovery", False))

    def on_revoked(self) -> None:
        """A rebalance started (faust sends one revoke signal per rebalance)."""
        self.metrics.observe_rebalance()
        if not self.recovering:
            self.metrics.recovery_started()

    def on_assigned(self, partitions: set[int]) -> None:
        """The new assignment of sequenced partitions: the recovery of its tables starts now."""
        for p in self.assigned - partitions:
            self.metrics.forget_partition(p, SEQUENCED_LAG_TOPIC)
            self.lag.pop(p, None)
            self._end_offsets.pop(p, None)
        self.assigned = frozenset(partitions)
        self._assigned_at = time.monotonic()
        self._resumed_at = None
        self._build_s = 0.0
        self._built = []
        self.metrics.recovery_started()  # the duration counts from the assignment

    def build_started(self) -> None:
        self.builds_in_flight += 1

    def build_finished(self, partition: int, seconds: float) -> None:
        self.builds_in_flight -= 1
        if self.recovering:
            self._build_s += seconds
            self._built.append(partition)

    # ----------------------------------------------------------------- lag
    def _tp(self, partition: int):
        from faust.types import TP

        return TP(self.topic, partition)

    def _committed(self, partition: int) -> int:
        """faust's last committed offset of the partition (0 when none or not known yet)."""
        committed = getattr(self.app.consumer, "_committed_offset", {}).get(self._tp(partition))
        return committed if committed is not None and committed > 0 else 0

    def _position(self, partition: int) -> int:
        last = self.mapp.last_offsets.get(partition)
        if last is not None:
            return last + 1
        return self._committed(partition)

    def _highwater(self, partition: int) -> int | None:
        try:
            hw = self.app.consumer.highwater(self._tp(partition))
        except Exception:  # not assigned (any more), consumer not started
            hw = None
        probed = self._end_offsets.get(partition)
        if hw is None or (probed is not None and probed > hw):
            return probed
        return hw

    async def _probe_end_offsets(self) -> None:
        """End offsets of the assigned sequenced partitions, from a group-less consumer."""
        if not self.assigned:
            return
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from ..topics import bootstrap, kafka_security

        try:
            if self._probe_consumer is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=bootstrap(self.mapp.settings), enable_auto_commit=False,
                    **kafka_security(self.mapp.settings),
                )
                self._probe_consumer = consumer
                await asyncio.wait_for(consumer.start(), 10)
            assigned = self.assigned
            tps = [TopicPartition(self.topic, p) for p in sorted(assigned)]
            end = await asyncio.wait_for(self._probe_consumer.end_offsets(tps), 10)
            if assigned == self.assigned:
                self._end_offsets.update({tp.partition: off for tp, off in end.items()})
        except Exception as exc:  # broker away: keep the last values, try again later
            log.debug("end offsets of %s not available: %r", self.topic, exc)
            await self.close()

    async def close(self) -> None:
        consumer, self._probe_consumer = self._probe_consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 5)
            except Exception:
                pass

    async def refresh(self) -> None:
        """Update the lag of every assigned sequenced partition; end the recovery when due."""
        now = time.monotonic()
        if now - self._end_offsets_at >= self.END_OFFSETS_INTERVAL_S:
            self._end_offsets_at = now
            await self._probe_end_offsets()
        unknown = []
        for p in sorted(self.assigned):
            hw = self._highwater(p)
            if hw is None:
                self.lag.pop(p, None)
                unknown.append(p)
                continue
            lag = max(0, hw - self._position(p))
            self.lag[p] = lag
            self.metrics.set_lag(SEQUENCED_LAG_TOPIC, p, lag)
        if self.recovering:
            self._maybe_finish_recovery(time.monotonic(), unknown)

    def _maybe_finish_recovery(self, now: float, unknown: list[int]) -> None:
        if self._assigned_at is None or self.app.rebalancing or getattr(self.app, "in_recovery", False):
            return
        if self._resumed_at is None:
            self._resumed_at = now
        if self.builds_in_flight:
            return
        waiting = [p for p, lag in self.lag.items() if lag > 0 and p not in self.mapp.processors]
        if waiting or (unknown and now - self._resumed_at < self.UNKNOWN_HW_GRACE_S):
            return
        self.metrics.recovery_finished(now - self._assigned_at)
        log.info(
            "recovery complete in %.3fs: sequenced partitions %s; tables restored after %.3fs, "
            "%d engines rebuilt in %.3fs", now - self._assigned_at, sorted(self.assigned),
            self._resumed_at - self._assigned_at, len(self._built), self._build_s,
        )

    def uncommitted(self) -> int:
        """Sequenced messages not committed yet on the assigned partitions (high
        watermark − committed offset), computed now: safe from another thread."""
        pending = 0
        for p in tuple(self.assigned):
            hw = self._highwater(p)
            if hw is not None:
                pending += max(0, hw - self._committed(p))
        return pending

    def probe(self) -> Probe:
        return Probe(
            pending=self.uncommitted(),
            last_progress=self.metrics.last_progress_s,
            busy=not self.ready() or self.builds_in_flight > 0,
        )


def isolated_state_counts(engine) -> dict[str, int]:
    """Open isolated positions of a partition engine by state (for the metrics gauge)."""
    counts = np.zeros(len(STATES), np.int64)
    for col in engine.index.symbols.values():
        k = col.n
        if k:
            iso = col.iso[:k]
            if iso.any():
                counts += np.bincount(col.iso_state[:k][iso], minlength=len(STATES))[: len(STATES)]
    return {state: int(counts[i]) for i, state in enumerate(STATES)}


def attach_margin_agent(mapp) -> None:
    app = mapp.app
    metrics = mapp.metrics
    settings = mapp.settings
    written: dict[int, dict] = {}
    health = mapp.health = Health(mapp)  # read by web.py (/readyz) and the stall watchdog (worker.py)
    guard = OffsetGuard()

    async def processor(p: int) -> PartitionProcessor:
        proc = mapp.processors.get(p)
        if proc is None:
            health.build_started()
            t0 = time.perf_counter()
            try:
                proc = mapp.processors[p] = await build_processor(mapp, p)
                proc.engine.defer_status = True  # decisions ship before status bodies are built
                guard.start(p, await committed_offset(mapp, p))
            finally:
                health.build_finished(p, time.perf_counter() - t0)
            written[p] = {"params_version": proc.engine.params_version}
        return proc

    @app.agent(mapp.sequenced, name="margin")
    async def margin(stream):
        _keep_explicit_partitions(app, {t.get_topic_name() for t in mapp.outputs.values()})
        barrier = CommitBarrier(app.consumer)
        sender = BatchSender(app, mapp.sequenced.get_topic_name())
        changelog_names = {t: t.changelog_topic.get_topic_name() for t in (mapp.accounts, mapp.seen)}
        output_names = {name: t.get_topic_name() for name, t in mapp.outputs.items()}

        def queue_outputs(p: int, input_key: bytes | None, outputs) -> None:
            for out in outputs:
                # the contract keys a dead-letter by the input's key, bytes as they came
                key = input_key if out.topic == DEAD_LETTERS else out.key.encode()
                sender.add(output_names[out.topic], p, key, orjson.dumps(out.value))
                metrics.observe_output(out.topic, event_ts_ms=out.value.get("ts"))
                if out.topic == "margin-calls":
                    metrics.observe_transition(out.value["to"])
                elif out.topic == "liquidations":
                    metrics.observe_liquidation(out.value["step"] == 1)

        async for events in take_batches(stream, settings.batch_size, settings.batch_timeout_s):
            async with barrier:
                t0 = time.perf_counter()
                touched: dict[int, PartitionProcessor] = {}
                skip = superseded_ticks([(e.message.partition, source_topic(e.message), e.message.key, e.message.value)
                                         for e in events]) if settings.conflate_ticks else ()
                for n, event in enumerate(events):
                    msg = event.message
                    p = msg.partition
                    proc = touched.get(p) or await processor(p)
                    touched[p] = proc
                    order = guard.check(p, msg.offset)
                    if order != ACCEPT:
                        if order == OUT_OF_ORDER:
                            # The consumer resumed past records no engine applied (faust, after a
                            # rebalance). Seeking back did not bring them back, and acking this
                            # batch could commit past them: exit before the ack; the supervisor's
                            # restart resumes from the committed offset.
                            log.critical("partition %d: got offset %d, expected %d; exiting (%d) so that a "
                                         "restart resumes from the committed offset",
                                         p, msg.offset, guard.expected[p], EXIT_OUT_OF_ORDER)
                            logging.shutdown()
                            os._exit(EXIT_OUT_OF_ORDER)
                        continue
                    guard.advance(p, msg.offset)
                    topic = source_topic(msg)
                    if n in skip:
                        metrics.observe_input(topic, "conflated")
                        mapp.last_offsets[p] = msg.offset
                        continue
                    result = proc.process(topic, msg.key, msg.value, msg.offset)
                    metrics.observe_input(topic, result.outcome, result.error)
                    if result.event_ts is not None:
                        metrics.set_partition_progress(p, result.event_ts)
                    if isinstance(result.event, MarkTick) and result.outcome == "applied":
                        metrics.set_mark(result.event.symbol, result.event.ts)
                    queue_outputs(p, msg.key, stamp(result.outputs, proc.clock))
                    if proc.engine.status_pending:
                        if result.outputs and proc.engine.status_pending >= EARLY_SHIP_STATUSES and not app.in_transaction:
                            # a burst (a crash tick): put its margin calls and liquidations on
                            # the wire before building thousands of margin-status bodies
                            await sender.flush()
                            for _ in range(3):  # let the producer's sender task take the batches
                                await asyncio.sleep(0)
                        queue_outputs(p, msg.key, stamp(proc.engine.finish_status(), proc.clock))
                    mapp.last_offsets[p] = msg.offset
                changes = [(p, c) for p, proc in touched.items() for c in changed_records(mapp, p, proc, written[p])]
                metrics.observe_batch(len(events), time.perf_counter() - t0)
                for p, (table, key, value) in changes:
                    sender.add(changelog_names[table], p, key, value)
                await sender.flush()
                for event in events:  # inside the barrier: the batch commits whole
                    await stream.ack(event)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_, revoked, **kwargs):  # noqa: ANN001
        for tp in revoked:
            if tp.topic == mapp.sequenced.get_topic_name():
                mapp.processors.pop(tp.partition, None)
                written.pop(tp.partition, None)
                guard.forget(tp.partition)
                mapp.last_offsets.pop(tp.partition, None)  # consumer lag: the next owner moves it on
                metrics.forget_partition(tp.partition, SEQUENCED_LAG_TOPIC)
        health.on_revoked()

    @app.on_partitions_assigned.connect
    async def on_assigned(app_, assigned, **kwargs):  # noqa: ANN001
        health.on_assigned({tp.partition for tp in assigned if tp.topic == mapp.sequenced.get_topic_name()})

    @app.on_before_shutdown.connect
    async def close_health(app_, **kwargs):  # noqa: ANN001
        await health.close()

    @app.timer(interval=1.0)
    async def refresh_health():
        try:
            await health.refresh()
        except Exception:  # a metrics timer must never die
            log.exception("refreshing consumer lag / recovery state failed")

    @app.timer(interval=5.0)
    async def refresh_gauges():
        try:
            counts = dict.fromkeys(STATES, 0)
            isolated = dict.fromkeys(STATES, 0)
            positions = 0
            accounts = 0
            ids = 0
            for p, proc in list(mapp.processors.items()):
                for k, v in records.state_counts(proc.engine).items():
                    counts[k] += v
                for k, v in isolated_state_counts(proc.engine).items():
                    isolated[k] += v
                accounts += len(proc.engine.accounts)
                positions += sum(len(s.book.positions) for s in proc.engine.accounts.values())
                ids += len(proc.engine.seen)
            metrics.set_account_states(counts, isolated)
            metrics.set_held(accounts, positions, ids)
        except Exception:
            log.exception("refreshing the state gauges failed")
