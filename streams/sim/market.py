"""A deterministic market and account simulator.

:func:`generate` yields input envelopes ``{"topic", "key", "value"}`` (the replay
format): deposits, leveraged cross and isolated positions on linear and inverse
perpetuals, funding and fees, mark prices as a random walk with jumps, and an
optional crash that drives accounts into margin calls and liquidations. The same
seed and options always give the same events.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Iterator

import orjson

# symbol -> (start price, kind, settle asset, contract size, qty step)
DEFAULT_SYMBOLS: dict[str, tuple[float, str, str, str, str]] = {
    "BTCUSDT": (60000.0, "linear", "USDT", "1", "0.001"),
    "ETHUSDT": (3000.0, "linear", "USDT", "1", "0.01"),
    "SOLUSDT": (150.0, "linear", "USDT", "1", "0.1"),
    "BTCUSD": (60000.0, "inverse", "BTC", "100", "1"),
}


@dataclass
class SimConfig:
    seed: int = 7
    accounts: int = 200
    events: int = 20000
    symbols: tuple[str, ...] = tuple(DEFAULT_SYMBOLS)
    start_ts: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    step_ms: int = 10
    mark_share: float = 0.5  # of events after the set-up phase
    volatility: float = 0.0015  # per tick, relative
    jump_prob: float = 0.002
    crash_at: float | None = 0.7  # fraction of the run where the crash starts; None = no crash
    crash_depth: float = 0.18  # relative fall of every symbol
    crash_ticks: int = 40
    isolated_share: float = 0.2
    max_leverage: float = 40.0
    bad_share: float = 0.002  # hostile / invalid messages
    symbol_specs: dict = field(default_factory=lambda: dict(DEFAULT_SYMBOLS))


def _q(x: float, step: str) -> str:
    d = Decimal(repr(x)).quantize(Decimal(step), rounding=ROUND_DOWN)
    return format(d.normalize(), "f") if d else "0"


def _money(x: float) -> str:
    return format(Decimal(repr(round(x, 2))).normalize(), "f")


def _price(x: float) -> str:
    return format(Decimal(f"{x:.6g}").normalize(), "f")


class Market:
    """Prices of every symbol, moved by a random walk with jumps and a crash."""

    def __init__(self, cfg: SimConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.rng = rng
        self.price = {s: cfg.symbol_specs[s][0] for s in cfg.symbols}
        self.seq = {s: 0 for s in cfg.symbols}
        self.crash_left = 0

    def tick(self, symbol: str, crashing: bool) -> float:
        r = self.rng
        move = r.gauss(0.0, self.cfg.volatility)
        if r.random() < self.cfg.jump_prob:
            move += r.choice((-1, 1)) * r.uniform(0.01, 0.03)
        if crashing:
            move -= self.cfg.crash_depth / self.cfg.crash_ticks
        self.price[symbol] *= math.exp(move)
        self.seq[symbol] += 1
        return self.price[symbol]


def envelope_bytes(env: dict) -> tuple[bytes | None, bytes]:
    """An envelope's Kafka key and value as bytes (a str value is sent as it is: hostile inputs)."""
    v = env["value"]
    value = v.encode() if isinstance(v, str) else orjson.dumps(v)
    key = env.get("key")
    return (None if key is None else key.encode()), value


