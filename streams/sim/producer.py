"""``marginwatch simulate``: produce the simulator's events to Kafka, live.

:class:`LiveSimulator` extends the deterministic generator of
:mod:`streams.sim.market` to endless runs: the same market (a random walk with
jumps), the same accounts (deposits, leveraged cross and isolated positions on
linear and inverse perpetuals, funding, fees, a few invalid messages), but it
produces events one step at a time for as long as it is asked, with a crash that
can be triggered at any point of the run and a recovery after it.

Timestamps come from a clock:

- ``clock="wall"`` (the default of ``marginwatch simulate``): ``ts`` is the wall
  clock in ms, so event times are live and the worker's decision latency is
  real. Mark ticks carry ``seq = ts * 1000 + n`` (increasing across runs, so a new
  run's ticks are never stale against an older run's). Ids get a run prefix
  (``--run-id``, default derived from the start time) so a second run against the
  same topics does not collide with the ids of the first.
- ``clock="sim"``: ``ts`` advances ``step_ms`` per event from ``start_ts``, seq
  counts ticks per symbol, ids have no prefix: the whole output is a pure
  function of the options.

With either clock, the content of the run (which accounts, symbols, sides,
quantities, prices, in which order) depends only on the seed and the options.

:func:`run` produces to ``<MW_TOPIC_PREFIX><topic>`` at ``--rate`` events/s (0 =
as fast as possible) until ``--events`` or ``--duration`` is reached, or until
SIGINT/SIGTERM; a rich progress bar is shown on a terminal.
"""
from __future__ import annotations

import asyncio
import math
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterator

from .market import DEFAULT_SYMBOLS, Market, SimConfig, _bad, _money, _price, _q, envelope_bytes

#: a crash lasts this many mark events per symbol per crash tick (as in market.generate)
CRASH_EVENTS_PER_TICK = 2
#: the recovery after a crash lasts this many times the crash, and regains this share of the fall
RECOVERY_LENGTH = 4
RECOVERY_SHARE = 0.8


def wall_ms() -> int:
    return int(time.time() * 1000)


class LiveMarket(Market):
    """:class:`Market` with an extra drift per tick (used for the recovery)."""

    def tick_drift(self, symbol: str, drift: float) -> float:
        price = self.tick(symbol, False)
        if drift:
            price *= math.exp(drift)
            self.price[symbol] = price
        return price


@dataclass
class Phase:
    """Where the run is: ``normal``, ``crash`` or ``recovery``, with events left in it."""

    name: str = "normal"
    left: int = 0
    crashes: int = 0


