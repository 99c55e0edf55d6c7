"""Tick-to-decision latency: live mark ticks in, margin-calls and liquidations out.

:class:`Collector` is the downstream client: an aiokafka consumer (read_committed) in
its own thread and event loop, assigned to every partition of the margin-calls and
liquidations topics from their end, recording the wall time each batch arrives.
:func:`send_ticks` produces 10 ticks/s per symbol (symbols staggered over the 100 ms),
continuing each symbol's bulk path and seq, with a crash of the ticked symbol (-25 %
over 5 ticks at one third of the phase, held, recovered over 20 ticks at two thirds).
Each tick's wall time is taken just before its send and at its ack; its cause id is
``SYMBOL:seq`` (the contract's ``cause.id`` of a mark).
"""
from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import orjson

from .workload import TICKED


class Collector(threading.Thread):
    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(name="latency-collector", daemon=True)
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: list[tuple[float, str, bytes]] = []  # (wall s at arrival, topic, value)
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.last_arrival = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed", fetch_max_wait_ms=20,
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in self.topics for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self.ready.set()
            while not self.stopping.is_set():
                batches = await consumer.getmany(timeout_ms=20)
                if not batches:
                    continue
                now = time.time()
                self.last_arrival = now
                for tp, recs in batches.items():
                    self.records.extend((now, tp.topic, r.value) for r in recs)
        finally:
            await consumer.stop()


async def send_ticks(bootstrap: str, prefix: str, specs, last_price: dict, last_seq: dict, seconds: float,
                     crash_depth: float, seed: int) -> tuple[dict, dict]:
    """Produce the live ticks; returns ({cause_id: wall s before send}, {cause_id: wall s at ack})."""
    from aiokafka import AIOKafkaProducer

    rng = random.Random(seed)
    names = [s[0] for s in specs]
    rounds = max(1, int(seconds * 10))
    crash_r, recover_r = rounds // 3, (2 * rounds) // 3
    f = math.log(1 - crash_depth)
    price = dict(last_price)
    seq = dict(last_seq)
    base = dict(last_price)
    shape = {TICKED: 0.0}
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    try:
        topic = prefix + "mark-prices"
        futs = []
        t0 = time.perf_counter() + 0.05
        for r in range(rounds):
            for j, sym in enumerate(names):
                due = t0 + r * 0.1 + j * 0.1 / len(names)
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                base[sym] *= math.exp(rng.gauss(0.0, 0.0003))
                if sym == TICKED:
                    if crash_r <= r < crash_r + 5:
                        shape[sym] = f * (r - crash_r + 1) / 5
                    elif recover_r <= r < recover_r + 20:
                        shape[sym] = f * (1 - (r - recover_r + 1) / 20)
                p = base[sym] * math.exp(shape.get(sym, 0.0))
                price[sym] = p
                seq[sym] += 1
                cid = f"{sym}:{seq[sym]}"
                value = orjson.dumps({"symbol": sym, "mark_price": "%.6g" % p, "ts": int(time.time() * 1000),
                                      "seq": seq[sym]})
                sent[cid] = time.time()
                fut = await producer.send(topic, value, key=sym.encode())
                fut.add_done_callback(lambda _f, c=cid: acked.__setitem__(c, time.time()))
                futs.append(fut)
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return sent, acked


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(records: list[tuple[float, str, bytes]], sent: dict[str, float], acked: dict[str, float],
              prefix: str) -> dict:
    """Latencies (ms) of every caused event and of the first event per tick."""
    per_event: list[float] = []
    per_event_ack: list[float] = []
    decided: list[float] = []  # tick sent -> the worker's decided_at (wall ms in the output)
    delivery: list[float] = []  # decided_at -> consumed (produce, transaction commit, fetch)
    first: dict[str, float] = {}
    by_topic: dict[str, int] = {}
    liq_entries = 0
    other = 0
    for arrival, topic, raw in records:
        v = orjson.loads(raw)
        cause = v.get("cause") or {}
        cid = cause.get("id")
        if cause.get("topic") != "mark-prices" or cid not in sent:
            other += 1
            continue
        name = topic[len(prefix):]
        by_topic[name] = by_topic.get(name, 0) + 1
        if name == "liquidations" and v.get("step") == 1:
            liq_entries += 1
        lat = (arrival - sent[cid]) * 1000
        per_event.append(lat)
        if cid in acked:
            per_event_ack.append((arrival - acked[cid]) * 1000)
        d = v.get("decided_at")
        if isinstance(d, (int, float)):
            decided.append(d - sent[cid] * 1000)
            delivery.append(arrival * 1000 - d)
        if cid not in first or lat < first[cid]:
            first[cid] = lat
    per_event.sort()
    per_event_ack.sort()
    decided.sort()
    delivery.sort()
    firsts = sorted(first.values())

    def stats(xs: list[float]) -> dict:
        return {"n": len(xs), "p50_ms": _r(percentile(xs, 50)), "p99_ms": _r(percentile(xs, 99)),
                "max_ms": _r(xs[-1] if xs else None)}

    return {
        "ticks_sent": len(sent), "ticks_with_events": len(first), "events": by_topic,
        "liquidation_entries": liq_entries, "unmatched_events": other,
        "all_events": stats(per_event), "first_event_per_tick": stats(firsts),
        "all_events_from_ack": stats(per_event_ack),
        "sent_to_decided_at": stats(decided), "decided_at_to_consumed": stats(delivery),
    }


def _r(x):
    return None if x is None else round(x, 1)
