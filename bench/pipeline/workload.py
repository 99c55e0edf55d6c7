"""The fixed, seeded workload of the pipeline benchmark, and a fast producer for it.

Two stages, so that every account's collateral (and isolated margin) is applied
before its first fill whatever order the sequencer reads the input topics in:

- **setup** (stage A): risk-params of the symbols the start-up file lacks (linear,
  BTCUSDT's tiers), the first mark of every symbol (seq 0), one USDT deposit per
  account and the isolated-margin transfers of the isolated positions;
- **bulk** (stage B, the measured input): the fills, spread over ``duration_s`` of event
  time in ts order, and the marks of every symbol at 10 ticks/s of event time, with a
  crash of the ticked symbol (BTCUSDT): -25 % over 5 ticks at half the run, held 3 s,
  recovered over 2 s. Fill prices follow the path without the crash (topics are read
  in no particular order relative to each other, so a crash tick may be applied before
  or after the fills of its event time).

Every account holds BTCUSDT (the ticked symbol of the latency phase) plus
``fills/accounts - 1`` other symbols, one fill opening each position. Leverage on
BTCUSDT is log-uniform in [0.5, 8] (60 % long), on each other symbol in [0.05, 0.6].
"""
from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson

TICKED = "BTCUSDT"
START_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the bulk's event time
TICK_MS = 100  # 10 ticks/s per symbol
DEPOSITS = (1000, 2500, 5000, 10000, 25000, 100000)

# symbol -> (price, kind, settle, contract size, qty step); the first five are in the
# start-up risk-params file, the others get a risk-params record in the setup stage.
SYMBOL_TABLE: list[tuple[str, float, str, str, str, str]] = [
    ("BTCUSDT", 60000.0, "linear", "USDT", "1", "0.001"),
    ("ETHUSDT", 3000.0, "linear", "USDT", "1", "0.001"),
    ("SOLUSDT", 150.0, "linear", "USDT", "1", "1"),
    ("BTCUSD", 60000.0, "inverse", "BTC", "100", "1"),
    ("ETHUSD", 3000.0, "inverse", "ETH", "10", "1"),
]
_EXTRA = [("XRPUSDT", 0.6), ("DOGEUSDT", 0.15), ("ADAUSDT", 0.45), ("AVAXUSDT", 35.0), ("LINKUSDT", 15.0),
          ("DOTUSDT", 7.0), ("LTCUSDT", 80.0), ("BCHUSDT", 400.0), ("TRXUSDT", 0.12), ("NEARUSDT", 5.0),
          ("ATOMUSDT", 9.0), ("UNIUSDT", 8.0), ("APTUSDT", 10.0), ("ARBUSDT", 1.1), ("OPUSDT", 2.5)]
SEEDED = {s[0] for s in SYMBOL_TABLE}

# BTCUSDT's tiers from the start-up file (maintenance amounts given on all tiers)
BTC_TIERS = [
    {"max_notional": "50000", "mmr": "0.004", "maintenance_amount": "0", "imr": "0.008"},
    {"max_notional": "250000", "mmr": "0.005", "maintenance_amount": "50", "imr": "0.01"},
    {"max_notional": "3000000", "mmr": "0.01", "maintenance_amount": "1300", "imr": "0.02"},
    {"max_notional": "20000000", "mmr": "0.025", "maintenance_amount": "46300", "imr": "0.05"},
    {"max_notional": "40000000", "mmr": "0.05", "maintenance_amount": "546300", "imr": "0.1"},
    {"max_notional": "100000000", "mmr": "0.1", "maintenance_amount": "2546300", "imr": "0.2"},
    {"max_notional": "120000000", "mmr": "0.125", "maintenance_amount": "5046300", "imr": "0.25"},
    {"max_notional": "200000000", "mmr": "0.15", "maintenance_amount": "8046300", "imr": "0.333333333333333333"},
    {"max_notional": "300000000", "mmr": "0.25", "maintenance_amount": "28046300", "imr": "0.5"},
    {"max_notional": None, "mmr": "0.5", "maintenance_amount": "103046300", "imr": "1"},
]