class LiveSimulator:
    """The simulated input stream, one step at a time, for as long as asked.

    ``setup()`` yields the first marks and the deposits; then each ``step()``
    returns the next envelopes (usually one; a redelivery or an isolated-margin
    transfer adds one). ``start_crash()`` switches to a crash of
    ``crash_ticks × symbols × 2`` mark events followed by a recovery.
    """

    def __init__(self, cfg: SimConfig, clock: str = "wall", run_id: str = "",
                 now_ms: Callable[[], int] = wall_ms) -> None:
        if clock not in ("wall", "sim"):
            raise ValueError(f"clock must be 'wall' or 'sim', got {clock!r}")
        self.cfg = cfg
        self.clock = clock
        self.run_id = run_id
        self.now_ms = now_ms
        self.rng = random.Random(cfg.seed)
        self.market = LiveMarket(cfg, self.rng)
        self.accounts = [f"acct-{i:05d}" for i in range(cfg.accounts)]
        self.equity: dict[str, float] = {}
        self.modes: dict[tuple[str, str], str] = {}
        self.position: dict[tuple[str, str], float] = {}  # the generator's own view, in contracts
        self.n = 0
        self.fill_no = 0
        self.ts = cfg.start_ts if clock == "sim" else now_ms()
        self._tick_seq = 0
        self.phase = Phase()
        self.crash_len = cfg.crash_ticks * len(cfg.symbols) * CRASH_EVENTS_PER_TICK
        # the crash falls 2 x crash_depth (log) over crash_len marks; the recovery regains RECOVERY_SHARE of it
        self.recovery_drift = RECOVERY_SHARE * cfg.crash_depth / (RECOVERY_LENGTH * cfg.mark_share * cfg.crash_ticks)

    # ------------------------------------------------------------------ basics

    def _next_ts(self) -> int:
        if self.clock == "sim":
            self.ts += self.cfg.step_ms
        else:
            self.ts = max(self.ts, self.now_ms())
        return self.ts

    def _env(self, topic: str, key: str, value) -> dict:
        self.n += 1
        return {"topic": topic, "key": key, "value": value}

    def _mark(self, symbol: str, price: float) -> dict:
        ts = self._next_ts()
        if self.clock == "sim":
            seq = self.market.seq[symbol]
        else:
            self._tick_seq = max(self._tick_seq + 1, ts * 1000)
            seq = self._tick_seq
        return self._env("mark-prices", symbol, {"symbol": symbol, "mark_price": _price(price), "ts": ts, "seq": seq})

    def _id(self, text: str) -> str:
        return f"{self.run_id}{text}"

    # ------------------------------------------------------------------ phases

    def start_crash(self) -> None:
        """Start a crash now (then a recovery); ignored while one is under way."""
        if self.phase.name == "normal":
            self.phase = Phase("crash", self.crash_len, self.phase.crashes + 1)

    def _advance_phase(self) -> None:
        if self.phase.name == "normal":
            return
        self.phase.left -= 1
        if self.phase.left <= 0:
            if self.phase.name == "crash":
                self.phase = Phase("recovery", self.crash_len * RECOVERY_LENGTH, self.phase.crashes)
            else:
                self.phase = Phase("normal", 0, self.phase.crashes)

    # ------------------------------------------------------------------ events

    def setup(self) -> Iterator[dict]:
        """First marks (positions open at market), then every account's deposits."""
        cfg, rng = self.cfg, self.rng
        for s in cfg.symbols:
            yield self._mark(s, self.market.price[s])
        for a in self.accounts:
            amount = rng.choice((1000, 2500, 5000, 10000, 25000, 100000))
            self.equity[a] = amount
            ts = self._next_ts()
            yield self._env("collateral", a, {"event_id": self._id(f"dep-{a}"), "account_id": a, "asset": "USDT",
                                              "amount": str(amount), "reason": "deposit", "ts": ts})
            if "BTCUSD" in cfg.symbols and rng.random() < 0.3:
                ts = self._next_ts()
                yield self._env("collateral", a, {"event_id": self._id(f"dep-btc-{a}"), "account_id": a,
                                                  "asset": "BTC", "amount": _q(rng.uniform(0.05, 1.0), "0.0001"),
                                                  "reason": "deposit", "ts": ts})

    def step(self) -> list[dict]:
        """The next envelopes of the run (possibly none, when a fill rounds to zero)."""
        cfg, rng = self.cfg, self.rng
        phase = self.phase.name
        self._advance_phase()
        r = rng.random()
        if phase == "crash" or r < cfg.mark_share:
            s = rng.choice(cfg.symbols)
            if phase == "crash":
                p = self.market.tick(s, True)
            else:
                p = self.market.tick_drift(s, self.recovery_drift if phase == "recovery" else 0.0)
            return [self._mark(s, p)]
        if r < cfg.mark_share + 0.04:
            a = rng.choice(self.accounts)
            reason = rng.choice(("funding", "fee", "rebate", "deposit"))
            amt = rng.uniform(-5, 5) if reason == "funding" else (-rng.uniform(0, 2) if reason == "fee" else rng.uniform(0, 50))
            ts = self._next_ts()
            return [self._env("collateral", a, {"event_id": self._id(f"c-{self.n}"), "account_id": a, "asset": "USDT",
                                                "amount": _money(amt), "reason": reason, "ts": ts})]
        if r < cfg.mark_share + 0.04 + cfg.bad_share:
            ts = self._next_ts()
            out = []
            for env in _bad(lambda t, k, v: {"topic": t, "key": k, "value": v}, rng, self.accounts, ts, self.n):
                if isinstance(env["value"], dict) and env["value"].get("fill_id", "").startswith("bad-"):
                    env["value"]["fill_id"] = self._id(env["value"]["fill_id"])
                if isinstance(env["value"], dict) and str(env["value"].get("event_id", "")).startswith("bad-"):
                    env["value"]["event_id"] = self._id(env["value"]["event_id"])
                self.n += 1
                out.append(env)
            return out
        return self._fill()

    def _fill(self) -> list[dict]:
        cfg, rng = self.cfg, self.rng
        a = rng.choice(self.accounts)
        s = rng.choice(cfg.symbols)
        _, kind, settle, csize, step = cfg.symbol_specs[s]
        price = self.market.price[s] * (1 + rng.uniform(-0.0005, 0.0005))
        mode = self.modes.get((a, s)) or ("isolated" if rng.random() < cfg.isolated_share else "cross")
        lev = rng.uniform(2, cfg.max_leverage)
        budget = self.equity[a] * rng.uniform(0.05, 0.3)
        if kind == "linear":
            qty = _q(budget * lev / price / float(csize), step)
        else:
            qty = _q(budget * lev / float(csize), step)
        side_draw = rng.random()
        if Decimal(qty) <= 0:
            return []
        out = []
        if mode == "isolated" and (a, s) not in self.modes:
            if settle != "USDT":
                mode = "cross"
            else:
                ts = self._next_ts()
                out.append(self._env("collateral", a, {"event_id": self._id(f"iso-{self.n}"), "account_id": a,
                                                       "asset": "USDT", "amount": _money(budget),
                                                       "reason": "isolated_margin", "symbol": s, "ts": ts}))
        self.modes[(a, s)] = mode
        self.fill_no += 1
        # Keep an endless run's leverage bounded: past max_leverage/4 × equity in one
        # symbol, the next fill of that pair reduces the position.
        held = self.position.get((a, s), 0.0)
        unit = price * float(csize) if kind == "linear" else float(csize)
        if abs(held) * unit > self.equity[a] * cfg.max_leverage / 4:
            side = "sell" if held > 0 else "buy"
        else:
            side = "buy" if side_draw < 0.55 else "sell"
        self.position[(a, s)] = held + (float(qty) if side == "buy" else -float(qty))
        ts = self._next_ts()
        value = {"fill_id": self._id(f"f-{self.fill_no}"), "account_id": a, "symbol": s, "side": side, "qty": qty,
                 "price": _price(price), "fee": _money(0.0004 * budget * lev) if kind == "linear" else "0",
                 "margin_mode": mode, "ts": ts}
        out.append(self._env("fills", a, value))
        if rng.random() < 0.01:  # a redelivery
            out.append(self._env("fills", a, dict(value)))
        return out