def generate(cfg: SimConfig) -> Iterator[dict]:
    """The simulated input log, as envelopes (deterministic for ``cfg``)."""
    rng = random.Random(cfg.seed)
    market = Market(cfg, rng)
    ts = cfg.start_ts
    n = 0
    accounts = [f"acct-{i:05d}" for i in range(cfg.accounts)]
    equity = {}
    modes: dict[tuple[str, str], str] = {}

    def env(topic: str, key: str, value) -> dict:
        nonlocal n, ts
        n += 1
        ts += cfg.step_ms
        return {"topic": topic, "key": key, "value": value}

    # first marks, so positions open at market
    for s in cfg.symbols:
        yield env("mark-prices", s, {"symbol": s, "mark_price": _price(market.price[s]), "ts": ts, "seq": market.seq[s]})
    for a in accounts:
        amount = rng.choice((1000, 2500, 5000, 10000, 25000, 100000))
        equity[a] = amount
        yield env("collateral", a, {"event_id": f"dep-{a}", "account_id": a, "asset": "USDT",
                                     "amount": str(amount), "reason": "deposit", "ts": ts})
        if "BTCUSD" in cfg.symbols and rng.random() < 0.3:
            yield env("collateral", a, {"event_id": f"dep-btc-{a}", "account_id": a, "asset": "BTC",
                                         "amount": _q(rng.uniform(0.05, 1.0), "0.0001"), "reason": "deposit", "ts": ts})
    crash_start = int(cfg.events * cfg.crash_at) if cfg.crash_at is not None else None
    fill_no = 0
    while n < cfg.events:
        crashing = crash_start is not None and crash_start <= n < crash_start + cfg.crash_ticks * len(cfg.symbols) * 2
        r = rng.random()
        if r < cfg.mark_share or crashing:
            s = rng.choice(cfg.symbols)
            p = market.tick(s, crashing)
            yield env("mark-prices", s, {"symbol": s, "mark_price": _price(p), "ts": ts, "seq": market.seq[s]})
        elif r < cfg.mark_share + 0.04:
            a = rng.choice(accounts)
            reason = rng.choice(("funding", "fee", "rebate", "deposit"))
            amt = rng.uniform(-5, 5) if reason == "funding" else (-rng.uniform(0, 2) if reason == "fee" else rng.uniform(0, 50))
            yield env("collateral", a, {"event_id": f"c-{n}", "account_id": a, "asset": "USDT",
                                         "amount": _money(amt), "reason": reason, "ts": ts})
        elif r < cfg.mark_share + 0.04 + cfg.bad_share:
            yield from _bad(env, rng, accounts, ts, n)
        else:
            a = rng.choice(accounts)
            s = rng.choice(cfg.symbols)
            _, kind, settle, csize, step = cfg.symbol_specs[s]
            price = market.price[s] * (1 + rng.uniform(-0.0005, 0.0005))
            mode = modes.get((a, s)) or ("isolated" if rng.random() < cfg.isolated_share else "cross")
            lev = rng.uniform(2, cfg.max_leverage)
            budget = equity[a] * rng.uniform(0.05, 0.3)
            if kind == "linear":
                qty = _q(budget * lev / price / float(csize), step)
            else:
                qty = _q(budget * lev / float(csize), step)
            if Decimal(qty) <= 0:
                continue
            if mode == "isolated" and (a, s) not in modes:
                if settle != "USDT":
                    mode = "cross"
                else:
                    yield env("collateral", a, {"event_id": f"iso-{n}", "account_id": a, "asset": "USDT",
                                                 "amount": _money(budget), "reason": "isolated_margin",
                                                 "symbol": s, "ts": ts})
            modes[(a, s)] = mode
            fill_no += 1
            side = "buy" if rng.random() < 0.55 else "sell"
            value = {"fill_id": f"f-{fill_no}", "account_id": a, "symbol": s, "side": side, "qty": qty,
                     "price": _price(price), "fee": _money(0.0004 * budget * lev) if kind == "linear" else "0",
                     "margin_mode": mode, "ts": ts}
            yield env("fills", a, value)
            if rng.random() < 0.01:  # a redelivery
                yield env("fills", a, value)


def _bad(env, rng: random.Random, accounts: list[str], ts: int, n: int) -> Iterator[dict]:
    a = rng.choice(accounts)
    kind = rng.randrange(4)
    if kind == 0:
        yield env("fills", a, '{"fill_id": "broken", "account_id": ')
    elif kind == 1:
        yield env("fills", a, {"fill_id": f"bad-{n}", "account_id": a, "symbol": "DOGEUSDT", "side": "buy",
                               "qty": "1", "price": "0.1", "ts": ts})
    elif kind == 2:
        yield env("collateral", a, {"event_id": f"bad-{n}", "account_id": "someone-else", "asset": "USDT",
                                    "amount": "1", "reason": "deposit", "ts": ts})
    else:
        yield env("mark-prices", "BTCUSDT", {"symbol": "BTCUSDT", "mark_price": "NaN", "ts": ts})
