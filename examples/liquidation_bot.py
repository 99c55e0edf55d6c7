#!/usr/bin/env python3
"""A liquidation bot: a simple stand-in for an exchange's liquidation engine.

It consumes marginwatch's ``liquidations`` topic and executes every plan at once,
by producing the closing fills back to the ``fills`` topic, as if each order had
been matched at its mark price. A real exchange would route the orders to its
matching engine (or an insurance fund / ADL); the contract is the same: a fill on
``fills`` keyed by the account.

Rules, from the wire contract (see CONTRACT.md, "liquidations"):

- Only the latest step of an episode counts: per (account, scope) the bot keeps
  the highest (episode, step) it has seen and ignores anything older or equal, so
  a redelivered or superseded plan is never executed.
- A plan is executed as a whole: while its fills are on their way, the steps that
  marginwatch emits after each of them (computed on a half-executed plan) are
  skipped; the step caused by the plan's last fill, if the scope is still in
  liquidation, is the next plan (see :class:`InFlight`).
- Fill ids derive from the liquidation's ``event_id``: ``liq:<event_id>:<symbol>``.
  Even if the bot restarts and re-reads a plan it already executed (offsets are
  committed after the fills are acknowledged, so that can happen), the fills it
  produces again carry the same ids, and marginwatch applies a repeated fill id
  once: a plan never closes twice.
- The fill: ``account_id`` = the liquidation's account; ``symbol``, ``side``,
  ``qty`` from the order; ``price`` = the order's ``mark_price``; ``margin_mode`` =
  ``cross`` if scope is ``cross``, else ``isolated``; ``fee`` 0; ``ts`` = wall
  clock ms.

It reads with ``isolation_level=read_committed`` (the worker writes its outputs in
transactions under exactly-once) in the consumer group
``<MW_APP_ID>-liquidation-bot``.

Configuration comes from the same environment as the worker: ``MW_BROKER``,
``MW_TOPIC_PREFIX``, ``MW_APP_ID`` and the ``MW_KAFKA_*`` security settings.

Run it::

    python examples/liquidation_bot.py            # until Ctrl-C / SIGTERM
    python examples/liquidation_bot.py --dry-run  # print what it would fill
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

try:
    import streams  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.margin.errors import MarginwatchError
from streams.settings import Settings
from streams.topics import bootstrap, kafka_security


def closing_fills(liq: dict, now_ms: int) -> list[dict]:
    """The fills that execute liquidation ``liq`` at mark (one per order)."""
    scope = liq["scope"]
    fills = []
    for order in liq.get("orders") or ():
        qty = str(order["qty"])
        if not qty or qty.strip("0.") == "":
            continue
        fills.append({
            "fill_id": f"liq:{liq['event_id']}:{order['symbol']}",
            "account_id": liq["account_id"],
            "symbol": order["symbol"],
            "side": order["side"],
            "qty": qty,
            "price": str(order["mark_price"]),
            "fee": "0",
            "margin_mode": "cross" if scope == "cross" else "isolated",
            "ts": now_ms,
        })
    return fills


class Latest:
    """Per (account, scope), the highest (episode, step) seen."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}

    def newer(self, liq: dict) -> bool:
        key = (liq["account_id"], liq["scope"])
        pos = (int(liq["episode"]), int(liq["step"]))
        if key in self.seen and pos <= self.seen[key]:
            return False
        self.seen[key] = pos
        return True


class InFlight:
    """The fills of the plan last executed per (account, scope) that marginwatch has not applied yet.

    Executing a plan of several orders changes the scope's positions one fill at a
    time, and marginwatch emits a new step after each of them: a step computed on a
    half-executed plan still lists the orders whose fills are on their way, and
    executing it would close those positions twice. So while fills of the executed
    plan are in flight, a newer step is skipped, unless its cause is the last of
    them (it then describes the scope after the whole plan), it starts a new
    episode, or ``timeout_s`` passed (a fill that was never applied, e.g.
    dead-lettered, must not block the scope for ever).
    """

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.pending: dict[tuple[str, str], tuple[int, set[str], float]] = {}  # -> (episode, fill ids, since)

    def should_act(self, liq: dict, now: float) -> bool:
        key = (liq["account_id"], liq["scope"])
        entry = self.pending.get(key)
        if entry is None:
            return True
        episode, ids, since = entry
        if int(liq["episode"]) != episode or now - since > self.timeout_s:
            del self.pending[key]
            return True
        cause = liq.get("cause") or {}
        if cause.get("topic") == "fills":
            ids.discard(str(cause.get("id")))
        if ids:
            return False
        del self.pending[key]
        return True

    def executed(self, liq: dict, fills: list[dict], now: float) -> None:
        key = (liq["account_id"], liq["scope"])
        if fills:
            self.pending[key] = (int(liq["episode"]), {f["fill_id"] for f in fills}, now)
        else:
            self.pending.pop(key, None)