# ------------------------------------------------------------------------ runner


@dataclass
class RunOptions:
    accounts: int = 200
    events: int = 0  # 0 = until stopped or duration
    rate: float = 200.0  # events/s, 0 = as fast as possible
    seed: int = 7
    crash_at: float | None = None  # fraction of the run (events or duration)
    crash_depth: float = 0.18
    crash_every: float = 0.0  # seconds of wall time between crashes (endless live runs); 0 = never
    duration: float = 0.0  # seconds, 0 = unbounded
    clock: str = "wall"
    run_id: str | None = None
    progress: bool | None = None  # None = on a terminal, for long runs
    bad_share: float = 0.002
    max_leverage: float = 20.0  # per fill, drawn from 2..max_leverage (market.generate uses 40)
    symbols: tuple[str, ...] = field(default_factory=lambda: tuple(DEFAULT_SYMBOLS))


@dataclass
class RunResult:
    produced: int
    counts: dict
    seconds: float
    crashes: int
    stopped: bool  # by a signal


def default_run_id(now_ms: int | None = None) -> str:
    """A short run prefix for ids from the start time, e.g. ``r1a2b3c4d-``."""
    return f"r{format((now_ms or wall_ms()) // 1000, 'x')}-"


def sim_config(opts: RunOptions) -> SimConfig:
    return SimConfig(seed=opts.seed, accounts=opts.accounts, events=opts.events or 1,
                     crash_at=opts.crash_at, crash_depth=opts.crash_depth, bad_share=opts.bad_share,
                     max_leverage=opts.max_leverage, symbols=tuple(opts.symbols))