def symbol_specs(n: int) -> list[tuple[str, float, str, str, str, str]]:
    if n < 1:
        raise ValueError("--symbols must be >= 1")
    specs = list(SYMBOL_TABLE[:n])
    for i in range(max(0, n - len(SYMBOL_TABLE))):
        if i < len(_EXTRA):
            name, price = _EXTRA[i]
        else:
            name, price = f"SYM{i:03d}USDT", 10.0 + i
        specs.append((name, price, "linear", "USDT", "1", "0.001"))
    return specs


def _price(x: float) -> str:
    return "%.6g" % x


def _qty(x: float, step: str) -> str:
    if step == "1":
        return str(max(1, int(x)))
    decimals = len(step.split(".", 1)[1]) if "." in step else 0
    unit = 10 ** decimals
    q = max(1, int(x * unit))
    return f"{q / unit:.{decimals}f}"


@dataclass
class Config:
    accounts: int = 100_000
    fills: int = 1_000_000
    symbols: int = 20
    seed: int = 6
    duration_s: float = 0.0  # event time of the bulk stage; 0 = max(20, fills / 10,000)
    isolated_share: float = 0.1  # of the non-ticked USDT positions
    crash_depth: float = 0.25

    def duration(self) -> float:
        return self.duration_s or max(20.0, self.fills / 10_000)


@dataclass
class Workload:
    """Encoded records, per stage: lists of (topic, key bytes, value bytes), in produce order."""

    cfg: Config
    specs: list
    setup: list = field(default_factory=list)
    bulk: list = field(default_factory=list)
    last_price: dict = field(default_factory=dict)  # symbol -> last bulk mark (the live phase starts there)
    last_seq: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # "<stage>/<topic>" -> records
    positions: int = 0
    holders: dict = field(default_factory=dict)  # symbol -> accounts holding it
    crash_ticks: tuple = (0, 0)  # (first, end) bulk tick index of the crash of TICKED


def _mark(sym: str, price: float, ts: int, seq: int) -> bytes:
    return orjson.dumps({"symbol": sym, "mark_price": _price(price), "ts": ts, "seq": seq})


