"""The baseline: the least a consume-transform-produce pipeline must do.

    python -m bench.pipeline.baseline --bootstrap HOST:PORT --group G --out TOPIC --expect N
                                      [--stop '{"topic:partition": offset, ...}'] TOPIC...

A plain aiokafka loop in its own process: subscribe to the input topics (group ``G``,
starting from its committed offsets), ``getmany``, decode every value with orjson,
produce one small output per input to ``TOPIC`` (same partition number as the input),
wait for the batch's acks, commit (at-least-once). Stops once ``N`` inputs were
consumed, produced and committed (with ``--stop``, only records before those offsets
count and are transformed: the same records as the pipeline's bulk); prints one JSON line: events, seconds (from the
assignment to the last commit), events/s.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson


async def run(bootstrap: str, group: str, topics: list[str], out: str, expect: int, timeout_s: float,
              stop: dict[str, int] | None = None) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=5000, fetch_max_wait_ms=10,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError("no assignment after 60 s")
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        n = bad = 0
        while n < expect:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumed {n} of {expect} in {timeout_s} s")
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            if not batches:
                continue
            futs = []
            for tp, records in batches.items():
                if stop is not None:
                    end = stop.get(f"{tp.topic}:{tp.partition}", 0)
                    records = [r for r in records if r.offset < end]
                for rec in records:
                    try:
                        value = orjson.loads(rec.value)
                        ts = value.get("ts") if isinstance(value, dict) else None
                    except orjson.JSONDecodeError:
                        bad += 1
                        ts = None
                    small = orjson.dumps({"topic": tp.topic, "offset": rec.offset, "ts": ts})
                    futs.append(await producer.send(out, small, key=rec.key, partition=tp.partition))
                n += len(records)
            await asyncio.gather(*futs)
            await consumer.commit()
        seconds = time.perf_counter() - t0
        return {"events": n, "seconds": round(seconds, 3), "events_per_s": round(n / seconds, 1), "undecodable": bad}
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline.baseline")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--stop", default=None, help="JSON {topic:partition: offset}: consume only records before these")
    p.add_argument("topics", nargs="+")
    a = p.parse_args(argv)
    stop = orjson.loads(a.stop) if a.stop else None
    result = asyncio.run(run(a.bootstrap, a.group, a.topics, a.out, a.expect, a.timeout, stop))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