def iter_run(opts: RunOptions, elapsed: Callable[[], float] | None = None) -> Iterator[tuple[str, list[dict]]]:
    """The run as (phase, envelopes) steps, ending at ``opts.events`` (or never).

    ``elapsed()`` (seconds since the start) drives a crash at a fraction of
    ``opts.duration`` when the run is bounded by time, not events.
    """
    cfg = sim_config(opts)
    run_id = opts.run_id if opts.run_id is not None else (default_run_id() if opts.clock == "wall" else "")
    sim = LiveSimulator(cfg, clock=opts.clock, run_id=run_id)
    for env in sim.setup():
        yield "setup", [env]
    while True:
        if opts.events and sim.n >= opts.events:
            return
        if sim.phase.name == "normal":
            due = False
            if opts.crash_at is not None and sim.phase.crashes == 0:
                if opts.events:
                    due = sim.n >= int(opts.events * opts.crash_at)
                elif opts.duration and elapsed is not None:
                    due = elapsed() >= opts.duration * opts.crash_at
            if opts.crash_every and elapsed is not None and elapsed() >= opts.crash_every * (sim.phase.crashes + 1):
                due = True
            if due:
                sim.start_crash()
        envs = sim.step()
        if opts.events and sim.n > opts.events:
            envs = envs[: max(0, len(envs) - (sim.n - opts.events))]
        if envs:
            yield sim.phase.name, envs


async def produce_run(settings, opts: RunOptions, out=sys.stderr) -> RunResult:
    """Produce the run to Kafka (topics ``settings.topic(name)``); returns what was produced."""
    from aiokafka import AIOKafkaProducer

    from ..topics import bootstrap, ensure_topics, kafka_security

    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(settings), acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024, **kafka_security(settings))
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    stop = asyncio.Event()
    stopped_by: list[int] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, lambda s=sig: (stopped_by.append(s), stop.set()))
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    t0 = time.monotonic()
    elapsed = lambda: time.monotonic() - t0  # noqa: E731
    show = opts.progress if opts.progress is not None else (
        out.isatty() and (opts.events == 0 or opts.events >= 2000 or opts.duration >= 5))
    progress = task = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        total = opts.events or opts.duration or None
        progress = Progress(TextColumn("[bold]simulate[/] {task.description}"), BarColumn(),
                            TextColumn("{task.fields[n]:>9,} events  {task.fields[rate]:>7.0f}/s"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=out), transient=False)
        progress.start()
        task = progress.add_task("setup", total=total, n=0, rate=0.0)
    produced = 0
    counts: Counter = Counter()
    crashes = 0
    last_phase = "setup"
    pending: list = []
    last_ui = 0.0
    try:
        for phase, envs in iter_run(opts, elapsed):
            if stop.is_set() or (opts.duration and elapsed() >= opts.duration):
                break
            if last_phase == "setup" and phase != "setup" and pending:
                # deposits before the first fill: the set-up phase is acknowledged first
                await asyncio.gather(*pending)
                pending.clear()
            for i, env in enumerate(envs):
                key, value = envelope_bytes(env)
                fut = await producer.send(settings.topic(env["topic"]), value, key=key)
                produced += 1
                counts[env["topic"]] += 1
                if phase != "setup" and i + 1 < len(envs) and envs[i + 1]["topic"] != env["topic"]:
                    # an isolated-margin transfer, then the fill that needs it: topics are not
                    # ordered with each other, so let the transfer land (and be sequenced) first
                    await fut
                    if opts.rate > 0:
                        await asyncio.sleep(0.02)
                else:
                    pending.append(fut)
            if phase == "crash" and last_phase != "crash":
                crashes += 1
            last_phase = phase
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if opts.rate > 0:
                ahead = (produced / opts.rate) - elapsed()
                if ahead > 0:
                    if pending:
                        await asyncio.gather(*pending)
                        pending.clear()
                    try:
                        await asyncio.wait_for(stop.wait(), ahead)
                    except asyncio.TimeoutError:
                        pass
            elif produced % 500 == 0:
                await asyncio.sleep(0)
            now = elapsed()
            if progress is not None and now - last_ui > 0.2:
                last_ui = now
                progress.update(task, completed=produced if opts.events else min(now, opts.duration or now),
                                description=phase, n=produced, rate=produced / max(now, 1e-9))
        if pending:
            await asyncio.gather(*pending)
        await producer.flush()
    finally:
        if progress is not None:
            now = elapsed()
            progress.update(task, completed=produced if opts.events else min(now, opts.duration or now),
                            n=produced, rate=produced / max(now, 1e-9))
            progress.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        await producer.stop()
    return RunResult(produced, dict(counts), elapsed(), crashes, bool(stopped_by))


def run(settings, opts: RunOptions, out=sys.stderr) -> RunResult:
    return asyncio.run(produce_run(settings, opts, out))
