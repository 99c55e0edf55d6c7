"""Batches of events from a faust stream that end when the input runs dry.

faust's ``Stream.take_events(max_, within)`` yields when ``max_`` events are
buffered or after ``within`` seconds; short of a full batch it always waits the
whole ``within``. That made every quiet-time event (a mark tick) wait the batch
timeout, and under a backlog the batch size was whatever arrived in ``within``
while the event loop was shared with the sequencer: a few events per batch.

:func:`take_batches` is the same loop with one more way out: the batch is
yielded as soon as the stream's channel queue is empty (nothing more delivered
yet), so a lone event is processed at once and a backlog fills whole batches.
Events are acked by the caller, never here: a batch the caller did not finish
stays unacked and is consumed again after a restart.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from mode.utils.futures import notify


async def take_batches(stream, max_: int, within: float) -> AsyncIterator[list]:
    """Yield lists of up to ``max_`` events: full, or the channel drained, or ``within`` s passed."""
    queue = getattr(stream.channel, "queue", None)
    if queue is None or not hasattr(queue, "empty"):  # not a queue-backed channel: faust's own loop
        async for events in stream.take_events(max_, within):
            yield events
        return
    events: list = []
    ready = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future | None = None
    saved_acks = stream.enable_acks

    async def add_to_buffer(value):
        nonlocal consuming
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches: current_event is None")
        events.append(event)
        if len(events) >= max_:
            ready.set()
            consumed.clear()
            await stream.wait(consumed)
        elif queue.empty():
            ready.set()
        return value

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(stream.channel)
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=within)
            if events:
                consuming = asyncio.get_running_loop().create_future()
                batch = list(events)
                try:
                    yield batch
                finally:
                    events.clear()
                    notify(consuming)
                    ready.clear()
                    consumed.set()
            else:
                ready.clear()
    finally:
        stream.enable_acks = saved_acks
        stream._processors.remove(add_to_buffer)


def superseded_ticks(items: list[tuple[int, str, bytes | None, bytes]]) -> set[int]:
    """Indexes of mark ticks a later tick of the same batch supersedes (``MW_CONFLATE_TICKS``).

    ``items``: ``(partition, source topic, key, value)`` of a batch, in order. A tick
    is superseded when the next record *of its partition* is a tick of the same
    symbol that is newer by the contract's staleness rule (seq when both have one,
    else ts) and both decode: nothing else happened to that partition in between,
    so applying the newer tick alone leaves the same marks; only the superseded
    tick's own outputs are not emitted. A tick that does not decode is never
    skipped (it is dead-lettered as usual).
    """
    from .. import codec
    from ..margin.errors import InputRejected
    from ..margin.events import MarkTick

    def tick(i: int):
        _, topic, key, value = items[i]
        if topic != "mark-prices":
            return None
        try:
            event = codec.decode(topic, key, value)
        except InputRejected:
            return None
        return event if isinstance(event, MarkTick) else None

    last_of: dict[int, int] = {}  # partition -> index of its previous record
    skip: set[int] = set()
    decoded: dict[int, object] = {}
    for i, (p, topic, _, _) in enumerate(items):
        j = last_of.get(p)
        last_of[p] = i
        if j is None or topic != "mark-prices" or items[j][1] != "mark-prices":
            continue
        older = decoded[j] if j in decoded else decoded.setdefault(j, tick(j))
        newer = decoded.setdefault(i, tick(i))
        if older is None or newer is None or older.symbol != newer.symbol:
            continue
        if older.seq is not None and newer.seq is not None:
            if newer.seq > older.seq:
                skip.add(j)
        elif newer.ts > older.ts:
            skip.add(j)
    return skip
