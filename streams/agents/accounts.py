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

log = logging.getLogger(__name__)
SEP = "\x1f"


def _prefix(partition: int) -> str:
    return f"{partition}{SEP}"


def build_processor(mapp, partition: int) -> PartitionProcessor:
    """A partition's processor, its engine rebuilt from the tables."""
    t0 = time.perf_counter()
    if mapp.seed is None:
        mapp.seed = load_seed(mapp.settings.risk_params_file)
    engine = new_engine(mapp.settings, mapp.seed)
    prefix = _prefix(partition).encode()
    params = mapp.accounts.get(prefix + b"params")
    marks = mapp.accounts.get(prefix + b"marks")
    accounts = []
    for key, value in mapp.accounts.items():
        if key.startswith(prefix) and key not in (prefix + b"params", prefix + b"marks"):
            accounts.append((key[len(prefix):].decode(), orjson.loads(value)))
    accounts.sort()
    seen = [(k[len(prefix):].decode(), v.decode()) for k, v in mapp.seen.items() if k.startswith(prefix)]
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
    """Keeps faust's offset/transaction commit out of a batch.

    A batch's outputs and changelog records are sent with several awaits; a
    timer commit between two of them would commit part of the batch's effects
    without its offsets (duplicates or losses after a crash), and under
    exactly-once a send during a commit fails outright ("not in transaction").
    faust lets one commit run at a time through ``Consumer._commit_fut``: the
    batch takes that slot (after any commit in flight), so timer commits
    scheduled meanwhile wait and then skip; the next one commits the batch whole.
    """

    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self.fut = None

    async def __aenter__(self) -> "CommitBarrier":
        while self.consumer._commit_fut is not None:
            await self.consumer.maybe_wait_for_commit_to_finish()
        self.fut = asyncio.get_running_loop().create_future()
        self.consumer._commit_fut = self.fut
        return self

    async def __aexit__(self, *exc) -> None:
        if self.consumer._commit_fut is self.fut:
            self.consumer._commit_fut = None
        if not self.fut.done():
            self.fut.set_result(None)


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

    def processor(p: int) -> PartitionProcessor:
        proc = mapp.processors.get(p)
        if proc is None:
            proc = mapp.processors[p] = build_processor(mapp, p)
            written[p] = {"params_version": proc.engine.params_version}
        return proc

    @app.agent(mapp.sequenced, name="margin")
    async def margin(stream):
        _keep_explicit_partitions(app, {t.get_topic_name() for t in mapp.outputs.values()})
        async for events in stream.take_events(settings.batch_size, settings.batch_timeout_s):
            async with CommitBarrier(app.consumer):
                t0 = time.perf_counter()
                touched: dict[int, PartitionProcessor] = {}
                sends = []
                for event in events:
                    msg = event.message
                    p = msg.partition
                    proc = touched.get(p) or processor(p)
                    touched[p] = proc
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
                metrics.forget_partition(tp.partition)
        metrics.observe_rebalance()

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