def latest_of_batch(values: list[dict]) -> list[dict]:
    """Within one batch, only the highest (episode, step) per (account, scope), in arrival order."""
    best: dict[tuple[str, str], dict] = {}
    for v in values:
        key = (v["account_id"], v["scope"])
        cur = best.get(key)
        if cur is None or (v["episode"], v["step"]) > (cur["episode"], cur["step"]):
            best[key] = v
    keep = {id(v) for v in best.values()}
    return [v for v in values if id(v) in keep]


async def run(settings: Settings, dry_run: bool = False, from_beginning: bool = True, quiet: bool = False) -> int:
    liq_topic, fills_topic = settings.topic("liquidations"), settings.topic("fills")
    sec = kafka_security(settings)
    consumer = AIOKafkaConsumer(
        liq_topic, bootstrap_servers=bootstrap(settings), group_id=f"{settings.app_id}-liquidation-bot",
        enable_auto_commit=False, auto_offset_reset="earliest" if from_beginning else "latest",
        isolation_level="read_committed", **sec,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(settings), acks="all", enable_idempotence=True,
                                linger_ms=2, **sec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    latest = Latest()
    inflight = InFlight()
    plans = fills_sent = ignored = 0
    await producer.start()
    try:
        await consumer.start()
        try:
            if not quiet:
                print(f"liquidation-bot: consuming {liq_topic}, producing to {fills_topic}", file=sys.stderr, flush=True)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                if not batch:
                    continue
                values = []
                for records in batch.values():
                    for rec in records:
                        try:
                            values.append(json.loads(rec.value))
                        except (ValueError, TypeError):
                            ignored += 1
                values = [v for v in values if isinstance(v, dict) and {"account_id", "scope", "episode", "step",
                                                                         "event_id"} <= v.keys()]
                futures = []
                last_of_scope = {id(v) for v in latest_of_batch(values)}
                for liq in values:
                    # every step tells which of our fills were applied (its cause), even a superseded one
                    fresh = latest.newer(liq)
                    ready = inflight.should_act(liq, time.monotonic())
                    if not (fresh and ready and id(liq) in last_of_scope):
                        ignored += 1
                        continue
                    plans += 1
                    fills = closing_fills(liq, int(time.time() * 1000))
                    inflight.executed(liq, fills, time.monotonic())
                    for fill in fills:
                        if dry_run:
                            print(json.dumps(fill), flush=True)
                            continue
                        futures.append(await producer.send(fills_topic, json.dumps(fill).encode(),
                                                           key=fill["account_id"].encode()))
                        fills_sent += 1
                    if not quiet:
                        orders = ", ".join(f"{o['side']} {o['qty']} {o['symbol']}@{o['mark_price']}" for o in liq.get("orders") or ())
                        print(f"liquidation-bot: {liq['account_id']} {liq['scope']} episode {liq['episode']} "
                              f"step {liq['step']}: {orders or 'no orders'}", file=sys.stderr, flush=True)
                if futures:
                    await asyncio.gather(*futures)
                await consumer.commit()
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    # the summary line, also with --quiet (marginwatch demo reads it)
    print(f"liquidation-bot: stopped; {plans} plans executed, {fills_sent} fills sent, {ignored} superseded/ignored",
          file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute marginwatch liquidations as closing fills at mark.")
    parser.add_argument("--dry-run", action="store_true", help="print the fills instead of producing them")
    parser.add_argument("--latest", action="store_true", help="start at the end of the topic (new group only)")
    parser.add_argument("--quiet", action="store_true", help="no per-plan log lines (only the final summary)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except MarginwatchError as err:
        print(f"liquidation-bot: error: {err.detail}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(settings, dry_run=args.dry_run, from_beginning=not args.latest, quiet=args.quiet))
    except KafkaConnectionError:
        print(f"liquidation-bot: error: cannot reach Kafka at {bootstrap(settings)}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"liquidation-bot: error: Kafka: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