def price_paths(cfg: Config, specs, rng: np.random.Generator) -> tuple[dict, dict, int, tuple[int, int]]:
    """Per symbol: the mark path (with the crash on TICKED) and the smooth path fills use."""
    ticks = int(cfg.duration() * 1000 // TICK_MS)
    smooth, marks = {}, {}
    crash_at = ticks // 2
    crash = (crash_at, crash_at + 5 + 30 + 20)
    for sym, p0, *_ in specs:
        steps = rng.normal(0.0, 0.0003, ticks)
        path = p0 * np.exp(np.cumsum(steps))
        smooth[sym] = path
        m = path.copy()
        if sym == TICKED and ticks > crash[1]:
            f = math.log(1 - cfg.crash_depth)
            shape = np.zeros(ticks)
            shape[crash_at:crash_at + 5] = f * np.arange(1, 6) / 5
            shape[crash_at + 5:crash_at + 35] = f
            shape[crash_at + 35:crash_at + 55] = f * (1 - np.arange(1, 21) / 20)
            m = path * np.exp(shape)
        marks[sym] = m
    return marks, smooth, ticks, crash


def build(cfg: Config) -> Workload:
    """The whole workload, deterministic for ``cfg`` (numpy's PCG64 seeded with ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    specs = symbol_specs(cfg.symbols)
    w = Workload(cfg, specs)
    names = [s[0] for s in specs]
    spec_of = {s[0]: s for s in specs}
    n, nsym = cfg.accounts, len(specs)
    accounts = [f"a{i:07d}" for i in range(n)]
    marks, smooth, ticks, crash = price_paths(cfg, specs, rng)
    w.crash_ticks = crash
    t_setup = START_TS - 60_000

    # ---- setup: risk-params, first marks, deposits, isolated margin
    setup = w.setup
    for sym, price, kind, settle, csize, step in specs:
        if sym not in SEEDED:
            value = {"type": "instrument", "symbol": sym, "kind": kind, "settle_asset": settle,
                     "contract_size": csize, "qty_step": step, "tiers": BTC_TIERS, "ts": t_setup}
            setup.append(("risk-params", sym.encode(), orjson.dumps(value)))
    for sym, price, *_ in specs:
        setup.append(("mark-prices", sym.encode(), _mark(sym, price, t_setup, 0)))
    deposits = rng.choice(np.array(DEPOSITS, dtype=np.float64), n)
    for i, a in enumerate(accounts):
        setup.append(("collateral", a.encode(), orjson.dumps(
            {"event_id": f"dep-{a}", "account_id": a, "asset": "USDT", "amount": str(int(deposits[i].item())),
             "reason": "deposit", "ts": t_setup})))

    # ---- which symbols each account holds: TICKED + k-1 others (weighted, inverse 4x rarer)
    per = np.full(n, cfg.fills // n, dtype=np.int64)
    per[: cfg.fills % n] += 1
    others = [s for s in names if s != TICKED] if TICKED in names else names[1:]
    first = TICKED if TICKED in names else names[0]
    weights = np.array([0.25 if spec_of[s][2] == "inverse" else 1.0 for s in others])
    kmax = int(per.max()) if n else 0
    if others:
        keys = np.log(rng.random((n, len(others)))) / weights  # Gumbel-top-k: weighted sample w/o replacement
        order = np.argsort(-keys, axis=1)
    fills_sym: list[tuple[int, str]] = []  # (account index, symbol)
    per_l = per.tolist()
    order_l = order.tolist() if others else None
    no = len(others)
    for i in range(n):
        k = per_l[i]
        if k <= 0:
            continue
        fills_sym.append((i, first))
        row = order_l[i] if others else None
        for j in range(1, k):
            if others:
                fills_sym.append((i, others[row[(j - 1) % no]]))
            else:
                fills_sym.append((i, first))
    m = len(fills_sym)
    w.positions = len(set(fills_sym))
    holders: dict[str, int] = defaultdict(int)
    for pair in set(fills_sym):
        holders[pair[1]] += 1
    w.holders = dict(holders)

    # ---- fills: time, size, side, mode
    span = ticks * TICK_MS
    times = np.sort(rng.integers(0, span, m))  # event time offsets; assigned to a random permutation of fills
    perm = rng.permutation(m)
    u_lev = rng.random(m).tolist()
    u_side = rng.random(m).tolist()
    u_px = rng.uniform(-0.0005, 0.0005, m).tolist()
    u_iso = rng.random(m).tolist()
    u_isolev = rng.uniform(3.0, 20.0, m).tolist()
    perm = perm.tolist()
    tlist = times.tolist()
    smooth_l = {k: v.tolist() for k, v in smooth.items()}
    dep_l = deposits.tolist()
    lo_b, span_b = math.log(0.5), math.log(8) - math.log(0.5)
    lo_o, span_o = math.log(0.05), math.log(0.6) - math.log(0.05)
    fills_by_slot: list[bytes | None] = [None] * m
    keys_by_slot: list[bytes | None] = [None] * m
    iso_setup = []
    fill_no = defaultdict(int)
    for idx, (i, sym) in enumerate(fills_sym):
        a = accounts[i]
        _, p0, kind, settle, csize, step = spec_of[sym]
        slot = perm[idx]
        t = tlist[slot]
        tick = min(ticks - 1, t // TICK_MS)
        price = smooth_l[sym][tick] * (1 + u_px[idx])
        eq = dep_l[i]
        if sym == first:
            lev = math.exp(lo_b + u_lev[idx] * span_b)
            side = "buy" if u_side[idx] < 0.6 else "sell"
        else:
            lev = math.exp(lo_o + u_lev[idx] * span_o)
            side = "buy" if u_side[idx] < 0.5 else "sell"
        notional = lev * eq
        if kind == "linear":
            qty = _qty(notional / price / float(csize), step)
            fee = "%.4f" % (0.0004 * notional)
        else:
            qty = _qty(notional / float(csize), step)
            fee = "0"
        mode = "cross"
        if sym != first and settle == "USDT" and u_iso[idx] < cfg.isolated_share:
            mode = "isolated"
            iso_setup.append(("collateral", a.encode(), orjson.dumps(
                {"event_id": f"iso-{a}-{sym}", "account_id": a, "asset": "USDT",
                 "amount": "%.2f" % (notional / u_isolev[idx]), "reason": "isolated_margin",
                 "symbol": sym, "ts": t_setup + 1})))
        fill_no[i] += 1
        value = {"fill_id": f"f-{a}-{fill_no[i]}", "account_id": a, "symbol": sym, "side": side, "qty": qty,
                 "price": _price(price), "fee": fee, "margin_mode": mode, "ts": START_TS + t}
        fills_by_slot[slot] = orjson.dumps(value)
        keys_by_slot[slot] = a.encode()
    setup.extend(iso_setup)

    # ---- bulk: fills and marks, merged in event-time order
    bulk = w.bulk
    mark_ts = [(START_TS + k * TICK_MS + j, sym) for k in range(1, ticks) for j, sym in enumerate(names)]
    fi = 0
    marks_l = {k: v.tolist() for k, v in marks.items()}
    # fills are already in time order by slot
    for ts, sym in mark_ts:
        while fi < m and START_TS + tlist[fi] < ts:
            bulk.append(("fills", keys_by_slot[fi], fills_by_slot[fi]))
            fi += 1
        k = (ts - START_TS) // TICK_MS
        bulk.append(("mark-prices", sym.encode(), _mark(sym, marks_l[sym][k], ts, k)))
    while fi < m:
        bulk.append(("fills", keys_by_slot[fi], fills_by_slot[fi]))
        fi += 1
    for sym in names:
        w.last_price[sym] = marks_l[sym][ticks - 1]
        w.last_seq[sym] = ticks - 1
    counts: dict[str, int] = defaultdict(int)
    for stage, recs in (("setup", setup), ("bulk", bulk)):
        for topic, _, _ in recs:
            counts[f"{stage}/{topic}"] += 1
    w.counts = dict(counts)
    return w


def sequenced_count(records, partitions: int) -> int:
    """Records the sequencer writes for ``records``: marks and risk-params go to every partition."""
    return sum(partitions if t in ("mark-prices", "risk-params") else 1 for t, _, _ in records)


async def produce(bootstrap: str, prefix: str, records, partitions: int, batch_bytes: int = 512 * 1024) -> float:
    """Produce ``records`` (topic, key, value) to ``prefix + topic``; returns seconds.

    Records are partitioned like Kafka's default partitioner (murmur2 of the key) and
    sent as whole batches per partition (``send_batch``), keeping each partition's order.
    """
    import time

    from aiokafka import AIOKafkaProducer

    from streams.topics import account_partition

    t0 = time.perf_counter()
    part_of: dict[bytes, int] = {}
    grouped: dict[tuple[str, int], list] = defaultdict(list)
    for topic, key, value in records:
        p = part_of.get(key)
        if p is None:
            p = part_of[key] = account_partition(key, partitions)
        grouped[(prefix + topic, p)].append((key, value))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                max_batch_size=batch_bytes, linger_ms=5, max_request_size=4 * batch_bytes)
    await producer.start()
    try:
        futs = []
        for (topic, p), recs in grouped.items():
            batch = producer.create_batch()
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futs.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            if batch.record_count():
                futs.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.perf_counter() - t0
