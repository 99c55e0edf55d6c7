"""Full-size worker on the real broker: memory and tick-to-decision latency.

Loading 100,000 accounts with 1,000,000 positions through fills takes the worker
far longer than a benchmark can wait, so this benchmark *synthesizes the committed
state* instead: the book of ``bench/engine.py`` (every account holds BTCUSDT) is
written as the worker's own changelog records (``records.account_record``, params,
marks, and ``--seen-per-account`` fill ids per account for the dedup table), then
one worker starts and rebuilds its partitions from them exactly as after a
takeover. Measured:

- rebuild time and the worker's RSS (VmRSS, VmHWM) with the whole book loaded;
- tick-to-decision latency: BTCUSDT ticks at ``--rate``/s (a random walk, then a
  ``--crash`` % fall over ``--crash-ticks`` ticks) produced to ``mark-prices``; a
  downstream read_committed consumer on margin-calls and liquidations takes the
  wall time from each tick's send to each decision it caused (``cause.id`` =
  ``BTCUSDT:<seq>``). Reported over all decisions and over the first per tick.

Usage: ``python bench/worker_state.py [--accounts 100000 --positions 1000000]
[--guarantee at_least_once|exactly_once] [--json FILE]``. Needs a broker
(``make kafka-up``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

import engine as book_bench  # noqa: E402  (bench/engine.py)
from streams.agents import state_keys  # noqa: E402
from streams.margin import records  # noqa: E402
from streams.margin.dedup import encode_value, id_key  # noqa: E402
from streams.pipeline import margin_config  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import account_partition  # noqa: E402
from tests.integration.harness import WorkerProcess, wait_up, worker_env  # noqa: E402


def rss_mib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def build_records(args, settings: Settings) -> tuple[dict, dict, dict]:
    eng = book_bench.make_engine(margin_config(settings))
    info = book_bench.bulk_load(eng, args.accounts, args.positions, args.seed)
    acc: dict[int, list] = {p: [] for p in range(args.partitions)}
    seen: dict[int, list] = {p: [] for p in range(args.partitions)}
    params = orjson.dumps(records.params_record(eng))
    marks = orjson.dumps(records.marks_record(eng))
    for p in range(args.partitions):
        acc[p].append((state_keys.global_key(p, state_keys.PARAMS), params))
        acc[p].append((state_keys.global_key(p, state_keys.MARKS), marks))
    ts = eng.last_ts
    for account_id in eng.accounts:
        p = account_partition(account_id.encode(), args.partitions)
        acc[p].append((state_keys.account_key(p, account_id), orjson.dumps(records.account_record(eng, account_id))))
        for k in range(args.seen_per_account):
            key = id_key(account_id, "fills", f"{account_id}-f{k}")
            seen[p].append((state_keys.seen_key(p, key), encode_value("0123456789abcdef", ts, account_id).encode()))
    mark = float(eng.market.marks[book_bench.TICKED])
    return acc, seen, {"book": info, "mark": mark}


async def write_changelogs(bs: str, app_id: str, partitions: int, acc: dict, seen: dict) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bs)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(f"{app_id}-{name}-changelog", partitions, 1, topic_configs={"cleanup.policy": "compact"})
            for name in ("accounts", "seen-ids")
        ])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=20, max_batch_size=1 << 20, acks="all",
                                max_request_size=4 << 20)
    await producer.start()
    try:
        for name, by_p in (("accounts", acc), ("seen-ids", seen)):
            topic = f"{app_id}-{name}-changelog"
            futs = []
            for p, items in by_p.items():
                for key, value in items:
                    futs.append(await producer.send(topic, value, key=key, partition=p))
            await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def live_ticks(bs: str, prefix: str, args, start_mark: float, seq0: int) -> dict:
    """Produce ticks at ``args.rate``/s; consume decisions; per-decision latency (ms)."""
    sent: dict[str, float] = {}
    lat: list[float] = []
    first: dict[str, float] = {}
    consumer = AIOKafkaConsumer(prefix + "margin-calls", prefix + "liquidations", bootstrap_servers=bs,
                                isolation_level="read_committed", auto_offset_reset="latest",
                                group_id=f"bench-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                fetch_max_wait_ms=5)
    await consumer.start()
    await asyncio.sleep(2)  # assignment + latest positions before the first tick
    producer = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=0, acks="all")
    await producer.start()
    done = asyncio.Event()
    counts = {"decisions": 0, "unmatched": 0}

    async def consume():
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batch.values():
                for rec in recs:
                    cause = orjson.loads(rec.value)["cause"]["id"]
                    t = sent.get(cause)
                    if t is None:
                        counts["unmatched"] += 1
                        continue
                    counts["decisions"] += 1
                    ms = (now - t) * 1000
                    lat.append(ms)
                    first.setdefault(cause, ms)

    task = asyncio.create_task(consume())
    rng = random.Random(args.seed)
    price = start_mark
    n = int(args.seconds * args.rate)
    crash_from = n - args.crash_ticks
    ts = int(time.time() * 1000)
    t_next = time.monotonic()
    for i in range(n):
        if i >= crash_from:
            price *= 1 - args.crash / 100 / args.crash_ticks
        else:
            price *= 1 + rng.gauss(0, args.move_bp / 1e4)
        seq = seq0 + i
        value = {"symbol": book_bench.TICKED, "mark_price": f"{price:.2f}", "ts": ts + i * int(1000 / args.rate),
                 "seq": seq}
        sent[f"{book_bench.TICKED}:{seq}"] = time.time()
        await producer.send_and_wait(prefix + "mark-prices", orjson.dumps(value), key=book_bench.TICKED.encode())
        t_next += 1 / args.rate
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
    await asyncio.sleep(args.drain_s)
    done.set()
    await task
    await producer.stop()
    await consumer.stop()

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else None

    f = list(first.values())
    return {"ticks": n, "ticks_with_decisions": len(first), **counts,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
            "first_p50_ms": pct(f, 50), "first_p99_ms": pct(f, 99), "first_max_ms": max(f) if f else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--positions", type=int, default=1_000_000)
    ap.add_argument("--seen-per-account", type=int, default=10, help="fill ids in the dedup table per account")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--guarantee", default="at_least_once", choices=["at_least_once", "exactly_once"])
    ap.add_argument("--commit-interval", type=float, default=0.1)
    ap.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--move-bp", type=float, default=5.0)
    ap.add_argument("--crash", type=float, default=8.0, help="percent fall at the end")
    ap.add_argument("--crash-ticks", type=int, default=10)
    ap.add_argument("--drain-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bootstrap", default=os.environ.get("MW_BENCH_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--conflate", action="store_true", help="MW_CONFLATE_TICKS=true")
    ap.add_argument("--store", default="changelog://", help="MW_STORE (memory:// = faust recovers its copy first)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    prefix = f"ws{uuid.uuid4().hex[:6]}."
    env = worker_env(args.bootstrap, prefix, args.partitions, MW_GUARANTEE=args.guarantee,
                     MW_COMMIT_INTERVAL_S=str(args.commit_interval), MW_LOG_LEVEL="warning",
                     MW_STALL_TIMEOUT_S="0", MW_CONFLATE_TICKS="true" if args.conflate else "false", MW_STORE=args.store)
    settings = Settings.from_env(env)
    load = os.getloadavg()
    t0 = time.perf_counter()
    acc, seen, info = build_records(args, settings)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    asyncio.run(write_changelogs(args.bootstrap, settings.app_id, args.partitions, acc, seen))
    t_write = time.perf_counter() - t0
    n_acc = sum(len(v) for v in acc.values())
    n_seen = sum(len(v) for v in seen.values())
    del acc, seen
    tmp = Path(tempfile.mkdtemp(prefix="mw-wstate-"))
    worker = WorkerProcess(env, tmp, "w").start()
    try:
        wait_up(worker, timeout=120)
        # the first tick makes every partition rebuild from the changelog, then evaluates the book
        t0 = time.time()
        warm = asyncio.run(live_ticks(args.bootstrap, prefix, argparse.Namespace(**{**vars(args), "seconds": 1 / args.rate,
                                      "crash_ticks": 0, "drain_s": 0.0}), info["mark"], 10))
        while time.time() - t0 < 600:
            m = worker.metrics()
            if m.get('marginwatch_input_messages_total{outcome="applied",topic="mark-prices"}', 0) >= args.partitions \
                    and not m.get("marginwatch_recovering", 1):
                break
            worker.check()
            time.sleep(1)
        t_rebuild = time.time() - t0
        mem_loaded = rss_mib(worker.proc.pid)
        live = asyncio.run(live_ticks(args.bootstrap, prefix, args, info["mark"], 100))
        mem_end = rss_mib(worker.proc.pid)
        m = worker.metrics()
    finally:
        worker.stop()
    result = {
        "accounts": args.accounts, "positions": info["book"]["positions"], "partitions": args.partitions,
        "guarantee": args.guarantee, "commit_interval_s": args.commit_interval, "conflate_ticks": args.conflate,
        "store": args.store,
        "inputs": {k: v for k, v in m.items() if k.startswith("marginwatch_input_messages_total") and v},
        "changelog_records": {"accounts": n_acc, "seen_ids": n_seen},
        "build_records_s": round(t_build, 1), "write_changelogs_s": round(t_write, 1),
        "first_tick_rebuild_and_evaluate_s": round(t_rebuild, 1), "warmup_tick": warm,
        "rss_after_rebuild_mib": mem_loaded, "rss_end_mib": mem_end, "live": live,
        "outputs": {k: v for k, v in m.items() if k.startswith("marginwatch_outputs_total")},
        "loadavg_before": load, "loadavg_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
